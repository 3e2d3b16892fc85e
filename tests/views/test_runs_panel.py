"""The Runs browser over a real run store: list, open (messages), fork, diff to the first
divergence, all from the window; commands run in a child process, off the GUI thread."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from qhybrid._resources import resource_path
from qhybrid.models import MessagesModel
from qhybrid.views import MainWindow
from qhybrid.views._fork_dialog import ForkDialog


def _record(store: Path, scenario: Path, seed: int) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "qhybrid",
            "--headless",
            str(scenario),
            "--store",
            str(store),
            "--device",
            "cpu",
            "--seed",
            str(seed),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return str(json.loads(out.stdout)["run_id"])


def _scenario(tmp_path: Path) -> Path:
    path = tmp_path / "relays.toml"
    path.write_text(
        f"""
name = "relays"
[stop]
max_ticks = 200
[[agents]]
name = "relay"
module = "{resource_path("agents", "relay.wat").as_posix()}"
count = 6
[[agents]]
name = "sink"
module = "{resource_path("agents", "sink.wat").as_posix()}"
[[messages]]
to = "relay"
kind = 1
payload_i64 = [12, 0]
""",
        encoding="utf-8",
    )
    return path


def test_runs_browser_lists_opens_forks_and_diffs(
    qtbot: QtBot, tmp_path: Path, isolated_run_store: Path
) -> None:
    store = isolated_run_store
    scenario = _scenario(tmp_path)
    first = _record(store, scenario, 1)
    second = _record(store, scenario, 2)

    window = MainWindow()
    qtbot.addWidget(window)
    window.resize(1100, 720)
    window.show()
    panel = window.runs_panel
    model = window.runs_model
    assert model.path == store
    panel.refresh()
    assert [model.run_id(r) for r in range(model.rowCount())] == [first, second]
    assert model.index(0, model.SCENARIO).data() == "relays"
    assert model.index(0, model.STATUS).data() == "completed"
    assert model.index(0, model.SEED).data() == "1"
    assert len(model.index(0, model.TRACE).data()) == 16
    assert model.index(0, model.DURATION).data().endswith(" s")

    # Open: the details and every message of the run, by agent and by tick.
    panel.select(first)
    panel.open_button.trigger()
    assert first in panel.details.toPlainText() and "relay-0" in panel.details.toPlainText()
    inspector = window.message_inspector
    messages = inspector.model
    assert messages.rowCount() > 6
    assert messages.index(0, MessagesModel.SENDER).data() == "(runtime)"
    assert messages.index(0, MessagesModel.RECEIVER).data().startswith("relay-")
    inspector.agent_combo.setCurrentIndex(inspector.agent_combo.findText("sink"))
    shown = inspector.filter.rowCount()
    assert 0 < shown < messages.rowCount()
    for r in range(shown):
        row = inspector.filter.index(r, MessagesModel.RECEIVER)
        sender = inspector.filter.index(r, MessagesModel.SENDER).data()
        assert "sink" in (row.data(), sender)
    inspector.agent_combo.setCurrentIndex(0)
    # The timeline: messages per tick over the whole run; its scrubber picks the tick.
    counts = inspector.model.per_tick()
    assert sum(counts) == messages.rowCount() and counts[0] == 6
    assert inspector.timeline.ticks == len(counts)
    inspector.timeline.scrubber.setValue(2.4)  # dragged: snaps to tick 2
    assert inspector.tick_spin.value() == 2
    assert inspector.filter.rowCount() == counts[2]
    inspector.tick_spin.setValue(0)
    assert inspector.timeline.scrubber.value() == 0
    assert inspector.filter.rowCount() == 6  # the scenario's six initial messages
    inspector.table.selectRow(0)
    assert "payload (hex, 16 bytes)" in inspector.detail.toPlainText()
    assert "as int64: [12, 0]" in inspector.detail.toPlainText()

    # Fork from tick 3 with another seed, in a child process: the dialog asks for both.
    asked: list[ForkDialog] = []

    def answer(dialog: ForkDialog) -> bool:
        asked.append(dialog)
        assert dialog.tick.value() == 0  # the tick the inspector shows
        dialog.tick.setValue(3)
        dialog.seed.setValue(9)
        return True

    panel.exec_dialog = answer
    with qtbot.waitSignal(panel.command.finished, timeout=120_000) as done:
        panel.fork_button.trigger()
        assert not panel.fork_button.isEnabled()  # one command at a time
    assert len(asked) == 1
    assert done.args[1] == 0, done.args[3]
    assert model.rowCount() == 3
    fork = model.run_id(2)
    assert model.index(2, model.KIND).data() == "fork"
    assert model.index(2, model.PARENT).data() == f"{first} @ tick 3"

    # Diff the two seeds: the first divergence, and the inspector at that tick.
    panel.select(first, second)
    with qtbot.waitSignal(panel.command.finished, timeout=120_000) as done:
        panel.diff_button.trigger()
    assert done.args[1] == 1  # different
    diff = panel.last_diff
    assert diff is not None and not diff["identical"]
    tick = int(diff["first_tick"])
    assert f"first divergence: record {diff['first_record']}, tick {tick}" in (
        panel.details.toPlainText()
    )
    assert inspector.tick_spin.value() == tick
    assert inspector.filter.rowCount() > 0
    assert all(
        inspector.filter.index(r, MessagesModel.TICK).data() == str(tick)
        for r in range(inspector.filter.rowCount())
    )
    # ... and the first message at or after the first differing record, selected in full.
    row = inspector.current_row()
    assert row >= 0 and messages.messages[row].tick == tick
    at_tick = [m.n for m in messages.messages if m.tick == tick]
    first_n = int(diff["first_record"])
    assert messages.messages[row].n == min((n for n in at_tick if n >= first_n), default=at_tick[0])
    assert f"tick {tick}," in inspector.detail.toPlainText()
    assert fork != first

    # Replay re-executes the run and compares it with its recording: the same trace.
    panel.select(second)
    with qtbot.waitSignal(panel.command.finished, timeout=120_000) as done:
        panel.replay_button.trigger()
    assert done.args[1] == 0, done.args[3]
    assert "qhybrid replay" in panel.status_label.text()
    window.close()


def test_the_recorded_runs_tab_is_readable_at_1100x720(
    qtbot: QtBot, tmp_path: Path, isolated_run_store: Path
) -> None:
    """The smallest size the window is made for, with its docks as they start: the runs and
    a tick's messages have rows to read, the controls their text, no stray tab bar."""
    from PySide6.QtWidgets import QTabBar

    scenario = _scenario(tmp_path)
    ids = [_record(isolated_run_store, scenario, seed) for seed in (1, 2, 3)]
    window = MainWindow()
    qtbot.addWidget(window)
    window.resize(1100, 720)
    window.show()
    qtbot.waitExposed(window)
    window.central_tabs.setCurrentWidget(window.runs_split)
    panel, inspector = window.runs_panel, window.message_inspector
    panel.refresh()
    panel.open_run(ids[0])
    inspector.tick_spin.setValue(3)
    qtbot.wait(50)

    def rows_shown(table: object) -> int:
        view = table  # a QTableView
        return view.viewport().height() // view.verticalHeader().defaultSectionSize()  # type: ignore[attr-defined]

    assert rows_shown(panel.table) >= 3  # the three runs
    assert rows_shown(inspector.table) >= 3
    assert inspector.detail.height() >= 2 * inspector.detail.fontMetrics().height()
    # Controls keep their text: the tick, an agent's name, the filter's room.
    spin = inspector.tick_spin
    assert spin.width() >= spin.fontMetrics().horizontalAdvance("tick 12,345")
    assert inspector.agent_combo.width() >= inspector.agent_combo.fontMetrics().horizontalAdvance(
        "relay-5"
    )
    assert inspector.text_edit.width() >= 90
    # Run ids keep both ends (elided in the middle), so runs of one day tell apart.
    assert panel.table.textElideMode() == Qt.TextElideMode.ElideMiddle
    assert panel.store_label.toolTip().endswith(str(isolated_run_store))
    # The central tab is not squeezed by the right docks beyond a third of the width.
    assert window.runs_split.width() >= 700
    stray = [
        bar
        for bar in window.findChildren(QTabBar)
        if bar.parent() is window
        and bar.isVisible()
        and window.central_tabs.geometry().contains(bar.geometry())
    ]
    assert not stray
    window.close()
