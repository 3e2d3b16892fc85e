"""Agents ask the scenario's LLM: answers come back as LLM_DONE messages, deterministically.

The `ask` sample agent (resources/agents/ask.wasm) calls llm_complete and logs the answer.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from qhybrid._resources import resource_path
from qhybrid.runtime import (
    AgentLog,
    LlmTokens,
    Runtime,
    RuntimeConfig,
    ScenarioError,
    parse_scenario,
)
from qhybrid.runtime.llm._random_model import RandomModelSpec, write_random_model

ASK = resource_path("agents", "ask.wasm")


def _scenario(model: Path, *, llm: str = "", questions: int = 3, max_tokens: int = 6) -> str:
    asks = "".join(
        f'\n[[messages]]\nto = "ask-{i % 2}"\nkind = 1\npayload = "question {i}"\nat = {i}\n'
        for i in range(questions)
    )
    return f"""
name = "llm"
seed = 5
[stop]
max_ticks = 200
[llm]
model = "{model}"
slots = 2
n_ctx = 64
temperature = 0.9
{llm}
[[agents]]
name = "ask"
module = "{ASK}"
count = 2
config = {{ max_tokens = {max_tokens} }}
[[agents]]
name = "other"
module = "{resource_path("agents", "echo.wasm")}"
{asks}
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_model(
        tmp_path_factory.mktemp("m") / "tiny.gguf", RandomModelSpec(n_layer=1, n_ctx_train=128)
    )


def _run(text: str, workers: int = 1, device: str = "auto"):
    scenario = parse_scenario(text)
    logs: list[AgentLog] = []
    streamed: list[LlmTokens] = []

    async def go():
        async with Runtime(scenario, RuntimeConfig(workers=workers, device=device)) as rt:
            rt.events.agent_log.connect(logs.append)
            rt.events.llm_tokens.connect(streamed.append)
            return await rt.run()

    return asyncio.run(go()), logs, streamed


def test_agents_get_answers_and_the_trace_is_deterministic(model: Path) -> None:
    text = _scenario(model)
    first, logs, streamed = _run(text, workers=1)
    assert first.ok, first.reason
    answers = [log for log in logs if log.text.startswith("answer: ")]
    assert len(answers) == 3
    assert {log.agent for log in answers} == {"ask-0", "ask-1"}
    done = [e for e in streamed if e.done]
    assert len(done) == 3
    assert all(e.finish in ("stop", "length") for e in done)
    # The streamed pieces of each request add up to its answer.
    for event in done:
        pieces = "".join(e.text for e in streamed if e.request_id == event.request_id)
        assert any(log.text == f"answer: {pieces}" for log in answers)
    second, _, _ = _run(text, workers=2)
    assert second.trace_hash == first.trace_hash


def test_the_seed_changes_the_answers(model: Path) -> None:
    base, _, _ = _run(_scenario(model))
    other, _, _ = _run(_scenario(model).replace("seed = 5", "seed = 6"))
    assert base.trace_hash != other.trace_hash


def test_a_prompt_too_long_for_the_context_is_answered_with_an_error(model: Path) -> None:
    text = _scenario(model, questions=0) + (
        '\n[[messages]]\nto = "ask-0"\nkind = 1\npayload = "' + "x" * 200 + '"\n'
    )
    result, logs, _ = _run(text)
    assert result.ok
    errors = [log.text for log in logs if log.text.startswith("llm error: ")]
    assert len(errors) == 1 and "context holds 64" in errors[0]


def test_a_corrupt_model_is_a_scenario_error(tmp_path: Path, model: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(ScenarioError, match=r"llm\.model"):
        _run(_scenario(bad))


def test_llm_section_is_checked(tmp_path: Path, model: Path) -> None:
    with pytest.raises(ScenarioError, match="model file not found"):
        parse_scenario(_scenario(tmp_path / "missing.gguf"))
    with pytest.raises(ScenarioError, match=r"llm\.temperature: expected a finite number >= 0"):
        parse_scenario(_scenario(model).replace("temperature = 0.9", "temperature = -1"))
    assert parse_scenario(_scenario(model).replace("temperature = 0.9", "temperature = 0")).llm
    with pytest.raises(ScenarioError, match=r"llm\.top_p"):
        parse_scenario(_scenario(model, llm="top_p = 2"))
    with pytest.raises(ScenarioError, match=r"unknown field \"temprature\""):
        parse_scenario(_scenario(model, llm="temprature = 1").replace("temperature = 0.9", ""))


def test_llm_metrics_count_the_tokens(model: Path) -> None:
    scenario = parse_scenario(_scenario(model, questions=2, max_tokens=5))

    async def go():
        async with Runtime(scenario, RuntimeConfig(workers=1)) as rt:
            result = await rt.run()
            return result, rt.metrics()

    result, metrics = asyncio.run(go())
    assert result.llm is not None and result.llm["requests"] == 2
    tokens = metrics.series["llm_tokens_total"]
    assert tokens[-1] == result.llm["tokens"] > 0
    assert metrics.series["llm_active"].max() >= 1
