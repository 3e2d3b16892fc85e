"""The agent graph: who talks to whom, edges as wide as their message counts, nodes coloured
by state; a thin widget over :class:`~qhybrid.models.AgentGraph`.

Painted by hand (one ``paintEvent``, no scene items): a thousand unfolded agents and 1500
edges paint in a few milliseconds, and nothing is rebuilt while the graph is hidden. Wheel to
zoom, drag to pan, click a node to show its agent, double-click a group to unfold or fold it.
"""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QHideEvent,
    QMouseEvent,
    QPainter,
    QPainterPath,
    QPaintEvent,
    QPalette,
    QPen,
    QShowEvent,
    QWheelEvent,
)
from PySide6.QtWidgets import (
    QComboBox,
    QLabel,
    QPushButton,
    QSpinBox,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from qhybrid.models import DebuggerModels, GraphLayout, GraphNode
from qhybrid.models._graph import LABEL_ALL_BELOW, labelled
from qhybrid.views._timeline import TickTimeline

__all__ = ["NODE_COLOURS", "RANGE_ALL", "RANGE_CHOSEN", "RANGE_LAST", "GraphCanvas", "GraphPanel"]

#: The graph's tick ranges (its combo's data).
RANGE_ALL, RANGE_CHOSEN, RANGE_LAST = "all", "chosen", "last"

#: Okabe-Ito: distinct for colour-blind readers too.
NODE_COLOURS = {
    "loaded": "#0072B2",
    "failed": "#D55E00",
    "skipped": "#808080",
    "restarting": "#E69F00",
    "restarted": "#E69F00",
    "runtime": "#009E73",
}
ARROWS_BELOW = 400


class GraphCanvas(QWidget):
    """Paints a :class:`GraphLayout`; ``node_clicked(key)`` and ``node_activated(key)``."""

    node_clicked = Signal(str)
    node_activated = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("graph_canvas")
        self.setMouseTracking(True)
        self.setMinimumSize(60, 30)
        self.layout_: GraphLayout | None = None
        self.selected: str | None = None
        self.hovered: str | None = None
        self.zoom = 1.0
        self.pan = QPointF(0, 0)
        self._drag: QPointF | None = None
        self._fit = True
        self.labels_drawn = 0  # at the last paint (labels that would overlap are left out)

    def set_layout(self, layout: GraphLayout) -> None:
        changed_nodes = self.layout_ is None or [n.key for n in self.layout_.nodes] != [
            n.key for n in layout.nodes
        ]
        self.layout_ = layout
        if changed_nodes:
            self._fit = True
        self.update()

    # -- geometry -----------------------------------------------------------------------------
    def _fit_view(self) -> None:
        layout = self.layout_
        if layout is None or not layout.nodes:
            return
        xs = [n.x for n in layout.nodes]
        ys = [n.y for n in layout.nodes]
        margin = 110 + max(n.radius for n in layout.nodes)  # room for the labels outside
        w = max(xs) - min(xs) + 2 * margin
        h = max(ys) - min(ys) + 2 * margin
        self.zoom = max(0.002, min(self.width() / w, self.height() / h, 2.5))
        self.pan = QPointF(-(max(xs) + min(xs)) / 2, -(max(ys) + min(ys)) / 2)
        self._fit = False

    def _to_screen(self, x: float, y: float) -> QPointF:
        return QPointF(
            self.width() / 2 + (x + self.pan.x()) * self.zoom,
            self.height() / 2 + (y + self.pan.y()) * self.zoom,
        )

    def node_at(self, pos: QPointF) -> str | None:
        layout = self.layout_
        if layout is None:
            return None
        best, best_d = None, 1e18
        for node in layout.nodes:
            p = self._to_screen(node.x, node.y)
            d = math.hypot(p.x() - pos.x(), p.y() - pos.y())
            if d <= max(6.0, node.radius * self.zoom) + 3 and d < best_d:
                best, best_d = node.key, d
        return best

    # -- painting -----------------------------------------------------------------------------
    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        palette = self.palette()
        painter.fillRect(self.rect(), palette.color(QPalette.ColorRole.Base))
        layout = self.layout_
        text_colour = palette.color(QPalette.ColorRole.Text)
        if layout is None or not layout.nodes:
            painter.setPen(text_colour)
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "No agents yet")
            return
        if self._fit:
            self._fit_view()
        many = len(layout.nodes) >= LABEL_ALL_BELOW
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, not many)
        points = [self._to_screen(n.x, n.y) for n in layout.nodes]
        # Widths and shades span the edges shown, lightest to heaviest (on a log scale); and
        # the more edges there are, the thinner and fainter each, so that a dense graph (every
        # relay talking to every other) shows its structure, not a solid disc.
        top = math.log1p(layout.max_count)
        bottom = math.log1p(min((e.count for e in layout.edges), default=0))
        span = top - bottom
        density = min(1.0, 40 / max(1, len(layout.edges))) ** 0.5
        edge_colour = QColor(
            "#56B4E9" if palette.color(QPalette.ColorRole.Base).lightness() < 128 else "#3B5B7A"
        )
        arrows = len(layout.edges) < ARROWS_BELOW
        # Edges lightest first, so the heavy ones stay on top.
        for edge in sorted(layout.edges, key=lambda e: e.count):
            a, b = points[edge.source], points[edge.target]
            share = 0.15 + 0.85 * (math.log1p(edge.count) - bottom) / span if span > 0 else 1.0
            edge_colour.setAlphaF((0.1 + 0.6 * share) * (0.35 + 0.65 * density))
            pen = QPen(edge_colour, 0.6 + 3.6 * share * (0.4 + 0.6 * density))
            painter.setPen(pen)
            dx, dy = b.x() - a.x(), b.y() - a.y()
            length = math.hypot(dx, dy) or 1.0
            # Two agents that talk both ways get two lines, side by side.
            off = QPointF(-dy / length * 3, dx / length * 3)
            r_end = layout.nodes[edge.target].radius * self.zoom
            end = QPointF(b.x() - dx / length * r_end, b.y() - dy / length * r_end) + off
            start = a + off
            painter.drawLine(start, end)
            if arrows:
                ux, uy = dx / length, dy / length
                size = 5 + 2 * share * 3
                path = QPainterPath(end)
                path.lineTo(
                    end.x() - ux * size - uy * size * 0.5, end.y() - uy * size + ux * size * 0.5
                )
                path.lineTo(
                    end.x() - ux * size + uy * size * 0.5, end.y() - uy * size - ux * size * 0.5
                )
                path.closeSubpath()
                painter.fillPath(path, edge_colour)
        font = painter.font()
        metrics = painter.fontMetrics()
        backdrop = QColor(palette.color(QPalette.ColorRole.Base))
        backdrop.setAlphaF(0.8)
        wanted: list[tuple[GraphNode, QPointF, float]] = []
        for node, p in zip(layout.nodes, points, strict=True):
            r = max(3.0, node.radius * self.zoom)
            colour = QColor(NODE_COLOURS.get(node.state, NODE_COLOURS["loaded"]))
            outline = QPen(text_colour, 3 if node.key == self.selected else 1)
            if node.folded:
                outline.setStyle(Qt.PenStyle.DashLine)
            painter.setPen(outline)
            painter.setBrush(colour)
            painter.drawEllipse(p, r, r)
            if labelled(node, len(layout.nodes)) or node.key in (self.selected, self.hovered):
                wanted.append((node, p, r))
        # Labels, most wanted first (the chosen and the hovered node, folded groups, then the
        # busiest); one that would overlap a label already drawn is left out (hover shows it).
        wanted.sort(
            key=lambda w: (
                w[0].key != self.selected,
                w[0].key != self.hovered,
                not w[0].folded,
                -(w[0].sent + w[0].received),
            )
        )
        centre = self._to_screen(0.0, 0.0)
        height = metrics.height()
        drawn: list[QRectF] = []
        painter.setPen(text_colour)
        for node, p, r in wanted:
            label = node.label
            if node.internal:
                label += (
                    f" [{node.internal:,} inside]"
                    if node.folded
                    else f" [{node.internal:,} to itself]"
                )
            width = metrics.horizontalAdvance(label)
            # Outside the circle, away from its centre, where the edges are not.
            dx, dy = p.x() - centre.x(), p.y() - centre.y()
            norm = math.hypot(dx, dy)
            ux, uy = (dx / norm, dy / norm) if norm > 1 else (0.0, 1.0)
            ax = p.x() + ux * (r + 4)
            ay = p.y() + uy * (r + 4)
            left = ax - width / 2 + ux * width / 2
            top = ay - height / 2 + uy * height / 2
            # A big (folded) node's label, off to one side, may still cut into the circle
            # with a corner of its box: pushed out along the same line until it does not.
            for _ in range(int(r) // 2 + 1):
                gap_x = max(left - 2 - p.x(), 0.0, p.x() - (left + width + 2))
                gap_y = max(top - p.y(), 0.0, p.y() - (top + height))
                if math.hypot(gap_x, gap_y) >= r + 2:
                    break
                left, top = left + 2 * ux, top + 2 * uy
            must = node.key in (self.selected, self.hovered)
            # Where it overlaps a label already drawn, a folded group's label (the few that
            # name a large graph) moves further out, up to three lines, with a leader line;
            # any other is left out (hover shows it).
            step = (height + 2) if node.folded else 0.0
            for k in range(4 if node.folded else 1):
                box = QRectF(left - 2 + ux * step * k, top + uy * step * k, width + 4, height)
                if must or not any(box.intersects(other) for other in drawn):
                    break
            else:
                continue
            drawn.append(box)
            if k:
                painter.drawLine(
                    QPointF(p.x() + ux * r, p.y() + uy * r),
                    QPointF(
                        min(max(p.x(), box.left()), box.right()),
                        min(max(p.y(), box.top()), box.bottom()),
                    ),
                )
            left, top = box.left() + 2, box.top()
            font.setBold(node.key == self.selected)
            painter.setFont(font)
            # On a patch of the background: edges pass under the labels, not through them.
            painter.fillRect(box, backdrop)
            painter.drawText(QPointF(left, top + metrics.ascent()), label)
        self.labels_drawn = len(drawn)
        painter.setBrush(Qt.BrushStyle.NoBrush)

    # -- interaction ----------------------------------------------------------------------------
    def wheelEvent(self, event: QWheelEvent) -> None:
        factor = 1.0015 ** event.angleDelta().y()
        self.zoom = max(0.02, min(self.zoom * factor, 20.0))
        self.update()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        key = self.node_at(event.position())
        if key is not None:
            self.selected = key
            self.node_clicked.emit(key)
            self.update()
        else:
            self._drag = event.position()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._drag is not None:
            delta = event.position() - self._drag
            self._drag = event.position()
            self.pan += QPointF(delta.x() / self.zoom, delta.y() / self.zoom)
            self.update()
            return
        key = self.node_at(event.position())
        if key != self.hovered:
            self.hovered = key
            layout = self.layout_
            node = None if layout is None or key is None else layout.nodes[layout.node_of(key)]
            self.setToolTip(
                ""
                if node is None
                else f"{node.label}\nsent {node.sent:,}, received {node.received:,}"
                + (f", {node.internal:,} inside the group" if node.internal else "")
                + (" (double-click to unfold)" if node.folded else "")
            )
            self.update()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        self._drag = None

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        key = self.node_at(event.position())
        if key is not None:
            self.node_activated.emit(key)

    def fit(self) -> None:
        self._fit = True
        self.update()

    def visible_rect(self) -> QRectF:
        return QRectF(self.rect())


class GraphPanel(QWidget):
    """The graph, the tick range it counts (all ticks, or the last N), fold/unfold all, and
    a line saying what is shown. ``agent_selected(agent_id)`` when an agent's node is clicked."""

    agent_selected = Signal(int)

    def __init__(self, debugger: DebuggerModels, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("graph_panel")
        self.debugger = debugger
        self.source_label = QLabel(debugger.source, self)
        self.source_label.setObjectName("graph_source")
        # Which ticks the edges count: the whole run, the ticks chosen on a timeline (this
        # panel's, or the Recorded runs tab's scrubber), or the last N.
        self.range_combo = QComboBox(self)
        self.range_combo.setObjectName("graph_range")
        self.range_combo.addItem("Whole run", RANGE_ALL)
        self.range_combo.addItem("Chosen ticks", RANGE_CHOSEN)
        self.range_combo.addItem("Last ticks", RANGE_LAST)
        self.range_combo.setToolTip(
            "The ticks whose messages the edges count: the whole run, the ticks chosen on the "
            "timeline below (click a tick, drag the range's edges) or on the Recorded runs "
            "tab's scrubber, or the last N ticks"
        )
        self.timeline = TickTimeline(self, ranged=True)
        self.timeline.setObjectName("graph_timeline")
        self.timeline.setMaximumHeight(80)
        self.timeline.setMinimumHeight(30)  # (a small window is not made taller for it)
        self.timeline.range_chosen.connect(debugger.select_ticks)
        self.last_ticks = QSpinBox(self)
        self.last_ticks.setObjectName("graph_last_ticks")
        self.last_ticks.setRange(1, 1_000_000_000)
        self.last_ticks.setValue(100)
        self.last_ticks.setPrefix("last ")
        self.last_ticks.setSuffix(" ticks")
        self.last_ticks.setEnabled(False)
        self.fold_button = QPushButton("Fold all", self)
        self.unfold_button = QPushButton("Unfold all", self)
        self.fit_button = QPushButton("Fit", self)
        self.info_label = QLabel(self)
        self.info_label.setObjectName("graph_info")
        self.canvas = GraphCanvas(self)
        self.range_combo.currentIndexChanged.connect(self._range_changed)
        self.last_ticks.valueChanged.connect(self._range_changed)
        debugger.selection_changed.connect(self._selection_changed)
        self.fold_button.clicked.connect(lambda: self._fold_all(True))
        self.unfold_button.clicked.connect(lambda: self._fold_all(False))
        self.fit_button.clicked.connect(self.canvas.fit)
        self.canvas.node_clicked.connect(self._clicked)
        self.canvas.node_activated.connect(self._activated)
        debugger.changed.connect(self._changed)
        debugger.source_changed.connect(self._source_changed)
        # A tool bar: what does not fit folds behind a chevron, so the panel stays narrow.
        bar = QToolBar(self)
        bar.setObjectName("graph_toolbar")
        for widget in (
            self.range_combo,
            self.last_ticks,
            self.fold_button,
            self.unfold_button,
            self.fit_button,
        ):
            bar.addWidget(widget)
        self.source_label.setMinimumWidth(40)
        self.info_label.setMinimumWidth(40)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.source_label)
        layout.addWidget(bar)
        layout.addWidget(self.canvas, 1)
        layout.addWidget(self.timeline)
        layout.addWidget(self.info_label)
        self._stale = True
        self.last_build_s = 0.0

    def range_mode(self) -> str:
        return str(self.range_combo.currentData())

    def set_range_mode(self, mode: str) -> None:
        self.range_combo.setCurrentIndex(self.range_combo.findData(mode))

    def tick_range(self) -> tuple[int | None, int | None]:
        """The ticks the edges count (inclusive; None: open)."""
        mode = self.range_mode()
        if mode == RANGE_CHOSEN and self.debugger.selection is not None:
            return self.debugger.selection
        if mode == RANGE_LAST:
            last = self.debugger.graph.history.last_tick
            return max(0, last - self.last_ticks.value() + 1), last
        return None, None

    def rebuild(self) -> GraphLayout:
        import time

        t0 = time.perf_counter()
        lo, hi = self.tick_range()
        layout = self.debugger.graph.build(lo, hi)
        self.canvas.set_layout(layout)
        self.timeline.set_counts(self.debugger.tick_counts())
        self.timeline.set_range(None if lo is None or hi is None else (lo, hi))
        if lo is None:
            span = "the whole run"
        elif lo == hi:
            span = f"tick {lo}"
        else:
            span = f"ticks {lo}\N{EN DASH}{hi}"
        text = (
            f"{len(self.debugger.graph.names):,} agents in {len(layout.nodes):,} nodes, "
            f"{layout.messages:,} messages over {span}, {len(layout.edges):,} edges"
        )
        if layout.hidden_edges:
            text += f" ({layout.hidden_edges:,} lighter ones not drawn)"
        if layout.notes:
            text += "; " + "; ".join(layout.notes)
        self.info_label.setText(text)
        self._stale = False
        self.last_build_s = time.perf_counter() - t0
        return layout

    def _changed(self) -> None:
        self._stale = True
        if self.isVisible():
            self.rebuild()

    def _source_changed(self, text: str) -> None:
        self.source_label.setText(text)
        self.canvas.selected = None
        self.canvas.fit()

    def _range_changed(self, *_args: object) -> None:
        self.last_ticks.setEnabled(self.range_mode() == RANGE_LAST)
        self._changed()

    def _selection_changed(self, chosen: tuple[int, int] | None) -> None:
        """Ticks chosen on a timeline: the edges count them (None: back to the whole run)."""
        mode = self.range_mode()
        if chosen is not None and mode != RANGE_CHOSEN:
            self.set_range_mode(RANGE_CHOSEN)  # (rebuilds)
        elif chosen is None and mode == RANGE_CHOSEN:
            self.set_range_mode(RANGE_ALL)
        else:
            self._changed()

    def _fold_all(self, folded: bool) -> None:
        graph = self.debugger.graph
        for group in graph.group_sizes():
            graph.set_folded(group, folded)
        self.canvas.fit()
        self._changed()

    def _clicked(self, key: str) -> None:
        agent = self.debugger.agent_id(key)
        if agent >= 0:
            self.agent_selected.emit(agent)

    def _activated(self, key: str) -> None:
        graph = self.debugger.graph
        if key in graph.names or key in graph.group_sizes():
            graph.toggle(key)
            self.canvas.fit()
            self._changed()

    def select_agent(self, agent: int) -> None:
        graph = self.debugger.graph
        if 0 <= agent < len(graph.names):
            group = graph.groups[agent]
            self.canvas.selected = group if graph.is_folded(group) else graph.names[agent]
            self.canvas.update()

    def showEvent(self, event: QShowEvent) -> None:
        self.debugger.watch("graph", True)
        if self._stale:
            self.rebuild()
        super().showEvent(event)

    def hideEvent(self, event: QHideEvent) -> None:
        self.debugger.watch("graph", False)
        super().hideEvent(event)
