"""The Scenario panel: what the open scenario will run, or why it cannot, until it is fixed."""

from __future__ import annotations

import html

from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget

from qhybrid.models import ScenarioCheck, scenario_outline
from qhybrid.runtime import printable, printable_lines

__all__ = ["ScenarioPanel"]


class ScenarioPanel(QWidget):
    """A status line (valid, or the error in red) over the scenario's outline or error text."""

    def __init__(self, check: ScenarioCheck, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("scenario_panel")
        self.check = check
        self.status_label = QLabel("No scenario open", self)
        self.status_label.setObjectName("scenario_status")
        self.status_label.setWordWrap(True)
        self.recheck_button = QPushButton("Check again", self)
        self.recheck_button.setObjectName("scenario_recheck")
        self.recheck_button.setToolTip("Read the file again (it is also re-read on every save)")
        self.recheck_button.clicked.connect(check.recheck)
        self.text = QPlainTextEdit(self)
        self.text.setObjectName("scenario_text")
        self.text.setReadOnly(True)
        self.text.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.text.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        top = QHBoxLayout()
        top.addWidget(self.status_label, 1)
        top.addWidget(self.recheck_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(top)
        layout.addWidget(self.text, 1)
        check.checked.connect(self._show)
        self._show(check.ok)

    def _show(self, ok: bool) -> None:
        check = self.check
        self.recheck_button.setEnabled(check.path is not None)
        if check.path is None:
            self.status_label.setText("No scenario open")
            self.text.setPlainText("")
            return
        name = html.escape(printable(check.path.name))
        if ok and check.scenario is not None:
            self.status_label.setStyleSheet("")
            self.status_label.setText(f"<b>{name}</b>: valid, ready to start")
            self.text.setPlainText(
                "\n".join(printable(line) for line in scenario_outline(check.scenario))
            )
        else:
            self.status_label.setStyleSheet("color: #D55E00;")
            self.status_label.setText(
                f"<b>{name}</b>: cannot run (fix the file; it is re-checked on save)"
            )
            self.text.setPlainText(printable_lines(check.error or "unknown error"))
