"""The run's named tensors: the scenario's, the tasks' outputs and the ones agents create.

Owns: the name -> :class:`SharedTensor` table, and the agents' tensor writes waiting for the
end of the tick (a write is applied after the commit, so every handler of a tick reads what
the tick started with). The segments themselves belong to the runtime's :class:`TensorStore`.
Every new name is announced to the pool, visible to agents from the tick after it was made.
"""

from __future__ import annotations

import numpy as np

from qhybrid.runtime._ports import AgentPool
from qhybrid.runtime._scenario import Scenario, TensorSpec
from qhybrid.runtime._seeding import derive_seed
from qhybrid.runtime.tensors import SharedTensor, TensorStore
from qhybrid.runtime.wasm_pool import TensorEntry

__all__ = ["NamedTensors"]


class NamedTensors:
    def __init__(self, store: TensorStore, pool: AgentPool) -> None:
        self.store = store
        self.pool = pool
        self.by_name: dict[str, SharedTensor] = {}
        #: ``(name, byte offset, data)`` in commit order, applied by :meth:`apply_writes`.
        self.pending_writes: list[tuple[str, int, bytes]] = []

    def create_initial(self, scenario: Scenario) -> None:
        """The scenario's tensors, filled as their ``init`` says, visible from tick 0."""
        entries = []
        for spec in scenario.tensors:
            tensor = self.by_name[spec.name] = self._make(scenario.seed, spec)
            writers = None if spec.writable else frozenset[int]()
            entries.append(TensorEntry(spec.name, tensor.handle, 0, writers))
        self.pool.add_tensors(entries)

    def _make(self, seed: int, spec: TensorSpec) -> SharedTensor:
        tensor = self.store.create(spec.shape, spec.dtype)
        arr = tensor.array
        if spec.init == "random":
            rng = np.random.Generator(np.random.PCG64(derive_seed(seed, "tensor", spec.name)))
            arr[...] = rng.uniform(-1.0, 1.0, size=spec.shape).astype(arr.dtype)
        elif spec.init == "ones":
            arr.fill(1)
        elif spec.init == "arange":
            arr[...] = np.arange(arr.size, dtype=arr.dtype).reshape(spec.shape)
        # "zeros": new segments are already zero-filled.
        return tensor

    def publish(self, name: str, tensor: SharedTensor, tick: int, writers: frozenset[int]) -> None:
        """Make a tensor made during ``tick`` visible to agents from the next tick on."""
        self.by_name[name] = tensor
        self.pool.add_tensors([TensorEntry(name, tensor.handle, tick + 1, writers)])

    def pending_names(self) -> set[str]:
        """The names the tick's pending writes will change."""
        return {name for name, _, _ in self.pending_writes}

    def apply_writes(self) -> None:
        """Apply the tick's pending writes in order."""
        for name, offset, data in self.pending_writes:
            flat = self.by_name[name].array.reshape(-1).view(np.uint8)
            flat[offset : offset + len(data)] = np.frombuffer(data, np.uint8)
        self.pending_writes.clear()

    def close(self) -> None:
        for tensor in self.by_name.values():
            tensor.close()
        self.by_name.clear()
