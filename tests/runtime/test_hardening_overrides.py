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


def test_the_worker_memory_total_can_be_lowered_and_raised() -> None:
    # Instances growing by 250 MiB each on one worker: nine pass the default 2 GiB total.
    per = 250 * 16
    count = DEFAULT_WORKER_MEMORY_BYTES // (per * 65536) + 1

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
            text += f"payload_i64 = [{per}]\nat = {i % 2}\n"
        return run(text, workers=1)

    raised = hungry("[workers]\nmemory_mb = 4096")
    assert raised.ok, raised.reason
    assert [a.state for a in raised.agents] == ["loaded"] * count, [
        (a.name, a.error) for a in raised.agents
    ]
    lowered = hungry("[workers]\nmemory_mb = 600")
    failed = [a for a in lowered.agents if a.state == "skipped"]
    # 600 MiB holds two instances of 250 MiB: every later one is refused, the total named.
    assert len(failed) == count - 2, [(a.name, a.error) for a in lowered.agents]
    assert all("the worker's total of 600 MiB" in (a.error or "") for a in failed), failed[0].error


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
