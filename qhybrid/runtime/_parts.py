"""The orchestrator's parts, built and wired together once per run.

Owns nothing but the references: each part owns its own state (its module docstring says
what). Another part (a durable-runs store, a new effect kind) reaches the others from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from qhybrid.runtime._commit import Commit
from qhybrid.runtime._dispatch import Dispatcher
from qhybrid.runtime._events import RuntimeEvents
from qhybrid.runtime._gpu_bridge import GpuBridge
from qhybrid.runtime._llm_bridge import LlmBridge
from qhybrid.runtime._metrics import MetricsRecorder
from qhybrid.runtime._named_tensors import NamedTensors
from qhybrid.runtime._ports import AgentPool
from qhybrid.runtime._recovery import Recovery
from qhybrid.runtime._roster import Roster
from qhybrid.runtime._scenario import Scenario
from qhybrid.runtime._schedule import Schedule
from qhybrid.runtime._tick_report import Reporter
from qhybrid.runtime._trace import TraceRecorder
from qhybrid.runtime.tensors import TensorStore
from qhybrid.runtime.wgpu_thread import GpuDevice

__all__ = ["Parts"]


@dataclass(slots=True)
class Parts:
    schedule: Schedule
    roster: Roster
    named: NamedTensors
    gpu: GpuBridge
    llm: LlmBridge
    recovery: Recovery
    dispatch: Dispatcher
    commit: Commit
    report: Reporter

    @classmethod
    def build(
        cls,
        scenario: Scenario,
        *,
        workers: int,
        checkpoint_every: int,
        max_worker_restarts: int,
        pool: AgentPool,
        device: GpuDevice,
        store: TensorStore,
        trace: TraceRecorder,
        metrics: MetricsRecorder,
        events: RuntimeEvents,
    ) -> Parts:
        schedule = Schedule(scenario.stop)
        roster = Roster(scenario, workers)
        named = NamedTensors(store, pool)
        gpu = GpuBridge(device, schedule, named, trace)
        llm = LlmBridge(scenario, device, schedule, roster, trace, events)
        recovery = Recovery(
            pool,
            roster,
            named,
            schedule,
            trace,
            events,
            checkpoint_every=checkpoint_every,
            max_worker_restarts=max_worker_restarts,
        )
        dispatch = Dispatcher(pool, roster, named, gpu, llm, recovery, events, workers)
        commit = Commit(
            schedule,
            roster,
            named,
            gpu,
            llm,
            recovery,
            trace,
            events,
            checkpoint_every=checkpoint_every,
        )
        report = Reporter(commit, schedule, roster, pool, store, llm, metrics, events)
        return cls(schedule, roster, named, gpu, llm, recovery, dispatch, commit, report)
