"""The agents table: one row per agent, updated in place from the runtime's summaries.

A scenario can have thousands of agents whose counters change every tick. The model keeps
its columns as plain lists, compares each update with what it shows, and emits one
``dataChanged`` over the rows that changed (never a reset while the agents stay the same), so
a view repaints only what it shows and a sort/filter proxy re-sorts only what changed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import (
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
)

from qhybrid.models._log import plain_tooltip
from qhybrid.models._table import TableModel
from qhybrid.runtime import AgentSummary, printable

__all__ = ["SORT_ROLE", "AgentsFilterModel", "AgentsTableModel", "natural_key"]

#: The role the proxy sorts by: numbers as numbers, text as text.
SORT_ROLE = Qt.ItemDataRole.UserRole + 1

_Index = QModelIndex | QPersistentModelIndex
_NOT_REPORTED = "\N{EM DASH}"
_DIGITS = re.compile(r"\d+")


def natural_key(name: str) -> str:
    """``name`` with each run of digits zero-padded to 20 places, so that plain string order
    (the proxy's, in C++) is natural order: relay-2 before relay-10."""
    return _DIGITS.sub(lambda m: m.group().rjust(20, "0"), name.casefold())


class AgentsTableModel(TableModel):
    """Agents as rows; columns in :attr:`COLUMNS`.

    "Fuel used" is the fuel the agent's handlers burnt in all (its tooltip: in the last tick
    it had messages), "Memory" its linear memory now, both as the workers report them beside
    each batch's results; "—" for an agent not metered (a Python agent) or with no message
    handled yet.
    """

    COLUMNS = (
        "Name",
        "State",
        "Worker",
        "Handled",
        "Restarts",
        "Fuel used",
        "Memory",
        "Last error",
    )
    NAME, STATE, WORKER, HANDLED, RESTARTS, FUEL, MEMORY, ERROR = range(len(COLUMNS))

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._names: list[str] = []
        self._name_keys: list[str] = []
        self._modules: list[str] = []
        # One list per column after the name (state, worker, handled, restarts, fuel, memory,
        # error): an update compares whole columns at C speed (``list != list``) and looks
        # row by row only into the columns that changed.
        self._columns: list[list[Any]] = [[] for _ in range(len(self.COLUMNS) - 1)]
        self._fuel_last: list[int | None] = []

    # -- updates ---------------------------------------------------------------------------
    def update_agents(self, agents: Sequence[AgentSummary]) -> int:
        """Show ``agents``; returns how many rows changed (a new set of agents resets)."""
        names = [a.name for a in agents]
        columns: list[list[Any]] = [
            [a.state for a in agents],
            [a.worker for a in agents],
            [a.handled for a in agents],
            [a.restarts for a in agents],
            [a.fuel_used for a in agents],
            [a.memory_bytes for a in agents],
            [a.error or "" for a in agents],
        ]
        self._fuel_last = [a.fuel_last for a in agents]  # tooltips only: no signal
        if names != self._names:
            self.beginResetModel()
            self._names = names
            self._name_keys = [natural_key(n) for n in names]
            self._modules = [a.module for a in agents]
            self._columns = columns
            self.endResetModel()
            return len(names)
        rows: set[int] = set()
        first_column = last_column = -1
        for c, (old, new) in enumerate(zip(self._columns, columns, strict=True)):
            if old == new:
                continue
            rows.update(i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b)
            if first_column < 0:
                first_column = c + 1
            last_column = c + 1
        if not rows:
            return 0
        self._columns = columns
        # One signal over the changed rows and only the columns that changed: views repaint
        # just those cells, and a proxy sorted by a column that did not change (the name,
        # say) does not re-sort at all.
        self.dataChanged.emit(
            self.index(min(rows), first_column),
            self.index(max(rows), last_column),
            [Qt.ItemDataRole.DisplayRole, SORT_ROLE],
        )
        return len(rows)

    def clear(self) -> None:
        self.beginResetModel()
        self._names, self._name_keys, self._modules = [], [], []
        self._fuel_last = []
        self._columns = [[] for _ in range(len(self.COLUMNS) - 1)]
        self.endResetModel()

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def module_of(self, name: str) -> str:
        try:
            return self._modules[self._names.index(name)]
        except ValueError:
            return ""

    # -- QAbstractTableModel ---------------------------------------------------------------
    def row_count(self) -> int:
        return len(self._names)

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row, column = index.row(), index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(row, column)
        if role == SORT_ROLE:
            if column == self.NAME:
                return self._name_keys[row]
            value = self._columns[column - 1][row]
            return -1 if value is None else value
        if role == Qt.ItemDataRole.TextAlignmentRole and self.WORKER <= column <= self.MEMORY:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ToolTipRole:
            if column == self.NAME:
                return plain_tooltip(f"{self._names[row]} ({self._modules[row]})")
            if column == self.ERROR and self._columns[self.ERROR - 1][row]:
                return plain_tooltip(self._columns[self.ERROR - 1][row])
            if column in (self.FUEL, self.MEMORY) and self._columns[column - 1][row] is None:
                return "not metered (a Python agent), or no message handled yet"
            if column == self.FUEL:
                last = self._fuel_last[row] if row < len(self._fuel_last) else None
                return f"{self._columns[column - 1][row]:,} in all; {last or 0:,} in its last tick"
            if column == self.MEMORY:
                return f"{self._columns[column - 1][row]:,} bytes of linear memory"
        return None

    def display_text(self, row: int, column: int) -> str:
        """What the cell shows (its DisplayRole), in one call (the view's delegate)."""
        if 0 <= row < len(self._names) and 0 <= column < len(self.COLUMNS):
            return self._display(row, column)
        return ""

    def _display(self, row: int, column: int) -> str:
        if column == self.NAME:
            return printable(self._names[row])
        value = self._columns[column - 1][row]
        if column in (self.FUEL, self.MEMORY):
            if value is None:
                return _NOT_REPORTED
            return f"{value / 1024:,.0f} KiB" if column == self.MEMORY else f"{value:,}"
        if column in (self.HANDLED, self.RESTARTS):
            return f"{value:,}"
        return printable(str(value))


class AgentsFilterModel(QSortFilterProxyModel):
    """Sorts by :data:`SORT_ROLE`; filters on name, state or error text (case-insensitive)."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.setSortRole(SORT_ROLE)
        self.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.setFilterKeyColumn(-1)  # any column
        self.setDynamicSortFilter(True)
