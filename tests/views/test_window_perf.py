"""What keeps the window at 30 frames a second with a thousand live agents and its GUI thread
free: frames counted as painted, the heap kept out of full collections while a run goes,
views nobody sees left alone, the agents table in a slice of its own and drawn with one call
a cell, the charts' time axes redrawn one plot a frame. (The figures themselves live in
``qhybrid bench ui``, not in timed tests.)"""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path

import numpy as np
from PySide6.QtCore import QCoreApplication, Qt
from PySide6.QtWidgets import QStyleOptionViewItem
from pytestqt.qtbot import QtBot

from qhybrid.models import AgentsTableModel, LiveModels, LiveSeries, RuntimeController
from qhybrid.models import SessionState as S
from qhybrid.models._live import DEFAULT_FPS, FRAME_COST_FACTOR
from qhybrid.runtime import SERIES, AgentSummary, MetricsSnapshot
from qhybrid.views import MainWindow
from qhybrid.views._charts import ChartsWidget
from qhybrid.views._tables import AgentsView
from tests.views.test_window_run import heavy_scenario


def _window(qtbot: QtBot) -> MainWindow:
    window = MainWindow(controller=RuntimeController(workers=2, device="cpu"))
    qtbot.addWidget(window)
    window.resize(1280, 800)
    window.show()
    qtbot.waitExposed(window)
    return window


def test_a_run_freezes_the_heap_while_it_goes_and_the_window_counts_painted_frames(
    qtbot: QtBot, tmp_path: Path
) -> None:
    window = _window(qtbot)
    assert gc.get_freeze_count() == 0
    window.set_scenario_path(heavy_scenario(tmp_path, agents=50))
    window.start_action.trigger()
    qtbot.waitUntil(lambda: window.controller.state == S.RUNNING, timeout=60_000)
    runtime = window.controller.runtime
    assert runtime is not None
    # The objects alive when the run started are left out of full collections...
    assert gc.get_freeze_count() > 1000
    frames, painted = window.live.frames, window.painted_frames
    qtbot.waitUntil(lambda: window.painted_frames >= painted + 5, timeout=30_000)
    # ...and a frame is counted when a repaint shows a refresh not shown before: never more
    # frames than refreshes (one more: the refresh before the count began, painted after).
    assert window.painted_frames - painted <= window.live.frames - frames + 1
    assert window.live.frame_cpu_s > 0  # refreshes and paints are costed in GUI CPU time
    with qtbot.waitSignal(window.controller.run_finished, timeout=60_000):
        window.stop_action.trigger()
    qtbot.waitUntil(lambda: window.controller.state == S.STOPPED, timeout=10_000)
    assert gc.get_freeze_count() == 0  # given back to the collector at the end
    window.close()
    assert gc.get_freeze_count() == 0


def test_docks_behind_another_tab_are_neither_polled_nor_refreshed(qtbot: QtBot) -> None:
    window = _window(qtbot)
    # Qt keeps a tabbed dock that is not the current tab "visible", off-screen.
    assert window.agents_view.isVisible() and window.agent_detail.isVisible()
    window.agents_dock.raise_()
    qtbot.waitUntil(lambda: window.live.agents_visible)
    assert "agent_detail" not in window.debugger.watching
    assert not window.agent_detail.seen
    window.agent_detail_dock.raise_()
    qtbot.waitUntil(lambda: "agent_detail" in window.debugger.watching)
    assert window.agent_detail.seen and not window.live.agents_visible
    window.agents_dock.raise_()
    qtbot.waitUntil(lambda: window.live.agents_visible)
    assert "agent_detail" not in window.debugger.watching
    window.close()


def test_the_throttle_counts_the_gui_threads_cpu_time_of_refreshes_and_paints(
    qtbot: QtBot,
) -> None:
    controller = RuntimeController()
    live = LiveModels(controller)
    base = round(1000 / DEFAULT_FPS)
    assert live.timer.interval() == base and DEFAULT_FPS > 30
    live._start_timer()
    for _ in range(30):  # frames whose painting costs 20 ms of CPU each
        live.add_paint_cost(0.020)
        live._on_timer()
    assert live.timer.interval() >= 0.9 * FRAME_COST_FACTOR * 20
    for _ in range(40):  # cheap again: back to the asked rate
        live._on_timer()
    assert live.timer.interval() <= base + 2
    live.close()
    assert controller.shutdown()


def _summaries(k: int, failed: int = -1) -> list[AgentSummary]:
    return [
        AgentSummary(
            f"relay-{i}",
            "relay.wat",
            i % 2,
            "failed" if i == failed else "loaded",
            k * 10 + i % 7,
            "out of fuel" if i == failed else None,
            0,
            "relay",
            1000 * k + i,
            10,
            65536,
        )
        for i in range(60)
    ]


def test_the_agents_delegate_draws_what_the_model_says(qtbot: QtBot) -> None:
    controller = RuntimeController()
    live = LiveModels(controller)
    view = AgentsView(live)
    qtbot.addWidget(view)
    view.show()
    live.agents.update_agents(_summaries(3, failed=7))
    proxy = live.agents_filter
    proxy.sort(AgentsTableModel.HANDLED, Qt.SortOrder.DescendingOrder)  # rows != source rows
    for row in (0, 5, 59):
        for column in range(len(AgentsTableModel.COLUMNS)):
            index = proxy.index(row, column)
            option = QStyleOptionViewItem()
            view.delegate.initStyleOption(option, index)
            assert option.text == index.data(), (row, column)
            alignment = index.data(Qt.ItemDataRole.TextAlignmentRole)
            if alignment is not None:
                assert int(option.displayAlignment) == alignment
            assert option.index == index
    live.close()
    assert controller.shutdown()


def test_the_agents_table_is_polled_in_a_slice_of_its_own_and_its_last_state_shows(
    qtbot: QtBot, tmp_path: Path
) -> None:
    window = _window(qtbot)
    live = window.live
    calls: list[bool] = []
    original = live.refresh

    def refresh(*, agents: bool = True) -> None:
        calls.append(agents)
        original(agents=agents)

    live.refresh = refresh  # type: ignore[method-assign]
    window.set_scenario_path(heavy_scenario(tmp_path, agents=30))
    window.start_action.trigger()
    qtbot.waitUntil(lambda: window.controller.state == S.RUNNING, timeout=60_000)
    runtime = window.controller.runtime
    assert runtime is not None
    qtbot.waitUntil(lambda: live.agents.rowCount() == 31, timeout=30_000)
    first = int(live.agents.index(0, AgentsTableModel.HANDLED).data().replace(",", ""))
    # The timer's frames leave the table out; its own slice catches up twice a second.
    qtbot.waitUntil(
        lambda: int(live.agents.index(0, AgentsTableModel.HANDLED).data().replace(",", "")) > first,
        timeout=10_000,
    )
    assert calls and not any(calls)
    with qtbot.waitSignal(window.controller.run_finished, timeout=60_000) as finished:
        window.stop_action.trigger()
    qtbot.waitUntil(lambda: window.controller.state == S.STOPPED, timeout=10_000)
    result = finished.args[0]
    shown = {
        live.agents.index(r, 0).data(): int(
            live.agents.index(r, AgentsTableModel.HANDLED).data().replace(",", "")
        )
        for r in range(live.agents.rowCount())
    }
    assert shown == {a.name: a.handled for a in result.agents}  # the final counts, not stale
    window.close()


def _snapshot(walls: list[float]) -> MetricsSnapshot:
    wall = np.array(walls)
    series = {name: np.zeros(len(wall)) for name in SERIES}
    series["wall_s"] = wall
    series["tick"] = np.arange(len(wall), dtype=float)
    series["tasks_total"] = series["delivered_total"] = wall * 1000.0
    busy = np.stack([wall * 0.5, wall * 0.25], axis=1)
    return MetricsSnapshot(series=series, worker_busy_s=busy, samples=len(wall))


def test_a_longer_time_span_reaches_every_plot_one_a_frame(qtbot: QtBot) -> None:
    charts = ChartsWidget()
    series = charts.series = LiveSeries(capacity=4000)
    qtbot.addWidget(charts)
    charts.resize(700, 440)
    charts.show()
    walls = [0.05 * i for i in range(31)]
    for i in range(1, len(walls) + 1):
        series.sample(walls[i - 1], _snapshot(walls[:i]))
    charts.refresh()
    walls += [1.5 + 0.1 * i for i in range(1, 40)]  # 5.4 s: the 10 s span
    series.sample(walls[-1], _snapshot(walls))
    ranges = []
    for _ in range(len(charts.plots)):
        charts.refresh()
        QCoreApplication.processEvents()
        ranges.append(sorted(p.getViewBox().viewRange()[0][0] for p in charts.plots.values()))
    assert charts.x_span == 10.0
    # One more plot on the new span each frame, all of them after one frame per plot.
    assert [r.count(-10.0) for r in ranges] == list(range(1, len(charts.plots) + 1))
    ticks = charts.plots["Throughput"].getAxis("bottom")._tickLevels
    assert [text for _value, text in ticks[0]] == ["0", "-2", "-4", "-6", "-8", "-10"]


def test_the_last_frame_of_a_run_shows_every_plot_on_the_same_span(qtbot: QtBot) -> None:
    controller = RuntimeController()
    live = LiveModels(controller)
    charts = ChartsWidget(live)
    qtbot.addWidget(charts)
    charts.resize(700, 440)
    charts.show()
    series = live.series
    walls = [0.05 * i for i in range(31)] + [1.5 + 0.1 * i for i in range(1, 40)]
    for i in range(1, len(walls) + 1):
        series.sample(walls[i - 1], _snapshot(walls[:i]))
    assert not live.timer.isActive()  # the run is over: this refresh is its last frame
    charts.refresh()
    assert charts.x_span == 10.0
    assert {p.getViewBox().viewRange()[0][0] for p in charts.plots.values()} == {-10.0}
    live.close()
    assert controller.shutdown()


def test_the_agents_table_repaints_only_the_columns_that_changed(qtbot: QtBot) -> None:
    from qhybrid.views._tables import AgentsDelegate

    controller = RuntimeController()
    live = LiveModels(controller)
    view = AgentsView(live)
    qtbot.addWidget(view)
    view.resize(700, 400)
    view.show()
    qtbot.waitExposed(view)
    painted: list[int] = []

    class Counting(AgentsDelegate):
        def initStyleOption(self, option, index) -> None:  # type: ignore[no-untyped-def]
            painted.append(index.column())
            super().initStyleOption(option, index)

    view.table.setItemDelegate(Counting(live.agents_filter, live.agents, view.table))
    live.agents.update_agents(_summaries(1))
    qtbot.waitUntil(lambda: bool(painted))  # the first paint: every column
    qtbot.wait(50)
    painted.clear()
    changed = _summaries(1)
    changed[3] = dataclasses.replace(changed[3], handled=changed[3].handled + 5)
    live.agents.update_agents(changed)
    qtbot.waitUntil(lambda: bool(painted))
    qtbot.wait(50)
    assert AgentsTableModel.HANDLED in painted
    assert set(painted) == {AgentsTableModel.HANDLED}  # not the names, states, workers...
    assert view.table.model().index(3, AgentsTableModel.HANDLED).data() == f"{3 % 7 + 10 + 5}"
    live.close()
    assert controller.shutdown()


def test_the_debuggers_states_poll_and_its_views_run_in_slices_after_the_intake(
    qtbot: QtBot, tmp_path: Path
) -> None:
    window = _window(qtbot)
    debugger = window.debugger
    debugger.watch("test", True)
    during: list[bool] = []
    in_refresh = [False]
    debugger.changed.connect(lambda: during.append(in_refresh[0]))
    original = debugger.refresh

    def refresh(*, flush: bool = False) -> None:
        in_refresh[0] = True
        try:
            original(flush=flush)
        finally:
            in_refresh[0] = False

    debugger.refresh = refresh  # type: ignore[method-assign]
    debugger.timer.timeout.disconnect()
    debugger.timer.timeout.connect(refresh)
    window.set_scenario_path(heavy_scenario(tmp_path, agents=30))
    window.start_action.trigger()
    qtbot.waitUntil(lambda: window.controller.state == S.RUNNING, timeout=60_000)
    qtbot.waitUntil(lambda: len(during) >= 2, timeout=30_000)
    assert not any(during)  # never inside the intake's slice while the run goes
    with qtbot.waitSignal(window.controller.run_finished, timeout=60_000) as finished:
        window.stop_action.trigger()
    qtbot.waitUntil(lambda: window.controller.state == S.STOPPED, timeout=10_000)
    result = finished.args[0]
    # The last refresh (a flush) takes the final states at once.
    assert [s.state for s in debugger.summaries] == [a.state for a in result.agents]
    window.close()
