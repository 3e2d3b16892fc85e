"""The run's named tensors: the scenario's, the tasks' outputs and the ones agents create.

Owns: the name -> :class:`SharedTensor` table, and the agents' tensor writes and releases
waiting for the end of the tick (applied after the commit, writes first, so every handler of a
tick reads what the tick started with). The segments themselves belong to the runtime's
:class:`TensorStore`. Every new name is announced to the pool, visible to agents from the tick
after it was made; a released one is announced gone from the tick after its release, its name
free again from then on.

A job that writes into an existing tensor (``gpu_submit_into``) computes into a fresh output
and its result is a pending write of that whole output, so the jobs running during a tick never
change what that tick's handlers read. Such outputs, once copied, are *retired*: kept until the
next tick starts (the run store records job outputs after the tick) and then closed.
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
        #: ``(name, byte offset, data)`` in commit order, applied by :meth:`apply_writes`;
        #: ``data`` a job's output for ``gpu_submit_into``.
        self.pending_writes: list[tuple[str, int, bytes | SharedTensor]] = []
        #: Names released this tick, in commit order, applied by :meth:`apply_releases`.
        self.pending_releases: list[tuple[str, int]] = []
        self._retired: list[SharedTensor] = []

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
        """The names the tick's pending writes and releases will change."""
        return {name for name, _, _ in self.pending_writes} | {
            name for name, _ in self.pending_releases
        }

    def release(self, name: str, tick: int) -> bool:
        """Release ``name`` at the end of ``tick``; False if it is gone or going already."""
        if name not in self.by_name or any(n == name for n, _ in self.pending_releases):
            return False
        self.pending_releases.append((name, tick))
        return True

    def drop_retired(self) -> None:
        """Close the job outputs that :meth:`apply_writes` copied (at the next tick)."""
        for tensor in self._retired:
            tensor.close()
        self._retired.clear()

    def apply_writes(self) -> None:
        """Apply the tick's pending writes in order."""
        for name, offset, data in self.pending_writes:
            flat = self.by_name[name].array.reshape(-1).view(np.uint8)
            if isinstance(data, SharedTensor):
                src = data.array.reshape(-1).view(np.uint8)
                flat[offset : offset + src.size] = src
                self._retired.append(data)
            else:
                flat[offset : offset + len(data)] = np.frombuffer(data, np.uint8)
        self.pending_writes.clear()

    def apply_releases(self) -> None:
        """Apply the tick's releases: each name leaves the table (its segment is freed) and
        the pool learns that it is gone from the next tick."""
        entries = []
        for name, tick in self.pending_releases:
            tensor = self.by_name.pop(name)
            entries.append(TensorEntry(name, tensor.handle, tick + 1, frozenset(), released=True))
            tensor.close()
        self.pending_releases.clear()
        if entries:
            self.pool.add_tensors(entries)

    def close(self) -> None:
        for _, _, data in self.pending_writes:
            if isinstance(data, SharedTensor):
                data.close()
        self.pending_writes.clear()
        self.drop_retired()
        for tensor in self.by_name.values():
            tensor.close()
        self.by_name.clear()
