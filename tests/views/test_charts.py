"""The charts fit the run's time, label their axes, keep legends outside the plots and give
every curve its own colour."""

from __future__ import annotations

import re

import numpy as np
import pyqtgraph as pg
from pytestqt.qtbot import QtBot

from qhybrid.models import LiveSeries
from qhybrid.runtime import SERIES, MetricsSnapshot
from qhybrid.views._charts import HISTORY_S, ChartsWidget


def _snapshot(walls: list[float]) -> MetricsSnapshot:
    wall = np.array(walls)
    series = {name: np.zeros(len(wall)) for name in SERIES}
    series["wall_s"] = wall
    series["tick"] = np.arange(len(wall), dtype=float)
    series["tasks_total"] = series["delivered_total"] = wall * 1000.0
    busy = np.stack([wall * 0.5, wall * 0.25], axis=1)
    return MetricsSnapshot(series=series, worker_busy_s=busy, samples=len(wall))


def _charts(qtbot: QtBot) -> tuple[ChartsWidget, LiveSeries]:
    charts = ChartsWidget()
    series = charts.series = LiveSeries(capacity=4000)
    qtbot.addWidget(charts)
    charts.resize(700, 440)
    charts.show()
    return charts, series


def test_the_time_axis_fits_a_short_run_and_grows_with_it(qtbot: QtBot) -> None:
    charts, series = _charts(qtbot)
    series.sample(0.0, None)  # starting: no tick yet, nothing to fit
    series.sample(3.0, None)
    walls = [3.0 + 0.05 * i for i in range(31)]  # a 1.5 s run after 3 s of start-up
    for i in range(1, len(walls) + 1):
        series.sample(walls[i - 1], _snapshot(walls[:i]))
    charts.refresh()
    assert charts.x_span == 2.0  # not one pixel of a 60 s axis
    low, high = charts.plots["Throughput"].getViewBox().viewRange()[0]
    assert (low, high) == (-2.0, 0.0)
    longer = [3.0 + 0.5 * i for i in range(100)]
    for i in range(40, len(longer) + 1, 10):
        series.sample(longer[i - 1], _snapshot(longer[:i]))
    charts.refresh()
    assert charts.x_span == HISTORY_S


def test_axes_are_labelled_legends_sit_in_titles_and_colours_are_distinct(qtbot: QtBot) -> None:
    charts, _series = _charts(qtbot)
    bottom = charts.plots["LLM tokens/s"].getAxis("bottom")
    assert "time before now" in bottom.labelString() and "(s)" in bottom.labelString()
    assert charts.plots["Throughput"].getAxis("left").labelText == "/s"
    title = charts.plots["Queue depth"].titleLabel.text
    assert "messages" in title and "CPU tasks" in title and "GPU tasks" in title
    # No legend item inside any plot (where it would cover curves, or be clipped).
    assert all(plot.legend is None for plot in charts.plots.values())
    colours = [
        pg.mkPen(curve.opts["pen"]).color().name()
        if curve.opts["pen"] is not None
        else pg.mkColor(curve.opts["symbolBrush"]).name()
        for curve, _scale in charts.curves.values()
    ]
    assert len(set(colours)) == len(colours)
    in_titles = re.findall(r"color:(#[0-9A-Fa-f]{6})", title)
    assert len(set(in_titles)) == 3


def test_hovering_a_plot_shows_the_values_under_the_cursor_with_units(qtbot: QtBot) -> None:
    charts, series = _charts(qtbot)
    walls = [0.05 * i for i in range(41)]  # 2 s of a run doing 1000 tasks a second
    for i in range(1, len(walls) + 1):
        series.sample(walls[i - 1], _snapshot(walls[:i]))
    charts.refresh()
    plot = charts.plots["Throughput"]
    view = plot.getViewBox()
    at = view.mapViewToScene(pg.Point(-0.5, 10.0))
    charts.graphics.scene().sigMouseMoved.emit(at)
    text = charts.hover_label
    line = charts._hover_line["Throughput"]
    assert text.isVisible() and line.isVisible()
    assert abs(line.value() + 0.5) < 0.05
    # Beside the cursor and whole, inside the charts (not clipped by a small plot).
    assert charts.rect().contains(text.geometry())
    shown = text.text().replace("<br>", "\n")
    assert "0.50 s ago" in shown
    assert "tasks: 1,000/s" in shown and "messages: 1,000/s" in shown
    # Worker load in percent (worker 0 busy half the time, worker 1 a quarter).
    load_view = charts.plots["Worker load"].getViewBox()
    charts.graphics.scene().sigMouseMoved.emit(load_view.mapViewToScene(pg.Point(-0.5, 50.0)))
    assert not line.isVisible()  # one plot's values at a time
    load = text.text()
    assert "w0: 50.0%" in load and "w1: 25.0%" in load
    # Units other than rates and percentages are spaced; no sample near: a dash.
    assert "MiB" in charts.values_text("Shared tensors", -0.5)
    assert "\N{EM DASH}" in charts.values_text("GPU kernel time", -0.5)
    # Leaving the plots hides it.
    charts.graphics.scene().sigMouseMoved.emit(pg.Point(-1000.0, -1000.0))
    assert not text.isVisible()
    assert not charts._hover_line["Worker load"].isVisible()


def test_y_axes_carry_a_few_round_labels_that_fit_a_small_plot(qtbot: QtBot) -> None:
    charts, series = _charts(qtbot)
    walls = [0.05 * i for i in range(41)]
    for i in range(1, len(walls) + 1):
        series.sample(walls[i - 1], _snapshot(walls[:i]))
    charts.refresh()
    ticks = charts.plots["Throughput"].getAxis("left")._tickLevels
    labels = [text for _value, text in ticks[0]]
    assert 2 <= len(labels) <= 3 and ticks[1] == []
    assert labels[0] == "0" and all(re.fullmatch(r"\d+k?", t) for t in labels)
    percent = [t for _v, t in charts.plots["Worker load"].getAxis("left")._tickLevels[0]]
    assert percent == ["0", "50", "100"]
