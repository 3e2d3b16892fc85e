"""Agents' LLM requests as observers see them, live and recorded: ABI v1's ``llm_complete`` and
ABI v2's ``llm_chat`` both announce each request (``LlmRequested``, with the engine's id that
its ``LlmTokens`` carry), the run store keeps who asked and the prompt beside the engine's
rows, and none of it enters the trace: the hash is the same recorded or not."""

from __future__ import annotations

import asyncio
from pathlib import Path

from qhybrid._resources import resource_path
from qhybrid.runtime import LlmRequested, LlmTokens, Runtime, RuntimeConfig, load_scenario
from qhybrid.runtime.store import LLM_KEY, DurableRuntime, RunStore, llm_calls
from tests.runtime.test_state_at import record


def both_abis(tmp_path: Path) -> Path:
    """A v1 storyteller (``llm_complete``) and a v2 chat agent (``llm_chat``, JSON Schema)."""
    path = tmp_path / "asks.toml"
    path.write_text(
        f"""
name = "asks"
seed = 3
[stop]
max_ticks = 80
[llm]
model = "{resource_path("models", "tiny-stories.gguf").as_posix()}"
device = "cpu"
slots = 2
temperature = 0
[[agents]]
name = "teller"
module = "{resource_path("agents", "ask.wasm").as_posix()}"
config = {{ max_tokens = 6 }}
[[agents]]
name = "mood"
module = "{resource_path("agents", "rs_chat.wasm").as_posix()}"
config = {{ max_tokens = 32 }}
[[messages]]
to = "teller"
kind = 1
payload = "Once upon a time"
[[messages]]
to = "mood"
kind = 1
payload = "The little dog was happy to see the sun."
""",
        encoding="utf-8",
    )
    return path


def _plain_run(path: Path) -> tuple[str, list[LlmRequested], list[LlmTokens]]:
    asked: list[LlmRequested] = []
    streamed: list[LlmTokens] = []

    async def go() -> str:
        runtime = Runtime(load_scenario(path).with_seed(1), RuntimeConfig(workers=1, device="cpu"))
        runtime.events.llm_requested.connect(asked.append)
        runtime.events.llm_tokens.connect(streamed.append)
        async with runtime:
            result = await runtime.run()
        assert result.status == "completed", result.reason
        return result.trace_hash

    return asyncio.run(go()), asked, streamed


def test_both_abis_announce_requests_and_the_store_keeps_them_outside_the_trace(
    tmp_path: Path,
) -> None:
    path = both_abis(tmp_path)
    plain_hash, asked, streamed = _plain_run(path)

    # Live: one announcement per request, each with the engine id its tokens stream under.
    by_agent = {a.agent: a for a in asked}
    assert sorted(by_agent) == ["mood", "teller"]
    teller, mood = by_agent["teller"], by_agent["mood"]
    assert (teller.kind, teller.prompt, teller.max_tokens) == ("complete", "Once upon a time", 6)
    assert mood.kind == "chat" and "happy to see the sun" in mood.prompt
    assert "user: " in mood.prompt and mood.error is None
    for a in (teller, mood):
        mine = [t for t in streamed if t.request_id == a.request_id]
        assert mine and all(t.agent == a.agent for t in mine)
        assert mine[-1].done and mine[-1].finish in ("stop", "length")
        assert sum(t.tokens for t in mine) > 0

    # Recorded: the same requests, with prompt, answer, tokens and time, from the store.
    store = tmp_path / "runs.sqlite"
    run_id = record(store, path, every=0)
    with RunStore(store, readonly=True) as s:
        assert s.run(run_id)["trace_hash"] == plain_hash  # recording changes no hash
        calls = {c.agent: c for c in llm_calls(s, run_id)}
        effects = s.effects(run_id)
    assert sorted(calls) == ["mood", "teller"]
    for name, live in (("teller", teller), ("mood", mood)):
        call = calls[name]
        answer = "".join(t.text for t in streamed if t.request_id == live.request_id)
        assert (call.request_id, call.prompt, call.kind) == (
            live.request_id,
            live.prompt,
            live.kind,
        )
        assert call.answer == answer and call.tokens > 0 and call.prompt_tokens > 0
        assert call.done and call.finish in ("stop", "length") and call.elapsed_s > 0
    assert calls["mood"].answer.startswith("{")  # a JSON Schema answer

    # A replay takes the recorded rows without asking them anything: same trace.
    assert any(k.startswith(LLM_KEY) for k in effects)

    async def replay() -> str:
        runtime = DurableRuntime(
            load_scenario(path).with_seed(1),
            RuntimeConfig(workers=1, device="cpu"),
            effects=effects,
        )
        async with runtime:
            result = await runtime.run()
        return result.trace_hash

    assert asyncio.run(replay()) == plain_hash


def test_a_request_answered_at_once_is_announced_with_its_error(tmp_path: Path) -> None:
    path = both_abis(tmp_path)
    text = path.read_text("utf-8")
    start, end = text.index("[llm]"), text.index("[[agents]]")
    path.write_text(text[:start] + text[end:], "utf-8")  # no model at all
    _hash, asked, streamed = _plain_run(path)
    assert sorted(a.agent for a in asked) == ["mood", "teller"]
    for a in asked:
        assert a.request_id < 0 and a.error == "no LLM model is configured for this scenario"
    assert len({a.request_id for a in asked}) == 2
    assert not streamed
