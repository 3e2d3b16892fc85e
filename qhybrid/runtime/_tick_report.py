"""What the run tells its observers: a metrics sample and a ``TickFinished`` event per
committed tick, and the :class:`RunResult` at the end.

Owns no run state: it reads the commit's totals, the schedule's queue depths, the workers'
busy time, the LLM's counters and the roster, and writes the :class:`MetricsRecorder`
(polled from any thread) and the events.
"""

from __future__ import annotations

import time

from qhybrid.runtime._commit import Commit, TickCounts
from qhybrid.runtime._events import RuntimeEvents, TickFinished
from qhybrid.runtime._llm_bridge import LlmBridge
from qhybrid.runtime._metrics import MetricsRecorder
from qhybrid.runtime._ports import AgentPool
from qhybrid.runtime._result import RunResult
from qhybrid.runtime._roster import Roster
from qhybrid.runtime._schedule import Schedule
from qhybrid.runtime.tensors import TensorStore
from qhybrid.runtime.wgpu_thread import DeviceInfo

__all__ = ["Reporter"]


class Reporter:
    def __init__(
        self,
        commit: Commit,
        schedule: Schedule,
        roster: Roster,
        pool: AgentPool,
        store: TensorStore,
        llm: LlmBridge,
        metrics: MetricsRecorder,
        events: RuntimeEvents,
    ) -> None:
        self.commit = commit
        self.schedule = schedule
        self.roster = roster
        self.pool = pool
        self.store = store
        self.llm = llm
        self.metrics = metrics
        self.events = events
        self._fuel_seen = 0  # the roster's fuel total at the last tick

    def tick(self, tick: int, counts: TickCounts, t0: float) -> None:
        """After the commit of ``tick`` (started at ``perf_counter()`` ``t0``)."""
        commit, llm = self.commit, self.llm
        busy = [ns / 1e9 for ns in self.pool.busy_ns()]
        queued = self.schedule.depths()
        # Every series of SERIES after wall_s, in its order.
        self.metrics.record_row(
            (
                tick,
                commit.delivered,
                commit.tasks_completed,
                queued[0],
                queued[1],
                queued[2],
                commit.gpu.busy_s,
                self.store.bytes_used,
                llm.tokens,
                llm.active,
                self.roster.fuel_total,
                self.roster.memory_total,
            ),
            busy,
        )
        self.events.tick_finished.emit(
            TickFinished(
                tick,
                counts.delivered,
                counts.failed,
                counts.tasks,
                queued[0],
                queued[1],
                queued[2],
                tuple(busy),
                time.perf_counter() - t0,
                self.roster.fuel_total - self._fuel_seen,
            )
        )
        self._fuel_seen = self.roster.fuel_total

    def result(
        self,
        status: str,
        reason: str,
        trace_hash: str,
        device: DeviceInfo | None,
        wall_s: float,
        worker_restarts: int,
        placement: str | None = None,
    ) -> RunResult:
        commit, scenario = self.commit, self.roster.scenario
        info: dict[str, object] = device.to_json() if device else {"name": "cpu", "kind": "cpu"}
        if placement is not None:
            info["placement"] = placement
        return RunResult(
            scenario=scenario.name,
            seed=scenario.seed,
            status=status,
            reason=reason,
            trace_hash=trace_hash,
            ticks=self.schedule.tick,
            messages_delivered=commit.delivered,
            tasks_completed=commit.tasks_completed,
            cpu_tasks=commit.cpu_tasks,
            gpu_tasks=commit.gpu_tasks,
            agents=self.roster.summaries(),
            workers=self.roster.workers,
            device=info,
            wall_s=round(wall_s, 6),
            worker_restarts=worker_restarts,
            llm=self.llm.summary(),
        )
