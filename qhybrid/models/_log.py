"""The log: agents' log lines, the runtime's own warnings and the run's state changes.

Lines arrive in batches (see ``_live.py``); the model keeps the last :attr:`LogModel.capacity`
and drops the oldest in one ``beginRemoveRows`` per batch. :class:`LogFilterModel` hides
lines below a chosen level.
"""

from __future__ import annotations

import collections
import html
import logging
from collections.abc import Iterable
from typing import Any, NamedTuple

from PySide6.QtCore import (
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
)

from qhybrid.models._table import TableModel
from qhybrid.runtime import printable

__all__ = ["LEVELS", "LogFilterModel", "LogLine", "LogModel", "PythonLogCollector"]

_Index = QModelIndex | QPersistentModelIndex

#: The levels the filter offers, as :mod:`logging` numbers them.
LEVELS = {"Debug": 10, "Info": 20, "Warning": 30, "Error": 40}

LEVEL_ROLE = Qt.ItemDataRole.UserRole + 1

# The orchestrator also logs every agent line through logging, as "%s: %s" % (agent, text).
_ORCHESTRATOR = "qhybrid.runtime._orchestrator"
_AGENT_LINE = "%s: %s"


class LogLine(NamedTuple):
    tick: int | None
    level: int
    source: str  # an agent's name, "runtime" or "run"
    text: str


def plain_tooltip(text: str) -> str:
    """A tooltip that shows ``text`` as text: Qt renders tooltips that look like HTML as
    HTML, so agent text is escaped and wrapped in a rich-text block of its own."""
    return f"<p style='white-space:pre-wrap'>{html.escape(printable(text))}</p>"


def level_name(level: int) -> str:
    if level >= 40:
        return "error"
    if level >= 30:
        return "warning"
    if level >= 20:
        return "info"
    return "debug"


class LogModel(TableModel):
    """The last ``capacity`` log lines, oldest first; columns Tick, Level, Source, Message."""

    COLUMNS = ("Tick", "Level", "Source", "Message")

    def __init__(self, parent: QObject | None = None, capacity: int = 10_000) -> None:
        super().__init__(parent)
        self.capacity = capacity
        self._lines: collections.deque[LogLine] = collections.deque()

    def append_lines(self, lines: Iterable[LogLine]) -> None:
        new = list(lines)
        if not new:
            return
        if len(new) > self.capacity:
            new = new[-self.capacity :]
        overflow = len(self._lines) + len(new) - self.capacity
        if overflow > 0:
            self.beginRemoveRows(QModelIndex(), 0, overflow - 1)
            for _ in range(overflow):
                self._lines.popleft()
            self.endRemoveRows()
        first = len(self._lines)
        self.beginInsertRows(QModelIndex(), first, first + len(new) - 1)
        self._lines.extend(new)
        self.endInsertRows()

    def clear(self) -> None:
        self.beginResetModel()
        self._lines.clear()
        self.endResetModel()

    def line(self, row: int) -> LogLine:
        return self._lines[row]

    def row_count(self) -> int:
        return len(self._lines)

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        line = self._lines[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            column = index.column()
            if column == 0:
                return "" if line.tick is None else str(line.tick)
            if column == 1:
                return level_name(line.level)
            if column == 2:
                return printable(line.source)
            return printable(line.text)
        if role == LEVEL_ROLE:
            return line.level
        if role == Qt.ItemDataRole.ToolTipRole and index.column() == 3:
            return plain_tooltip(line.text)
        return None


class LogFilterModel(QSortFilterProxyModel):
    """Shows the lines at or above :attr:`min_level`, and containing a text if one is set."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._min_level = 0
        self.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.setFilterKeyColumn(-1)

    @property
    def min_level(self) -> int:
        return self._min_level

    def set_min_level(self, level: int) -> None:
        if level != self._min_level:
            if hasattr(self, "endFilterChange"):  # Qt 6.10
                self.beginFilterChange()
                self._min_level = level
                self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
            else:
                self._min_level = level
                self.invalidateRowsFilter()

    def filterAcceptsRow(self, source_row: int, source_parent: _Index) -> bool:
        model = self.sourceModel()
        assert isinstance(model, LogModel)
        if model.line(source_row).level < self._min_level:
            return False
        return super().filterAcceptsRow(source_row, source_parent)


class PythonLogCollector(logging.Handler):
    """A logging handler that keeps records for the window to show (any thread may log).

    Appending to a deque is all it does on the logging thread; :meth:`take` hands the lines
    over on the GUI thread.
    """

    def __init__(self, level: int = logging.WARNING, maxlen: int = 2000) -> None:
        super().__init__(level)
        self._records: collections.deque[LogLine] = collections.deque(maxlen=maxlen)

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == _AGENT_LINE and record.name == _ORCHESTRATOR:
            return  # an agent's own line, which the window already has from the event
        try:
            text = record.getMessage()
        except Exception:
            self.handleError(record)
            return
        source = record.name.removeprefix("qhybrid.")
        self._records.append(LogLine(None, record.levelno, source, text))

    def take(self) -> list[LogLine]:
        out = []
        pop = self._records.popleft
        for _ in range(len(self._records)):
            out.append(pop())
        return out
