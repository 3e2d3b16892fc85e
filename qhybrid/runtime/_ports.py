"""The interfaces the orchestrator's parts meet other backends at.

- :class:`AgentPool`: what the orchestrator needs from the thing that hosts agents and runs
  CPU tasks. :class:`~qhybrid.runtime.wasm_pool.WorkerPool` (local worker processes) is one;
  another backend (e.g. Ray actors, one per "worker" index) implements the same coroutines and
  passes itself as ``Runtime(..., pool=...)``. Agent ``i`` always lives at index
  ``i % size``; a batch's reply must hold one outcome per delivery, in order (an
  ``Outcome``, or one of the wire forms ``BatchReply.outcomes`` names).
- :data:`TickHook`: called after every tick's commit with the trace records that tick made
  (``Runtime.add_tick_hook``), e.g. for a durable-runs store.

Owns no state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from qhybrid.runtime._trace import Field
from qhybrid.runtime.wasm_pool import AgentLoad, BatchReply, TaskRun, TensorEntry

__all__ = ["AgentPool", "TickHook", "TraceRecord"]

#: One trace record, as :class:`~qhybrid.runtime._trace.TraceRecorder` hashes it.
TraceRecord = tuple[Field, ...]

#: ``hook(tick, records)``: runs on the orchestrator's loop after tick ``tick`` is committed
#: (and once more, with the final records, when the run ends). It must not block for long.
TickHook = Callable[[int, Sequence[TraceRecord]], None]


class AgentPool(Protocol):
    """Hosts the agents (by worker index) and runs CPU tasks; all coroutines run on the
    orchestrator's loop. Raise ``WorkerCrashed`` from a call when the host of an index is
    gone: the orchestrator then calls :meth:`respawn` and :meth:`restore` and retries."""

    @property
    def size(self) -> int: ...

    @property
    def pids(self) -> list[int]: ...

    def busy_ns(self) -> list[int]: ...

    async def start(self) -> None: ...

    async def aclose(self, timeout: float = 5.0) -> None: ...

    async def set_directory(
        self, names: Sequence[str], spawned: Sequence[tuple[str, tuple[int, ...]]] = ()
    ) -> None:
        """Every agent's name, by id, and (ABI v2 spawn) each group's spawned instances."""
        ...

    async def install_module(self, key: str, serialized: bytes, original: bytes = b"") -> None: ...

    def add_tensors(self, entries: Sequence[TensorEntry]) -> None: ...

    async def load_agents(self, index: int, loads: Sequence[AgentLoad]) -> None: ...

    async def run_batch(
        self,
        index: int,
        tick: int,
        deliveries: Sequence[tuple[int, int, int, bytes]],
        tasks: Sequence[TaskRun] = (),
    ) -> BatchReply: ...

    async def snapshot(self, index: int, agent_ids: Sequence[int]) -> dict[int, bytes | str]: ...

    async def restore(
        self,
        index: int,
        items: Sequence[tuple[AgentLoad, bytes | None, list[tuple[int, int, int, bytes]]]],
    ) -> list[str | None]: ...

    async def restart_agent(self, index: int, agent_id: int) -> None: ...

    async def respawn(self, index: int) -> None: ...

    def kill_worker(self, index: int) -> None: ...
