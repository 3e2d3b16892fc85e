"""A tick axis over a whole run: messages per tick as bars, with a scrubber (one tick) or a
range (several), both snapping to whole ticks.

The Recorded runs tab's message inspector scrubs with it; the agent graph chooses the ticks
its edges count with it (live or recorded). A run of many ticks is drawn in at most
:data:`MAX_BARS` bars (each the sum of its ticks), so a long run costs no more to draw than
a short one.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, Signal
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QWidget

__all__ = ["MAX_BARS", "TickTimeline"]

#: Past this many ticks, bars stand for several ticks each.
MAX_BARS = 600


class TickTimeline(pg.PlotWidget):
    """Messages per tick with a scrubber: drag it (or click a tick) to choose a tick,
    ``tick_chosen(tick)``. With ``ranged``, a range instead: click a tick to choose it alone,
    drag the range or its edges to widen it, ``range_chosen(lo, hi)`` (inclusive)."""

    tick_chosen = Signal(int)
    range_chosen = Signal(int, int)

    def __init__(self, parent: QWidget | None = None, *, ranged: bool = False) -> None:
        super().__init__(parent)
        self.setObjectName("tick_timeline")
        self.ranged = ranged
        self.setMinimumHeight(60)
        self.setMaximumHeight(110)
        self.setMenuEnabled(False)
        self.hideButtons()
        self.setLabel("bottom", "tick")
        self.setLabel("left", "msgs")
        self.getViewBox().setMouseEnabled(x=False, y=False)
        # Ranges set by set_counts, never pyqtgraph's auto-range (see _charts.py for why).
        self.enableAutoRange(enable=False)
        self.setXRange(-0.5, 0.5, padding=0)
        self.setYRange(0, 1, padding=0)
        self.bars = pg.BarGraphItem(x=[0], height=[0], width=0.8, brush="#0072B2", pen=None)
        self.addItem(self.bars)
        self.scrubber = pg.InfiniteLine(
            pos=0, angle=90, movable=True, pen=pg.mkPen("#D55E00", width=2)
        )
        self.scrubber.setZValue(10)
        self.scrubber.sigPositionChanged.connect(self._dragged)
        self.addItem(self.scrubber)
        self.region = pg.LinearRegionItem(
            values=(-0.5, 0.5), movable=True, brush=pg.mkBrush(213, 94, 0, 50)
        )
        self.region.setZValue(9)
        self.region.setVisible(False)
        self.region.sigRegionChangeFinished.connect(self._region_moved)
        self.addItem(self.region)
        if ranged:
            self.scrubber.setVisible(False)
        self.ticks = 0
        self.scene().sigMouseClicked.connect(self._clicked)
        self.apply_palette(self.palette())

    def apply_palette(self, palette: QPalette) -> None:
        """Coloured like the window (light or dark), as the live charts are."""
        self.setBackground(palette.color(QPalette.ColorRole.Base))
        text = palette.color(QPalette.ColorRole.Text)
        for name in ("left", "bottom"):
            axis = self.getAxis(name)
            axis.setPen(pg.mkPen(text))
            axis.setTextPen(pg.mkPen(text))

    def changeEvent(self, event: QEvent) -> None:
        # (Palette changes come during construction too, before the plot exists.)
        if event.type() == QEvent.Type.PaletteChange and hasattr(self, "region"):
            self.apply_palette(self.palette())
        super().changeEvent(event)

    def set_counts(self, counts: list[int] | np.ndarray) -> None:
        """Messages per tick, tick 0 first."""
        values = np.asarray(counts, dtype=np.int64)
        ticks = len(values)
        self.ticks = ticks
        self.bars.setVisible(ticks > 0)
        if ticks > MAX_BARS:  # bins of `step` ticks, each the sum of its ticks
            step = -(-ticks // MAX_BARS)
            padded = np.zeros(-(-ticks // step) * step, np.int64)
            padded[:ticks] = values
            sums = padded.reshape(-1, step).sum(axis=1)
            x = np.arange(len(sums)) * step + (step - 1) / 2
            self.bars.setOpts(x=x, height=sums, width=step * 0.9)
            top = int(sums.max())
        elif ticks:
            self.bars.setOpts(x=np.arange(ticks), height=values, width=0.8)
            top = int(values.max())
        else:
            top = 1
        self.setXRange(-0.5, max(ticks, 1) - 0.5, padding=0.01)
        # Ticks are whole numbers: a short run gets one axis label per tick, not 0.5 steps.
        axis = self.getAxis("bottom")
        if ticks <= 24:
            axis.setTickSpacing(major=1 if ticks <= 12 else 2, minor=1)
        else:
            axis.setTickSpacing()
        self.setYRange(0, top * 1.1 or 1, padding=0)
        # Two labels, 0 and the peak: a short plot has no room for more (they would overlap).
        self.getAxis("left").setTicks([[(0, "0"), (top, f"{top:,}")], []])
        self.region.setBounds((-0.5, max(ticks, 1) - 0.5))

    # -- one tick ---------------------------------------------------------------------------
    def set_tick(self, tick: int | None) -> None:
        self.scrubber.setVisible(tick is not None and not self.ranged)
        if tick is not None and round(self.scrubber.value()) != tick:
            self.scrubber.setValue(tick)

    def _dragged(self, line: pg.InfiniteLine) -> None:
        tick = max(0, min(self.ticks - 1, round(line.value())))
        if line.value() != tick:
            line.setValue(tick)  # snaps to whole ticks (and fires again, once)
            return
        self.tick_chosen.emit(tick)

    # -- a range of ticks -------------------------------------------------------------------
    def chosen_range(self) -> tuple[int, int] | None:
        """The range shown, in whole ticks, or None."""
        if not self.region.isVisible():
            return None
        a, b = self.region.getRegion()
        return self._snap(a, b)

    def set_range(self, chosen: tuple[int, int] | None) -> None:
        """Show ``(lo, hi)`` (inclusive) as the range, or none; emits nothing."""
        self.region.setVisible(chosen is not None)
        if chosen is not None and self.chosen_range() != chosen:
            self.region.blockSignals(True)
            self.region.setRegion((chosen[0] - 0.5, chosen[1] + 0.5))
            self.region.blockSignals(False)

    def _snap(self, a: float, b: float) -> tuple[int, int]:
        last = max(0, self.ticks - 1)
        lo = max(0, min(last, round(a + 0.5)))
        hi = max(lo, min(last, round(b - 0.5)))
        return lo, hi

    def _region_moved(self, region: pg.LinearRegionItem) -> None:
        lo, hi = self._snap(*region.getRegion())
        if region.getRegion() != (lo - 0.5, hi + 0.5):
            region.blockSignals(True)
            region.setRegion((lo - 0.5, hi + 0.5))  # snaps to whole ticks
            region.blockSignals(False)
        self.range_chosen.emit(lo, hi)

    def choose(self, x: float) -> None:
        """As a click at ``x`` (in ticks) does: that tick, scrubbed to or chosen alone."""
        tick = max(0, min(self.ticks - 1, round(x)))
        if self.ranged:
            self.set_range((tick, tick))
            self.range_chosen.emit(tick, tick)
        else:
            self.scrubber.setVisible(True)
            self.scrubber.setValue(tick)

    def _clicked(self, event: object) -> None:
        pos = event.scenePos()  # type: ignore[attr-defined]
        if self.plotItem.sceneBoundingRect().contains(pos):
            self.choose(self.getViewBox().mapSceneToView(pos).x())
