"""The orchestrator: a deterministic scheduler over the worker pool and the GPU thread.

Time is logical. Work items (agent messages, CPU tasks, GPU tasks) wait in one priority queue
keyed by ``(tick, -priority, sequence)``. A tick pops every item due at it, sends each
worker one batch (its agents' messages in queue order, then its CPU tasks) and the GPU thread
its jobs, waits for all of them, and then commits the results in queue order: messages sent
during tick ``t`` get the next sequence numbers and are due at ``t + 1``. Which worker
answers first never matters, so the same scenario and seed give the same trace with any
number of workers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from qhybrid.runtime._events import (
    AgentLog,
    AgentStateChanged,
    RunStateChanged,
    RuntimeEvents,
    TaskFinished,
    TaskStarted,
    TickFinished,
)
from qhybrid.runtime._metrics import MetricsRecorder, MetricsSnapshot
from qhybrid.runtime._result import AgentSummary, RunResult
from qhybrid.runtime._scenario import Scenario, TaskSpec, TensorSpec
from qhybrid.runtime._seeding import derive_seed
from qhybrid.runtime._trace import TraceRecorder, digest
from qhybrid.runtime.tensors import SharedTensor, TensorStore
from qhybrid.runtime.wasm_pool import (
    KIND_TASK_DONE,
    RESERVED_KIND_BASE,
    RUNTIME_SENDER,
    AgentLoad,
    AgentModuleError,
    BatchReply,
    Delivery,
    TaskRun,
    WorkerError,
    WorkerPool,
    check_module,
    compile_module,
    make_engine,
)
from qhybrid.runtime.wgpu_thread import DeviceInfo, GpuDevice, GpuJobError, GpuJobResult

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Agent states.
LOADED, FAILED, SKIPPED = "loaded", "failed", "skipped"


class RunFailed(RuntimeError):
    """The run could not go on: an agent failed under the "fail" policy, a worker died, ..."""


@dataclass(slots=True)
class _Agent:
    agent_id: int
    name: str
    group: str
    module: Path
    worker: int
    on_error: str
    state: str = LOADED
    handled: int = 0
    error: str | None = None


@dataclass(order=True, slots=True)
class _Item:
    tick: int
    neg_priority: int
    seq: int
    # Exactly one of these is set.
    message: tuple[int, int, int, bytes] | None = field(default=None, compare=False)
    task: TaskSpec | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """How to run: workers, device preference, trace file."""

    workers: int = 2
    device: str = "auto"  # "auto" | "gpu" | "cpu"
    trace_path: Path | None = None
    start_timeout: float = 60.0


class Runtime:
    """Runs one scenario: ``async with Runtime(scenario) as rt: result = await rt.run()``.

    All coroutine methods belong to the loop that called :meth:`start` (the orchestrator's
    loop). From another thread, use :meth:`call_threadsafe`, or :meth:`metrics` to poll.
    """

    def __init__(self, scenario: Scenario, config: RuntimeConfig | None = None) -> None:
        self.scenario = scenario
        self.config = config or RuntimeConfig()
        if self.config.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.config.workers}")
        self.events = RuntimeEvents()
        self.tensors = TensorStore()
        self.pool = WorkerPool(self.config.workers, start_timeout=self.config.start_timeout)
        self.device = GpuDevice(prefer=self.config.device)
        self.device_info: DeviceInfo | None = None
        self._metrics = MetricsRecorder(self.config.workers)
        self._trace = TraceRecorder(path=self.config.trace_path)
        self._queue: list[_Item] = []
        self._seq = itertools.count()
        self._agents: list[_Agent] = []
        self._by_name: dict[str, int] = {}
        self._named_tensors: dict[str, SharedTensor] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resume = asyncio.Event()
        self._resume.set()
        self._stop_requested: str | None = None
        self._started = False
        self._closed = False
        self._finished: RunResult | None = None
        self._failure: str | None = None
        self._t_start = 0.0
        self._tick_t0 = 0.0
        self.tick = 0
        self.delivered = 0
        self.tasks_completed = 0
        self.cpu_tasks = 0
        self.gpu_tasks = 0
        self._gpu_busy_s = 0.0

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
            modules = self._compile_modules()
            device_start = asyncio.ensure_future(asyncio.to_thread(self.device.start))
            try:
                await self.pool.start()
            finally:
                self.device_info = await device_start
            self._create_agents()
            await self.pool.set_directory([a.name for a in self._agents])
            for key, data in modules.items():
                await self.pool.install_module(key, data)
            await self._load_agents()
            self._create_tensors()
            self._enqueue_initial()
        except BaseException:
            await self.aclose()
            raise
        self._metrics.reset_clock()

    def _compile_modules(self) -> dict[str, bytes]:
        engine = make_engine()
        compiled: dict[str, bytes] = {}
        for index, spec in enumerate(self.scenario.agents):
            key = str(spec.module)
            if key in compiled:
                continue
            try:
                module = compile_module(engine, spec.module)
                check_module(module, spec.module)
            except AgentModuleError as exc:
                raise self.scenario.error(f"agents[{index}].module", str(exc)) from None
            compiled[key] = bytes(module.serialize())
        return compiled

    def _create_agents(self) -> None:
        workers = self.config.workers
        for spec in self.scenario.agents:
            for name in spec.instances:
                agent_id = len(self._agents)
                self._agents.append(
                    _Agent(
                        agent_id, name, spec.name, spec.module, agent_id % workers, spec.on_error
                    )
                )
                self._by_name[name] = agent_id

    async def _load_agents(self) -> None:
        count = len(self._agents)
        loads: list[list[AgentLoad]] = [[] for _ in range(self.config.workers)]
        for spec in self.scenario.agents:
            peers = tuple(self._by_name[n] for n in spec.instances)
            config_json = json.dumps(dict(spec.config), sort_keys=True).encode("utf-8")
            for name in spec.instances:
                agent = self._agents[self._by_name[name]]
                loads[agent.worker].append(
                    AgentLoad(
                        agent_id=agent.agent_id,
                        name=name,
                        module_key=str(spec.module),
                        peers=peers,
                        agent_count=count,
                        rng_seed=derive_seed(self.scenario.seed, "agent", name),
                        config_json=config_json,
                    )
                )
        try:
            await asyncio.gather(
                *(self.pool.load_agents(w, batch) for w, batch in enumerate(loads) if batch)
            )
        except AgentModuleError as exc:
            name = str(exc).split(":", 1)[0]
            failed = self._agents[self._by_name[name]] if name in self._by_name else None
            index = next(
                (
                    i
                    for i, s in enumerate(self.scenario.agents)
                    if failed and s.name == failed.group
                ),
                0,
            )
            raise self.scenario.error(f"agents[{index}].module", str(exc)) from None
        for agent in self._agents:
            self.events.agent_state.emit(
                AgentStateChanged(agent.name, agent.agent_id, agent.worker, LOADED, 0)
            )

    def _create_tensors(self) -> None:
        for spec in self.scenario.tensors:
            self._named_tensors[spec.name] = self._make_tensor(spec)

    def _make_tensor(self, spec: TensorSpec) -> SharedTensor:
        tensor = self.tensors.create(spec.shape, spec.dtype)
        arr = tensor.array
        if spec.init == "random":
            rng = np.random.Generator(
                np.random.PCG64(derive_seed(self.scenario.seed, "tensor", spec.name))
            )
            arr[...] = rng.uniform(-1.0, 1.0, size=spec.shape).astype(arr.dtype)
        elif spec.init == "ones":
            arr.fill(1)
        elif spec.init == "arange":
            arr[...] = np.arange(arr.size, dtype=arr.dtype).reshape(spec.shape)
        # "zeros": new segments are already zero-filled.
        return tensor

    def _enqueue_initial(self) -> None:
        for msg in self.scenario.messages:
            for name in msg.to:
                self._push_message(
                    msg.at, msg.priority, RUNTIME_SENDER, self._by_name[name], msg.kind, msg.payload
                )
        for task in self.scenario.tasks:
            heapq.heappush(self._queue, _Item(task.at, -task.priority, next(self._seq), task=task))

    def _push_message(
        self, tick: int, priority: int, sender: int, dst: int, kind: int, payload: bytes
    ) -> None:
        heapq.heappush(
            self._queue,
            _Item(tick, -priority, next(self._seq), message=(sender, dst, kind, payload)),
        )

    async def aclose(self) -> None:
        """Stop workers and the GPU thread and free every tensor; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.pool.aclose()
        finally:
            await asyncio.to_thread(self.device.close)
            for tensor in self._named_tensors.values():
                tensor.close()
            self._named_tensors.clear()
            self.tensors.close()
            self._trace.close()
            self._emit_state("closed")

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
        if to not in self._by_name:
            raise KeyError(f"no agent named {to!r}")
        if not 0 <= kind < RESERVED_KIND_BASE:
            raise ValueError(f"kind must be in [0, {RESERVED_KIND_BASE:#x}), got {kind}")
        self._push_message(
            self.tick + 1, priority, RUNTIME_SENDER, self._by_name[to], kind, payload
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

    def metrics(self) -> MetricsSnapshot:
        """Recent per-tick samples; safe to call from any thread."""
        return self._metrics.snapshot()

    @property
    def trace_hash(self) -> str:
        return self._trace.hash

    def recent_trace(self) -> list[str]:
        return self._trace.recent()

    @property
    def agent_names(self) -> list[str]:
        return [a.name for a in self._agents]

    # -- running ----------------------------------------------------------------------------
    async def run(self) -> RunResult:
        """Run ticks until the scenario's stop condition, a failure, or :meth:`request_stop`."""
        if not self._started:
            await self.start()
        self._emit_state("running")
        timeout = self.scenario.stop.timeout_s
        deadline = time.perf_counter() + timeout
        while self._finished is None:
            await self._resume.wait()
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                self._finish("failed", f"timed out after {timeout:g} s of wall-clock time")
                break
            try:
                await asyncio.wait_for(self.step(), timeout=remaining)
            except TimeoutError:
                self._finish("failed", f"timed out after {timeout:g} s of wall-clock time")
        assert self._finished is not None
        return self._finished

    async def step(self) -> bool:
        """Run one tick (the next one with work due). Returns False once the run is over."""
        if self._finished is not None:
            return False
        if self._stop_requested is not None:
            self._finish("completed", self._stop_requested)
            return False
        stop = self.scenario.stop
        if not self._queue:
            self._finish("completed", "idle: no work left")
            return False
        tick = self._queue[0].tick
        if tick >= stop.max_ticks:
            self._finish("completed", f"reached max_ticks={stop.max_ticks}")
            return False
        self.tick = tick
        due: list[_Item] = []
        while self._queue and self._queue[0].tick == tick:
            due.append(heapq.heappop(self._queue))
        try:
            await self._run_tick(tick, due)
        except (RunFailed, WorkerError, GpuJobError) as exc:
            self._finish("failed", str(exc))
            return False
        if self._failure is not None:
            self._finish("failed", self._failure)
            return False
        if stop.max_messages is not None and self.delivered >= stop.max_messages:
            self._finish("completed", f"reached max_messages={stop.max_messages}")
            return False
        return True

    async def _run_tick(self, tick: int, due: list[_Item]) -> None:
        self._tick_t0 = time.perf_counter()
        workers = self.config.workers
        deliveries: list[list[Delivery]] = [[] for _ in range(workers)]
        cpu_runs: list[list[TaskRun]] = [[] for _ in range(workers)]
        # For committing in queue order: (item, worker, index in that worker's list).
        plan: list[tuple[_Item, int, int]] = []
        gpu_jobs: dict[int, concurrent.futures.Future[GpuJobResult]] = {}
        outputs: dict[int, SharedTensor] = {}
        cpu_count = 0
        for pos, item in enumerate(due):
            if item.message is not None:
                sender, dst, kind, payload = item.message
                agent = self._agents[dst]
                self._trace.record(
                    "deliver", tick, item.seq, sender, dst, kind, digest(payload), len(payload)
                )
                if agent.state != LOADED:
                    self._trace.record("drop", tick, item.seq, dst, agent.state)
                    plan.append((item, -1, -1))
                    continue
                plan.append((item, agent.worker, len(deliveries[agent.worker])))
                deliveries[agent.worker].append(Delivery(dst, sender, kind, payload))
                continue
            task = item.task
            assert task is not None
            inputs = tuple(self._named_tensors[name].handle for name in task.inputs)
            out = self.tensors.create(task.output_shape, task.output_dtype)
            outputs[pos] = out
            self.events.task_started.emit(TaskStarted(task.name, task.kind, task.op, tick))
            if task.kind == "gpu":
                gpu_jobs[pos] = self.device.submit(task.op, inputs, out.handle, dict(task.params))
                plan.append((item, -1, -1))
            else:
                # Any worker computes the same numbers; spread tasks for parallelism.
                w = cpu_count % workers
                cpu_count += 1
                plan.append((item, w, len(cpu_runs[w])))
                cpu_runs[w].append(
                    TaskRun(pos, task.op, inputs, out.handle, tuple(task.params.items()))
                )

        batch_calls = {
            w: self.pool.run_batch(w, tick, deliveries[w], cpu_runs[w])
            for w in range(workers)
            if deliveries[w] or cpu_runs[w]
        }
        gpu_waits = {pos: asyncio.wrap_future(fut) for pos, fut in gpu_jobs.items()}
        try:
            results = await asyncio.gather(
                *batch_calls.values(), *gpu_waits.values(), return_exceptions=True
            )
        except asyncio.CancelledError:
            for out in outputs.values():
                out.close()
            raise
        replies: dict[int, BatchReply] = {}
        gpu_results: dict[int, GpuJobResult | BaseException] = {}
        for w, res in zip(batch_calls, results[: len(batch_calls)], strict=True):
            if not isinstance(res, BatchReply):
                for out in outputs.values():
                    out.close()
                if isinstance(res, WorkerError):
                    raise res
                cause = res if isinstance(res, BaseException) else None
                raise RunFailed(f"worker {w}: {res}") from cause
            replies[w] = res
        for pos, gres in zip(gpu_waits, results[len(batch_calls) :], strict=True):
            assert isinstance(gres, GpuJobResult | BaseException)
            gpu_results[pos] = gres
        self._commit(tick, due, plan, replies, gpu_results, outputs)

    def _commit(
        self,
        tick: int,
        due: list[_Item],
        plan: list[tuple[_Item, int, int]],
        replies: dict[int, BatchReply],
        gpu_results: dict[int, GpuJobResult | BaseException],
        outputs: dict[int, SharedTensor],
    ) -> None:
        delivered = failed = tasks = 0
        for pos, (item, worker, index) in enumerate(plan):
            if item.message is not None:
                if worker < 0:
                    continue
                dst = item.message[1]
                outcome = replies[worker].outcomes[index]
                agent = self._agents[dst]
                if agent.state != LOADED:
                    # It failed on an earlier message of this same tick.
                    self._trace.record("drop", tick, item.seq, dst, agent.state)
                    continue
                delivered += 1
                for level, text in outcome.logs:
                    self._trace.record("log", tick, item.seq, level, text)
                    self.events.agent_log.emit(AgentLog(agent.name, level, text, tick))
                    logger.log(
                        level if level in (10, 20, 30, 40, 50) else 20, "%s: %s", agent.name, text
                    )
                if outcome.ok:
                    agent.handled += 1
                    self.tasks_completed += 1
                    self._trace.record("ok", tick, item.seq, len(outcome.sent))
                    for to, out_kind, out_payload in outcome.sent:
                        self._push_message(
                            tick + 1, -item.neg_priority, dst, to, out_kind, out_payload
                        )
                else:
                    failed += 1
                    self._agent_failed(agent, tick, item.seq, outcome.error or "unknown error")
                continue
            task = item.task
            assert task is not None
            out = outputs[pos]
            elapsed = 0.0
            placement = "worker"
            error: str | None = None
            if task.kind == "gpu":
                res = gpu_results[pos]
                if isinstance(res, BaseException):
                    error = str(res)
                else:
                    placement, elapsed = res.placement, res.elapsed_s
                    self._gpu_busy_s += elapsed
            else:
                t_out = replies[worker].tasks[index]
                error = t_out.error
                elapsed = t_out.elapsed_ns / 1e9
            self.events.task_finished.emit(
                TaskFinished(task.name, task.kind, task.op, tick, placement, elapsed, error)
            )
            if error is not None:
                out.close()
                self._trace.record("task-failed", tick, item.seq, task.name, error)
                self._failure = f"task {task.name!r} ({task.kind} {task.op}) failed: {error}"
                continue
            tasks += 1
            self.tasks_completed += 1
            if task.kind == "gpu":
                self.gpu_tasks += 1
            else:
                self.cpu_tasks += 1
            self._named_tensors[task.output] = out
            content = digest(np.ascontiguousarray(out.array).view(np.uint8).data)
            self._trace.record("task", tick, item.seq, task.name, task.op, content)
            if task.notify:
                note = json.dumps(
                    {
                        "task": task.name,
                        "op": task.op,
                        "output": task.output,
                        "shape": list(task.output_shape),
                        "sum": float(np.sum(out.array, dtype=np.float64)),
                    },
                    sort_keys=True,
                ).encode("utf-8")
                for name in task.notify:
                    self._push_message(
                        tick + 1,
                        task.priority,
                        RUNTIME_SENDER,
                        self._by_name[name],
                        KIND_TASK_DONE,
                        note,
                    )
        self.delivered += delivered
        busy = [ns / 1e9 for ns in self.pool.busy_ns()]
        queued = self._queue_depths()
        self._metrics.record(
            {
                "tick": tick,
                "delivered_total": self.delivered,
                "tasks_total": self.tasks_completed,
                "queued_messages": queued[0],
                "queued_cpu": queued[1],
                "queued_gpu": queued[2],
                "gpu_busy_s_total": self._gpu_busy_s,
                "tensor_bytes": self.tensors.stats().bytes,
            },
            busy,
        )
        self.events.tick_finished.emit(
            TickFinished(
                tick,
                delivered,
                failed,
                tasks,
                queued[0],
                queued[1],
                queued[2],
                tuple(busy),
                time.perf_counter() - self._tick_t0,
            )
        )

    def _queue_depths(self) -> tuple[int, int, int]:
        messages = cpu = gpu = 0
        for item in self._queue:
            if item.message is not None:
                messages += 1
            elif item.task is not None and item.task.kind == "gpu":
                gpu += 1
            else:
                cpu += 1
        return messages, cpu, gpu

    def _agent_failed(self, agent: _Agent, tick: int, seq: int, error: str) -> None:
        agent.error = error
        agent.state = FAILED if agent.on_error == "fail" else SKIPPED
        self._trace.record("agent-failed", tick, seq, agent.agent_id, error)
        logger.warning("agent %s failed at tick %d: %s", agent.name, tick, error)
        self.events.agent_state.emit(
            AgentStateChanged(agent.name, agent.agent_id, agent.worker, agent.state, tick, error)
        )
        if agent.on_error == "fail" and self._failure is None:
            self._failure = f"agent {agent.name} failed at tick {tick}: {error}"

    def _finish(self, status: str, reason: str) -> None:
        if self._finished is not None:
            return
        self._trace.record("end", status, self.tick)
        wall = time.perf_counter() - self._t_start
        info: dict[str, object] = (
            self.device_info.to_json() if self.device_info else {"name": "cpu", "kind": "cpu"}
        )
        self._finished = RunResult(
            scenario=self.scenario.name,
            seed=self.scenario.seed,
            status=status,
            reason=reason,
            trace_hash=self._trace.hash,
            ticks=self.tick,
            messages_delivered=self.delivered,
            tasks_completed=self.tasks_completed,
            cpu_tasks=self.cpu_tasks,
            gpu_tasks=self.gpu_tasks,
            agents=tuple(
                AgentSummary(a.name, a.module.name, a.worker, a.state, a.handled, a.error)
                for a in self._agents
            ),
            workers=self.config.workers,
            device=info,
            wall_s=round(wall, 6),
        )
        self._emit_state(status, reason)

    def _emit_state(self, state: str, reason: str | None = None) -> None:
        self.events.run_state.emit(RunStateChanged(state, self.tick, reason))

    @property
    def result(self) -> RunResult | None:
        return self._finished


async def run_scenario(scenario: Scenario, config: RuntimeConfig | None = None) -> RunResult:
    """Start a runtime for ``scenario``, run it to the end, close it, return the result."""
    async with Runtime(scenario, config) as runtime:
        return await runtime.run()
