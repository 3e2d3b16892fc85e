"""Agents' long-term memory (the mem_* ABI): writes at the tick's end, traced, quotas, and kept
by crash recovery (the sample agent resources/agents/notes.c)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from qhybrid.runtime import AgentLog, RunResult, Runtime, RuntimeConfig, parse_scenario
from qhybrid.runtime.wasm_pool._memory_abi import AgentMemory
from tests.conftest import ROOT

AGENTS = ROOT / "resources" / "agents"

NOTES = f"""
name = "notes"
[memory]
max_keys = {{keys}}
[[agents]]
name = "notes"
module = "{AGENTS / "notes.wasm"}"
[[agents]]
name = "ping"
module = "{AGENTS / "ping.wat"}"
[[messages]]
to = "ping"
kind = 1
payload_i64 = [60]
[[messages]]
to = "notes"
kind = 1
payload = "first"
at = 2
[[messages]]
to = "notes"
kind = 1
payload = "second"
at = 2
[[messages]]
to = "notes"
kind = 1
payload = "third"
at = 30
[[messages]]
to = "notes"
kind = 2
at = 50
"""


async def _run(text: str, kill_at: int | None = None) -> tuple[RunResult, list[str], Runtime]:
    scenario = parse_scenario(text, source="notes.toml", base_dir=Path.cwd())
    logs: list[str] = []
    async with Runtime(scenario, RuntimeConfig(workers=2, device="cpu", checkpoint_every=4)) as rt:
        rt.events.agent_log.connect(
            lambda e: logs.append(e.text) if isinstance(e, AgentLog) else None
        )
        while await rt.step():
            if kill_at is not None and rt.tick >= kill_at:
                rt.pool.kill_worker(0)  # notes is agent 0, on worker 0
                kill_at = None
        assert rt.result is not None
        return rt.result, logs, rt


def test_the_sample_agent_remembers_and_every_write_is_traced() -> None:
    result, logs, rt = asyncio.run(_run(NOTES.format(keys=100)))
    assert result.ok, result.reason
    assert logs[:4] == [
        "notes: run 1, 0 notes remembered",
        "notes: 1 notes",
        "notes: 2 notes",
        "notes: 3 notes",
    ]
    assert "notes: note/000001 = second" in logs and "notes: note/000002 = third" in logs
    memory = rt.memory.current("notes")
    assert memory[b"runs"] == b"1" and memory[b"notes"] == b"3"
    assert memory[b"note/000000"] == b"first"
    records = [r for r in rt._trace.recent() if '"mem_put"' in r]
    assert len(records) == 7  # runs, then a note and the count for each of three messages


def test_writes_take_effect_when_their_tick_is_over() -> None:
    mem = AgentMemory((), 10, 1000)
    mem.stage(2, [(b"k", b"v1")])
    mem.at_tick(2)  # another message of tick 2 still sees the memory as the tick began
    assert b"k" not in mem.committed
    mem.stage(2, [(b"k", b"v2"), (b"j", b"x")])
    assert mem.view([(b"k", None)]) == (1, 2)  # quotas count the tick's writes
    mem.at_tick(3)
    assert mem.committed == {b"k": b"v2", b"j": b"x"} and mem.bytes == 5


def test_quotas_refuse_a_write_with_a_code_not_a_trap() -> None:
    result, logs, rt = asyncio.run(_run(NOTES.format(keys=3)))
    assert result.ok and result.agents[0].state == "loaded"
    # runs, note/000000 and notes fill the 3 keys: every later note is refused.
    assert logs.count("notes: memory refused note 1 (code -2)") == 2
    assert len(rt.memory.current("notes")) == 3


def test_memory_survives_a_worker_crash_exactly() -> None:
    text = NOTES.format(keys=100)
    undisturbed, _, _ = asyncio.run(_run(text))
    got, logs_after, _ = asyncio.run(_run(text, kill_at=40))
    assert got.worker_restarts == 1 and got.ok
    assert got.trace_hash == undisturbed.trace_hash
    assert "notes: note/000002 = third" in logs_after
