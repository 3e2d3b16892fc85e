"""Per-message quotas (issue 12, item 6).

What users rely on: one message cannot make the host carry without bound what its handler asks
for: a million sends, a gigabyte of payloads, megabytes of stdout, 64 GiB of tensors, a hundred
LLM requests or a 1 MiB prompt. The message fails with ``quota exceeded: ...`` (its agent named,
its policy applied, the other agents going on); log output past the quota is dropped with one
line that says so. The quotas are in docs/limits.md.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from qhybrid.runtime import AgentLog, RunResult, Runtime, RuntimeConfig, parse_scenario
from qhybrid.runtime.wasm_pool._quotas import (
    MAX_LLM_PROMPT_BYTES,
    MAX_LLM_REQUESTS,
    MAX_LOG_BYTES,
    MAX_SEND_BYTES,
    MAX_SENDS,
    MAX_TENSOR_BYTES,
)
from tests.conftest import ROOT

AGENTS = (ROOT / "resources" / "agents").as_posix()
HOSTILE = (ROOT / "tests" / "agents").as_posix()


def run(kind: int) -> tuple[RunResult, list[AgentLog], float]:
    text = f"""
name = "flood"
seed = 1
[stop]
max_ticks = 4
timeout_s = 60
[[agents]]
name = "flood"
module = "{HOSTILE}/flood.wat"
on_error = "skip"
# The quotas are under test, not the default 5 s time limit: 200,000 WASI writes through the
# host take a few seconds on a slow machine (CI failed on it once).
[agents.limits]
timeout_ms = 60000
[[messages]]
to = "flood"
kind = {kind}
payload = ""
[[agents]]
name = "echo"
module = "{AGENTS}/echo.wasm"
[[messages]]
to = "echo"
kind = 9
payload = "still here"
at = 1
"""
    scenario = parse_scenario(text, source="flood.toml")
    logs: list[AgentLog] = []

    async def main() -> RunResult:
        async with Runtime(scenario, RuntimeConfig(workers=2, device="cpu")) as rt:
            rt.events.agent_log.connect(logs.append)
            return await rt.run()

    start = time.monotonic()
    result = asyncio.run(main())
    return result, logs, time.monotonic() - start


def _flood(result: RunResult) -> tuple[str, str | None]:
    a = next(a for a in result.agents if a.name == "flood")
    return a.state, a.error


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        (1, f"quota exceeded: send: more than {MAX_SENDS} messages sent by one message"),
        (2, f"quota exceeded: send: more than {MAX_SEND_BYTES >> 20} MiB of payload"),
        (4, f"quota exceeded: tensor_create: more than {MAX_TENSOR_BYTES >> 20} MiB of tensor"),
        (5, f"quota exceeded: llm_complete: more than {MAX_LLM_REQUESTS} LLM requests"),
        (6, f"than the {MAX_LLM_PROMPT_BYTES} a request may have"),
    ],
)
def test_a_flooding_message_fails_at_its_quota(kind: int, reason: str) -> None:
    result, _, elapsed = run(kind)
    assert result.ok, result.reason
    state, error = _flood(result)
    assert state == "skipped"
    assert error is not None and reason in error, error
    echo = next(a for a in result.agents if a.name == "echo")
    assert (echo.state, echo.handled) == ("loaded", 1)
    assert elapsed < 30


def test_log_output_past_its_quota_is_dropped_with_one_line_saying_so() -> None:
    result, logs, _ = run(3)
    assert result.ok, result.reason
    assert _flood(result) == ("loaded", None)
    mine = [e for e in logs if e.agent == "flood"]
    kept = sum(len(e.text.encode()) for e in mine if "log quota" not in e.text)
    assert kept <= MAX_LOG_BYTES
    notes = [e for e in mine if "log quota" in e.text]
    assert len(notes) == 1 and str(MAX_LOG_BYTES) in notes[0].text
    assert len(mine) < 3000  # not 200 000 lines


def test_one_agent_holds_at_most_its_share_of_the_model() -> None:
    from qhybrid.runtime import LlmTokens
    from qhybrid.runtime._llm_bridge import MAX_LLM_IN_FLIGHT

    model = (ROOT / "resources" / "models" / "tiny-stories.gguf").as_posix()
    text = f"""
name = "greedy"
seed = 1
[stop]
max_ticks = 40
[llm]
model = "{model}"
device = "cpu"
slots = 8
[[agents]]
name = "flood"
module = "{HOSTILE}/flood.wat"
on_error = "skip"
# The quotas are under test, not the default 5 s time limit: 200,000 WASI writes through the
# host take a few seconds on a slow machine (CI failed on it once).
[agents.limits]
timeout_ms = 60000
[[messages]]
to = "flood"
kind = 10
payload = ""
"""
    scenario = parse_scenario(text, source="greedy.toml")
    done: list[LlmTokens] = []

    async def main() -> RunResult:
        async with Runtime(scenario, RuntimeConfig(workers=1, device="cpu")) as rt:
            rt.events.llm_tokens.connect(lambda e: done.append(e) if e.done else None)
            return await rt.run()

    result = asyncio.run(main())
    assert result.ok, result.reason
    # Ten asked at once: four ran on the model, six were answered "in flight already".
    assert len([e for e in done if e.agent == "flood"]) == MAX_LLM_IN_FLIGHT
    assert result.llm is not None and result.llm["requests"] == MAX_LLM_IN_FLIGHT
