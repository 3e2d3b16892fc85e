"""The per-agent detail: the selected agent's overview (state, usage, limits), log, messages
in and out, LLM requests and error in full; a thin widget over
:meth:`~qhybrid.models.DebuggerModels.report`. Refreshed only while shown."""

from __future__ import annotations

from PySide6.QtGui import QFontDatabase, QHideEvent, QShowEvent
from PySide6.QtWidgets import (
    QComboBox,
    QLabel,
    QPlainTextEdit,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from qhybrid.models import AgentReport, DebuggerModels

__all__ = ["AgentDetailPanel"]

_TABS = (
    ("overview", "Overview"),
    ("log", "Log"),
    ("messages", "Messages"),
    ("llm", "LLM"),
    ("error", "Error"),
)


class AgentDetailPanel(QWidget):
    """Shows one agent: chosen in the combo box, the agent graph or the agents table."""

    def __init__(self, debugger: DebuggerModels, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("agent_detail")
        self.debugger = debugger
        self.agent = -1
        self.report: AgentReport | None = None
        self.combo = QComboBox(self)
        self.combo.setObjectName("agent_detail_combo")
        self.combo.setEditable(True)  # type to find one of a thousand
        self.combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.combo.setPlaceholderText("Choose an agent")
        self.combo.activated.connect(self._chosen)
        self.combo.setMinimumContentsLength(8)
        self.combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.tabs = QTabWidget(self)
        self.tabs.setObjectName("agent_detail_tabs")
        self.tabs.setDocumentMode(True)
        self.tabs.setUsesScrollButtons(True)
        self.texts: dict[str, QPlainTextEdit] = {}
        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        for key, title in _TABS:
            text = QPlainTextEdit(self)
            text.setObjectName(f"agent_detail_{key}")
            text.setReadOnly(True)
            text.setLineWrapMode(
                QPlainTextEdit.LineWrapMode.NoWrap
                if key in ("log", "messages")
                else QPlainTextEdit.LineWrapMode.WidgetWidth
            )
            text.setFont(mono)
            self.texts[key] = text
            self.tabs.addTab(text, title)
        self.hint = QLabel("Click an agent in the graph or the agents table", self)
        self.hint.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.combo)
        layout.addWidget(self.hint)
        layout.addWidget(self.tabs, 1)
        debugger.changed.connect(self._changed)
        debugger.source_changed.connect(self._source_changed)
        self._names: list[str] = []
        self._shown: dict[str, str] = {}
        self.seen = False  # shown and not behind another dock's tab (see set_seen)

    def show_agent(self, agent: int) -> None:
        """Show agent ``agent`` (an id of the run the debugger shows)."""
        self.agent = agent
        self._sync_names()
        if 0 <= agent < self.combo.count():
            self.combo.setCurrentIndex(agent)
        self.refresh()

    def refresh(self) -> None:
        self._sync_names()
        if not 0 <= self.agent < len(self.debugger.graph.names):
            self.hint.show()
            return
        self.hint.hide()
        report = self.debugger.report(self.agent)
        self.report = report
        for key, _title in _TABS:
            value = getattr(report, key)
            text = self.texts[key]
            if self._shown.get(key) != value:  # a large text is not set again unchanged
                self._shown[key] = value
                bar = text.verticalScrollBar()
                at_end = bar.value() >= bar.maximum() - 2
                text.setPlainText(value)
                if at_end and key in ("log", "messages"):
                    bar.setValue(bar.maximum())
        counts = report.counts
        for i, (key, title) in enumerate(_TABS):
            n = counts.get("errors" if key == "error" else key)
            self.tabs.setTabText(i, f"{title} ({n})" if n and key != "overview" else title)

    def _sync_names(self) -> None:
        names = self.debugger.graph.names
        if names != self._names:
            self._names = list(names)
            self.combo.blockSignals(True)
            self.combo.clear()
            self.combo.addItems(self._names)
            self.combo.setCurrentIndex(self.agent if 0 <= self.agent < len(names) else -1)
            self.combo.blockSignals(False)

    def _chosen(self, index: int) -> None:
        self.agent = index
        self.refresh()

    def _changed(self) -> None:
        if self.seen and self.isVisible():
            self.refresh()

    def set_seen(self, seen: bool) -> None:
        """Whether anyone can see the panel: its dock's ``visibilityChanged`` (a tabbed dock
        behind another tab stays "visible", moved off-screen). Unseen, it is not refreshed."""
        if seen == self.seen:
            return
        self.seen = seen
        self.debugger.watch("agent_detail", seen)
        if seen:
            self.refresh()

    def _source_changed(self, _text: str) -> None:
        self.agent = -1
        for text in self.texts.values():
            text.clear()
        self._shown.clear()
        self._sync_names()

    def showEvent(self, event: QShowEvent) -> None:
        self.seen = True
        self.debugger.watch("agent_detail", True)
        self.refresh()
        super().showEvent(event)

    def hideEvent(self, event: QHideEvent) -> None:
        self.seen = False
        self.debugger.watch("agent_detail", False)
        super().hideEvent(event)
