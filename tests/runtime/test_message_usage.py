"""Fuel and memory per message (issue #16, item 5): while someone listens to
``events.message_usage`` (the window's debugger, a recording), every batch asks its worker for
each delivery's fuel and the agent's memory after it; the tick's MessageUsage names the
messages by their trace sequence numbers. Nobody listening: the batches ask for nothing more
than before. The trace does not change either way."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

import pytest

from qhybrid.runtime import (
    MessageUsage,
    RunResult,
    Runtime,
    RuntimeConfig,
    TickFinished,
    load_scenario,
)
from qhybrid.runtime.store import RunStore
from tests.runtime.test_state_at import record, relays


def _run(path: Path, *, listen: bool, workers: int = 2) -> tuple[RunResult, dict[str, Any]]:
    scenario = load_scenario(path)
    seen: dict[str, Any] = {"usage": [], "ticks": [], "ok": [], "asked": []}

    async def main() -> RunResult:
        async with Runtime(scenario, RuntimeConfig(workers=workers, device="cpu")) as rt:
            if listen:
                rt.events.message_usage.connect(seen["usage"].append)
            rt.events.tick_finished.connect(seen["ticks"].append)

            def hook(tick: int, records: Any) -> None:
                seen["ok"] += [(r[1], r[2]) for r in records if r[0] == "ok"]
                seen["asked"].append(rt.pool.usage_rows)

            rt.add_tick_hook(hook)
            return await rt.run()

    return asyncio.run(main()), seen


def test_each_handled_message_gets_its_fuel_and_memory_while_someone_listens(
    tmp_path: Path,
) -> None:
    path = relays(tmp_path)
    result, seen = _run(path, listen=True)
    assert result.ok, result.reason
    usage: list[MessageUsage] = seen["usage"]
    got = {
        (u.tick, s): (f, m) for u in usage for s, f, m in zip(u.seqs, u.fuel, u.memory, strict=True)
    }
    # Every message handled, by its trace record's (tick, seq), and nothing else.
    assert set(got) == set(seen["ok"])
    assert all(f > 0 and m >= 65536 for f, m in got.values())
    # A tick's messages burn what the tick's event says the tick burnt.
    per_tick = {u.tick: sum(u.fuel) for u in usage}
    ticks: list[TickFinished] = seen["ticks"]
    assert all(per_tick.get(t.tick, 0) == t.fuel for t in ticks)
    assert sum(per_tick.values()) == sum(a.fuel_used or 0 for a in result.agents)
    # Each message once.
    assert all(len(set(u.seqs)) == len(u.seqs) for u in usage)
    # The same run with nobody listening: the same trace, and no batch asked for more.
    quiet, seen_quiet = _run(path, listen=False)
    assert quiet.trace_hash == result.trace_hash
    assert not any(seen_quiet["asked"]) and all(seen["asked"])


def test_the_same_messages_burn_the_same_fuel_on_any_number_of_workers(tmp_path: Path) -> None:
    path = relays(tmp_path)
    one = _run(path, listen=True, workers=1)[1]["usage"]
    three = _run(path, listen=True, workers=3)[1]["usage"]

    def table(usage: list[MessageUsage]) -> dict[tuple[int, int], int]:
        return {(u.tick, s): f for u in usage for s, f in zip(u.seqs, u.fuel, strict=True)}

    assert table(one) == table(three)


def test_a_recorded_run_keeps_each_messages_fuel_and_memory(tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite"
    run_id = record(store, relays(tmp_path), every=0)
    with RunStore(store, readonly=True) as s:
        usage = s.message_usage(run_id)
        ok = [
            (int(rec[1]), int(rec[2]))
            for _n, _t, line in s.records(run_id)
            if line.startswith("('ok'")
            for rec in [ast.literal_eval(line)]
        ]
        summary = s.run(run_id)["summary"]
    assert ok and set(usage) == set(ok)
    assert all(fuel > 0 and memory >= 65536 for fuel, memory in usage.values())
    assert sum(f for f, _ in usage.values()) == sum(a["fuel_used"] or 0 for a in summary["agents"])
    with RunStore(store) as s:  # deleting the run deletes them too
        s.delete_run(run_id)
    with RunStore(store, readonly=True) as s:
        assert s.message_usage(run_id) == {}


def test_a_recordings_ticks_take_the_short_ways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recorded run sends its message-only ticks through ``run_batches`` (one wait for all
    workers) and commits plain handled messages inline, as a run with no store does: its
    wrapper of ``run_batch`` is a replay's only, and ``run_batch``'s Outcomes count as plain."""
    from qhybrid.runtime._commit import Commit
    from qhybrid.runtime.wasm_pool import WorkerPool

    calls = {"long": 0, "batches": 0}
    long_way, batches = Commit._message, WorkerPool.run_batches

    def counted_message(self: Commit, *args: Any) -> None:
        calls["long"] += 1
        long_way(self, *args)

    async def counted_batches(self: WorkerPool, *args: Any, **kwargs: Any) -> Any:
        calls["batches"] += 1
        return await batches(self, *args, **kwargs)

    monkeypatch.setattr(Commit, "_message", counted_message)
    monkeypatch.setattr(WorkerPool, "run_batches", counted_batches)
    store = tmp_path / "runs.sqlite"
    run_id = record(store, relays(tmp_path), every=0)
    with RunStore(store, readonly=True) as s:
        assert s.run(run_id)["status"] == "completed"
        logged = {
            (rec[1], rec[2])
            for _n, _t, line in s.records(run_id)
            if line.startswith("('log'")
            for rec in [ast.literal_eval(line)]
        }
    # Only the messages whose handlers logged (the relays' last hops) took the long way.
    assert calls["batches"] > 10 and logged and calls["long"] == len(logged)
