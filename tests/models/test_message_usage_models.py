"""Fuel and memory per message in the window's models (issue #16, item 5): the message
inspector's Fuel and Memory columns and the agent detail's message lines, for a recorded run
(from the store) and a live one (from the runtime's ``message_usage`` event)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from qhybrid.models import DebuggerModels, MessagesModel, RuntimeController, parse_messages
from qhybrid.models._agent_detail import agent_report
from qhybrid.models._debug_feed import DebugFeed
from qhybrid.runtime import Runtime, RuntimeConfig, load_scenario
from qhybrid.runtime.store import RunStore
from tests.runtime.test_state_at import record, relays


def test_the_inspector_shows_each_messages_fuel_and_memory() -> None:
    messages = parse_messages(
        [
            (1, 0, "('ok', 0, 5, -1, 0, 1, b'hi', 1)"),
            (2, 1, "('ok', 1, 6, 0, 1, 1, b'yo', 0)"),
            (3, 2, "('drop', 2, 7, 0, 1, 1, b'', 'failed')"),
        ]
    )
    model = MessagesModel()
    model.load(messages, ["alice", "bob"], usage={(0, 5): (1234, 65536), (1, 6): (-1, 131072)})
    fuel, memory = MessagesModel.FUEL, MessagesModel.MEMORY
    header = [model.headerData(c, Qt.Orientation.Horizontal) for c in (fuel, memory)]
    assert header == ["Fuel", "Memory"]
    assert [model.index(r, fuel).data() for r in range(3)] == ["1,234", "", ""]
    assert [model.index(r, memory).data() for r in range(3)] == ["64 KiB", "128 KiB", ""]
    assert model.index(0, MessagesModel.PAYLOAD).data() == "hi"  # still the last column
    assert "its handler burnt 1,234 fuel; the agent's memory after it: 65,536 bytes" in (
        model.detail(0)
    )
    assert "fuel not metered" in model.detail(1) and "fuel" not in model.detail(2)


def test_a_recorded_runs_agent_detail_shows_fuel_per_message(qtbot: QtBot, tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite"
    run_id = record(store, relays(tmp_path), every=0)
    with RunStore(store, readonly=True) as s:
        usage = s.message_usage(run_id)
    controller = RuntimeController(workers=1, device="cpu")
    debugger = DebuggerModels(controller)
    try:
        debugger.load_run(store, run_id)
        report = debugger.report(debugger.agent_id("relay-0"))
        incoming = [line for line in report.messages.splitlines() if " in " in line]
        assert incoming and all("[fuel " in line and " KiB]" in line for line in incoming)
        tick, seq = next(iter(usage))
        fuel, _memory = usage[(tick, seq)]
        lines = agent_report(
            0, ["relay-0"], messages=[("ok", tick, seq, -1, 0, 1, b"x", 0)], usage=usage
        ).messages
        assert f"[fuel {fuel:,}, mem " in lines
    finally:
        controller.shutdown()
        debugger.close()


def test_the_live_feed_carries_each_ticks_message_usage(tmp_path: Path) -> None:
    scenario = load_scenario(relays(tmp_path))
    feed = DebugFeed()

    async def main() -> None:
        async with Runtime(scenario, RuntimeConfig(workers=2, device="cpu")) as rt:
            feed.attach(rt)
            await rt.run()
            feed.detach()

    asyncio.run(main())
    batch = feed.drain()
    ok = {(r[1], r[2]) for r in batch.records if r[0] == "ok"}
    got = {(u.tick, s) for u in batch.usage for s in u.seqs}
    assert ok and got == ok
