"""The chat with a local model, no run needed: pick a model that ``qhybrid models`` finds,
load it (with progress), write a system prompt, talk; conversations are kept."""

from __future__ import annotations

import html

from PySide6.QtCore import QItemSelectionModel, QSize, Qt, QTimer
from PySide6.QtGui import QResizeEvent
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QProgressBar,
    QSplitter,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from qhybrid.models._conversations import ChatTurn, ConversationsModel
from qhybrid.models._local_chat import LocalChat, ModelChoice, find_model_choices
from qhybrid.runtime import printable, printable_lines

__all__ = ["StandaloneChatPanel"]

#: The transcript is redrawn at most this often while an answer streams in.
_RENDER_MS = 40
#: Turns shown at most (the latest; the conversation keeps them all): a redraw stays cheap.
_SHOWN_TURNS = 60


class StandaloneChatPanel(QWidget):
    """Conversations on the left; the model, the system prompt, the transcript and the input
    on the right. The model runs on threads of its own (:class:`LocalChat`)."""

    def __init__(self, model: ConversationsModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("model_chat_panel")
        self.model = model
        self.chat: LocalChat = model.chat
        self.choices: list[ModelChoice] = []
        self._shown: object = None  # the conversation the transcript shows

        self.list_view = QListView(self)
        self.list_view.setObjectName("chat_conversations")
        self.list_view.setModel(model)
        self.list_view.setMinimumSize(60, 40)
        self.list_view.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list_view.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.list_view.selectionModel().currentRowChanged.connect(
            lambda current, _previous: model.select(current.row())
        )
        self.new_button = _button("New", self)
        self.new_button.setObjectName("chat_new")
        self.new_button.setToolTip("Start a new conversation")
        self.new_button.clicked.connect(self.new_conversation)
        self.delete_button = _button("Delete", self)
        self.delete_button.setObjectName("chat_delete")
        self.delete_button.clicked.connect(self._delete)
        left = QWidget(self)
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.setSpacing(3)
        left_layout.addWidget(self.list_view, 1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.new_button)
        buttons.addWidget(self.delete_button)
        left_layout.addLayout(buttons)

        self.model_combo = QComboBox(self)
        self.model_combo.setObjectName("chat_model")
        self.model_combo.setMinimumContentsLength(6)
        self.model_combo.setToolTip("The model to talk to (the models `qhybrid models` finds)")
        self.model_combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.refresh_button = _button("\N{CLOCKWISE OPEN CIRCLE ARROW}", self)
        self.refresh_button.setObjectName("chat_refresh_models")
        self.refresh_button.setToolTip("Look for models again (as `qhybrid models` does)")
        self.refresh_button.clicked.connect(self.refresh_models)
        self.load_button = _button("Load", self)
        self.load_button.setObjectName("chat_load")
        self.load_button.clicked.connect(self.load_selected)
        self.progress = QProgressBar(self)
        self.progress.setObjectName("chat_load_progress")
        self.progress.setMaximumHeight(14)
        self.progress.setTextVisible(False)
        self.progress.hide()
        # One line: the transcript needs the height more (a dock is ~250 pixels at 1100x720).
        self.system_edit = _SystemEdit(self)
        self.system_edit.setObjectName("chat_system")
        self.system_edit.setPlaceholderText("System prompt (optional)")
        self.system_edit.setToolTip("The system prompt: how the model should answer")
        self.system_edit.textChanged.connect(
            lambda _text: self.model.set_system(self.system_edit.toPlainText())
        )
        self.transcript = QTextBrowser(self)
        self.transcript.setObjectName("chat_model_transcript")
        self.transcript.setOpenLinks(False)
        self.transcript.setMinimumSize(60, 30)
        self.input = QLineEdit(self)
        self.input.setObjectName("chat_model_input")
        self.input.setPlaceholderText("Ask the model\N{HORIZONTAL ELLIPSIS}")
        self.input.returnPressed.connect(self.send)
        self.send_button = _button("Send", self)
        self.send_button.setObjectName("chat_model_send")
        self.send_button.clicked.connect(self.send)
        self.stop_button = _button("Stop", self)
        self.stop_button.setObjectName("chat_model_stop")
        self.stop_button.clicked.connect(model.stop)
        self.stop_button.setEnabled(False)
        self.status_label = _StatusLabel(self)
        self.status_label.setObjectName("chat_model_status")
        self.status_label.set_status("No model loaded.")

        right = QWidget(self)
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.setSpacing(3)
        top = QHBoxLayout()
        top.addWidget(self.model_combo, 1)
        top.addWidget(self.refresh_button)
        top.addWidget(self.load_button)
        right_layout.addLayout(top)
        right_layout.addWidget(self.progress)
        right_layout.addWidget(self.system_edit)
        right_layout.addWidget(self.transcript, 1)
        bottom = QHBoxLayout()
        bottom.addWidget(self.input, 1)
        bottom.addWidget(self.send_button)
        bottom.addWidget(self.stop_button)
        right_layout.addLayout(bottom)
        right_layout.addWidget(self.status_label)

        self.split = QSplitter(Qt.Orientation.Horizontal, self)
        self.split.setObjectName("chat_split")
        self.split.addWidget(left)
        self.split.addWidget(right)
        self.split.setStretchFactor(0, 1)
        self.split.setStretchFactor(1, 4)
        self.split.setSizes([130, 400])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.split)

        # Redraws coalesced: a streamed answer grows many times a second.
        self._render_timer = QTimer(self)
        self._render_timer.setSingleShot(True)
        self._render_timer.setInterval(_RENDER_MS)
        self._render_timer.timeout.connect(self.render_transcript)
        model.transcript_changed.connect(self._schedule_render)
        model.busy_changed.connect(self._busy_changed)
        model.status.connect(lambda text: self.status_label.set_status(text, error=True))
        self.chat.load_progress.connect(self._load_progress)
        self.chat.loaded.connect(self._loaded)
        self.chat.load_failed.connect(self._load_failed)
        self.refresh_models()
        self._current_changed()
        self.render_transcript()

    def sizeHint(self) -> QSize:
        # Asked for no more room than the in-run chat beside it was: the log keeps its share.
        return QSize(360, 200)

    # -- models -------------------------------------------------------------------------------
    def refresh_models(self) -> None:
        """List the models ``qhybrid models`` finds; the current conversation's is chosen."""
        current = self.model_combo.currentData()
        self.choices = find_model_choices()
        self.model_combo.clear()
        for choice in self.choices:
            self.model_combo.addItem(printable(choice.label), str(choice.path))
            self.model_combo.setItemData(
                self.model_combo.count() - 1, str(choice.path), Qt.ItemDataRole.ToolTipRole
            )
        wanted = current
        if self.model.current is not None and self.model.current.model_path:
            wanted = self.model.current.model_path
        index = self.model_combo.findData(wanted) if wanted else -1
        if index < 0:
            # Prefer an instruction-tuned model: it is what answers a chat.
            index = next(
                (i for i, c in enumerate(self.choices) if "instruct" in c.name.lower()),
                next((i for i, c in enumerate(self.choices) if "-it" in c.name.lower()), 0),
            )
        self.model_combo.setCurrentIndex(index)
        self.load_button.setEnabled(bool(self.choices))
        if not self.choices:
            self.status_label.set_status(
                "No model found: `qhybrid models` lists where it looks (Ollama, LM Studio, "
                "the Hugging Face cache, ~/.cache/qhybrid/models)."
            )

    def load_selected(self) -> None:
        index = self.model_combo.currentIndex()
        if not 0 <= index < len(self.choices):
            return
        choice = self.choices[index]
        self.load_button.setEnabled(False)
        self.chat.load(choice.path, choice.name)

    def _load_progress(self, name: str, fraction: float) -> None:
        self.progress.show()
        if fraction < 0:
            self.progress.setRange(0, 0)  # busy: building the model
            self.status_label.set_status(f"Loading {printable(name)}\N{HORIZONTAL ELLIPSIS}")
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(round(fraction * 1000))
            self.status_label.set_status(
                f"Reading {printable(name)}: {fraction:.0%}\N{HORIZONTAL ELLIPSIS}"
            )
        self._update_controls()

    def _loaded(self, name: str, info: str) -> None:
        self.progress.hide()
        self.load_button.setEnabled(True)
        self.status_label.set_status(f"{printable(name)}: {printable(info)}.")
        self._update_controls()
        self.input.setFocus()

    def _load_failed(self, name: str, message: str) -> None:
        self.progress.hide()
        self.load_button.setEnabled(True)
        self.status_label.set_status(
            f"Cannot load {printable(name)}: {printable(message)}", error=True
        )
        self._update_controls()

    # -- conversations ------------------------------------------------------------------------
    def new_conversation(self) -> None:
        self.model.new_conversation(self.system_edit.toPlainText())
        self.list_view.setCurrentIndex(self.model.index(0))
        self.input.setFocus()

    def _delete(self) -> None:
        row = self.list_view.currentIndex().row()
        if row < 0:
            row = self.model.row_of(self.model.current)
        self.model.delete(row)
        self._current_changed()

    def send(self) -> None:
        if self.model.current is None:
            self.model.new_conversation(self.system_edit.toPlainText())
        if self.model.send(self.input.text()):
            self.input.clear()
            row = self.model.row_of(self.model.current)
            self.list_view.selectionModel().setCurrentIndex(
                self.model.index(row), QItemSelectionModel.SelectionFlag.ClearAndSelect
            )

    def _current_changed(self) -> None:
        conversation = self.model.current
        row = self.model.row_of(conversation)
        if row >= 0 and self.list_view.currentIndex().row() != row:
            self.list_view.selectionModel().setCurrentIndex(
                self.model.index(row), QItemSelectionModel.SelectionFlag.ClearAndSelect
            )
        system = conversation.system if conversation is not None else ""
        if self.system_edit.toPlainText() != system:
            self.system_edit.blockSignals(True)
            self.system_edit.setPlainText(system)
            self.system_edit.blockSignals(False)

    def _busy_changed(self, _busy: bool) -> None:
        self._render_timer.stop()
        self.render_transcript()  # at once: an answer's end is not left for the next frame

    def _update_controls(self) -> None:
        busy = self.model.busy
        self.stop_button.setEnabled(busy)
        self.send_button.setEnabled(self.chat.ready and not busy)
        self.input.setEnabled(self.chat.ready)

    # -- the transcript -----------------------------------------------------------------------
    def _schedule_render(self) -> None:
        if self.model.current is not self._shown:
            self._current_changed()
            self.render_transcript()
        elif not self._render_timer.isActive():
            self._render_timer.start()

    def render_transcript(self) -> None:
        conversation = self.model.current
        self._shown = conversation
        bar = self.transcript.verticalScrollBar()
        at_end = bar.value() >= bar.maximum() - 4
        if conversation is None or not conversation.turns:
            self.transcript.setHtml(
                "<p style='color:gray'>Load a model, then ask it anything: no run is needed. "
                "Conversations are kept.</p>"
            )
        else:
            model = html.escape(printable(conversation.model or "model"))
            turns = conversation.turns[-_SHOWN_TURNS:]
            hidden = len(conversation.turns) - len(turns)
            head = f"<p style='color:gray'>({hidden} earlier turns not shown)</p>" if hidden else ""
            self.transcript.setHtml(head + "".join(_turn_html(t, model) for t in turns))
        if at_end:
            bar.setValue(bar.maximum())
        self._update_controls()


class _StatusLabel(QLabel):
    """One line, elided to fit (the whole text in its tooltip), so the transcript keeps the
    height; an error is shown whole, wrapped, in the warning colour."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTextFormat(Qt.TextFormat.PlainText)
        self.setMinimumWidth(40)
        self.full_text = ""
        self.error = False

    def set_status(self, text: str, *, error: bool = False) -> None:
        self.full_text, self.error = text, error
        self.setToolTip(text)
        self.setWordWrap(error)
        self.setStyleSheet("color: #D55E00" if error else "")
        self._fit()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._fit()

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        return QSize(40, hint.height()) if not self.error else hint

    def sizeHint(self) -> QSize:
        hint = super().sizeHint()
        return QSize(min(hint.width(), 300), hint.height()) if not self.error else hint

    def _fit(self) -> None:
        if self.error:
            self.setText(self.full_text)
            return
        metrics = self.fontMetrics()
        self.setText(metrics.elidedText(self.full_text, Qt.TextElideMode.ElideRight, self.width()))


class _SystemEdit(QLineEdit):
    """The system prompt's line, read and written as plain text."""

    def toPlainText(self) -> str:
        return self.text()

    def setPlainText(self, text: str) -> None:
        self.setText(text)


def _button(text: str, parent: QWidget) -> QToolButton:
    """A compact push button (a QPushButton is at least 80 pixels wide in most styles: six of
    them would make the dock, and so the window, wider than a small screen allows)."""
    button = QToolButton(parent)
    button.setText(text)
    button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
    return button


def _turn_html(turn: ChatTurn, model: str) -> str:
    text = html.escape(printable_lines(turn.content)).replace("\n", "<br>")
    if turn.role == "user":
        return f"<p><b>you:</b> {text}</p>"
    status = ""
    if not turn.done:
        status = " \N{HORIZONTAL ELLIPSIS}"
    elif turn.error:
        status = f" <span style='color:#D55E00'>[{html.escape(printable(turn.error))}]</span>"
    elif turn.finish and turn.finish != "stop":
        status = f" <span style='color:gray'>[{html.escape(turn.finish)}]</span>"
    rate = f" <span style='color:gray'>({turn.tok_s:.1f} tok/s)</span>" if turn.tok_s else ""
    return f"<p><b>{model}:</b> {text}{status}{rate}</p>"
