"""The orchestrator: a deterministic scheduler over the worker pool and the GPU thread.

Time is logical. Work items (agent messages, CPU tasks, GPU tasks) wait in one priority queue
keyed by ``(tick, -priority, sequence)``. A tick pops every item due at it, sends each
worker one batch (its agents' messages in queue order, then its CPU tasks) and the GPU thread
its jobs, waits for all of them, and then commits the results in queue order: messages sent
during tick ``t`` get the next sequence numbers and are due at ``t + 1``. Which worker
answers first never matters, so the same scenario and seed give the same trace with any
number of workers.

:class:`Runtime` is the facade: the lifecycle (start, run, step, close) and the public API.
The work is done by parts, each owning its own state (their docstrings say which):

- ``_schedule``: the queue, the logical clock, the stop conditions and the run's failure;
- ``_roster``: the agent table (placement, state, counters, recovery fields) and loading;
- ``_named_tensors``: the name -> tensor table and the tick's pending tensor writes;
- ``_dispatch``: one tick's batches, sent to workers, GPU and LLM, and their answers;
- ``_commit``: the results applied in queue order, effect kinds, trace records, totals;
- ``_recovery``: failure policies, snapshots, replay logs, dead workers' replacement;
- ``_gpu_bridge`` / ``_llm_bridge``: the GPU device's tasks and agents' jobs; the LLM engine;
- ``_tick_report``: the per-tick metrics sample and ``TickFinished`` event, the result;
- ``_parts``: builds the parts and wires them together;
- ``_ports``: :class:`AgentPool` (what another agent host implements) and tick hooks.

- ``_tick``: one tick through the parts in their order, and the tick hooks.

A tick: ``schedule.pop_due`` -> ``dispatch.plan`` -> ``dispatch.execute`` -> ``commit.apply``
-> ``report.tick`` -> ``llm.commit`` -> ``lifecycle.after_commit`` -> ``recovery.after_commit``
-> trace flush -> tick hooks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from qhybrid.runtime._commit import EffectKind
from qhybrid.runtime._events import GpuAdapter, RunStateChanged, RuntimeEvents
from qhybrid.runtime._heap import freeze_heap, unfreeze_heap
from qhybrid.runtime._lifecycle import Lifecycle
from qhybrid.runtime._memory import install_memory
from qhybrid.runtime._metrics import MetricsRecorder, MetricsSnapshot
from qhybrid.runtime._parts import Parts
from qhybrid.runtime._ports import AgentPool, TickHook
from qhybrid.runtime._recovery import RunFailed
from qhybrid.runtime._result import AgentSummary, RunResult
from qhybrid.runtime._roster import DEFAULT_CACHE, collector_paused, compile_modules
from qhybrid.runtime._scenario import Scenario
from qhybrid.runtime._tick import TickPipeline
from qhybrid.runtime._trace import TraceRecorder
from qhybrid.runtime._v2_bridge import V2Bridge
from qhybrid.runtime.tensors import TensorStore
from qhybrid.runtime.wasm_pool import (
    RESERVED_KIND_BASE,
    RUNTIME_SENDER,
    RayWorkerPool,
    WorkerError,
    WorkerPool,
)
from qhybrid.runtime.wgpu_thread import DeviceInfo, GpuDevice, GpuJobError

__all__ = ["DEFAULT_CACHE", "RunFailed", "Runtime", "RuntimeConfig", "run_scenario"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Where agents run: ``RuntimeConfig.backend``.
BACKENDS = ("local", "ray")


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """How to run.

    ``checkpoint_every``: messages an agent handles between its snapshots (crash recovery
    replays at most that many of its messages); 0 turns crash recovery off.
    ``max_worker_restarts``: dead workers replaced per run before the run fails.
    ``cache_dir``: the compiled-module cache, ``None`` for none.
    """

    workers: int = 2
    device: str = "auto"  # "auto" | "gpu" | "cpu"
    trace_path: Path | None = None
    start_timeout: float = 60.0
    checkpoint_every: int = 256
    max_worker_restarts: int = 3
    cache_dir: Path | None = DEFAULT_CACHE
    #: ABI v2 ``ask``: where people's answers come from, one line each ("-": standard input);
    #: ``None``: nobody answers (the agent gets ``"answer": null``).
    answers_path: Path | None = None
    #: ABI v2 tools and questions: a JSON file of their results. Results found in it are
    #: replayed instead of being asked again (so a replay gives the same trace); new ones are
    #: added to it after each tick.
    recording_path: Path | None = None
    #: "local" (worker processes on this machine) or "ray" (Ray actors, see docs/scale-out.md).
    backend: str = "local"
    #: The Ray cluster to join ("auto", "host:6379", "ray://host:10001"); None starts Ray here.
    ray_address: str | None = None


class Runtime:
    """Runs one scenario: ``async with Runtime(scenario) as rt: result = await rt.run()``.

    All coroutine methods belong to the loop that called :meth:`start` (the orchestrator's
    loop). From another thread, use :meth:`call_threadsafe`, or :meth:`metrics` to poll.
    ``pool``: another agent host (see :class:`AgentPool`) instead of local worker processes;
    it must have ``config.workers`` workers.
    """

    def __init__(
        self,
        scenario: Scenario,
        config: RuntimeConfig | None = None,
        *,
        pool: AgentPool | None = None,
    ) -> None:
        self.scenario = scenario
        self.config = cfg = config or RuntimeConfig()
        if cfg.workers < 1:
            raise ValueError(f"workers must be >= 1, got {cfg.workers}")
        self.events = RuntimeEvents()
        self.tensors = TensorStore()
        self.pool: AgentPool
        self.device: GpuDevice
        self.pool, self.device = _agent_host(cfg, pool)
        self.device_info: DeviceInfo | None = None
        self._metrics = MetricsRecorder(cfg.workers)
        self._trace = TraceRecorder(path=cfg.trace_path)
        self._parts = parts = Parts.build(
            scenario,
            workers=cfg.workers,
            checkpoint_every=cfg.checkpoint_every,
            max_worker_restarts=cfg.max_worker_restarts,
            pool=self.pool,
            device=self.device,
            store=self.tensors,
            trace=self._trace,
            metrics=self._metrics,
            events=self.events,
        )
        self._schedule, self._roster, self._commit = parts.schedule, parts.roster, parts.commit
        self._v2 = V2Bridge(parts, self._trace, cfg.answers_path, cfg.recording_path)
        #: ABI v2 ``spawn`` and ``stop_run``: agents made at run time, agents that end it.
        self._lifecycle = Lifecycle(parts, self.pool, self._trace, self.request_stop)
        self._ticks = TickPipeline(parts, self._lifecycle, self._trace)
        if cfg.recording_path is not None:
            self._ticks.hooks.append(self._v2.save_recording)
        #: Agents' long-term memory (the ``mem_*`` ABI): quotas, trace records, persistence.
        self.memory = install_memory(self)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resume = asyncio.Event()
        self._resume.set()
        self._stop_requested: str | None = None
        self._started = False
        self._closed = False
        self._finished: RunResult | None = None
        self._t_start = 0.0

    # -- lifecycle --------------------------------------------------------------------------
    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Validate modules, start workers and the GPU thread, load agents and initial work.

        Raises :class:`ScenarioError` for a module that is not a valid agent.
        """
        if self._started:
            raise RuntimeError("the runtime was already started")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._t_start = time.perf_counter()
        self._emit_state("starting")
        try:
            modules = compile_modules(self.scenario, self.config.cache_dir)
            device_start = asyncio.ensure_future(asyncio.to_thread(self.device.start))
            try:
                await self.pool.start()
            finally:
                self.device_info = info = await device_start
            self.events.gpu_adapter.emit(GpuAdapter(info.name, info.backend, info.kind))
            with collector_paused():
                self._roster.create()
                await self.pool.set_directory(self._roster.names)
                for key, (serialized, original) in modules.items():
                    await self.pool.install_module(key, serialized, original)
                self._parts.named.create_initial(self.scenario)
                await self._parts.llm.open()
                await self._roster.load_all(self.pool, self.events)
                self._schedule.enqueue_initial(self.scenario, self._roster.by_name)
        except BaseException:
            await self.aclose()
            raise
        # What start-up made lives for the run: out of the collector's full passes, which
        # would otherwise walk it again and again (unfrozen at close, so nothing leaks).
        freeze_heap(self)
        self._metrics.reset_clock()

    async def aclose(self) -> None:
        """Stop workers and the GPU thread and free every tensor; idempotent."""
        if self._closed:
            return
        self._closed = True
        unfreeze_heap(self)
        try:
            await self.pool.aclose()
        finally:
            await self._parts.llm.close()
            await asyncio.to_thread(self.device.close)
            self._parts.named.close()
            self.tensors.close()
            self._trace.close()
            self._emit_state("closed")

    # -- extension points -------------------------------------------------------------------
    def add_tick_hook(self, hook: TickHook) -> None:
        """Call ``hook(tick, records)`` after each tick with the trace records made since the
        last call (and once more with the final ones when the run ends), on the loop."""
        self._ticks.hooks.append(hook)

    def register_effect(self, kind: str, effect: EffectKind) -> None:
        """Handle agents' effects of ``kind`` at the commit (see :class:`EffectKind`)."""
        self._commit.register_effect(kind, effect)

    # -- control ----------------------------------------------------------------------------
    def pause(self) -> None:
        """Hold :meth:`run` before its next tick (call on the loop, or via call_threadsafe)."""
        self._resume.clear()
        self._emit_state("paused")

    def resume(self) -> None:
        self._resume.set()
        self._emit_state("running")

    @property
    def paused(self) -> bool:
        return not self._resume.is_set()

    def request_stop(self, reason: str = "stopped by request") -> None:
        """End the run after the tick in progress; it then reports status "completed"."""
        self._stop_requested = reason
        self._resume.set()

    def post(self, to: str, payload: bytes, *, kind: int = 0, priority: int = 0) -> None:
        """Inject a message from outside (a user, a window) for the next tick."""
        by_name = self._roster.by_name
        if to not in by_name:
            raise KeyError(f"no agent named {to!r}")
        if not 0 <= kind < RESERVED_KIND_BASE:
            raise ValueError(f"kind must be in [0, {RESERVED_KIND_BASE:#x}), got {kind}")
        self._schedule.push_message(
            self.tick + 1, priority, RUNTIME_SENDER, by_name[to], kind, payload
        )

    def call_threadsafe(
        self, fn: Callable[..., T | Awaitable[T]], *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        """Run ``fn(*args, **kwargs)`` on the orchestrator's loop from any thread.

        If ``fn`` returns an awaitable it is awaited there. The returned future resolves with
        the result (``.result(timeout)`` from a thread, ``asyncio.wrap_future`` from a loop).
        """
        if self._loop is None:
            raise RuntimeError("the runtime has not been started")

        async def call() -> T:
            result = fn(*args, **kwargs)
            if isinstance(result, Awaitable):
                return await result
            return result

        return asyncio.run_coroutine_threadsafe(call(), self._loop)

    # -- what it has done so far --------------------------------------------------------------
    def metrics(self) -> MetricsSnapshot:
        """Recent per-tick samples; safe to call from any thread."""
        return self._metrics.snapshot()

    @property
    def tick(self) -> int:
        return self._schedule.tick

    @property
    def delivered(self) -> int:
        return self._commit.delivered

    @property
    def tasks_completed(self) -> int:
        return self._commit.tasks_completed

    @property
    def cpu_tasks(self) -> int:
        return self._commit.cpu_tasks

    @property
    def gpu_tasks(self) -> int:
        return self._commit.gpu_tasks

    @property
    def worker_restarts(self) -> int:
        return self._parts.recovery.worker_restarts

    @property
    def trace_hash(self) -> str:
        return self._trace.hash

    def recent_trace(self) -> list[str]:
        return self._trace.recent()

    @property
    def agent_names(self) -> list[str]:
        return self._roster.names

    def agent_summaries(self) -> tuple[AgentSummary, ...]:
        """Every agent as it stands now (state, messages handled, last error, restarts).

        Safe to call from any thread (a window polls it): each summary is read field by field
        while the loop may be committing a tick, so counts may be one tick apart.
        """
        return self._roster.summaries()

    @property
    def result(self) -> RunResult | None:
        return self._finished

    # -- running ----------------------------------------------------------------------------
    async def run(self) -> RunResult:
        """Run ticks until the scenario's stop condition, a failure, or :meth:`request_stop`."""
        if not self._started:
            await self.start()
        self._emit_state("running")
        timeout = self.scenario.stop.timeout_s
        try:
            # One deadline for the whole run (not a task and a timer per tick: that costs
            # as much as a tick's messages when agents are quick).
            async with asyncio.timeout(timeout):
                while self._finished is None:
                    if not self._resume.is_set():  # paused: the usage up to here, then wait
                        await self._roster.collect_usage(self.pool)
                    await self._resume.wait()
                    await self.step()
        except TimeoutError:
            self._finish("failed", f"timed out after {timeout:g} s of wall-clock time")
        assert self._finished is not None
        return self._finished

    async def step(self) -> bool:
        """Run one tick (the next one with work due). Returns False once the run is over."""
        if self._finished is not None:
            return False
        if self._stop_requested is not None:
            return await self._end("completed", self._stop_requested)
        schedule = self._schedule
        tick = schedule.next_tick(self._parts.llm.busy)
        if isinstance(tick, str):
            return await self._end("completed", tick)
        try:
            await self._ticks.run(tick)
        except (RunFailed, WorkerError, GpuJobError) as exc:
            self._finish("failed", str(exc))  # (no usage asked of workers that failed)
            return False
        if not self._resume.is_set():  # a step while paused: its usage, for the window
            await self._roster.collect_usage(self.pool)
        if schedule.failure is not None:
            return await self._end("failed", schedule.failure)
        reason = schedule.stop_after(self._commit.delivered)
        if reason is not None:
            return await self._end("completed", reason)
        return True

    async def _end(self, status: str, reason: str) -> bool:
        """Finish the run, with the agents' last usage in its result."""
        await self._roster.collect_usage(self.pool)
        self._finish(status, reason)
        return False

    def _finish(self, status: str, reason: str) -> None:
        if self._finished is not None:
            return
        self._trace.record("end", status, self.tick)
        self._ticks.flush(self.tick)
        self._finished = self._parts.report.result(
            status,
            reason,
            self._trace.hash,
            self.device_info,
            time.perf_counter() - self._t_start,
            self.worker_restarts,
            placement=self.device.placement_rule,  # what placed the GPU jobs (recorded)
        )
        self._emit_state(status, reason)

    def _emit_state(self, state: str, reason: str | None = None) -> None:
        self.events.run_state.emit(RunStateChanged(state, self.tick, reason))


def _agent_host(cfg: RuntimeConfig, pool: AgentPool | None) -> tuple[AgentPool, GpuDevice]:
    """The agents' pool (``pool``, else the configured backend's) and the GPU device."""
    if cfg.backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {cfg.backend!r}")
    if pool is None and cfg.backend == "ray":
        pool = RayWorkerPool(cfg.workers, address=cfg.ray_address, start_timeout=cfg.start_timeout)
    pool = pool or WorkerPool(cfg.workers, start_timeout=cfg.start_timeout)
    # A run places GPU jobs by a fixed rule, never by timings (the trace must not vary).
    if isinstance(pool, RayWorkerPool):  # GPU jobs on a GPU node, if any (issue 17)
        from qhybrid.runtime._ray_gpu import RayGpuDevice

        return pool, RayGpuDevice(pool, prefer=cfg.device)
    return pool, GpuDevice(prefer=cfg.device, placement="fixed")


async def run_scenario(scenario: Scenario, config: RuntimeConfig | None = None) -> RunResult:
    """Start a runtime for ``scenario``, run it to the end, close it, return the result."""
    async with Runtime(scenario, config) as runtime:
        return await runtime.run()
