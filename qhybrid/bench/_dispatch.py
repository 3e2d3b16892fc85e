"""``qhybrid bench dispatch``: the runtime's cost per message, against two peers on this machine.

Three measurements of the same WebAssembly work, taken in one process on one machine (the
pool and the in-process loop take turns when repeated; Ray comes last):

- **pool**: a scenario of ``agents`` ping agents (``resources/agents/ping.wat``) that each
  count down by messaging themselves, run by :class:`~qhybrid.runtime.Runtime` over ``workers``
  worker processes. Throughput is messages delivered over the wall time of ``run()`` alone
  (start-up is reported apart); latency comes from the ``tick_finished`` events, where every
  message delivered in a tick saw that tick's dispatch-to-commit time.
- **inprocess**: one :class:`AgentHost` in this process, loaded as a worker loads it, driven
  through the same number of steps in a plain loop: what one core does with no runtime at all.
- **ray** (optional): ``workers`` Ray actors hosting the same agents, one actor call per step,
  with one call per agent in flight at a time (as many as the pool has in a tick).

The figures are meant to be read as ratios (``vs_ray``, ``vs_inprocess_per_worker``): absolute
rates depend on the machine, the ratios much less.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import math
import os
import platform
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qhybrid._resources import resource_path
from qhybrid.runtime import Runtime, RuntimeConfig, Scenario, TickFinished, parse_scenario
from qhybrid.runtime.wasm_pool import (
    RUNTIME_SENDER,
    AgentLoad,
    Outcome,
    compile_module,
    make_engine,
)
from qhybrid.runtime.wasm_pool._agent import AgentHost

logger = logging.getLogger(__name__)

#: The message kind the ping agents use (any non-reserved kind would do).
PING_KIND = 1
#: The goals the runtime is held to (issues: dispatch throughput, #11): with 2 workers, at
#: least 3x the throughput of Ray actors doing the same work, and at least 0.6 of what the
#: in-process loop does per core, times the workers (at 64 agents); the runtime's own CPU
#: time (orchestrator and worker IPC) under 5 us per message.
GOAL_VS_RAY = 3.0
GOAL_VS_INPROCESS_PER_WORKER = 0.6
GOAL_RUNTIME_US_PER_MSG = 5.0
_I64 = struct.Struct("<q")

Progress = Callable[[str], None]


class BenchmarkError(RuntimeError):
    """A measurement could not be taken: the run failed, or delivered the wrong count."""


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    """What to measure: ``steps`` messages in all, spread over ``agents`` ping agents."""

    workers: int = 2
    agents: int = 64
    steps: int = 128_000
    repeat: int = 1
    ray: bool = True
    #: "ray": also run the same scenario through the runtime on the Ray backend (its worker
    #: indexes as Ray actors, ``RuntimeConfig(backend="ray")``), against the local pool.
    backend: str = "local"
    ray_address: str | None = None

    def __post_init__(self) -> None:
        for name in ("workers", "agents", "steps", "repeat"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.steps < self.agents:
            raise ValueError(
                f"steps ({self.steps}) must be at least agents ({self.agents}): "
                "every agent takes at least one step"
            )

    @property
    def steps_per_agent(self) -> int:
        return self.steps // self.agents

    @property
    def total_steps(self) -> int:
        """``steps`` rounded down to a multiple of ``agents``: what is actually run."""
        return self.steps_per_agent * self.agents


@dataclass(frozen=True, slots=True)
class PoolFigures:
    steps: int
    steps_per_s: float
    p50_us: float
    p99_us: float
    startup_s: float
    run_s: float
    ticks: int
    #: The runtime's own CPU time per message: the orchestrator's process and the workers',
    #: less what the workers spent inside their batches (the agents' handlers).
    runtime_us_per_msg: float = 0.0
    #: Of that, the orchestrator's process, and the workers' time outside their batches
    #: (reading, decoding, encoding and writing frames, their epoch tickers).
    orchestrator_us_per_msg: float = 0.0
    worker_ipc_us_per_msg: float = 0.0


@dataclass(frozen=True, slots=True)
class InprocessFigures:
    steps: int
    steps_per_s: float
    run_s: float


@dataclass(frozen=True, slots=True)
class RayFigures:
    calls: int
    calls_per_s: float
    p50_us: float
    p99_us: float
    startup_s: float
    run_s: float
    version: str


@dataclass(frozen=True, slots=True)
class DispatchReport:
    """All three measurements (each the best of ``config.repeat``) and the machine."""

    config: DispatchConfig
    pool: PoolFigures
    inprocess: InprocessFigures
    ray: RayFigures | None
    ray_note: str | None
    machine: dict[str, Any] = field(default_factory=dict)
    #: The runtime on the Ray backend (``--backend ray``), None when not measured.
    ray_backend: PoolFigures | None = None

    @property
    def ray_backend_vs_local(self) -> float | None:
        """The Ray backend's throughput over the local pool's (< 1: Ray is slower)."""
        rb = self.ray_backend
        return None if rb is None else rb.steps_per_s / self.pool.steps_per_s

    @property
    def vs_ray(self) -> float | None:
        if self.ray is None or self.ray.calls_per_s <= 0:
            return None
        return self.pool.steps_per_s / self.ray.calls_per_s

    @property
    def vs_inprocess_per_worker(self) -> float:
        return self.pool.steps_per_s / (self.inprocess.steps_per_s * self.config.workers)

    def to_json(self) -> dict[str, Any]:
        """One flat JSON object: the figures, the ratios, the machine."""
        ray = self.ray
        vs_ray = self.vs_ray
        return {
            "benchmark": "dispatch",
            "workers": self.config.workers,
            "agents": self.config.agents,
            "steps": self.pool.steps,
            "repeat": self.config.repeat,
            "ticks": self.pool.ticks,
            "steps_per_s": round(self.pool.steps_per_s, 1),
            "p50_us": round(self.pool.p50_us, 1),
            "p99_us": round(self.pool.p99_us, 1),
            "startup_s": round(self.pool.startup_s, 4),
            "run_s": round(self.pool.run_s, 4),
            "inprocess_steps_per_s": round(self.inprocess.steps_per_s, 1),
            "ray_calls_per_s": None if ray is None else round(ray.calls_per_s, 1),
            "ray_p50_us": None if ray is None else round(ray.p50_us, 1),
            "ray_p99_us": None if ray is None else round(ray.p99_us, 1),
            "ray_startup_s": None if ray is None else round(ray.startup_s, 4),
            "ray_version": None if ray is None else ray.version,
            "ray_note": self.ray_note,
            "vs_ray": None if vs_ray is None else round(vs_ray, 3),
            "vs_inprocess_per_worker": round(self.vs_inprocess_per_worker, 3),
            "runtime_us_per_msg": round(self.pool.runtime_us_per_msg, 2),
            "orchestrator_us_per_msg": round(self.pool.orchestrator_us_per_msg, 2),
            "worker_ipc_us_per_msg": round(self.pool.worker_ipc_us_per_msg, 2),
            "backend": self.config.backend,
            **_ray_backend_json(self),
            "machine": self.machine,
        }


def _ray_backend_json(report: DispatchReport) -> dict[str, Any]:
    rb, ratio = report.ray_backend, report.ray_backend_vs_local
    if rb is None:
        return {"ray_backend_steps_per_s": None}
    return {
        "ray_backend_steps_per_s": round(rb.steps_per_s, 1),
        "ray_backend_p50_us": round(rb.p50_us, 1),
        "ray_backend_p99_us": round(rb.p99_us, 1),
        "ray_backend_startup_s": round(rb.startup_s, 4),
        "ray_backend_vs_local": None if ratio is None else round(ratio, 3),
    }


# -- helpers ------------------------------------------------------------------------------------
def ping_module_path() -> Path:
    return resource_path("agents", "ping.wat")


def weighted_percentile(samples: Sequence[tuple[float, int]], q: float) -> float:
    """The ``q``-quantile (0..1) of values each counted ``weight`` times.

    ``samples`` is ``(value, weight)`` pairs; the smallest value whose cumulative weight
    reaches ``q`` of the total (the nearest-rank method). 0.0 when there are no samples.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    ordered = sorted((v, w) for v, w in samples if w > 0)
    total = sum(w for _, w in ordered)
    if total == 0:
        return 0.0
    rank = max(1, math.ceil(q * total))  # at least the first sample
    seen = 0
    for value, weight in ordered:
        seen += weight
        if seen >= rank:
            return value
    return ordered[-1][0]


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "wasmtime": _version("wasmtime"),
        # Other programs' load when the benchmark started: the figures are only comparable
        # between runs on an otherwise idle machine.
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _ping_loads(config: DispatchConfig) -> list[AgentLoad]:
    """The agents as the runtime names and loads them (ids 0..agents-1, group "ping")."""
    names = [f"ping-{i}" for i in range(config.agents)] if config.agents > 1 else ["ping"]
    peers = tuple(range(config.agents))
    return [
        AgentLoad(
            agent_id=i,
            name=name,
            module_key=str(ping_module_path()),
            peers=peers,
            agent_count=config.agents,
            rng_seed=i,
            config_json=b"{}",
        )
        for i, name in enumerate(names)
    ]


# -- 1. the pool --------------------------------------------------------------------------------
def ping_scenario(config: DispatchConfig) -> Scenario:
    """``agents`` ping agents, each started so that it handles ``steps_per_agent`` messages."""
    per_agent = config.steps_per_agent
    text = f"""
name = "bench-dispatch"
description = "qhybrid bench dispatch: ping agents counting down by messaging themselves"
seed = 1

[stop]
max_ticks = {per_agent + 1}
timeout_s = 3600

[[agents]]
name = "ping"
module = "ping.wat"
count = {config.agents}
on_error = "fail"

[[messages]]
to = "ping"
kind = {PING_KIND}
payload_i64 = [{per_agent - 1}]
"""
    return parse_scenario(text, source="bench-dispatch.toml", base_dir=ping_module_path().parent)


async def _pool_once(config: DispatchConfig, backend: str = "local") -> PoolFigures:
    scenario = ping_scenario(config)
    latencies: list[tuple[float, int]] = []

    def on_tick(event: TickFinished) -> None:
        latencies.append((event.elapsed_s, event.delivered))

    address = config.ray_address if backend == "ray" else None
    runtime = Runtime(
        scenario,
        RuntimeConfig(workers=config.workers, device="cpu", backend=backend, ray_address=address),
    )
    runtime.events.tick_finished.connect(on_tick)
    t0 = time.perf_counter()
    async with runtime:
        t1 = time.perf_counter()
        cpu0 = _run_cpu_s(runtime)
        result = await runtime.run()
        t2 = time.perf_counter()
        cpu1 = _run_cpu_s(runtime)
    if not result.ok:
        raise BenchmarkError(f"the pool run {result.status}: {result.reason}")
    expected = config.total_steps
    if result.messages_delivered != expected:
        raise BenchmarkError(
            f"the pool run delivered {result.messages_delivered} messages, expected {expected}"
        )
    run_s = t2 - t1
    return PoolFigures(
        steps=result.messages_delivered,
        steps_per_s=result.messages_delivered / run_s,
        p50_us=weighted_percentile(latencies, 0.50) * 1e6,
        p99_us=weighted_percentile(latencies, 0.99) * 1e6,
        startup_s=t1 - t0,
        run_s=run_s,
        ticks=len(latencies),
        runtime_us_per_msg=(cpu1[0] + cpu1[1] - cpu0[0] - cpu0[1])
        / result.messages_delivered
        * 1e6,
        orchestrator_us_per_msg=(cpu1[0] - cpu0[0]) / result.messages_delivered * 1e6,
        worker_ipc_us_per_msg=(cpu1[1] - cpu0[1]) / result.messages_delivered * 1e6,
    )


def _run_cpu_s(runtime: Runtime) -> tuple[float, float]:
    """CPU seconds the run has used outside the agents: this process (the orchestrator, all
    its threads), and the workers less the time they report inside their batches."""
    pool = runtime.pool
    inside = sum(getattr(pool, "batch_ns", lambda: [0])()) / 1e9
    workers = sum(process_cpu_s(p) for p in pool.pids) - inside
    return process_cpu_s(os.getpid()), workers


def process_cpu_s(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far (Linux /proc, else psutil).

    On Linux, the nanosecond run times of its threads (``/proc/PID/task/*/schedstat``): the
    clock ticks of ``/proc/PID/stat`` are 10 ms apart, which over a run of a hundred thousand
    messages is up to 0.1 us per message of error per process and per reading."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        total_ns = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
                total_ns += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        return total_ns / 1e9
    with contextlib.suppress(OSError, ValueError, IndexError):
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    try:
        import psutil  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return 0.0
    with contextlib.suppress(psutil.Error):
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)
    return 0.0


def measure_pool(config: DispatchConfig, backend: str = "local") -> PoolFigures:
    """Run the ping scenario once, with a fresh runtime (on ``backend``)."""
    return asyncio.run(_pool_once(config, backend))


def best_pool(runs: Sequence[PoolFigures]) -> PoolFigures:
    """The best of each figure over ``runs``."""
    best = max(runs, key=lambda r: r.steps_per_s)
    return PoolFigures(
        steps=best.steps,
        steps_per_s=best.steps_per_s,
        p50_us=min(r.p50_us for r in runs),
        p99_us=min(r.p99_us for r in runs),
        startup_s=min(r.startup_s for r in runs),
        run_s=best.run_s,
        ticks=best.ticks,
        runtime_us_per_msg=min(r.runtime_us_per_msg for r in runs),
        orchestrator_us_per_msg=min(r.orchestrator_us_per_msg for r in runs),
        worker_ipc_us_per_msg=min(r.worker_ipc_us_per_msg for r in runs),
    )


# -- 2. in process ------------------------------------------------------------------------------
class AgentHosts:
    """Agents hosted in this process exactly as a worker process hosts them.

    A worker's :class:`~qhybrid.runtime.wasm_pool._worker.Worker` object is made here and
    given the same requests the pool sends to a worker process (the directory of names, the
    compiled module, the loads); only the pipe is missing. So the in-process loop runs the
    same code per message as a worker, whatever the runtime does to load agents.
    """

    def __init__(self, loads: Sequence[AgentLoad]) -> None:
        from qhybrid.runtime.wasm_pool._protocol import Request
        from qhybrid.runtime.wasm_pool._worker import Worker

        path = ping_module_path()
        count = max(load.agent_count for load in loads)
        names = [f"agent-{i}" for i in range(count)]
        for load in loads:
            names[load.agent_id] = load.name
        module = compile_module(make_engine(), path)
        self._worker = Worker()
        self._worker.handle(Request("directory", (tuple(names),)))
        for key in sorted({load.module_key for load in loads}):
            self._worker.handle(
                Request("module", (key, bytes(module.serialize()), path.read_bytes()))
            )
        self._worker.handle(Request("load", (list(loads),)))
        self.hosts: dict[int, AgentHost] = {
            load.agent_id: self._worker.agents[load.agent_id] for load in loads
        }

    def close(self) -> None:
        close: Callable[[], None] | None = getattr(self._worker, "close", None)
        if close is not None:
            close()


def _inprocess_once(steps: int) -> InprocessFigures:
    load = AgentLoad(
        agent_id=0,
        name="ping",
        module_key=str(ping_module_path()),
        peers=(0,),
        agent_count=1,
        rng_seed=0,
        config_json=b"{}",
    )
    hosts = AgentHosts([load])
    try:
        return _inprocess_loop(hosts.hosts[0], steps)
    finally:
        hosts.close()


def _inprocess_loop(host: AgentHost, steps: int) -> InprocessFigures:
    payload = _I64.pack(steps - 1)
    sender = RUNTIME_SENDER
    deliver = host.deliver
    t0 = time.perf_counter()
    for tick in range(steps):
        outcome = deliver(tick, sender, PING_KIND, payload)
        if outcome.sent:
            payload = outcome.sent[0][2]
            sender = 0
        elif not outcome.ok:
            raise BenchmarkError(f"the in-process agent failed: {outcome.error}")
    run_s = time.perf_counter() - t0
    if host.handled != steps or outcome.sent:
        raise BenchmarkError(f"the in-process agent handled {host.handled} of {steps} steps")
    return InprocessFigures(steps=steps, steps_per_s=steps / run_s, run_s=run_s)


def measure_inprocess(config: DispatchConfig) -> InprocessFigures:
    """Run the in-process loop once (a fresh host) through ``config.total_steps`` steps."""
    return _inprocess_once(config.total_steps)


# -- 3. Ray -------------------------------------------------------------------------------------
class PingActor:
    """A Ray actor's body: hosts some ping agents; :meth:`step` delivers one message."""

    def __init__(self, loads: list[AgentLoad]) -> None:
        self._hosts = AgentHosts(loads)
        self.hosts = self._hosts.hosts

    def ready(self) -> int:
        return len(self.hosts)

    def step(self, agent_id: int, tick: int, sender: int, kind: int, payload: bytes) -> Outcome:
        return self.hosts[agent_id].deliver(tick, sender, kind, payload)


def ray_available() -> str | None:
    """None when Ray can be imported, else why not."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return "not run: Ray is not installed (pip install 'qhybrid[bench]')"
    return None


@contextlib.contextmanager
def _local_ray(num_cpus: int) -> Iterator[Any]:
    """A private local Ray cluster for the benchmark, shut down (processes and all) after."""
    import ray

    before = _child_pids()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Its own session folder (logs, sockets), removed afterwards: nothing is left in /tmp/ray.
    temp_dir = tempfile.mkdtemp(prefix="qh-ray-")
    try:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            object_store_memory=128 << 20,
            namespace="qhybrid-bench",
            _temp_dir=temp_dir,
        )
        try:
            yield ray
        finally:
            ray.shutdown()
            _reap_children(before)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def _child_pids() -> set[int]:
    try:
        import psutil  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return set()
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _reap_children(before: set[int], timeout: float = 10.0) -> None:
    """Wait for the processes Ray started to exit; kill, by pid, any still there after."""
    try:
        import psutil  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return

    def alive(proc: Any) -> bool:
        try:
            return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False

    deadline = time.monotonic() + timeout
    while True:
        children = psutil.Process().children(recursive=True)
        left = [p for p in children if p.pid not in before and alive(p)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for proc in left:
        logger.warning("a Ray process was still running after shutdown; killing pid %d", proc.pid)
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(left, timeout=5.0)


def _ray_round_trips(ray: Any, actors: list[Any], config: DispatchConfig) -> RayFigures:
    agents = config.agents
    per_agent = config.steps_per_agent
    owner = [actors[i % len(actors)] for i in range(agents)]
    payloads = [_I64.pack(per_agent - 1)] * agents
    senders = [RUNTIME_SENDER] * agents
    rounds: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    for tick in range(per_agent):
        r0 = time.perf_counter()
        refs = [
            owner[i].step.remote(i, tick, senders[i], PING_KIND, payloads[i]) for i in range(agents)
        ]
        outcomes: list[Outcome] = ray.get(refs)
        rounds.append((time.perf_counter() - r0, agents))
        for i, outcome in enumerate(outcomes):
            if not outcome.ok:
                raise BenchmarkError(f"ping agent {i} failed under Ray: {outcome.error}")
            if outcome.sent:
                payloads[i] = outcome.sent[0][2]
                senders[i] = i
    run_s = time.perf_counter() - t0
    calls = per_agent * agents
    return RayFigures(
        calls=calls,
        calls_per_s=calls / run_s,
        p50_us=weighted_percentile(rounds, 0.50) * 1e6,
        p99_us=weighted_percentile(rounds, 0.99) * 1e6,
        startup_s=0.0,
        run_s=run_s,
        version=str(ray.__version__),
    )


def measure_ray(config: DispatchConfig) -> RayFigures:
    """``workers`` Ray actors host the agents (round robin, like the pool); best of ``repeat``."""
    loads = _ping_loads(config)
    t0 = time.perf_counter()
    with _local_ray(config.workers) as ray:
        actor_class = ray.remote(num_cpus=1)(PingActor)
        shares = [loads[w :: config.workers] for w in range(config.workers)]
        actors = [actor_class.remote(share) for share in shares if share]
        ray.get([a.ready.remote() for a in actors])
        startup_s = time.perf_counter() - t0
        runs = [_ray_round_trips(ray, actors, config) for _ in range(config.repeat)]
        for actor in actors:
            ray.kill(actor)
    best = max(runs, key=lambda r: r.calls_per_s)
    return RayFigures(
        calls=best.calls,
        calls_per_s=best.calls_per_s,
        p50_us=min(r.p50_us for r in runs),
        p99_us=min(r.p99_us for r in runs),
        startup_s=startup_s,
        run_s=best.run_s,
        version=best.version,
    )


# -- all of it ----------------------------------------------------------------------------------
def run_dispatch(config: DispatchConfig, progress: Progress | None = None) -> DispatchReport:
    """Take the three measurements and report them with the machine.

    The pool and the in-process loop take turns, ``repeat`` times each, so that a change in
    the machine's load (other programs) falls on both; Ray comes last, in one block, since its
    cluster keeps a few processes busy for as long as it is up.
    """
    say = progress or (lambda _text: None)
    machine = machine_info()
    pools: list[PoolFigures] = []
    loops: list[InprocessFigures] = []
    for attempt in range(1, config.repeat + 1):
        of = f" ({attempt}/{config.repeat})" if config.repeat > 1 else ""
        say(
            f"pool{of}: {config.agents} ping agents, {config.total_steps} steps, "
            f"{config.workers} workers"
        )
        pools.append(measure_pool(config))
        say(f"in process{of}: one agent, {config.total_steps} steps")
        loops.append(measure_inprocess(config))
    pool = best_pool(pools)
    inprocess = max(loops, key=lambda r: r.steps_per_s)
    ray_backend: PoolFigures | None = None
    if config.backend == "ray":
        runs = []
        for attempt in range(1, config.repeat + 1):
            of = f" ({attempt}/{config.repeat})" if config.repeat > 1 else ""
            say(f"runtime on the Ray backend{of}: {config.workers} worker actors")
            runs.append(measure_pool(config, "ray"))
        ray_backend = best_pool(runs)
    ray: RayFigures | None = None
    note: str | None
    if not config.ray:
        note = "not run (--no-ray)"
    else:
        note = ray_available()
        if note is None:
            say(f"ray: {config.workers} actors, {config.total_steps} calls")
            try:
                ray = measure_ray(config)
            except Exception as exc:  # an optional peer: keep what was measured
                logger.debug("the Ray peer failed", exc_info=True)
                note = f"failed: {type(exc).__name__}: {exc}"
            else:
                machine["ray"] = ray.version
    return DispatchReport(config, pool, inprocess, ray, note, machine, ray_backend)


__all__ = [
    "GOAL_RUNTIME_US_PER_MSG",
    "GOAL_VS_INPROCESS_PER_WORKER",
    "GOAL_VS_RAY",
    "BenchmarkError",
    "DispatchConfig",
    "DispatchReport",
    "InprocessFigures",
    "PingActor",
    "PoolFigures",
    "RayFigures",
    "best_pool",
    "machine_info",
    "measure_inprocess",
    "measure_pool",
    "measure_ray",
    "ping_scenario",
    "run_dispatch",
    "weighted_percentile",
]
