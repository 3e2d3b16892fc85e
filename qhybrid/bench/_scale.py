"""``qhybrid bench scale``: how many agents one machine holds, and what each one costs.

For each agent count (1,000, 10,000 and 100,000 by default) and each module (``relay.wat``,
hand-written WebAssembly text, and ``hop.wasm``, the same agent in C through the SDK), a
scenario of that many agents passing tokens to random peers (``hops`` each, then a report to
one sink agent) is started and run by :class:`~qhybrid.runtime.Runtime` over ``workers``
worker processes:

- ``startup_s``: the wall time of ``Runtime.start()`` (compiling, starting the workers,
  instantiating every agent);
- ``rss_per_agent_kib``: the resident memory of every process of the run (the orchestrator
  and the workers, all of it, interpreter included) after the run, over the agent count;
- ``steps_per_s``: messages delivered over the wall time of ``run()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qhybrid._resources import resource_path
from qhybrid.bench._dispatch import BenchmarkError, machine_info
from qhybrid.runtime import Runtime, RuntimeConfig, Scenario, parse_scenario

__all__ = [
    "DEFAULT_AGENTS",
    "MODULES",
    "ScaleConfig",
    "ScaleReport",
    "ScaleRun",
    "measure_scale",
    "run_scale",
    "scale_scenario",
]

#: The agent counts measured by default.
DEFAULT_AGENTS = (1_000, 10_000, 100_000)
#: Module label -> file in resources/agents: the same relay agent in WAT and in C.
MODULES = {"wat": "relay.wat", "c": "hop.wasm"}
#: The goals (issue #11): 100,000 agents start in under 20 s, under 100 KiB resident per
#: WAT agent and under 200 KiB per C agent.
GOAL_STARTUP_S = 20.0
GOAL_RSS_KIB = {"wat": 100.0, "c": 200.0}

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ScaleConfig:
    agents: tuple[int, ...] = DEFAULT_AGENTS
    modules: tuple[str, ...] = tuple(MODULES)
    workers: int = 2
    hops: int = 3

    def __post_init__(self) -> None:
        if not self.agents or any(n < 1 for n in self.agents):
            raise ValueError(f"agent counts must be at least 1, got {list(self.agents)}")
        unknown = [m for m in self.modules if m not in MODULES]
        if not self.modules or unknown:
            raise ValueError(f"modules must be among {sorted(MODULES)}, got {list(self.modules)}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.hops < 0:
            raise ValueError(f"hops must be at least 0, got {self.hops}")


@dataclass(frozen=True, slots=True)
class ScaleRun:
    agents: int
    module: str
    startup_s: float
    rss_per_agent_kib: float
    steps_per_s: float
    steps: int
    run_s: float
    rss_mib: float

    def to_json(self) -> dict[str, Any]:
        return {
            "agents": self.agents,
            "module": self.module,
            "startup_s": round(self.startup_s, 3),
            "rss_per_agent_kib": round(self.rss_per_agent_kib, 1),
            "steps_per_s": round(self.steps_per_s, 1),
            "steps": self.steps,
            "run_s": round(self.run_s, 3),
            "rss_mib": round(self.rss_mib, 1),
        }


@dataclass(frozen=True, slots=True)
class ScaleReport:
    config: ScaleConfig
    runs: tuple[ScaleRun, ...]
    machine: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": "scale",
            "workers": self.config.workers,
            "hops": self.config.hops,
            "runs": [r.to_json() for r in self.runs],
            "goals": {"startup_s": GOAL_STARTUP_S, "rss_per_agent_kib": GOAL_RSS_KIB},
            "machine": self.machine,
        }


def scale_scenario(agents: int, module: str, hops: int) -> Scenario:
    """``agents`` relay agents of ``module`` ("wat" or "c"), each handed one token of
    ``hops`` hops at tick 0, and the sink they report to."""
    path = resource_path("agents", MODULES[module])
    text = f"""
name = "bench-scale"
description = "qhybrid bench scale: {agents} relay agents ({module})"
seed = 1

[stop]
max_ticks = {hops + 3}
timeout_s = 3600

[[agents]]
name = "relay"
module = "{path.name}"
count = {agents}
on_error = "fail"

[[agents]]
name = "sink"
module = "sink.wat"
on_error = "fail"

[[messages]]
to = "relay"
kind = 1
payload_i64 = [{hops}, 0]
"""
    return parse_scenario(text, source="bench-scale.toml", base_dir=path.parent)


def _rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (Linux /proc; psutil elsewhere, 0 without it)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    try:
        import psutil  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return 0
    with contextlib.suppress(psutil.Error):
        return int(psutil.Process(pid).memory_info().rss)
    return 0


async def _measure_once(agents: int, module: str, workers: int, hops: int) -> ScaleRun:
    scenario = scale_scenario(agents, module, hops)
    runtime = Runtime(scenario, RuntimeConfig(workers=workers, device="cpu"))
    t0 = time.perf_counter()
    async with runtime:
        t1 = time.perf_counter()
        result = await runtime.run()
        t2 = time.perf_counter()
        rss = sum(_rss_bytes(pid) for pid in (os.getpid(), *runtime.pool.pids))
    if not result.ok:
        raise BenchmarkError(f"the {agents}-agent {module} run {result.status}: {result.reason}")
    # Every relay handles its token hops + 1 times, and the sink hears from each of them.
    expected = agents * (hops + 2)
    if result.messages_delivered != expected:
        raise BenchmarkError(
            f"the {agents}-agent {module} run delivered {result.messages_delivered} messages, "
            f"expected {expected}"
        )
    run_s = t2 - t1
    return ScaleRun(
        agents=agents,
        module=module,
        startup_s=t1 - t0,
        rss_per_agent_kib=rss / 1024 / agents,
        steps_per_s=result.messages_delivered / run_s,
        steps=result.messages_delivered,
        run_s=run_s,
        rss_mib=rss / (1 << 20),
    )


def measure_scale(agents: int, module: str, workers: int = 2, hops: int = 3) -> ScaleRun:
    """One run, with a fresh runtime."""
    return asyncio.run(_measure_once(agents, module, workers, hops))


def run_scale(config: ScaleConfig, progress: Progress | None = None) -> ScaleReport:
    """Every agent count with every module, smallest first."""
    say = progress or (lambda _text: None)
    machine = machine_info()
    runs: list[ScaleRun] = []
    for agents in sorted(config.agents):
        for module in config.modules:
            say(f"{agents} {module} agents on {config.workers} workers, {config.hops} hops")
            runs.append(measure_scale(agents, module, config.workers, config.hops))
    return ScaleReport(config, tuple(runs), machine)


def format_runs(runs: Sequence[ScaleRun]) -> list[tuple[str, ...]]:
    """Table rows: agents, module, start-up, KiB per agent, steps/s."""
    return [
        (
            f"{r.agents:,}",
            r.module,
            f"{r.startup_s:.2f} s",
            f"{r.rss_per_agent_kib:.1f}",
            f"{r.steps_per_s:,.0f}",
        )
        for r in runs
    ]
