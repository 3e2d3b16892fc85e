"""What every worker pool does the same way, whatever carries its requests.

:class:`PoolBase` keeps what every worker must know (the directory of names, the modules, the
named tensors, each agent's time limit, which a replacement worker is told again) and turns
the orchestrator's calls into :class:`Request` s with their watchdog deadlines. A subclass
(:class:`~._pool.WorkerPool`: processes and pipes; :class:`~._ray_pool.RayWorkerPool`: Ray
actors) says how one request reaches worker ``index`` (:meth:`PoolBase._request`) and which
object stands for that worker (:meth:`PoolBase._host`); the meaning of every request, and
so the trace, is the same on both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

from qhybrid.runtime.wasm_pool._limits import effective_limits
from qhybrid.runtime.wasm_pool._protocol import (
    AgentLoad,
    BatchReply,
    Request,
    TaskOutcome,
    TaskRun,
    TensorEntry,
    outcome_of,
)
from qhybrid.runtime.wasm_pool._watchdog import BASE_DEADLINE_S, batch_deadline

__all__ = ["PoolBase"]

#: ``(agent load, snapshot or None, messages to replay)``: one agent to restore.
RestoreItem = tuple[AgentLoad, bytes | None, list[tuple[int, int, int, bytes]]]


class _Host(Protocol):
    tensors_seen: int


class PoolBase:
    """The requests and the shared knowledge of a pool of ``size`` workers."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one worker, got {size}")
        self.size = size
        # What every worker must know; replayed to a replacement worker.
        self._directory: tuple[str, ...] = ()
        #: ABI v2 spawn: (group, ids of its spawned instances), sent with the directory.
        self._spawned: tuple[tuple[str, tuple[int, ...]], ...] = ()
        self._modules: dict[str, tuple[bytes, bytes]] = {}
        self._tensors: list[TensorEntry] = []
        self._time_limits: dict[int, int] = {}  # agent id -> ms per message (the watchdog's)
        self._uniform_ms: int | None = None  # the one limit they all have (-1: not one)
        self.restarts = 0
        #: What the batches sent now ask to add to their usage reports (``USAGE_AGENTS``:
        #: the agents' rows; ``USAGE_MESSAGES``: each delivery's): the orchestrator sets it
        #: per tick, while someone reads the agents' usage or listens for the messages'.
        self.usage_rows: int = 0

    # -- what a subclass provides -----------------------------------------------------------
    async def _request(
        self, index: int, request: Request, deadline_s: float = BASE_DEADLINE_S
    ) -> Any:
        """Send ``request`` to worker ``index`` and return its value (or raise)."""
        raise NotImplementedError

    def _host(self, index: int) -> _Host:
        """The object that stands for worker ``index`` (it counts the tensors it was told)."""
        raise NotImplementedError

    # -- what every worker knows ------------------------------------------------------------
    async def install_module(self, key: str, serialized: bytes, original: bytes = b"") -> None:
        """Give every worker a compiled module, to instantiate agents from by ``key``.

        ``original`` is the module's source (binary or WAT), which workers inspect to tell
        whether memory and exported globals hold all of an instance's state.
        """
        self._modules[key] = (serialized, original)
        await asyncio.gather(
            *(
                self._request(i, Request("module", (key, serialized, original)))
                for i in range(self.size)
            )
        )

    def _directory_request(self) -> Request:
        args = (self._directory, self._spawned) if self._spawned else (self._directory,)
        return Request("directory", args)

    async def set_directory(
        self, names: Sequence[str], spawned: Sequence[tuple[str, tuple[int, ...]]] = ()
    ) -> None:
        """Tell every worker the name of each agent id (for the ABI's ``lookup``) and the
        spawned instances of each group."""
        self._directory = tuple(names)
        self._spawned = tuple(spawned)
        await asyncio.gather(
            *(self._request(i, self._directory_request()) for i in range(self.size))
        )

    def add_tensors(self, entries: Sequence[TensorEntry]) -> None:
        """Named tensors agents may open; each worker learns them with its next batch."""
        self._tensors.extend(entries)

    async def _tell_again(self, index: int) -> None:
        """Tell a replacement worker ``index`` the names and modules the old one knew."""
        await self._request(index, self._directory_request())
        for key, (serialized, original) in self._modules.items():
            await self._request(index, Request("module", (key, serialized, original)))

    async def _sync_tensors(self, index: int) -> None:
        host = self._host(index)
        if host.tensors_seen < len(self._tensors):
            entries = self._tensors[host.tensors_seen :]
            await self._request(index, Request("tensors", (entries,)))
            host.tensors_seen += len(entries)

    def _message_budget(self, deliveries: Sequence[tuple[int, int, int, bytes]]) -> int:
        """What a batch's messages may take in all (ms): the sum of their agents' limits, or
        when every agent has the same one (the common case) that times their number."""
        per = self._uniform_ms
        if per is None:
            values = set(self._time_limits.values())
            per = self._uniform_ms = values.pop() if len(values) == 1 else -1
        if per >= 0:
            return per * len(deliveries)
        limits = self._time_limits
        return sum(limits.get(d[0], 0) for d in deliveries)

    # -- agents -----------------------------------------------------------------------------
    async def load_agents(self, index: int, loads: Sequence[AgentLoad]) -> None:
        """Instantiate agents on worker ``index`` (their module must be installed)."""
        for load in loads:  # what each may take per message: the batches' deadlines
            self._time_limits[load.agent_id] = effective_limits(load.limits)[0].timeout_ms or 0
        self._uniform_ms = None
        # Start-up is four limited calls at most (start, _initialize, version, qh_init).
        budget = 4 * sum(self._time_limits[load.agent_id] for load in loads)
        await self._request(index, Request("load", (list(loads),)), batch_deadline(budget, 0))

    async def snapshot(self, index: int, agent_ids: Sequence[int]) -> dict[int, bytes | str]:
        """Snapshots of agents on worker ``index`` (see ``AgentHost.snapshot``), or for an
        agent that cannot be snapshotted, why."""
        reply = await self._request(index, Request("snapshot", (list(agent_ids),)))
        assert isinstance(reply, dict)
        return reply

    async def restore(self, index: int, items: Sequence[RestoreItem]) -> list[str | None]:
        """Recreate agents on worker ``index`` from snapshots plus the messages to replay."""
        await self._sync_tensors(index)
        budget = 0
        for load, _, replay in items:  # a replay may take what its messages may take
            per = effective_limits(load.limits)[0].timeout_ms or 0
            self._time_limits[load.agent_id] = per
            budget += per * (len(replay) + 2)  # + start-up and the restore itself
        self._uniform_ms = None
        reply = await self._request(
            index, Request("restore", (list(items),)), batch_deadline(budget, 0)
        )
        assert isinstance(reply, list)
        return reply

    async def agent_usage(self, index: int) -> bytes:
        """The usage rows (``AGENT_USAGE_ROW``) of worker ``index``'s agents that had messages
        since their last report (the end of a run, a pause: no batch is coming to carry them)."""
        rows = await self._request(index, Request("usage"))
        assert isinstance(rows, bytes)
        return rows

    async def restart_agent(self, index: int, agent_id: int) -> None:
        """Replace an agent with a fresh instance of its module (its ``restart`` policy)."""
        await self._request(index, Request("restart", (agent_id,)))

    # -- batches ----------------------------------------------------------------------------
    async def _batch(
        self,
        index: int,
        tick: int,
        deliveries: Sequence[tuple[int, int, int, bytes]],
        tasks: Sequence[TaskRun],
    ) -> BatchReply:
        """Worker ``index``'s batch, with the tensors it has not been told of yet."""
        host = self._host(index)
        new = self._tensors[host.tensors_seen :]
        deadline = batch_deadline(self._message_budget(deliveries), len(tasks))
        args = (tick, list(deliveries), list(tasks), new, self.usage_rows)
        reply = await self._request(index, Request("batch", args), deadline)
        host.tensors_seen += len(new)
        outcomes, tasks_done, busy_ns, *usage = reply
        return BatchReply(
            tuple(map(outcome_of, outcomes)),
            tuple(map(TaskOutcome._make, tasks_done)),
            busy_ns,
            usage[0] if usage else b"",
        )
