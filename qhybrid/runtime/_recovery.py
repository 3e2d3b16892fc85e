"""Recovery: agents' failure policies, snapshots, replay logs and dead workers' replacement.

Owns: the agents due for a periodic snapshot, and the count of workers replaced in this run.
Writes the recovery fields of the roster's records (state, error, restarts, snapshot, replay
log, reads). The commit appends to the replay logs; this part decides what to do with them.

- An agent whose handler fails follows its ``on_error`` policy (:meth:`Recovery.agent_failed`):
  ``restart`` (a fresh instance after the tick's commit, up to ``max_restarts``), ``skip``
  (its later messages are dropped) or ``fail`` (the run fails).
- Every ``checkpoint_every`` handled messages an agent is snapshotted and its log dropped.
- A worker that dies is replaced; its agents are restored from their snapshots and replay
  their logs, and the tick's batch is sent again (:meth:`Recovery.recover_worker`), so the
  trace does not change.
"""

from __future__ import annotations

import asyncio
import logging

from qhybrid.runtime._events import AgentStateChanged, RuntimeEvents, WorkerRestarted
from qhybrid.runtime._named_tensors import NamedTensors
from qhybrid.runtime._ports import AgentPool
from qhybrid.runtime._roster import FAILED, LOADED, SKIPPED, AgentRecord, Roster
from qhybrid.runtime._schedule import Schedule
from qhybrid.runtime._trace import TraceRecorder
from qhybrid.runtime.wasm_pool import WorkerCrashed

__all__ = ["Recovery", "RunFailed"]

logger = logging.getLogger(__name__)


class RunFailed(RuntimeError):
    """The run could not go on: an agent failed under the "fail" policy, a worker died, ..."""


class Recovery:
    def __init__(
        self,
        pool: AgentPool,
        roster: Roster,
        tensors: NamedTensors,
        schedule: Schedule,
        trace: TraceRecorder,
        events: RuntimeEvents,
        *,
        checkpoint_every: int,
        max_worker_restarts: int,
    ) -> None:
        self.pool = pool
        self.roster = roster
        self.tensors = tensors
        self.schedule = schedule
        self.trace = trace
        self.events = events
        self.checkpoint_every = checkpoint_every
        self.max_worker_restarts = max_worker_restarts
        #: Agents whose replay log reached ``checkpoint_every`` this tick (the commit adds).
        self.checkpoint_due: list[AgentRecord] = []
        #: Agents that failed this tick and are to be restarted after its commit.
        self.restarts_pending: list[AgentRecord] = []
        self.worker_restarts = 0

    # -- an agent's failure -----------------------------------------------------------------
    def agent_failed(self, agent: AgentRecord, tick: int, seq: int, error: str) -> None:
        agent.error = error
        self.trace.record("agent-failed", tick, seq, agent.agent_id, error)
        logger.warning("agent %s failed at tick %d: %s", agent.name, tick, error)
        emit = self.events.agent_state.emit
        if agent.on_error == "restart" and agent.restarts < agent.max_restarts:
            # Replaced by a fresh instance after this tick's commit; the rest of its
            # messages in this tick are dropped.
            agent.restart_pending = True
            self.restarts_pending.append(agent)
            emit(AgentStateChanged(agent.name, agent.agent_id, agent.worker, FAILED, tick, error))
            return
        if agent.on_error == "restart":
            error = f"{error} (after {agent.restarts} restarts, the limit)"
            agent.error = error
        agent.state = SKIPPED if agent.on_error == "skip" else FAILED
        emit(AgentStateChanged(agent.name, agent.agent_id, agent.worker, agent.state, tick, error))
        if agent.state == FAILED:
            self.schedule.fail(f"agent {agent.name} failed at tick {tick}: {error}")

    async def restart_agent(self, agent: AgentRecord, tick: int) -> None:
        await self.pool.restart_agent(agent.worker, agent.agent_id)
        agent.restarts += 1
        agent.state = LOADED
        agent.snapshot, agent.log, agent.reads = None, [], set()
        self.events.agent_state.emit(
            AgentStateChanged(agent.name, agent.agent_id, agent.worker, "restarted", tick)
        )

    # -- after each commit ------------------------------------------------------------------
    async def after_commit(self, tick: int) -> None:
        """What the commit asked for that needs the workers: restarts, then tensor writes and
        releases (snapshotting first every agent that read a tensor about to change or go, so
        that a replay reads what it read), then the periodic checkpoint."""
        if self.restarts_pending:  # (a list: not a look at every agent every tick)
            pending, self.restarts_pending = self.restarts_pending, []
            for agent in sorted(pending, key=lambda a: a.agent_id):  # in id order, as ever
                if agent.restart_pending:  # (not restarted already with its dead worker)
                    agent.restart_pending = False
                    await self.restart_agent(agent, tick)
        if self.tensors.pending_writes or self.tensors.pending_releases:
            written = self.tensors.pending_names()
            readers = [a for a in self.roster.agents if a.reads & written]
            if readers and self.checkpoint_every > 0:
                await self.checkpoint(readers, tick)
            self.tensors.apply_writes()
            self.tensors.apply_releases()
        if self.checkpoint_due:
            due, self.checkpoint_due = self.checkpoint_due, []
            await self.checkpoint(due, tick)

    async def checkpoint(self, agents: list[AgentRecord], tick: int) -> None:
        """Snapshot ``agents`` (by worker, in parallel) and drop their replay logs.

        A worker that dies meanwhile is replaced like any other (its agents restored from
        their last snapshot and replay log, which hold everything up to this tick), and the
        snapshot is taken again on the new one (issue 12)."""
        by_worker: dict[int, list[AgentRecord]] = {}
        for agent in agents:
            if agent.state == LOADED:
                by_worker.setdefault(agent.worker, []).append(agent)

        async def one(worker: int, group: list[AgentRecord]) -> None:
            snaps = await self.snapshot(worker, group, tick)
            for agent in group:
                snap = snaps.get(agent.agent_id)
                if isinstance(snap, bytes):
                    agent.snapshot = snap
                    agent.log.clear()
                    agent.reads.clear()

        await asyncio.gather(*(one(w, g) for w, g in by_worker.items()))

    async def snapshot(
        self, worker: int, agents: list[AgentRecord], tick: int
    ) -> dict[int, bytes | str]:
        """Snapshots of ``agents`` (all on ``worker``), taken between ticks: bytes, or why an
        agent cannot have one. A worker that dies meanwhile is replaced like any other (its
        agents restored from their last snapshot and replay log, which hold everything up to
        ``tick``) and asked again; an agent that could not be restored has no entry.
        Raises :class:`RunFailed` past the restart limit."""
        while True:
            ids = [a.agent_id for a in agents if a.state == LOADED]
            if not ids:
                return {}
            try:
                return await self.pool.snapshot(worker, ids)
            except WorkerCrashed as exc:
                await self.recover_worker(worker, tick, exc)

    # -- a dead worker ----------------------------------------------------------------------
    async def recover_worker(self, worker: int, tick: int, crash: WorkerCrashed) -> None:
        """Replace the dead worker and restore its agents as they were before ``tick``."""
        if self.worker_restarts >= self.max_worker_restarts:
            raise RunFailed(
                f"{crash} (already replaced {self.worker_restarts} workers, the limit)"
            ) from crash
        self.worker_restarts += 1
        logger.warning("%s at tick %d; replacing it and restoring its agents", crash, tick)
        await self.pool.respawn(worker)
        lost = [a for a in self.roster.agents if a.worker == worker and a.state == LOADED]
        items = []
        for agent in lost:
            assert agent.load is not None
            items.append((agent.load, agent.snapshot, agent.replay_log()))
        problems = await self.pool.restore(worker, items) if items else []
        for agent, problem in zip(lost, problems, strict=True):
            if problem is None:
                continue
            # It cannot be brought back as it was: its policy decides.
            agent.snapshot, agent.log, agent.reads = None, [], set()
            self.agent_failed(agent, tick, -1, f"lost when worker {worker} died: {problem}")
            if agent.restart_pending:
                agent.restart_pending = False
                await self.restart_agent(agent, tick)
        self.events.worker_restarted.emit(
            WorkerRestarted(worker, crash.pid, self.pool.pids[worker], tick, str(crash))
        )
