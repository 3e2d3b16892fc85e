"""The debugger's view-model over a recorded run: agents' LLM requests from the run store
(prompt, answer, tokens, time; ABI v1 and v2 alike), and the ticks a timeline chose, which
the agent graph counts its edges over."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pytestqt.qtbot import QtBot

from qhybrid.models import DebuggerModels, RuntimeController
from qhybrid.runtime.store import RunStore, llm_calls
from tests.runtime.test_llm_calls import both_abis
from tests.runtime.test_state_at import record


def test_a_recorded_runs_llm_requests_show_in_the_agents_detail(
    qtbot: QtBot, tmp_path: Path
) -> None:
    store = tmp_path / "runs.sqlite"
    run_id = record(store, both_abis(tmp_path), every=0)
    controller = RuntimeController(workers=1, device="cpu")
    debugger = DebuggerModels(controller)
    with qtbot.waitSignal(debugger.changed):
        debugger.load_run(store, run_id)
    with RunStore(store, readonly=True) as s:
        recorded = {c.agent: c for c in llm_calls(s, run_id)}
    for name, kind in (("teller", "completion"), ("mood", "chat")):
        report = debugger.report(debugger.agent_id(name))
        call = recorded[name]
        assert report.counts["llm"] == 1
        assert report.llm.startswith(f"{kind} {call.request_id} at ticks {call.tick}")
        assert f"{call.tokens} tokens from {call.prompt_tokens} prompt tokens" in report.llm
        assert f"answer: {call.answer}" in report.llm
        assert f"{call.elapsed_s:.2f} s" in report.llm
        assert f"LLM requests: 1, {call.tokens:,} tokens" in report.overview
    assert "prompt: Once upon a time" in debugger.report(debugger.agent_id("teller")).llm
    mood = debugger.report(debugger.agent_id("mood")).llm
    assert "prompt: system: " in mood and "happy to see the sun" in mood
    controller.shutdown()
    debugger.close()


def test_the_chosen_ticks_are_one_selection_the_graph_counts_over(
    qtbot: QtBot, tmp_path: Path
) -> None:
    store = tmp_path / "runs.sqlite"
    run_id = record(store, both_abis(tmp_path), every=0)
    controller = RuntimeController(workers=1, device="cpu")
    debugger = DebuggerModels(controller)
    debugger.load_run(store, run_id)
    assert debugger.selection is None and debugger.run_id == run_id
    counts = debugger.tick_counts()
    assert int(counts.sum()) == debugger.graph.history.messages > 0
    with qtbot.waitSignal(debugger.selection_changed) as got:
        debugger.select_ticks(9, 3)  # either way round
    assert got.args == [(3, 9)] and debugger.selection == (3, 9)
    with qtbot.assertNotEmitted(debugger.selection_changed):
        debugger.select_ticks(3, 9)  # no change, no signal
    assert debugger.graph.build(3, 9).messages == int(counts[3:10].sum())
    debugger.select_ticks(4)
    assert debugger.selection == (4, 4)
    with qtbot.waitSignal(debugger.selection_changed) as got:
        debugger.load_run(store, run_id)  # another run (or the same again): no choice yet
    assert got.args == [None]
    assert np.array_equal(debugger.tick_counts(), counts)
    controller.shutdown()
    debugger.close()


def test_live_requests_pair_with_their_tokens_and_a_refused_one_says_why() -> None:
    from qhybrid.models import LlmCalls, agent_report
    from qhybrid.runtime import LlmRequested, LlmTokens

    calls = LlmCalls()
    calls.apply(
        [
            LlmRequested(3, "mood", 4, "system: be brief\nuser: hi", 32, "chat", 1),
            LlmRequested(-1, "mood", 6, "user: again", 0, "chat", 2, "no LLM model is here"),
        ],
        [
            LlmTokens(3, "mood", '{"mood":', 2, False),
            LlmTokens(3, "mood", '"happy"}', 3, True, 120.0, 0.05, "stop"),
        ],
    )
    mine = calls.of_agent("mood")
    assert [c.request_id for c in mine] == [3, -1]
    assert mine[0].answer == '{"mood":"happy"}' and mine[0].tokens == 5 and mine[0].done
    assert mine[1].done and mine[1].finish == "error" and mine[1].error == "no LLM model is here"
    text = agent_report(0, ["mood"], llm=mine).llm
    assert text.startswith("chat 3 at tick 4: stop; 5 tokens")
    assert "prompt: system: be brief\n          user: hi" in text
    assert "chat at tick 6: refused" in text and "error: no LLM model is here" in text
