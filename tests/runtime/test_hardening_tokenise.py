"""LLM prompts are tokenised off the orchestrator's loop (issue 12, item 6).

What users rely on: many large prompts (each under the 64 KiB prompt quota) do not hold up
the loop that runs every agent's tick: the tokenizer runs on the GPU thread, with the engine
step that the requests join. A request that cannot be made (here: a prompt longer than the
context) is answered with the reason, at a fixed tick, so the trace is the same for the same
scenario and seed, whatever the number of workers.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from qhybrid.runtime import AgentLog, RunResult, Runtime, RuntimeConfig, parse_scenario
from qhybrid.runtime.llm import _tokenizer
from tests.conftest import ROOT

MODEL = (ROOT / "resources" / "models" / "tiny-stories.gguf").as_posix()
TEXT = f"""
name = "big-prompts"
seed = 2
[stop]
max_ticks = 30
[llm]
model = "{MODEL}"
device = "cpu"
slots = 4
[[agents]]
name = "asker"
module = "{(ROOT / "tests" / "agents" / "big_prompts.wat").as_posix()}"
count = 4
[[agents]]
name = "echo"
module = "{(ROOT / "resources" / "agents" / "echo.wasm").as_posix()}"
[[messages]]
to = "asker"
kind = 1
[[messages]]
to = "echo"
kind = 9
payload = "still here"
at = 1
"""


def run(workers: int) -> tuple[RunResult, list[tuple[str, str]]]:
    scenario = parse_scenario(TEXT, source="big.toml")

    async def main() -> tuple[RunResult, list[tuple[str, str]]]:
        logs: list[tuple[str, str]] = []
        config = RuntimeConfig(workers=workers, device="cpu")
        async with Runtime(scenario, config) as rt:
            rt.events.agent_log.connect(
                lambda e: logs.append((e.agent, e.text)) if isinstance(e, AgentLog) else None
            )
            return await rt.run(), logs

    return asyncio.run(main())


def test_prompts_are_tokenised_off_the_loop_and_failures_answered_deterministically(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[int] = []
    encode = _tokenizer.Tokenizer.encode

    def spying(self: Any, *args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(_tokenizer.Tokenizer, "encode", spying)
    loop_thread = threading.get_ident()  # asyncio.run runs the loop on this thread
    result, logs = run(workers=2)
    assert result.ok, result.reason
    assert len(threads) >= 16  # 4 agents x 4 prompts, each tokenised ...
    assert loop_thread not in threads  # ... never on the loop's thread
    answers = [text for agent, text in logs if agent.startswith("asker")]
    assert len(answers) == 16
    assert all("tokens; the context holds" in a for a in answers), answers[:2]
    assert {a.name: a.handled for a in result.agents}["echo"] == 1  # the others went on
    again, _ = run(workers=1)
    assert again.trace_hash == result.trace_hash
