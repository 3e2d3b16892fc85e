"""The Questions panel: what agents ask a person (ABI v2 ``ask``), and the box to answer in;
the run waits until the question is answered (a thin view over
:class:`~qhybrid.models.QuestionsModel`)."""

from __future__ import annotations

from html import escape

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from qhybrid.models import QuestionsModel

__all__ = ["QuestionsPanel"]


class QuestionsPanel(QWidget):
    """``waiting(count)``: how many questions wait (the window raises the panel for one)."""

    waiting = Signal(int)

    def __init__(self, model: QuestionsModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("questions_panel")
        self.model = model
        self.prompt = QLabel("No agent has asked anything yet", self)
        self.prompt.setObjectName("questions_prompt")
        self.prompt.setWordWrap(True)
        self.prompt.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.answer_edit = QLineEdit(self)
        self.answer_edit.setObjectName("questions_answer")
        self.answer_edit.setPlaceholderText("Your answer (Enter sends it; the run waits for it)")
        self.answer_edit.returnPressed.connect(self.send)
        self.send_button = QPushButton("Answer", self)
        self.send_button.setObjectName("questions_send")
        self.send_button.clicked.connect(self.send)
        self.table = QTableView(self)
        self.table.setObjectName("questions_table")
        self.table.setModel(model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 6)
        self.table.horizontalHeader().setStretchLastSection(True)
        for column, width in enumerate((90, 260, 80)):
            self.table.setColumnWidth(column, width)
        row = QHBoxLayout()
        row.addWidget(self.answer_edit, 1)
        row.addWidget(self.send_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.prompt)
        layout.addLayout(row)
        layout.addWidget(self.table, 1)
        model.changed.connect(self._update)
        self._update()

    def send(self) -> None:
        row = self.model.first_waiting()
        if row < 0:
            return
        if self.model.answer(row, self.answer_edit.text()):
            self.answer_edit.clear()
        self._update()

    def _update(self) -> None:
        row = self.model.first_waiting()
        count = sum(q.state == "waiting" for q in self.model.questions)
        if row < 0:
            self.prompt.setText(
                "No question waits"
                if self.model.questions
                else "No agent has asked anything yet (agents ask with ABI v2 `ask`)"
            )
        else:
            q = self.model.questions[row]
            more = f" ({count - 1} more waiting)" if count > 1 else ""
            self.prompt.setText(f"<b>{escape(q.agent)}</b> asks{more}: {escape(q.text)}")
            self.prompt.setTextFormat(Qt.TextFormat.RichText)
        self.answer_edit.setEnabled(row >= 0)
        self.send_button.setEnabled(row >= 0)
        if row >= 0:
            self.answer_edit.setFocus()
        self.waiting.emit(count)
