"""``qhybrid bench store``: what recording a run into the run store costs.

The same heavy scenario (``agents`` ping agents counting down by messaging themselves: one
delivery and one trace record per message, every tick full) runs with recording off (a plain
:class:`~qhybrid.runtime.Runtime`) and on (a :class:`~qhybrid.runtime.store.DurableRuntime`
writing every record, log line and tick into a fresh store, with a checkpoint every
``checkpoint_every`` ticks), taking turns, ``repeat`` times each; the best of each counts.
Throughput is messages delivered over the wall time of ``run()`` plus, for the recorded run,
the wait for the writer to commit the last batch. The goal: under 10% slower.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qhybrid.bench._dispatch import BenchmarkError, DispatchConfig, machine_info, ping_scenario
from qhybrid.runtime import Runtime, RuntimeConfig
from qhybrid.runtime.store import DurableRuntime, RunRecorder, RunStore

#: The goal (issue #13): recording costs under 10% of the throughput.
GOAL_OVERHEAD = 0.10


@dataclass(frozen=True, slots=True)
class StoreBenchConfig:
    workers: int = 2
    agents: int = 64
    steps: int = 64_000
    repeat: int = 3
    checkpoint_every: int = 100


@dataclass(frozen=True, slots=True)
class StoreReport:
    config: StoreBenchConfig
    off_msgs_s: float
    on_msgs_s: float
    records: int
    checkpoints: int
    store_bytes: int
    machine: dict[str, Any]
    #: CPU seconds of this process (the tick loop, the GPU thread, the writer thread) over
    #: run(), least of the repeats: steadier than wall time on a loaded machine.
    off_cpu_s: float = 0.0
    on_cpu_s: float = 0.0

    @property
    def overhead(self) -> float:
        return 1.0 - self.on_msgs_s / self.off_msgs_s

    def to_json(self) -> dict[str, Any]:
        c = self.config
        return {
            "workers": c.workers,
            "agents": c.agents,
            "steps": c.steps,
            "repeat": c.repeat,
            "checkpoint_every": c.checkpoint_every,
            "off_msgs_per_s": round(self.off_msgs_s, 1),
            "on_msgs_per_s": round(self.on_msgs_s, 1),
            "overhead": round(self.overhead, 4),
            "goal_overhead": GOAL_OVERHEAD,
            "off_main_cpu_s": round(self.off_cpu_s, 3),
            "on_main_cpu_s": round(self.on_cpu_s, 3),
            "records": self.records,
            "checkpoints": self.checkpoints,
            "store_bytes": self.store_bytes,
            "machine": self.machine,
        }


async def _once(config: StoreBenchConfig, store: Path | None) -> tuple[float, int, int, float]:
    dispatch = DispatchConfig(workers=config.workers, agents=config.agents, steps=config.steps)
    scenario = ping_scenario(dispatch)
    rc = RuntimeConfig(workers=config.workers, device="cpu")
    recorder = None
    if store is None:
        runtime: Runtime = Runtime(scenario, rc)
    else:
        with RunStore(store) as s:
            run_id = s.new_run(
                scenario_name=scenario.name,
                scenario_path="bench",
                scenario_text="",
                seed=scenario.seed,
                config={},
                version="bench",
            )
        recorder = RunRecorder(store, run_id, checkpoint_every=config.checkpoint_every)
        runtime = DurableRuntime(scenario, rc, recorder=recorder)
    async with runtime:
        c0 = time.process_time()
        t0 = time.perf_counter()
        result = await runtime.run()
        if recorder is not None:
            error = recorder.finish(runtime, result.status, result.reason)
            if error:
                raise BenchmarkError(f"recording failed: {error}")
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
    if not result.ok or result.messages_delivered != dispatch.total_steps:
        raise BenchmarkError(f"the run {result.status}: {result.reason}")
    checkpoints = len(recorder.checkpoints) if recorder is not None else 0
    return result.messages_delivered / elapsed, checkpoints, runtime._trace.records, cpu


def run_store_bench(
    config: StoreBenchConfig, progress: Callable[[str], None] = lambda _t: None
) -> StoreReport:
    off: list[float] = []
    on: list[float] = []
    cpu_off: list[float] = []
    cpu_on: list[float] = []
    records = checkpoints = size = 0
    with tempfile.TemporaryDirectory(prefix="qhybrid-bench-store-") as tmp:
        for i in range(config.repeat):
            rate, _, _, cpu = asyncio.run(_once(config, None))
            off.append(rate)
            cpu_off.append(cpu)
            progress(f"run {i + 1}/{config.repeat}: recording off {rate:,.0f} msgs/s")
            store = Path(tmp) / f"runs-{i}.sqlite"
            rate, checkpoints, records, cpu = asyncio.run(_once(config, store))
            on.append(rate)
            cpu_on.append(cpu)
            size = sum(p.stat().st_size for p in Path(tmp).glob(f"runs-{i}.sqlite*"))
            progress(f"run {i + 1}/{config.repeat}: recording on  {rate:,.0f} msgs/s")
    return StoreReport(
        config,
        max(off),
        max(on),
        records,
        checkpoints,
        size,
        machine_info(),
        min(cpu_off),
        min(cpu_on),
    )


def show(console: Any, report: StoreReport) -> None:
    data = report.to_json()
    verdict = "[green]meets[/]" if report.overhead < GOAL_OVERHEAD else "[red]misses[/]"
    console.print(
        f"[bold]store[/]: {data['agents']} ping agents, {data['steps']} messages, "
        f"{data['workers']} workers, checkpoint every {data['checkpoint_every']} ticks, best of "
        f"{data['repeat']}\n"
        f"  recording off  {data['off_msgs_per_s']:>12,.0f} msgs/s\n"
        f"  recording on   {data['on_msgs_per_s']:>12,.0f} msgs/s   ({data['records']} records, "
        f"{data['checkpoints']} checkpoints, {data['store_bytes'] / 1e6:.1f} MB)\n"
        f"  overhead       {data['overhead']:>12.1%}   ({verdict} the goal of < "
        f"{GOAL_OVERHEAD:.0%})\n"
        f"  main process CPU  off {data['off_main_cpu_s']:.2f} s, on {data['on_main_cpu_s']:.2f} s "
        "(least of the repeats; the workers' share is the same)",
        soft_wrap=True,
    )
