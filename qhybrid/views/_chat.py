"""The chat panel: talk to an LLM agent of the running scenario, answers streaming in."""

from __future__ import annotations

import html

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from qhybrid.models import ChatEntry, LiveModels, RuntimeController, SessionState
from qhybrid.runtime import printable, printable_lines

__all__ = ["ChatPanel"]

#: Entries rendered at most (the model keeps more).
_SHOWN = 200


class ChatPanel(QWidget):
    """Pick an agent, type a prompt, press Enter: the prompt is posted to the agent (message
    kind 1, as ``resources/agents/ask.c`` expects) and its LLM answer streams in."""

    sent = Signal(str, str)  # agent, text

    def __init__(
        self, live: LiveModels, controller: RuntimeController, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setObjectName("chat_panel")
        self._live = live
        self._controller = controller
        self.agent_combo = QComboBox(self)
        self.agent_combo.setObjectName("chat_agent")
        self.agent_combo.setMinimumContentsLength(12)
        self.transcript = QTextBrowser(self)
        self.transcript.setObjectName("chat_transcript")
        self.transcript.setOpenLinks(False)
        self.transcript.setMinimumSize(60, 30)  # in a tab of a dock: the window stays small
        self.input = QLineEdit(self)
        self.input.setObjectName("chat_input")
        self.input.setPlaceholderText("Ask the agent\N{HORIZONTAL ELLIPSIS}")
        self.input.returnPressed.connect(self.send)
        self.send_button = QPushButton("Send", self)
        self.send_button.setObjectName("chat_send")
        self.send_button.clicked.connect(self.send)
        self.hint = QLabel(self)
        self.hint.setObjectName("chat_hint")
        self.hint.setWordWrap(True)
        top = QHBoxLayout()
        top.addWidget(QLabel("Agent:", self))
        top.addWidget(self.agent_combo, 1)
        bottom = QHBoxLayout()
        bottom.addWidget(self.input, 1)
        bottom.addWidget(self.send_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.setSpacing(3)
        layout.addLayout(top)
        layout.addWidget(self.transcript, 1)
        layout.addLayout(bottom)
        layout.addWidget(self.hint)
        live.chat.changed.connect(self._render)
        live.agents.modelReset.connect(self._agents_changed)
        controller.state_changed.connect(self._state_changed)
        self._state_changed(controller.state, "")

    def send(self) -> None:
        text = self.input.text().strip()
        agent = self.agent_combo.currentText()
        if not text or not agent:
            return
        self._controller.post(agent, text)
        self._live.chat.add_user_message(agent, text)
        self.input.clear()
        self.sent.emit(agent, text)

    def _agents_changed(self) -> None:
        """Offer the scenario's agents, LLM-looking ones (module "ask...") first."""
        agents = self._live.agents
        names = agents.names
        llm = [n for n in names if "ask" in agents.module_of(n) or "llm" in agents.module_of(n)]
        ordered = llm + [n for n in names if n not in llm]
        current = self.agent_combo.currentText()
        self.agent_combo.blockSignals(True)
        self.agent_combo.clear()
        self.agent_combo.addItems(ordered)
        index = self.agent_combo.findText(current)
        self.agent_combo.setCurrentIndex(max(0, index))
        self.agent_combo.blockSignals(False)

    def _state_changed(self, state: str, _detail: str) -> None:
        live = state in (SessionState.RUNNING, SessionState.PAUSED)
        self.input.setEnabled(live)
        self.send_button.setEnabled(live)
        self.hint.setText(
            ""
            if live
            else "Start a scenario with an LLM agent (such as ask) to chat with it, "
            "or talk to a model in the Model tab: no run is needed."
        )

    def _render(self, _first: int) -> None:
        entries = self._live.chat.entries[-_SHOWN:]
        bar = self.transcript.verticalScrollBar()
        at_end = bar.value() >= bar.maximum() - 4
        self.transcript.setHtml("".join(_entry_html(e) for e in entries))
        if at_end:
            bar.setValue(bar.maximum())


def _entry_html(entry: ChatEntry) -> str:
    text = html.escape(printable_lines(entry.text)).replace("\n", "<br>")
    who = html.escape(printable(entry.agent))
    if entry.role == "user":
        return f"<p><b>you \N{RIGHTWARDS ARROW} {who}:</b> {text}</p>"
    if entry.role == "agent":
        return f"<p style='color:gray'><i>{who}:</i> {text}</p>"
    status = ""
    if not entry.done:
        status = " \N{HORIZONTAL ELLIPSIS}"
    elif entry.error:
        status = f" <span style='color:#D55E00'>[{html.escape(printable(entry.error))}]</span>"
    elif entry.finish and entry.finish != "stop":
        status = f" <span style='color:gray'>[{html.escape(entry.finish)}]</span>"
    rate = f" <span style='color:gray'>({entry.tok_s:.1f} tok/s)</span>" if entry.tok_s else ""
    return f"<p><b>{who} (LLM #{entry.request_id}):</b> {_continued(entry)}{text}{status}{rate}</p>"


def _continued(entry: ChatEntry) -> str:
    """What an answer that completes its prompt continues: the user's prompt, in grey, or an
    ellipsis (a scenario's prompt), so that it never reads as starting mid-word."""
    first = entry.text.lstrip()[:1]
    if not first or first.isupper() or first in "\"'([{-*#0123456789":
        return ""
    if entry.prompt:
        prompt = html.escape(printable_lines(entry.prompt.rstrip())).replace("\n", "<br>")
        return f"<span style='color:gray'>{prompt}</span>"
    return "\N{HORIZONTAL ELLIPSIS}"
