"""ABI version 2 through the real runtime: envelopes, timers, groups and topics, config,
lifecycle, tools and questions; the tour with agents in C, Rust, AssemblyScript and WAT."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from qhybrid.runtime import (
    AgentLog,
    RunResult,
    Runtime,
    RuntimeConfig,
    Scenario,
    ScenarioError,
    load_scenario,
    parse_scenario,
)
from tests.conftest import ROOT

AGENTS = ROOT / "resources" / "agents"


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/agents/v2_probe.c, built on demand."""
    out = tmp_path_factory.mktemp("probe")
    src = out / "src"
    src.mkdir()
    (src / "v2_probe.c").write_bytes((ROOT / "tests" / "agents" / "v2_probe.c").read_bytes())
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "sdk" / "build.py"),
            "--lang",
            "c",
            "--agents-dir",
            src,
            "--out",
            out,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return out / "v2_probe.wasm"


def run_logged(
    sc: Scenario, workers: int = 2, answers: Path | None = None
) -> tuple[RunResult, list[tuple[str, int, str]]]:
    logs: list[tuple[str, int, str]] = []

    async def main() -> RunResult:
        config = RuntimeConfig(workers=workers, device="cpu", answers_path=answers)
        async with Runtime(sc, config) as rt:
            rt.events.agent_log.connect(
                lambda e: (
                    logs.append((e.agent, e.tick, e.text)) if isinstance(e, AgentLog) else None
                )
            )
            return await rt.run()

    return asyncio.run(main()), logs


def texts(logs: list[tuple[str, int, str]], agent: str) -> list[str]:
    return [text for name, _, text in logs if name == agent]


def probe_scenario(module: Path, tmp_path: Path) -> Scenario:
    (tmp_path / "tools.py").write_text("def total(values):\n    return sum(values)\n")
    text = f"""
name = "probe"
seed = 9
[stop]
max_ticks = 40
[[tools]]
name = "sum"
kind = "python"
function = "tools.py:total"
[[agents]]
name = "probe"
module = "{module.as_posix()}"
count = 2
on_error = "skip"
config = {{ model = {{ temperature = 0.2, name = "tiny" }} }}
overrides = {{ probe-1 = {{ model = {{ temperature = 0.5 }} }} }}
[[messages]]
to = "probe"
kind = 1
[[messages]]
to = "probe-0"
kind = 7
at = 1
[[messages]]
to = "probe-0"
kind = 11
at = 2
[[messages]]
to = "probe-1"
kind = 10
at = 9
[[messages]]
to = "probe-1"
kind = 7
at = 10
[[messages]]
to = "probe-0"
kind = 9
at = 12
"""
    return parse_scenario(text, source=str(tmp_path / "probe.toml"), base_dir=tmp_path)


def test_v2_calls_through_the_runtime(probe: Path, tmp_path: Path) -> None:
    answers = tmp_path / "answers.txt"
    answers.write_text("forty-two\n")
    result, logs = run_logged(probe_scenario(probe, tmp_path), answers=answers)
    p0, p1 = texts(logs, "probe-0"), texts(logs, "probe-1")
    # Start-up calls: timers get ids 0 and 1; a zero delay is refused (-8).
    assert p0[:10] == [
        "timers 0 1",
        "bad delay -8",
        "temperature 3 0.2",
        'model {"name":"tiny","temperature":0.2}',
        "missing -1 tiny -2",
        "subscribe 0",
        "reply -10",  # a message from the runtime has nobody to reply to
        "tool -9",  # not granted
        "group 2 1 -1",
        "ask 0",
    ]
    # The per-instance override, merged into the nested table.
    assert p1[2] == "temperature 3 0.5"
    assert p1[3] == 'model {"name":"tiny","temperature":0.5}'
    # The answer, from the answers file, one line per question in commit order.
    answered = [t for t in p0 + p1 if t.startswith("answer ")]
    assert answered == [
        'answer {"answer": "forty-two", "question": 0, "tag": 3, "text": "what is the answer?"}',
        'answer {"answer": null, "question": 0, "tag": 3, "text": "what is the answer?"}',
    ]
    # A repeating timer every 2 ticks from tick 0, cancelled at its third fire; a one-shot
    # at tick 3; both from the runtime (-1).
    every = [t for t in p0 if t.startswith("every")]
    assert every == [f"every now={n} timer=0 from=-1" for n in (2, 4, 6)]
    assert "cancel 0 -1" in p0
    assert [t for t in p0 if t.startswith("once")] == ["once now=3 x"]
    # Publish: every subscriber, in id order (the publisher too).
    assert "news from 0: hello" in p0 and "news from 0: hello" in p1
    # Request/reply: the reply carries the request's correlation id back.
    corr = (0 + 1) << 32 | 1
    assert f"corr {corr}" in p0
    assert f"request corr {corr} reply_to 0" in p1
    assert f"reply corr {corr} from 1: pong" in p0
    # stop_self: probe-1 handles nothing after tick 9 (its kind 7 at tick 10 is dropped).
    assert not any(tick > 9 for name, tick, _ in logs if name == "probe-1")
    summary = {a.name: a for a in result.agents}
    assert summary["probe-1"].state == "skipped"
    # set_error: the failure reports the agent's own text.
    assert summary["probe-0"].state == "skipped"
    assert summary["probe-0"].error == "custom failure"


def test_v2_runs_give_the_same_trace_for_1_and_3_workers(probe: Path, tmp_path: Path) -> None:
    sc = probe_scenario(probe, tmp_path)
    hashes = {run_logged(sc, workers=w)[0].trace_hash for w in (1, 3)}
    assert len(hashes) == 1


def test_a_v1_module_may_not_import_v2_functions(tmp_path: Path) -> None:
    wat = tmp_path / "old.wat"
    wat.write_text(
        """(module
          (import "qhybrid" "timer_after" (func (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "qh_abi_version") (result i32) (i32.const 1))
          (func (export "qh_alloc") (param i32) (result i32) (i32.const 1024))
          (func (export "qh_on_message") (param i32 i32 i32 i32) (result i32) (i32.const 0)))"""
    )
    sc = parse_scenario(
        f'[[agents]]\nname = "old"\nmodule = "{wat.as_posix()}"\n',
        source="t.toml",
        base_dir=tmp_path,
    )
    with pytest.raises(ScenarioError, match="imports timer_after of version 2"):
        run_logged(sc)


def test_a_tool_must_be_declared_to_be_granted(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"agents\[0\].grants.tools\[0\].*no \[\[tools\]\]"):
        parse_scenario(
            f'[[agents]]\nname = "a"\nmodule = "{(AGENTS / "sink.wat").as_posix()}"\n'
            'grants = { tools = ["web"] }\n',
            source="t.toml",
            base_dir=tmp_path,
        )


def test_the_tour_same_trace_for_1_and_4_workers() -> None:
    """docs/tour.md: Python, C, Rust, AssemblyScript and WAT agents in one run."""
    sc = load_scenario(ROOT / "resources" / "scenarios" / "tour.toml")
    runs = [run_logged(sc, workers=w) for w in (1, 4)]
    assert runs[0][0].trace_hash == runs[1][0].trace_hash
    result, logs = runs[0]
    assert result.status == "completed", result.reason
    # Eight jobs (two per language), Collatz steps of 1..8: 0+1+7+2+5+8+16+3.
    assert "manager: sent 8 jobs" in texts(logs, "manager")
    assert "manager: all 8 results in, total 42" in texts(logs, "manager")
    assert texts(logs, "listener") == ['listener: done {"total":42}']
    # The chat requests carry a JSON Schema: the engine's grammar constrains every token, so
    # the answers parse and follow it.
    (verdict,) = [t for t in texts(logs, "manager") if t.startswith("manager: the LLM says ")]
    assert json.loads(verdict.removeprefix("manager: the LLM says "))["verdict"] in (
        "small",
        "large",
    )
    (mood,) = [t for t in texts(logs, "mood") if t.startswith("rs_chat: ")]
    assert mood.startswith(("rs_chat: mood happy: ", "rs_chat: mood sad: "))
    (topic,) = [t for t in texts(logs, "topic") if t.startswith("as_chat: ")]
    assert topic.startswith("as_chat: topic ") and topic.endswith(" words)")
