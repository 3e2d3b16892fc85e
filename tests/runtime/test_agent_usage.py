"""Fuel and memory per agent: the workers report them beside each batch's results, the run's
summaries, metrics and tick events carry them, and the trace does not change with them."""

from __future__ import annotations

import asyncio

from qhybrid.runtime import RunResult, Runtime, RuntimeConfig, TickFinished, parse_scenario
from qhybrid.runtime.wasm_pool._limits import DEFAULT_FUEL
from qhybrid.runtime.wasm_pool._protocol import Request
from tests.conftest import ROOT

AGENTS = (ROOT / "resources" / "agents").as_posix()
HOSTILE = (ROOT / "tests" / "agents").as_posix()

SCENARIO = f"""
name = "usage"
seed = 3
[stop]
max_ticks = 6
timeout_s = 60
[[agents]]
name = "echo"
module = "{AGENTS}/echo.wasm"
[[agents]]
name = "spin"
module = "{HOSTILE}/spin_handler.wat"
on_error = "skip"
[[messages]]
to = "echo"
kind = 9
payload = "one"
at = 1
[[messages]]
to = "echo"
kind = 9
payload = "two"
at = 3
[[messages]]
to = "spin"
kind = 1
payload = ""
at = 2
"""


def _run(workers: int) -> tuple[RunResult, list[TickFinished], float]:
    scenario = parse_scenario(SCENARIO, source="usage.toml")
    ticks: list[TickFinished] = []

    async def main() -> tuple[RunResult, float]:
        async with Runtime(scenario, RuntimeConfig(workers=workers, device="cpu")) as rt:

            def on_tick(event: TickFinished) -> None:
                ticks.append(event)

            rt.events.tick_finished.connect(on_tick)
            result = await rt.run()
            return result, float(rt.metrics().series["fuel_total"][-1])

    result, fuel_metric = asyncio.run(main())
    return result, ticks, fuel_metric


def test_the_workers_report_fuel_and_memory_per_agent_without_touching_the_trace() -> None:
    result, ticks, fuel_metric = _run(workers=2)
    echo = next(a for a in result.agents if a.name == "echo")
    spin = next(a for a in result.agents if a.name == "spin")
    assert echo.handled == 2 and echo.fuel_used is not None and echo.fuel_used > 0
    # Two messages of the same size: the last one's fuel is about half the total.
    assert echo.fuel_last is not None and 0 < echo.fuel_last < echo.fuel_used
    assert echo.memory_bytes is not None and echo.memory_bytes >= 65536  # a wasm page at least
    # A handler that runs out burns exactly its budget: the figure is the real meter's.
    assert spin.state in ("failed", "skipped")
    assert spin.fuel_used == DEFAULT_FUEL
    assert echo.group == "echo" and spin.group == "spin"
    # Metrics and tick events add up to the agents' totals.
    assert fuel_metric == echo.fuel_used + spin.fuel_used
    assert sum(t.fuel for t in ticks) == echo.fuel_used + spin.fuel_used
    assert next(t for t in ticks if t.tick == 2).fuel >= DEFAULT_FUEL
    # Not part of the trace: the same hash with another number of workers.
    other, _, _ = _run(workers=1)
    assert other.trace_hash == result.trace_hash
    assert next(a for a in other.agents if a.name == "echo").fuel_used == echo.fuel_used


def test_per_agent_usage_travels_only_when_someone_reads_it() -> None:
    """The workers send per-agent rows with a tick's batches only after someone read the
    summaries (a window polls them); a headless run gets them once, at the end."""
    scenario = parse_scenario(SCENARIO, source="usage.toml")
    asked: list[bool] = []

    async def main() -> tuple[int | None, int | None, RunResult]:
        async with Runtime(scenario, RuntimeConfig(workers=1, device="cpu")) as rt:
            pool = rt.pool
            write = pool._write  # type: ignore[attr-defined]

            async def spy(worker: object, request: Request, deadline: float) -> None:
                if request.op == "batch":
                    asked.append(request.args[4])  # does it ask for the agents' rows?
                await write(worker, request, deadline)

            pool._write = spy  # type: ignore[attr-defined]
            await rt.step()  # tick 1: echo handles "one"; nobody has asked
            before = next(a for a in rt.agent_summaries() if a.name == "echo").fuel_used
            await rt.step()  # tick 2 (spin): asked, so echo's row from tick 1 comes along
            after = next(a for a in rt.agent_summaries() if a.name == "echo").fuel_used
            result = await rt.run()
            return before, after, result

    before, after, result = asyncio.run(main())
    assert asked[:2] == [False, True] and not any(asked[3:])
    assert before is None and after is not None and after > 0
    echo = next(a for a in result.agents if a.name == "echo")
    assert echo.fuel_used is not None and echo.fuel_used > after  # the end's report
