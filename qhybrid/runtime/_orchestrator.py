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
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

import numpy as np

from qhybrid.runtime._events import (
    AgentLog,
    AgentStateChanged,
    GpuAdapter,
    LlmTokens,
    RunStateChanged,
    RuntimeEvents,
    TaskFinished,
    TaskStarted,
    TickFinished,
    WorkerRestarted,
)
from qhybrid.runtime._metrics import MetricsRecorder, MetricsSnapshot
from qhybrid.runtime._result import AgentSummary, RunResult
from qhybrid.runtime._scenario import AgentSpec, Scenario, TaskSpec, TensorSpec
from qhybrid.runtime._seeding import derive_seed
from qhybrid.runtime._trace import TraceRecorder, digest
from qhybrid.runtime._v2_bridge import chat_effect, finish_chat, make_services
from qhybrid.runtime.tensors import OPS, SharedTensor, TensorStore, get_op
from qhybrid.runtime.wasm_pool import (
    KIND_GPU_DONE,
    KIND_LLM_DONE,
    KIND_TASK_DONE,
    RESERVED_KIND_BASE,
    RUNTIME_SENDER,
    V2_EFFECTS,
    AgentLoad,
    AgentModuleError,
    BatchReply,
    Limits,
    Outcome,
    TaskRun,
    TensorEntry,
    WorkerCrashed,
    WorkerError,
    WorkerPool,
    default_cache_dir,
    load_module,
    make_engine,
)
from qhybrid.runtime.wgpu_thread import DeviceInfo, GpuDevice, GpuJobError, GpuJobResult

if TYPE_CHECKING:
    from qhybrid.runtime.llm import GenerationResult, LoadedModel, RequestUpdate

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
    max_restarts: int = 3
    state: str = LOADED
    handled: int = 0
    error: str | None = None
    restarts: int = 0
    load: AgentLoad | None = None
    # Crash recovery: the last snapshot (None: fresh from its module) and what it handled since.
    snapshot: bytes | None = None
    log: list[tuple[int, int, int, bytes]] = field(default_factory=list)
    reads: set[str] = field(default_factory=set)
    # Set when a message failed this tick and the agent is to be restarted after the commit.
    restart_pending: bool = False


def _payload_field(payload: bytes) -> bytes | str:
    """How the trace records a payload: small ones as they are, others by digest."""
    return payload if len(payload) <= 32 else digest(payload)


class _Item(NamedTuple):
    """A queued unit of work; a tuple, so the heap compares it in C. ``seq`` is unique, so
    comparison never reaches ``message`` or ``task``, exactly one of which is set."""

    tick: int
    neg_priority: int
    seq: int
    message: tuple[int, int, int, bytes] | None = None
    task: TaskSpec | None = None


_new_item = _Item._make  # tuple.__new__: the cheapest way to build one, per message


#: ``RuntimeConfig.cache_dir`` default: the user's cache folder (or ``QHYBRID_CACHE_DIR``).
DEFAULT_CACHE = Path("<default>")


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
        self._llm: LoadedModel | None = None
        self._llm_requests: dict[int, tuple[int, int, int]] = {}  # id -> (agent, request, tag)
        self._llm_ids = itertools.count(1)
        self._llm_tokens = 0
        self._llm_done = 0
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
        # Agent GPU jobs in the queue: task name -> (agent id, job id).
        self._job_owner: dict[str, tuple[int, int]] = {}
        self._queued_tasks = 0
        self._queued_gpu = 0
        self._pending_writes: list[tuple[str, int, bytes]] = []
        self._checkpoint_due: list[_Agent] = []
        self.worker_restarts = 0
        self._services = make_services(self)
        self._chat_requests: dict[int, tuple[int, int, int]] = {}  # id -> (agent, request, tag)

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
            info = self.device_info
            self.events.gpu_adapter.emit(GpuAdapter(info.name, info.backend, info.kind))
            self._create_agents()
            await self.pool.set_directory([a.name for a in self._agents])
            for key, (serialized, original) in modules.items():
                await self.pool.install_module(key, serialized, original)
            self._create_tensors()
            await self._open_llm()
            await self._load_agents()
            self._enqueue_initial()
        except BaseException:
            await self.aclose()
            raise
        self._metrics.reset_clock()

    def _compile_modules(self) -> dict[str, tuple[bytes, bytes]]:
        engine = make_engine()
        cache = self.config.cache_dir
        if cache == DEFAULT_CACHE:
            cache = default_cache_dir()
        compiled: dict[str, tuple[bytes, bytes]] = {}
        for index, spec in enumerate(self.scenario.agents):
            key = str(spec.module)
            if key in compiled:
                continue
            try:
                module, _, original, cached = load_module(engine, spec.module, cache)
            except AgentModuleError as exc:
                raise self.scenario.error(f"agents[{index}].module", str(exc)) from None
            logger.debug("module %s %s", spec.module, "from cache" if cached else "compiled")
            compiled[key] = (bytes(module.serialize()), original)
        return compiled

    def _create_agents(self) -> None:
        workers = self.config.workers
        for spec in self.scenario.agents:
            for name in spec.instances:
                agent_id = len(self._agents)
                self._agents.append(
                    _Agent(
                        agent_id,
                        name,
                        spec.name,
                        spec.module,
                        agent_id % workers,
                        spec.on_error,
                        spec.max_restarts,
                    )
                )
                self._by_name[name] = agent_id

    async def _load_agents(self) -> None:
        count = len(self._agents)
        loads: list[list[AgentLoad]] = [[] for _ in range(self.config.workers)]
        for spec in self.scenario.agents:
            peers = tuple(self._by_name[n] for n in spec.instances)
            config_json = json.dumps(dict(spec.config), sort_keys=True, default=dict).encode()
            for name in spec.instances:
                agent = self._agents[self._by_name[name]]
                if spec.overrides or any(isinstance(v, Mapping) for v in spec.config.values()):
                    config_json = json.dumps(spec.instance_config(name), sort_keys=True).encode()
                agent.load = self._agent_load(spec, agent, peers, count, config_json)
                loads[agent.worker].append(agent.load)
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

    def _agent_load(
        self, spec: AgentSpec, agent: _Agent, peers: tuple[int, ...], count: int, config: bytes
    ) -> AgentLoad:
        lim = spec.limits
        return AgentLoad(
            agent_id=agent.agent_id,
            name=agent.name,
            module_key=str(spec.module),
            peers=peers,
            agent_count=count,
            rng_seed=derive_seed(self.scenario.seed, "agent", agent.name),
            config_json=config,
            limits=Limits(lim.fuel, lim.memory_bytes, lim.timeout_ms, lim.stack_bytes),
            dirs=tuple((str(d.host), d.guest, d.mode == "rw") for d in spec.grants.dirs),
            env=tuple(spec.grants.env),
            tools=tuple(getattr(spec.grants, "tools", ())),
        )

    def _create_tensors(self) -> None:
        entries = []
        for spec in self.scenario.tensors:
            tensor = self._named_tensors[spec.name] = self._make_tensor(spec)
            writers = None if spec.writable else frozenset[int]()
            entries.append(TensorEntry(spec.name, tensor.handle, 0, writers))
        self.pool.add_tensors(entries)

    def _publish(self, name: str, tensor: SharedTensor, tick: int, writers: frozenset[int]) -> None:
        """Make a tensor made during ``tick`` visible to agents from the next tick on."""
        self._named_tensors[name] = tensor
        self.pool.add_tensors([TensorEntry(name, tensor.handle, tick + 1, writers)])

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
            self._push_task(_Item(task.at, -task.priority, next(self._seq), task=task))

    def _push_message(
        self, tick: int, priority: int, sender: int, dst: int, kind: int, payload: bytes
    ) -> None:
        heapq.heappush(
            self._queue,
            _new_item((tick, -priority, next(self._seq), (sender, dst, kind, payload), None)),
        )

    async def aclose(self) -> None:
        """Stop workers and the GPU thread and free every tensor; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.pool.aclose()
        finally:
            llm, self._llm = self._llm, None
            if llm is not None:
                try:
                    await asyncio.wrap_future(self.device.call(lambda _ctx: llm.close()))
                except Exception:
                    logger.debug("releasing the LLM failed", exc_info=True)
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

    def agent_summaries(self) -> tuple[AgentSummary, ...]:
        """Every agent as it stands now (state, messages handled, last error, restarts).

        Safe to call from any thread (a window polls it): each summary is read field by field
        while the loop may be committing a tick, so counts may be one tick apart.
        """
        return tuple(
            AgentSummary(a.name, a.module.name, a.worker, a.state, a.handled, a.error, a.restarts)
            for a in list(self._agents)
        )

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
            self._finish("completed", self._stop_requested)
            return False
        stop = self.scenario.stop
        llm_busy = self._llm is not None and self._llm.engine.has_work()
        if not self._queue and not llm_busy:
            self._finish("completed", "idle: no work left")
            return False
        tick = self._queue[0].tick if self._queue else self.tick + 1
        if llm_busy:
            # A running LLM request advances one token per tick.
            tick = min(tick, self.tick + 1)
        if tick >= stop.max_ticks:
            self._finish("completed", f"reached max_ticks={stop.max_ticks}")
            return False
        self.tick = tick
        due: list[_Item] = []
        queue = self._queue
        while queue and queue[0].tick == tick:
            item = heapq.heappop(queue)
            if item.task is not None:
                self._queued_tasks -= 1
                self._queued_gpu -= item.task.kind == "gpu"
            due.append(item)
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
        deliveries: list[list[tuple[int, int, int, bytes]]] = [[] for _ in range(workers)]
        cpu_runs: list[list[TaskRun]] = [[] for _ in range(workers)]
        # For committing in queue order: (item, worker, index in that worker's list).
        plan: list[tuple[_Item, int, int]] = []
        gpu_jobs: dict[int, concurrent.futures.Future[GpuJobResult]] = {}
        outputs: dict[int, SharedTensor] = {}
        cpu_count = 0
        agents = self._agents
        for pos, item in enumerate(due):
            if item.message is not None:
                sender, dst, kind, payload = item.message
                agent = agents[dst]
                if agent.state != LOADED:
                    plan.append((item, -1, -1))  # dropped; the commit records it
                    continue
                batch = deliveries[agent.worker]
                plan.append((item, agent.worker, len(batch)))
                batch.append((dst, sender, kind, payload))
                continue
            task = item.task
            assert task is not None
            try:
                inputs = tuple(self._named_tensors[name].handle for name in task.inputs)
            except KeyError as exc:
                # Only an agent's GPU job can name a tensor that is not there.
                plan.append((item, -1, -1))
                self._job_failed(task, tick, f"input tensor {exc.args[0]!r} does not exist")
                continue
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
            w: self._run_batch(w, tick, deliveries[w], cpu_runs[w])
            for w in range(workers)
            if deliveries[w] or cpu_runs[w]
        }
        gpu_waits = {pos: asyncio.wrap_future(fut) for pos, fut in gpu_jobs.items()}
        llm_wait: list[asyncio.Future[list[RequestUpdate]]] = []
        if self._llm is not None and self._llm.engine.has_work():
            engine = self._llm.engine
            llm_wait.append(asyncio.wrap_future(self.device.call(lambda _ctx: engine.step())))
        try:
            results = await asyncio.gather(
                *batch_calls.values(), *gpu_waits.values(), *llm_wait, return_exceptions=True
            )
        except asyncio.CancelledError:
            for out in outputs.values():
                out.close()
            raise
        llm_updates: list[RequestUpdate] = []
        if llm_wait:
            step_result = results.pop()
            if isinstance(step_result, BaseException):
                for out in outputs.values():
                    out.close()
                raise RunFailed(f"the LLM step failed: {step_result}") from step_result
            llm_updates = cast("list[RequestUpdate]", step_result)
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
        if llm_updates:
            self._commit_llm(tick, llm_updates)
        await self._after_commit(tick)

    async def _run_batch(
        self,
        worker: int,
        tick: int,
        deliveries: list[tuple[int, int, int, bytes]],
        runs: list[TaskRun],
    ) -> BatchReply:
        """One worker's batch; a worker that dies is replaced, its agents restored, and the
        same batch sent again, so the tick's result does not change."""
        while True:
            try:
                return await self.pool.run_batch(worker, tick, deliveries, runs)
            except WorkerCrashed as exc:
                await self._recover_worker(worker, tick, exc)

    # -- crash recovery -------------------------------------------------------------------
    async def _recover_worker(self, worker: int, tick: int, crash: WorkerCrashed) -> None:
        if self.worker_restarts >= self.config.max_worker_restarts:
            raise RunFailed(
                f"{crash} (already replaced {self.worker_restarts} workers, the limit)"
            ) from crash
        self.worker_restarts += 1
        logger.warning("%s at tick %d; replacing it and restoring its agents", crash, tick)
        await self.pool.respawn(worker)
        lost = [a for a in self._agents if a.worker == worker and a.state == LOADED]
        items = []
        for agent in lost:
            assert agent.load is not None
            items.append((agent.load, agent.snapshot, list(agent.log)))
        problems = await self.pool.restore(worker, items) if items else []
        for agent, problem in zip(lost, problems, strict=True):
            if problem is None:
                continue
            # It cannot be brought back as it was: its policy decides.
            agent.snapshot, agent.log, agent.reads = None, [], set()
            self._agent_failed(agent, tick, -1, f"lost when worker {worker} died: {problem}")
            if agent.restart_pending:
                agent.restart_pending = False
                await self._restart_agent(agent, tick)
        self.events.worker_restarted.emit(
            WorkerRestarted(worker, crash.pid, self.pool.pids[worker], tick, str(crash))
        )

    async def _checkpoint(self, agents: list[_Agent]) -> None:
        """Snapshot ``agents`` (by worker, in parallel) and drop their replay logs."""
        by_worker: dict[int, list[_Agent]] = {}
        for agent in agents:
            if agent.state == LOADED:
                by_worker.setdefault(agent.worker, []).append(agent)

        async def one(worker: int, group: list[_Agent]) -> None:
            snaps = await self.pool.snapshot(worker, [a.agent_id for a in group])
            for agent in group:
                snap = snaps.get(agent.agent_id)
                if isinstance(snap, bytes):
                    agent.snapshot = snap
                    agent.log.clear()
                    agent.reads.clear()

        await asyncio.gather(*(one(w, g) for w, g in by_worker.items()))

    async def _restart_agent(self, agent: _Agent, tick: int) -> None:
        await self.pool.restart_agent(agent.worker, agent.agent_id)
        agent.restarts += 1
        agent.state = LOADED
        agent.snapshot, agent.log, agent.reads = None, [], set()
        self.events.agent_state.emit(
            AgentStateChanged(agent.name, agent.agent_id, agent.worker, "restarted", tick)
        )

    async def _after_commit(self, tick: int) -> None:
        """What the commit asked for that needs the workers: restarts, then tensor writes
        (snapshotting first every agent that read a tensor about to change, so that a replay
        reads what it read), then the periodic checkpoint."""
        for agent in self._agents:
            if agent.restart_pending:
                agent.restart_pending = False
                await self._restart_agent(agent, tick)
        if self._pending_writes:
            written = {name for name, _, _ in self._pending_writes}
            readers = [a for a in self._agents if a.reads & written]
            if readers and self.config.checkpoint_every > 0:
                await self._checkpoint(readers)
            for name, offset, data in self._pending_writes:
                flat = self._named_tensors[name].array.reshape(-1).view(np.uint8)
                flat[offset : offset + len(data)] = np.frombuffer(data, np.uint8)
            self._pending_writes.clear()
        if self._checkpoint_due:
            due, self._checkpoint_due = self._checkpoint_due, []
            await self._checkpoint(due)

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
        record = self._trace.record
        checkpoint_every = self.config.checkpoint_every
        keep_log = checkpoint_every > 0
        for pos, (item, worker, index) in enumerate(plan):
            if item.message is not None:
                sender, dst, kind, payload = item.message
                agent = self._agents[dst]
                if worker < 0 or agent.state != LOADED or agent.restart_pending:
                    # To an agent that stopped, before this tick or earlier in it.
                    state = "restarting" if agent.restart_pending else agent.state
                    record(
                        "drop", tick, item.seq, sender, dst, kind, _payload_field(payload), state
                    )
                    continue
                outcome = replies[worker].outcomes[index]
                delivered += 1
                for level, text in outcome.logs:
                    record("log", tick, item.seq, level, text)
                    self.events.agent_log.emit(AgentLog(agent.name, level, text, tick))
                    logger.log(
                        level if level in (10, 20, 30, 40, 50) else 20, "%s: %s", agent.name, text
                    )
                error = outcome.error
                if outcome.ok and outcome.effects:
                    error = self._apply_effects(agent, tick, item, outcome)
                if error is None:
                    agent.handled += 1
                    self.tasks_completed += 1
                    record(
                        "ok",
                        tick,
                        item.seq,
                        sender,
                        dst,
                        kind,
                        _payload_field(payload),
                        len(outcome.sent),
                    )
                    for to, out_kind, out_payload in outcome.sent:
                        self._push_message(
                            tick + 1, -item.neg_priority, dst, to, out_kind, out_payload
                        )
                    if keep_log:
                        log = agent.log
                        log.append((tick, sender, kind, payload))
                        if len(log) == checkpoint_every:
                            self._checkpoint_due.append(agent)
                        if outcome.reads:
                            agent.reads.update(outcome.reads)
                else:
                    failed += 1
                    record("fail", tick, item.seq, sender, dst, kind, _payload_field(payload))
                    self._agent_failed(agent, tick, item.seq, error)
                continue
            task = item.task
            assert task is not None
            if pos not in outputs:
                continue  # an agent's GPU job that could not start; already answered
            out = outputs[pos]
            elapsed = 0.0
            placement = "worker"
            error = None
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
            owner = self._job_owner.pop(task.name, None)
            if error is not None:
                out.close()
                record("task-failed", tick, item.seq, task.name, error)
                if owner is not None:
                    self._answer_job(owner, tick, 1, error)
                else:
                    self._failure = f"task {task.name!r} ({task.kind} {task.op}) failed: {error}"
                continue
            tasks += 1
            self.tasks_completed += 1
            if task.kind == "gpu":
                self.gpu_tasks += 1
            else:
                self.cpu_tasks += 1
            self._publish(task.output, out, tick, frozenset())
            content = digest(np.ascontiguousarray(out.array).view(np.uint8).data)
            record("task", tick, item.seq, task.name, task.op, content)
            if owner is not None:
                self._answer_job(owner, tick, 0, "")
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
        self._trace.flush()
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
                "llm_tokens_total": self._llm_tokens,
                "llm_active": self._llm.engine.active if self._llm is not None else 0,
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

    # -- effects of handlers --------------------------------------------------------------
    def _apply_effects(self, agent: _Agent, tick: int, item: _Item, outcome: Outcome) -> str | None:
        """Apply what a successful handler asked for, or say why none of it can be."""
        names = set(self._named_tensors)
        for effect in outcome.effects:
            if effect[0] in ("create", "gpu"):
                new = str(effect[1] if effect[0] == "create" else effect[4])
                if new in names:
                    return f"tensor name {new!r} is already taken"
                names.add(new)
        record = self._trace.record
        for effect in outcome.effects:
            what = effect[0]
            if what == "create":
                _, name, dtype, shape = effect
                assert isinstance(name, str) and isinstance(dtype, str)
                assert isinstance(shape, tuple)
                tensor = self.tensors.create(shape, dtype)
                self._publish(name, tensor, tick, frozenset({agent.agent_id}))
                record("create", tick, item.seq, name, dtype, "x".join(map(str, shape)))
            elif what == "write":
                _, name, offset, data = effect
                assert isinstance(name, str) and isinstance(offset, int)
                assert isinstance(data, bytes)
                self._pending_writes.append((name, offset, data))
                record("write", tick, item.seq, name, offset, digest(data))
            elif what == "gpu":
                _, job, op, inputs, out_name, param = effect
                assert isinstance(job, int) and isinstance(op, str) and isinstance(inputs, tuple)
                assert isinstance(out_name, str) and isinstance(param, float)
                self._queue_agent_job(agent, tick, item, job, op, inputs, out_name, param)
            elif what == "llm":
                _, request, tag, prompt, max_tokens = effect
                assert isinstance(request, int) and isinstance(tag, int)
                assert isinstance(prompt, bytes) and isinstance(max_tokens, int)
                record("llm", tick, item.seq, request)
                self._submit_llm(agent, tick, request, tag, prompt, max_tokens)
            elif what in V2_EFFECTS:
                if what in ("llm_chat", "llm_cancel"):
                    self._chat_effect(agent, tick, item.seq, effect)
                else:
                    priority = -item.neg_priority
                    self._services.apply(
                        agent.agent_id, agent.name, tick, item.seq, priority, effect
                    )
        return None

    # -- the LLM ----------------------------------------------------------------------------
    async def _open_llm(self) -> None:
        spec = self.scenario.llm
        if spec is None:
            return
        # Imported here: the tokenizer and GGUF libraries cost start-up time that scenarios
        # without a model should not pay.
        from qhybrid.runtime.llm import LlmOptions, ModelError, RunnerChoice, open_engine

        options = LlmOptions(
            n_slots=spec.slots,
            n_ctx=spec.n_ctx or None,
            runner=cast("RunnerChoice", spec.device),
        )
        try:
            self._llm = await asyncio.wrap_future(
                self.device.call(lambda ctx: open_engine(ctx, spec.model, options))
            )
        except ModelError as exc:
            raise self.scenario.error("llm.model", str(exc)) from None
        loaded = self._llm
        assert loaded is not None
        self._trace.record(
            "llm_model", 0, 0, loaded.model.name, loaded.model.config.arch, loaded.placement
        )

    def _submit_llm(
        self, agent: _Agent, tick: int, request: int, tag: int, prompt: bytes, max_tokens: int
    ) -> None:
        """Queue an agent's request for the next tick's engine step, or answer at once why not."""
        llm, spec = self._llm, self.scenario.llm
        if llm is None or spec is None:
            self._answer_llm(
                agent.agent_id,
                tick,
                request,
                tag,
                1,
                "no LLM model is configured for this scenario",
            )
            return
        from qhybrid.runtime.llm import GenerationParams, SamplingParams, encode_prompt

        try:
            ids = encode_prompt(llm.tokenizer, prompt.decode("utf-8", "replace"), chat=spec.chat)
            params = GenerationParams(
                max_tokens=max(1, min(max_tokens, llm.runner.n_ctx)),
                sampling=SamplingParams(
                    temperature=spec.temperature,
                    top_k=spec.top_k,
                    top_p=spec.top_p,
                    repeat_penalty=spec.repeat_penalty,
                ),
                seed=derive_seed(self.scenario.seed, "llm", agent.name, str(request)),
                stop=spec.stop,
            )
            rid = llm.engine.submit(ids, params, request_id=next(self._llm_ids))
        except ValueError as exc:
            self._answer_llm(agent.agent_id, tick, request, tag, 1, str(exc))
            return
        self._llm_requests[rid] = (agent.agent_id, request, tag)

    def _commit_llm(self, tick: int, updates: list[RequestUpdate]) -> None:
        """Stream what the engine step made; a finished request answers at the next tick."""
        emit = self.events.llm_tokens.emit
        for update in updates:
            owner = self._llm_requests.get(update.request_id)
            if owner is None:
                owner = self._chat_requests.get(update.request_id)
                if owner is not None and update.result is not None:
                    self._llm_tokens += len(update.new_tokens)
                    self._finish_chat(tick, update.request_id, update.result)
                elif owner is not None:
                    self._llm_tokens += len(update.new_tokens)
                continue
            agent_id, request, tag = owner
            self._llm_tokens += len(update.new_tokens)
            result = update.result
            name = self._agents[agent_id].name
            if result is None:
                emit(LlmTokens(update.request_id, name, update.text, len(update.new_tokens), False))
                continue
            del self._llm_requests[update.request_id]
            self._llm_done += 1
            ok = result.finish in ("stop", "length")
            emit(
                LlmTokens(
                    update.request_id,
                    name,
                    update.text,
                    len(update.new_tokens),
                    True,
                    result.decode_tok_s,
                    result.ttft_s,
                    result.finish,
                    result.error,
                )
            )
            text = result.text if ok else (result.error or f"the request was {result.finish}")
            self._trace.record(
                "llm_done", tick, update.request_id, result.finish, repr(result.tokens)
            )
            self._answer_llm(agent_id, tick, request, tag, 0 if ok else 1, text)

    def _chat_effect(self, agent: _Agent, tick: int, seq: int, effect: tuple[object, ...]) -> None:
        chat_effect(self, agent.agent_id, agent.name, tick, seq, effect)

    def _finish_chat(self, tick: int, rid: int, result: GenerationResult) -> None:
        finish_chat(self, tick, rid, result)

    def _stop_agent(self, agent_id: int, tick: int) -> None:
        """ABI v2 ``stop_self``: the agent stops; later messages to it are dropped."""
        agent = self._agents[agent_id]
        agent.state = SKIPPED
        self.events.agent_state.emit(
            AgentStateChanged(agent.name, agent.agent_id, agent.worker, SKIPPED, tick, "stopped")
        )

    def _llm_summary(self) -> dict[str, object] | None:
        llm = self._llm
        if llm is None:
            return None
        return {
            "model": llm.model.name,
            "arch": llm.model.config.arch,
            "placement": llm.placement,
            "requests": self._llm_done,
            "tokens": self._llm_tokens,
        }

    def _answer_llm(
        self, agent_id: int, tick: int, request: int, tag: int, status: int, text: str
    ) -> None:
        payload = struct.pack("<iii", request, tag, status) + text.encode("utf-8")
        self._push_message(tick + 1, 0, RUNTIME_SENDER, agent_id, KIND_LLM_DONE, payload)

    def _queue_agent_job(
        self,
        agent: _Agent,
        tick: int,
        item: _Item,
        job: int,
        op: str,
        inputs: tuple[object, ...],
        out_name: str,
        param: float,
    ) -> None:
        names = tuple(str(n) for n in inputs)
        # The ABI's one scalar goes to the op's one parameter (scale's and softmax's factor,
        # rmsnorm's eps); ops without one ignore it.
        op_params = get_op(op).params if op in OPS else ()
        params = {op_params[0]: param} if op_params else {}
        metas: list[tuple[tuple[int, ...], str] | None] = []
        for name in names:
            tensor = self._named_tensors.get(name)
            if tensor is None:
                metas.append(None)
                break
            metas.append((tensor.handle.shape, tensor.handle.dtype))
        task_name = f"{agent.name}:gpu{job}"
        try:
            if any(m is None for m in metas):
                raise ValueError("an input tensor does not exist")
            shape, dtype = get_op(op).check(
                [m[0] for m in metas if m], [m[1] for m in metas if m], params
            )
        except ValueError as exc:
            self._answer_job((agent.agent_id, job), tick, 1, str(exc))
            return
        spec = TaskSpec(
            name=task_name,
            kind="gpu",
            op=op,
            inputs=names,
            output=out_name,
            output_shape=shape,
            output_dtype=dtype,
            params=params,
            at=tick + 1,
            priority=-item.neg_priority,
            notify=(),
        )
        self._job_owner[task_name] = (agent.agent_id, job)
        self._push_task(_Item(tick + 1, item.neg_priority, next(self._seq), task=spec))

    def _job_failed(self, task: TaskSpec, tick: int, error: str) -> None:
        owner = self._job_owner.pop(task.name, None)
        self._trace.record("task-failed", tick, -1, task.name, error)
        if owner is not None:
            self._answer_job(owner, tick, 1, error)
        else:
            self._failure = f"task {task.name!r} ({task.kind} {task.op}) failed: {error}"

    def _answer_job(self, owner: tuple[int, int], tick: int, status: int, error: str) -> None:
        agent_id, job = owner
        payload = struct.pack("<ii", job, status) + error.encode("utf-8")
        self._push_message(tick + 1, 0, RUNTIME_SENDER, agent_id, KIND_GPU_DONE, payload)

    def _queue_depths(self) -> tuple[int, int, int]:
        gpu = self._queued_gpu
        cpu = self._queued_tasks - gpu
        return len(self._queue) - self._queued_tasks, cpu, gpu

    def _push_task(self, item: _Item) -> None:
        assert item.task is not None
        self._queued_tasks += 1
        self._queued_gpu += item.task.kind == "gpu"
        heapq.heappush(self._queue, item)

    def _agent_failed(self, agent: _Agent, tick: int, seq: int, error: str) -> None:
        agent.error = error
        self._trace.record("agent-failed", tick, seq, agent.agent_id, error)
        logger.warning("agent %s failed at tick %d: %s", agent.name, tick, error)
        if agent.on_error == "restart" and agent.restarts < agent.max_restarts:
            # Replaced by a fresh instance after this tick's commit; the rest of its
            # messages in this tick are dropped.
            agent.restart_pending = True
            self.events.agent_state.emit(
                AgentStateChanged(agent.name, agent.agent_id, agent.worker, FAILED, tick, error)
            )
            return
        if agent.on_error == "restart":
            error = f"{error} (after {agent.restarts} restarts, the limit)"
            agent.error = error
        agent.state = SKIPPED if agent.on_error == "skip" else FAILED
        self.events.agent_state.emit(
            AgentStateChanged(agent.name, agent.agent_id, agent.worker, agent.state, tick, error)
        )
        if agent.state == FAILED and self._failure is None:
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
                AgentSummary(
                    a.name, a.module.name, a.worker, a.state, a.handled, a.error, a.restarts
                )
                for a in self._agents
            ),
            workers=self.config.workers,
            device=info,
            wall_s=round(wall, 6),
            worker_restarts=self.worker_restarts,
            llm=self._llm_summary(),
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
