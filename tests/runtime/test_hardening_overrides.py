"""Scenario overrides of the quotas and of the worker's memory total (issue 12, item 6).

What users rely on: the defaults of docs/limits.md hold when a scenario says nothing, and a
scenario changes them, lower or higher, per agent group in ``[agents.quotas]`` and for the
worker processes in ``[workers] memory_mb``; a bad value is reported with its file, line and
field, before anything starts.
"""

from __future__ import annotations

import asyncio

import pytest

from qhybrid.runtime import RunResult, Runtime, RuntimeConfig, ScenarioError, parse_scenario
from qhybrid.runtime.wasm_pool._limits import DEFAULT_WORKER_MEMORY_BYTES
from tests.conftest import ROOT

AGENTS = (ROOT / "resources" / "agents").as_posix()
HOSTILE = (ROOT / "tests" / "agents").as_posix()


def run(text: str, workers: int = 2) -> RunResult:
    scenario = parse_scenario(text, source="overrides.toml")

    async def main() -> RunResult:
        async with Runtime(scenario, RuntimeConfig(workers=workers, device="cpu")) as rt:
            return await rt.run()

    return asyncio.run(main())


def _flood(kind: int, quotas: str = "") -> tuple[str, str | None, RunResult]:
    text = f"""
seed = 1
[stop]
max_ticks = 4
timeout_s = 60
[[agents]]
name = "flood"
module = "{HOSTILE}/flood.wat"
on_error = "skip"
{quotas}
[[messages]]
to = "flood"
kind = {kind}
payload = ""
"""
    result = run(text)
    a = next(a for a in result.agents if a.name == "flood")
    return a.state, a.error, result


def test_a_lowered_tensor_quota_fails_a_message_the_default_lets_through() -> None:
    # kind 8 creates one 64 MiB tensor: within the default 1 GiB, past a 1 MiB override.
    assert _flood(8)[:2] == ("loaded", None)
    state, error, result = _flood(8, "[agents.quotas]\ntensor_bytes = 1048576")
    assert result.ok, result.reason
    assert state == "skipped"
    assert error is not None and "more than 1 MiB of tensor bytes" in error, error


def test_a_lowered_send_quota_names_the_scenarios_figure() -> None:
    state, error, _ = _flood(1, "[agents.quotas]\nsends = 5")
    assert state == "skipped"
    assert error is not None and "send: more than 5 messages sent by one message" in error, error


def test_a_lowered_worker_memory_total_refuses_the_instance_past_it() -> None:
    # Four instances on one worker growing by 25 MiB each: the default total holds them all,
    # a 64 MiB total two; every later one is refused, the scenario's total named. (Small
    # figures: since linear memories have no reservations, growing copies, and 2 GiB of growth
    # takes a minute on a loaded machine.)
    per, count = 25 * 16, 4

    def hungry(workers_table: str) -> RunResult:
        text = f"""
seed = 1
{workers_table}
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
            text += f'[[messages]]\nto = "grow-{i}"\nkind = 1\n'
            text += f"payload_i64 = [{per}]\nat = {i}\n"
        return run(text, workers=1)

    default = hungry("")
    assert default.ok, default.reason
    assert [a.state for a in default.agents] == ["loaded"] * count
    lowered = hungry("[workers]\nmemory_mb = 64")
    assert lowered.ok, lowered.reason
    failed = [a for a in lowered.agents if a.state == "skipped"]
    assert [a.name for a in failed] == ["grow-2", "grow-3"], [
        (a.name, a.error) for a in lowered.agents
    ]
    assert all("the worker's total of 64 MiB" in (a.error or "") for a in failed), failed[0].error


def test_a_raised_worker_memory_total_reaches_every_agent_load() -> None:
    from qhybrid.runtime._roster import Roster

    text = f"""
[workers]
memory_mb = 16384
[[agents]]
name = "a"
module = "{AGENTS}/echo.wasm"
count = 2
[agents.quotas]
sends = 100000
"""
    scenario = parse_scenario(text, source="raised.toml")
    assert scenario.workers.memory_mb == 16384 > DEFAULT_WORKER_MEMORY_BYTES >> 20
    assert scenario.agents[0].quotas.sends == 100_000
    roster = Roster(scenario, 1)
    roster.create()
    spec = scenario.agents[0]
    loads = [roster._agent_load(spec, agent, (), 2, b"{}") for agent in roster.agents]
    assert {load.worker_memory_bytes for load in loads} == {16384 << 20}
    assert {load.quotas.sends for load in loads} == {100_000}


@pytest.mark.parametrize(
    ("table", "field", "message"),
    [
        ("[agents.quotas]\nsends = 0", "agents[0].quotas.sends", "expected an integer from 1"),
        ("[agents.quotas]\nlog_bytes = 'a lot'", "agents[0].quotas.log_bytes", "expected an"),
        ("[agents.quotas]\nmessages = 3", "agents[0].quotas", 'unknown field "messages"'),
    ],
)
def test_a_bad_quota_is_reported_with_its_field(table: str, field: str, message: str) -> None:
    text = f'[[agents]]\nname = "a"\nmodule = "{AGENTS}/echo.wasm"\n{table}\n'
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, source="bad.toml")
    assert f": {field}" in str(info.value) and message in str(info.value), str(info.value)


def test_a_bad_worker_memory_total_is_reported_with_its_field() -> None:
    text = f'[workers]\nmemory_mb = 0\n[[agents]]\nname = "a"\nmodule = "{AGENTS}/echo.wasm"\n'
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, source="bad.toml")
    assert "bad.toml:2: workers.memory_mb: expected an integer from 1" in str(info.value)
