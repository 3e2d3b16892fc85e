"""Default limits and start-up under limits (issue 12, items 1 and 2).

What users rely on: with no ``[agents.limits]`` at all, an agent that loops forever, in a
handler or while it starts, cannot stall the run: it is stopped by the default limits, named,
its ``on_error`` policy applies and the other agents go on. The defaults are in docs/limits.md.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from qhybrid.runtime import RunResult, Runtime, RuntimeConfig, ScenarioError, parse_scenario
from qhybrid.runtime.wasm_pool._limits import (
    DEFAULT_FUEL,
    DEFAULT_MEMORY_BYTES,
    DEFAULT_TIMEOUT_MS,
    DEFAULT_WORKER_MEMORY_BYTES,
)
from tests.conftest import ROOT

AGENTS = (ROOT / "resources" / "agents").as_posix()
HOSTILE = (ROOT / "tests" / "agents").as_posix()

BYSTANDER = f"""
[[agents]]
name = "echo"
module = "{AGENTS}/echo.wasm"
[[messages]]
to = "echo"
kind = 9
payload = "still here"
at = 1
"""


def run(text: str, workers: int = 2) -> RunResult:
    scenario = parse_scenario(text, source="hostile.toml")

    async def main() -> RunResult:
        async with Runtime(scenario, RuntimeConfig(workers=workers, device="cpu")) as rt:
            return await rt.run()

    return asyncio.run(main())


def _state(result: RunResult, name: str) -> tuple[str, str | None, int]:
    a = next(a for a in result.agents if a.name == name)
    return a.state, a.error, a.handled


def _culprit(module: str, policy: str = "skip", payload: str = 'payload = ""') -> str:
    return f"""
name = "hostile"
seed = 1
[stop]
max_ticks = 5
timeout_s = 60
[[agents]]
name = "culprit"
module = "{HOSTILE}/{module}"
on_error = "{policy}"
[[messages]]
to = "culprit"
kind = 1
{payload}
"""


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        ("spin_handler.wat", f"out of fuel (limit {DEFAULT_FUEL} per message, the default)"),
        ("spin_host.wat", f"timeout (limit {DEFAULT_TIMEOUT_MS} ms per message, the default)"),
    ],
)
def test_a_runaway_handler_without_limits_is_stopped_and_named(module: str, reason: str) -> None:
    start = time.monotonic()
    result = run(_culprit(module) + BYSTANDER)
    assert time.monotonic() - start < 40
    assert result.ok, result.reason
    state, error, _ = _state(result, "culprit")
    assert state == "skipped"
    assert error is not None and error.startswith(reason), error
    assert _state(result, "echo") == ("loaded", None, 1)


def test_the_fail_policy_still_applies_to_a_default_limit() -> None:
    result = run(_culprit("spin_handler.wat", policy="fail") + BYSTANDER)
    assert not result.ok
    assert "culprit failed at tick 0: out of fuel" in result.reason


def test_memory_has_a_default_limit_per_instance() -> None:
    pages = DEFAULT_MEMORY_BYTES // 65536  # one page is there already: one more is too many
    payload = f"payload_i64 = [{pages}]"
    result = run(_culprit("grow.wat", payload=payload) + BYSTANDER)
    assert result.ok, result.reason
    state, error, _ = _state(result, "culprit")
    assert state == "skipped"
    assert error is not None and "out of memory (limit 256 MiB, the default" in error, error
    assert _state(result, "echo") == ("loaded", None, 1)


def test_a_workers_agents_share_a_default_memory_total() -> None:
    # Nine instances on one worker, each growing by 250 MiB (under the per-instance 256 MiB),
    # together 2250 MiB: past the worker's 2 GiB total. The instance that crosses it is named.
    per = 250 * 16
    count = DEFAULT_WORKER_MEMORY_BYTES // (per * 65536) + 1
    text = f"""
name = "hungry"
seed = 1
[stop]
max_ticks = 5
timeout_s = 60
[[agents]]
name = "grow"
module = "{HOSTILE}/grow.wat"
count = {count}
on_error = "skip"
"""
    for i in range(count):
        text += f'[[messages]]\nto = "grow-{i}"\nkind = 1\npayload_i64 = [{per}]\nat = {i % 2}\n'
    result = run(text, workers=1)
    assert result.ok, result.reason
    failed = [a for a in result.agents if a.state == "skipped"]
    assert len(failed) == 1, [(a.name, a.error) for a in result.agents]
    assert "the worker's total" in (failed[0].error or ""), failed[0].error
    assert sum(a.handled for a in result.agents) == count - 1


@pytest.mark.parametrize(
    ("module", "where"),
    [
        ("spin_start.wat", "instantiation"),
        ("spin_initialize.wat", "_initialize"),
        ("spin_version.wat", "qh_abi_version"),
        ("spin_init.wat", "qh_init"),
    ],
)
def test_start_up_runs_under_the_default_limits(module: str, where: str) -> None:
    start = time.monotonic()
    with pytest.raises(ScenarioError) as info:
        run(_culprit(module) + BYSTANDER)
    assert time.monotonic() - start < 40
    text = str(info.value)
    assert "culprit" in text and where in text and "out of fuel" in text, text
