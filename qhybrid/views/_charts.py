"""Live charts of a run (pyqtgraph), redrawn once per frame of :class:`LiveModels`.

As pyqtgraph's own speed examples advise: the data lives in preallocated numpy ring buffers
(:class:`~qhybrid.models.LiveSeries`), one timer drives every curve (the models' frame), each
curve gets one ``setData`` per frame, and plots clip to the visible range and downsample by
peaks, so a long history costs no more to draw than the pixels it covers.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QObject, QPointF, Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QGraphicsItem, QLabel, QVBoxLayout, QWidget

from qhybrid.models import LiveModels, LiveSeries

__all__ = ["ChartsWidget"]

# Colour-blind-safe (Okabe-Ito, then three of Paul Tol's), readable on light and dark
# backgrounds. Every channel gets its own colour across all the plots.
_COLOURS = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#44AA99",
    "#AA4499",
    "#999933",
)

# (title, unit, [(channel, legend, scale)]); worker loads are added per worker.
_PLOTS: tuple[tuple[str, str, tuple[tuple[str, str, float], ...]], ...] = (
    ("Throughput", "/s", (("tasks_per_s", "tasks", 1.0), ("messages_per_s", "messages", 1.0))),
    (
        "Queue depth",
        "",
        (
            ("queued_messages", "messages", 1.0),
            ("queued_cpu", "CPU tasks", 1.0),
            ("queued_gpu", "GPU tasks", 1.0),
        ),
    ),
    ("Worker load", "%", ()),
    ("GPU busy", "%", (("gpu_busy", "busy", 100.0),)),
    ("GPU kernel time", "ms", (("kernel_ms", "per job", 1.0),)),
    ("Shared tensors", "MiB", (("tensor_mib", "shared memory", 1.0),)),
    ("LLM tokens/s", "tok/s", (("llm_tok_s", "tokens", 1.0),)),
)


#: Seconds of history the charts show, at most.
HISTORY_S = 60.0
#: The time axis fits the run: the shortest of these spans that holds it (a 1.5 s run fills
#: a 2 s axis, not one pixel of a 60 s one). Few steps, so the axis is rarely redrawn.
_SPANS_S = (2.0, 5.0, 10.0, 20.0, 30.0, HISTORY_S)

_PERCENT = frozenset(title for title, unit, _ in _PLOTS if unit == "%")
_UNITS = {title: unit for title, unit, _ in _PLOTS}
#: Pixels from the cursor within which a sample counts as "under" it.
_HOVER_PX = 12


def _finite_max(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else 0.0


class ChartsWidget(QWidget):
    """A grid of plots over a :class:`LiveSeries`; :meth:`refresh` redraws them all."""

    def __init__(self, live: LiveModels | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("charts")
        self.series: LiveSeries | None = live.series if live is not None else None
        self._live = live
        self.graphics = pg.GraphicsLayoutWidget(self)
        self.graphics.setObjectName("charts_graphics")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.graphics)
        self.plots: dict[str, pg.PlotItem] = {}
        self._y_top: dict[str, float] = {}
        self._plot_of: dict[str, str] = {}
        self.curves: dict[str, tuple[pg.PlotDataItem, float]] = {}
        self.worker_curves: list[pg.PlotDataItem] = []
        self.redraws = 0
        self.skipped = 0  # curves left as they were in a frame (their picture had not changed)
        self._shown: dict[int, tuple[float, float]] = {}  # id(curve) -> (value, oldest time)
        self._scatter = {"kernel_ms"}
        self._legends: dict[str, list[tuple[str, str]]] = {}
        self.x_span = _SPANS_S[0]
        self._x_pending: list[pg.PlotItem] = []  # plots still showing the previous span
        colour_index = 0
        for index, (title, unit, channels) in enumerate(_PLOTS):
            span = 2 if index == len(_PLOTS) - 1 and len(_PLOTS) % 2 else 1
            plot = self.graphics.addPlot(row=index // 2, col=index % 2, colspan=span, title=title)
            plot.setObjectName(title)
            plot.setClipToView(True)
            plot.setDownsampling(auto=True, mode="peak")
            plot.setMenuEnabled(False)
            plot.hideButtons()
            plot.setLabel("left", units=None, text=unit)
            plot.getViewBox().setMouseEnabled(x=False, y=False)
            # The y ranges are set by refresh(), from 0 (see _fit_y): never pyqtgraph's
            # auto-range, which on a flat line draws a degenerate axis that PySide6 6.12
            # answers by corrupting a reference count (the interpreter aborts at exit).
            plot.enableAutoRange(axis="y", enable=False)
            # Time runs as "seconds ago" over a fixed range: the axes and the grid keep
            # their cached drawing while the curves scroll (redrawing axes costs most).
            plot.enableAutoRange(axis="x", enable=False)
            plot.setXRange(-_SPANS_S[0], 0, padding=0)
            _set_x_ticks(plot, _SPANS_S[0])
            for name in ("left", "bottom"):
                # Drawn once into a pixmap, blitted while the curves move: an axis is redrawn
                # (its Python paint, its recorded picture replayed) only when it changes.
                plot.getAxis(name).setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
            if index >= len(_PLOTS) - (1 if len(_PLOTS) % 2 else 2):
                # The plots share one time axis: labelled once, on the bottom row (a label
                # per plot takes a fifth of each plot's height at 1100x720).
                plot.setLabel("bottom", "time before now", units="s")
                plot.getAxis("bottom").enableAutoSIPrefix(False)
            plot.setYRange(0, 100 if unit == "%" else 1, padding=0)
            _set_y_ticks(plot, 100.0 if unit == "%" else 1.0)
            self._y_top[title] = 100.0 if unit == "%" else 1.0
            # The legend is in the title, outside the plot: never over the curves, never
            # clipped however small the plot gets.
            self._legends[title] = [
                (name, _COLOURS[(colour_index + i) % len(_COLOURS)])
                for i, (_c, name, _s) in enumerate(channels)
            ]
            for i, (channel, name, scale) in enumerate(channels):
                colour = _COLOURS[(colour_index + i) % len(_COLOURS)]
                if channel == "kernel_ms":
                    curve = plot.plot(
                        pen=None, symbol="o", symbolSize=5, symbolBrush=colour, symbolPen=None
                    )
                else:
                    # Width 1 (cosmetic): Qt's raster engine has a fast path for thin lines.
                    curve = plot.plot(pen=pg.mkPen(colour, width=1), name=name, antialias=False)
                self.curves[channel] = (curve, scale)
                self._plot_of[channel] = title
            colour_index += len(channels)
            self.plots[title] = plot
        # Hover: a vertical line at the cursor and the values there, with units.
        self._hover_line: dict[str, pg.InfiniteLine] = {}
        for title, plot in self.plots.items():
            line = pg.InfiniteLine(angle=90, movable=False)
            line.setZValue(10)
            line.hide()
            plot.addItem(line, ignoreBounds=True)
            self._hover_line[title] = line
        # The values float over the charts beside the cursor, as a tooltip does: a label in a
        # plot would be clipped by it (a plot is 30 pixels tall at 1100x720).
        self.hover_label = QLabel(self)
        self.hover_label.setObjectName("charts_hover")
        self.hover_label.setTextFormat(Qt.TextFormat.RichText)
        self.hover_label.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.hover_label.setMargin(4)
        self.hover_label.hide()
        self._hover: tuple[str, QPointF] | None = None  # the plot and scene point hovered
        self.graphics.scene().sigMouseMoved.connect(self.hover_at)
        self.graphics.viewport().installEventFilter(self)
        self.apply_palette(self.palette())
        if live is not None:
            live.frame.connect(self.refresh)

    # -- drawing -----------------------------------------------------------------------------
    def refresh(self) -> None:
        """One ``setData`` per curve from the ring buffers' current window."""
        series = self.series
        if series is None or not self.isVisible():
            return
        t = series.times()
        if len(t):
            # From the first tick: the seconds spent starting (compiling, loading agents,
            # opening the GPU) have no samples to show.
            ticks = np.isfinite(series.channel("tick"))
            first = int(np.argmax(ticks)) if ticks.any() else len(t) - 1
            self._fit_x(float(t[-1] - t[first]))
            t = t - t[-1]  # seconds ago
        if len(t) == 0:
            for curve, _scale in self.curves.values():
                curve.setData([], [])
            for curve in self.worker_curves:
                curve.setData([], [])
            self._shown.clear()
            return
        peaks: dict[str, float] = {}
        for channel, (curve, scale) in self.curves.items():
            y = series.channel(channel)
            if scale != 1.0:
                y = y * scale
            title = self._plot_of[channel]
            peaks[title] = max(peaks.get(title, 0.0), _finite_max(y))
            if self._unchanged(curve, t, y):
                continue
            _set_curve(curve, t, y, points=channel in self._scatter)
        for title, peak in peaks.items():
            self._fit_y(title, peak)
        self._ensure_worker_curves(series.workers)
        for worker, curve in enumerate(self.worker_curves):
            y = series.worker_load(worker) * 100.0
            if not self._unchanged(curve, t, y):
                _set_curve(curve, t, y)
        self.redraws += 1
        if self._hover is not None:
            self.hover_at(self._hover[1])  # the values under a still cursor move on

    def _unchanged(self, curve: pg.PlotDataItem, t: np.ndarray, y: np.ndarray) -> bool:
        """True when ``curve`` already shows this picture: a flat line (or no data) at the same
        value, starting within a pixel or so of the same time. Such curves (the GPU's and the
        LLM's on a CPU-only run, say) get no ``setData``, so pyqtgraph repaints nothing there.
        """
        finite = y[np.isfinite(y)]
        if finite.size == 0:
            value = float("nan")
        elif finite.size == y.size and finite.min() == finite.max():
            value = float(finite[0])
        else:
            self._shown.pop(id(curve), None)
            return False
        shown = self._shown.get(id(curve))
        if (
            shown is not None
            and (shown[0] == value or (np.isnan(shown[0]) and np.isnan(value)))
            and abs(shown[1] - float(t[0])) < self.x_span / 400
        ):
            self.skipped += 1
            return True
        self._shown[id(curve)] = (value, float(t[0]))
        return False

    def _fit_x(self, age_s: float) -> None:
        """Show the shortest span of :data:`_SPANS_S` that holds the run's history so far."""
        span = next((s for s in _SPANS_S if age_s <= s), HISTORY_S)
        if span != self.x_span:
            self.x_span = span
            self._x_pending = list(self.plots.values())
        # One plot a frame: redrawing a time axis is the costliest part of a frame, and all
        # seven at once made the longest frame of a run (a few frames of a plot still on the
        # shorter span are not seen). The last frame of a run (no timer any more) does all.
        last = self._live is not None and not self._live.timer.isActive()
        while self._x_pending:
            plot = self._x_pending.pop(0)
            plot.setXRange(-span, 0, padding=0)
            _set_x_ticks(plot, span)
            if not last:
                break

    def _fit_y(self, title: str, peak: float) -> None:
        """Show 0 to a little above ``peak``; change the range only when that changes much,
        so the axis does not twitch (and its ticks are not recomputed) every frame."""
        if title in _PERCENT:
            return  # fixed 0 to 100 %
        top = self._y_top[title]
        want = max(peak * 1.15, 1.0)
        if want > top or want < top * 0.5:
            self._y_top[title] = want
            self.plots[title].setYRange(0, want, padding=0)
            _set_y_ticks(self.plots[title], want)

    def _ensure_worker_curves(self, workers: int) -> None:
        plot = self.plots["Worker load"]
        if len(self.worker_curves) != workers:
            self._legends["Worker load"] = [
                (f"w{w}", _COLOURS[w % len(_COLOURS)]) for w in range(min(workers, 8))
            ]
            self.apply_palette(self.palette())
        while len(self.worker_curves) > workers:
            plot.removeItem(self.worker_curves.pop())
        while len(self.worker_curves) < workers:
            colour = _COLOURS[len(self.worker_curves) % len(_COLOURS)]
            self.worker_curves.append(plot.plot(pen=pg.mkPen(colour, width=1), antialias=False))

    # -- hover -------------------------------------------------------------------------------
    def hover_at(self, scene_pos: QPointF) -> None:
        """Show the values under ``scene_pos`` (a point of the charts' scene) in the plot it
        is over: a vertical line there and each curve's value, with its unit."""
        over = None
        for title, plot in self.plots.items():
            if plot.getViewBox().sceneBoundingRect().contains(scene_pos):
                over = title
                break
        if over is None:
            self.clear_hover()
            return
        if self._hover is not None and self._hover[0] != over:
            self._hide_hover(self._hover[0])
        self._hover = (over, QPointF(scene_pos))
        plot = self.plots[over]
        view = plot.getViewBox()
        point = view.mapSceneToView(scene_pos)
        x = float(point.x())
        text = self.values_text(over, x)
        line = self._hover_line[over]
        line.setPos(x)
        line.show()
        label = self.hover_label
        label.setText(text)
        label.adjustSize()
        # Beside the cursor, on the side with room, inside the charts.
        at = self.graphics.mapTo(self, self.graphics.mapFromScene(scene_pos))
        left = at.x() + 14
        if left + label.width() > self.width():
            left = at.x() - 14 - label.width()
        top = min(max(0, at.y() - label.height() // 2), max(0, self.height() - label.height()))
        label.move(max(0, left), top)
        label.raise_()
        label.show()

    def clear_hover(self) -> None:
        if self._hover is not None:
            self._hide_hover(self._hover[0])
        self._hover = None

    def _hide_hover(self, title: str) -> None:
        self._hover_line[title].hide()
        self.hover_label.hide()

    def values_text(self, title: str, x: float) -> str:
        """What hovering at time ``x`` (seconds before now, <= 0) of plot ``title`` shows
        (rich text): the time, then each curve's value there with its unit, or "—"."""
        unit = _UNITS.get(title, "")
        rows = [f"<b>{-x:.2f} s ago</b>" if x < 0 else "<b>now</b>"]
        view = self.plots[title].getViewBox()
        per_pixel = view.viewPixelSize()[0]
        for name, colour, curve in self._curves_of(title):
            value = _value_near(curve, x, _HOVER_PX * per_pixel)
            shown = "\N{EM DASH}" if value is None else f"{_number(value)}{_unit(unit)}"
            rows.append(f"<span style='color:{colour}'>{name}: {shown}</span>")
        return "<br>".join(rows)

    def _curves_of(self, title: str) -> list[tuple[str, str, pg.PlotDataItem]]:
        if title == "Worker load":
            return [
                (f"w{w}", _COLOURS[w % len(_COLOURS)], curve)
                for w, curve in enumerate(self.worker_curves)
            ]
        legend = dict(self._legends.get(title, ()))
        return [
            (name, legend.get(name, _COLOURS[0]), self.curves[channel][0])
            for channel, name, _scale in next(ch for t, _u, ch in _PLOTS if t == title)
        ]

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Leave:
            self.clear_hover()
        return super().eventFilter(watched, event)

    # -- theme -------------------------------------------------------------------------------
    def apply_palette(self, palette: QPalette) -> None:
        """Colour the plots like the rest of the window (light or dark)."""
        background = palette.color(QPalette.ColorRole.Base)
        foreground = palette.color(QPalette.ColorRole.Text)
        self.graphics.setBackground(background)
        muted = QColor(foreground)
        muted.setAlpha(170)
        for title, plot in self.plots.items():
            legend = (
                "".join(
                    f"&nbsp;&nbsp;<span style='color:{colour}'>\N{EM DASH} {name}</span>"
                    for name, colour in self._legends.get(title, ())
                )
                if len(self._legends.get(title, ())) > 1
                else ""
            )
            plot.setTitle(f"{title}{legend}", color=foreground.name(), size="9pt")
            for name in ("left", "bottom"):
                axis = plot.getAxis(name)
                axis.setPen(pg.mkPen(muted))
                axis.setTextPen(pg.mkPen(foreground))
            if title in self._hover_line:
                self._hover_line[title].setPen(pg.mkPen(muted, width=1, style=Qt.PenStyle.DashLine))

        self.hover_label.setStyleSheet(
            f"QLabel#charts_hover {{ background: {background.name()}; color: {foreground.name()};"
            f" border: 1px solid {muted.name(QColor.NameFormat.HexArgb)}; }}"
        )

    def changeEvent(self, event: QEvent) -> None:
        if event.type() == QEvent.Type.PaletteChange:
            self.apply_palette(self.palette())
        super().changeEvent(event)


def _set_curve(
    curve: pg.PlotDataItem, t: np.ndarray, y: np.ndarray, *, points: bool = False
) -> None:
    """``curve.setData`` with gaps (NaN) left out of the line.

    A line of NaN only is given as no data: pyqtgraph 0.14 on PySide6 6.12 corrupts a
    reference count drawing one (the interpreter then aborts when it exits).
    """
    finite = np.isfinite(y)
    if points or not finite.all():
        if not finite.any():
            curve.setData([], [])
        elif points:
            curve.setData(t[finite], y[finite], skipFiniteCheck=True)
        else:
            curve.setData(t, y, connect="finite")
    else:
        # Known finite: pyqtgraph need not scan the arrays again.
        curve.setData(t, y, skipFiniteCheck=True)


def _value_near(curve: pg.PlotDataItem, x: float, tolerance: float) -> float | None:
    """The curve's finite sample nearest to ``x``, if one lies within ``tolerance``."""
    xs, ys = curve.getData()
    if xs is None or ys is None or len(xs) == 0:
        return None
    i = int(np.searchsorted(xs, x))
    best: tuple[float, float] | None = None
    for j in (i - 1, i):
        if 0 <= j < len(xs) and np.isfinite(ys[j]):
            gap = abs(float(xs[j]) - x)
            if best is None or gap < best[0]:
                best = (gap, float(ys[j]))
    if best is None or best[0] > tolerance:
        return None
    return best[1]


def _number(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.01:
        return f"{value:.2f}"
    return f"{value:.2g}"


def _unit(unit: str) -> str:
    if not unit:
        return ""
    return unit if unit in ("%", "/s") else f" {unit}"


def _set_y_ticks(plot: pg.PlotItem, top: float) -> None:
    """Two or three round labels from 0 to ``top``, no minor ticks: pyqtgraph's own ticks
    pile up into an unreadable column on a plot 30 pixels tall (at 1100x720)."""
    step = _nice_step(top / 2)
    values = [0.0]
    while values[-1] + step <= top * 1.0001:
        values.append(values[-1] + step)
    plot.getAxis("left").setTicks([[(v, _tick_text(v, step)) for v in values], []])


def _set_x_ticks(plot: pg.PlotItem, span: float) -> None:
    """Four to six labelled ticks over the last ``span`` seconds, no minor ones, given rather
    than searched for: all the plots' time axes are redrawn at once when the span grows, and
    pyqtgraph's own search (spacings, strings, text sizes) and a tick mark every tenth cost
    the most of that frame."""
    step = _nice_step(span / 5)
    ticks = []
    for k in range(int(span / step + 1e-9) + 1):
        text = _tick_text(k * step, step)
        ticks.append((-k * step, text if k == 0 else f"-{text}"))
    plot.getAxis("bottom").setTicks([ticks, []])


def _nice_step(x: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that is at least ``x``."""
    if x <= 0 or not np.isfinite(x):
        return 1.0
    power = 10.0 ** np.floor(np.log10(x))
    for factor in (1.0, 2.0, 5.0, 10.0):
        if factor * power >= x * 0.9999:
            return float(factor * power)
    return float(10 * power)


def _tick_text(value: float, step: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:g}k"
    if step >= 1:
        return f"{value:.0f}"
    return f"{value:g}"
