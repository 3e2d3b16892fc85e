"""The agents table and the log view: thin widgets over ``qhybrid.models``."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QRect, QSortFilterProxyModel, Qt
from PySide6.QtGui import QAccessible, QColor, QHideEvent, QPalette, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from qhybrid.models import LEVELS, AgentsTableModel, LiveModels

__all__ = ["AgentsView", "LogView"]


class ChangedColumnsTableView(QTableView):
    """A table view that repaints, for a change over several cells, only the columns that
    changed (Qt's repaints the whole viewport): the agents' counters change every poll, their
    names, states and errors seldom."""

    def dataChanged(
        self,
        topLeft: QModelIndex | QPersistentModelIndex,
        bottomRight: QModelIndex | QPersistentModelIndex,
        roles: Sequence[int] = (),
    ) -> None:
        if QAccessible.isActive() or not (topLeft.isValid() and bottomRight.isValid()):
            super().dataChanged(topLeft, bottomRight, list(roles))  # screen readers told too
            return
        height = self.viewport().height()
        area = QRect()
        for column in range(topLeft.column(), bottomRight.column() + 1):
            if not self.isColumnHidden(column):
                x = self.columnViewportPosition(column)
                area = area.united(QRect(x, 0, self.columnWidth(column), height))
        if not area.isEmpty():
            self.viewport().update(area)


def _table(
    model: QSortFilterProxyModel, parent: QWidget, view_class: type[QTableView] = QTableView
) -> QTableView:
    view = view_class(parent)
    view.setModel(model)
    view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    view.setAlternatingRowColors(True)
    view.setWordWrap(False)
    view.setCornerButtonEnabled(False)
    # Fixed row heights: the view never measures rows, so thousands of them stay cheap.
    vertical = view.verticalHeader()
    vertical.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
    vertical.setDefaultSectionSize(view.fontMetrics().height() + 6)
    vertical.hide()
    view.horizontalHeader().setHighlightSections(False)
    return view


#: Agent states that stand out in the table (Okabe-Ito vermillion and grey).
STATE_COLOURS = {"failed": "#D55E00", "skipped": "#808080", "restarting": "#E69F00"}


_RIGHT = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
_HAS_DISPLAY = QStyleOptionViewItem.ViewItemFeature.HasDisplay


class AgentsDelegate(QStyledItemDelegate):
    """Draws the agents table's cells, an agent's state in colour and bold when it is not
    running normally.

    The cell's text comes from the model in one call: Qt's own delegate asks the model for
    seven roles a cell, each a call into Python through the sorting proxy (three calls each),
    which made repainting a thousand agents' table the window's costliest frame.
    """

    def __init__(self, proxy: QSortFilterProxyModel, model: AgentsTableModel, parent: QWidget):
        super().__init__(parent)
        self._proxy = proxy
        self._model = model

    def initStyleOption(
        self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex
    ) -> None:
        # What QStyledItemDelegate.initStyleOption does for the roles this model answers.
        source = self._proxy.mapToSource(index)
        column = source.column()
        text = self._model.display_text(source.row(), column)
        option.index = index  # type: ignore[assignment]  # a QModelIndex from the view
        option.features |= _HAS_DISPLAY
        option.text = text
        if AgentsTableModel.WORKER <= column <= AgentsTableModel.MEMORY:
            option.displayAlignment = _RIGHT
        option.styleObject = None  # type: ignore[assignment]  # nullptr: no style animation
        if column == AgentsTableModel.STATE:
            colour = STATE_COLOURS.get(text)
            if colour is not None:
                option.palette.setColor(QPalette.ColorRole.Text, QColor(colour))
                option.palette.setColor(QPalette.ColorRole.HighlightedText, QColor(colour))
                option.font.setBold(True)


class AgentsView(QWidget):
    """The agents (name, state, worker, handled, ...), sortable by any column, filterable."""

    def __init__(self, live: LiveModels, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("agents_view")
        self.filter_edit = QLineEdit(self)
        self.filter_edit.setObjectName("agents_filter")
        self.filter_edit.setPlaceholderText("Filter agents (name, state, error)")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.textChanged.connect(live.agents_filter.setFilterFixedString)
        self.count_label = QLabel(self)
        self.table = _table(live.agents_filter, self, ChangedColumnsTableView)
        self.table.setObjectName("agents_table")
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(AgentsTableModel.NAME, Qt.SortOrder.AscendingOrder)
        header = self.table.horizontalHeader()
        header.setStretchLastSection(True)
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        for column, width in ((0, 110), (1, 70), (2, 55), (3, 75), (4, 65), (5, 75), (6, 70)):
            header.resizeSection(column, width)
        self.delegate = AgentsDelegate(live.agents_filter, live.agents, self.table)
        self.table.setItemDelegate(self.delegate)
        self.state_delegate = self.delegate  # the state column's colours are its too
        top = QHBoxLayout()
        top.addWidget(self.filter_edit, 1)
        top.addWidget(self.count_label)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(top)
        layout.addWidget(self.table)
        self._live = live
        live.agents_filter.rowsInserted.connect(self._update_count)
        live.agents_filter.rowsRemoved.connect(self._update_count)
        live.agents_filter.modelReset.connect(self._update_count)
        self._update_count()

    # The models poll a thousand agents only while someone can see them.
    def showEvent(self, event: QShowEvent) -> None:
        self._live.set_agents_visible(True)
        super().showEvent(event)

    def hideEvent(self, event: QHideEvent) -> None:
        self._live.set_agents_visible(False)
        super().hideEvent(event)

    def _update_count(self) -> None:
        shown = self._live.agents_filter.rowCount()
        total = self._live.agents.rowCount()
        self.count_label.setText(f"{shown} of {total}" if shown != total else f"{total} agents")


class LogView(QWidget):
    """Log lines with a level filter and a text filter; follows new lines while at the end."""

    def __init__(self, live: LiveModels, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("log_view")
        self._filter = live.log_filter
        self.level_combo = QComboBox(self)
        self.level_combo.setObjectName("log_level")
        for name, level in LEVELS.items():
            self.level_combo.addItem(name, level)
        self.level_combo.currentIndexChanged.connect(self._level_changed)
        self.search_edit = QLineEdit(self)
        self.search_edit.setObjectName("log_search")
        self.search_edit.setPlaceholderText("Search the log")
        self.search_edit.setClearButtonEnabled(True)
        self.search_edit.textChanged.connect(self._filter.setFilterFixedString)
        self.table = _table(self._filter, self)
        self.table.setObjectName("log_table")
        header = self.table.horizontalHeader()
        header.setStretchLastSection(True)
        for column, width in ((0, 60), (1, 62), (2, 110)):
            header.resizeSection(column, width)
        top = QHBoxLayout()
        top.addWidget(QLabel("Level:", self))
        top.addWidget(self.level_combo)
        top.addWidget(self.search_edit, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(top)
        layout.addWidget(self.table)
        self._follow = True
        self.table.verticalScrollBar().valueChanged.connect(self._scrolled)
        self._filter.rowsInserted.connect(self._rows_inserted)
        self.set_min_level(LEVELS["Info"])

    def set_min_level(self, level: int) -> None:
        index = self.level_combo.findData(level)
        if index >= 0:
            self.level_combo.setCurrentIndex(index)
        self._filter.set_min_level(level)

    @property
    def min_level(self) -> int:
        return self._filter.min_level

    def _level_changed(self, index: int) -> None:
        self._filter.set_min_level(int(self.level_combo.itemData(index)))

    def _scrolled(self, value: int) -> None:
        bar = self.table.verticalScrollBar()
        self._follow = value >= bar.maximum() - 2

    def _rows_inserted(self) -> None:
        if self._follow:
            self.table.scrollToBottom()
