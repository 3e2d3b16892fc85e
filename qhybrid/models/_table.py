"""What every read-only table model of the window shares: the header from ``COLUMNS`` and the
row and column counts (a flat table: no child rows)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt

_Index = QModelIndex | QPersistentModelIndex


class TableModel(QAbstractTableModel):
    """A flat table whose header is :attr:`COLUMNS`; a subclass says how many rows it has
    (:meth:`row_count`) and what is in them (``data``)."""

    COLUMNS: Sequence[str] = ()

    def row_count(self) -> int:
        raise NotImplementedError

    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else self.row_count()

    def columnCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.COLUMNS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self.COLUMNS[section]
        return None
