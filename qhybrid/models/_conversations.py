"""Conversations with local models, kept from one start of the window to the next.

A :class:`Conversation` is a system prompt, the model it was had with, and its turns. The
:class:`ConversationStore` keeps each one as a JSON file under the user's data folder
(``platformdirs``: ``~/.local/share/qhybrid/chats`` on Linux), written atomically; a file
that cannot be read is skipped with a warning, never a crash. :class:`ConversationsModel`
lists them (newest first) for a view and drives a :class:`~qhybrid.models._local_chat.LocalChat`:
``send(text)`` adds the user's turn and an empty answer that the model's streamed text grows.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QAbstractListModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    Signal,
)

from qhybrid.models._local_chat import ChatSettings, LocalChat

__all__ = ["ChatTurn", "Conversation", "ConversationStore", "ConversationsModel"]

logger = logging.getLogger(__name__)

_FORMAT = 1
_ROLES = ("user", "assistant")
_TITLE_CHARS = 48

_Index = QModelIndex | QPersistentModelIndex


@dataclass(slots=True, eq=False)
class ChatTurn:
    """One turn: the user's text, or the model's answer (``done`` once it has ended)."""

    role: str
    content: str
    done: bool = True
    finish: str | None = None
    error: str | None = None
    tokens: int = 0
    tok_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.role == "assistant":
            out.update(finish=self.finish, error=self.error, tokens=self.tokens, tok_s=self.tok_s)
        return out

    @classmethod
    def from_json(cls, raw: Any) -> ChatTurn:
        if not isinstance(raw, dict) or raw.get("role") not in _ROLES:
            raise ValueError('a turn must be {"role": "user" or "assistant", "content": text}')
        if not isinstance(raw.get("content"), str):
            raise ValueError("a turn's content must be text")
        return cls(
            role=raw["role"],
            content=raw["content"],
            finish=_opt_str(raw.get("finish")),
            error=_opt_str(raw.get("error")),
            tokens=int(raw.get("tokens") or 0),
            tok_s=float(raw.get("tok_s") or 0.0),
        )


@dataclass(slots=True, eq=False)
class Conversation:
    """A conversation: ``id`` names its file; ``model`` is the model's name as listed."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    title: str = "New chat"
    model: str = ""
    model_path: str = ""
    system: str = ""
    turns: list[ChatTurn] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    def messages(self) -> list[dict[str, str]]:
        """What the model is given: the system prompt, then the finished turns with text."""
        out = [{"role": "system", "content": self.system}] if self.system.strip() else []
        for turn in self.turns:
            if turn.role == "assistant" and (turn.error or not turn.content):
                continue
            out.append({"role": turn.role, "content": turn.content})
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "id": self.id,
            "title": self.title,
            "model": self.model,
            "model_path": self.model_path,
            "system": self.system,
            "created": self.created,
            "updated": self.updated,
            "turns": [t.to_json() for t in self.turns if t.done],
        }

    @classmethod
    def from_json(cls, raw: Any) -> Conversation:
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        if raw.get("format") != _FORMAT:
            raise ValueError(f"format {raw.get('format')!r}, expected {_FORMAT}")
        cid = raw.get("id")
        if not isinstance(cid, str) or not cid.isalnum():
            raise ValueError("no valid id")
        turns = raw.get("turns")
        if not isinstance(turns, list):
            raise ValueError('"turns" must be a list')
        return cls(
            id=cid,
            title=str(raw.get("title") or "Chat"),
            model=str(raw.get("model") or ""),
            model_path=str(raw.get("model_path") or ""),
            system=str(raw.get("system") or ""),
            turns=[ChatTurn.from_json(t) for t in turns],
            created=float(raw.get("created") or 0.0),
            updated=float(raw.get("updated") or 0.0),
        )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def default_chats_dir() -> Path:
    import platformdirs

    return platformdirs.user_data_path("qhybrid") / "chats"


class ConversationStore:
    """Conversations as JSON files in ``folder`` (default: :func:`default_chats_dir`)."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_chats_dir()
        #: Files that could not be read at the last :meth:`load_all`, with why.
        self.problems: list[str] = []

    def path_of(self, conversation: Conversation) -> Path:
        return self.folder / f"{conversation.id}.json"

    def load_all(self) -> list[Conversation]:
        """Every readable conversation, newest first."""
        self.problems = []
        found: list[Conversation] = []
        if not self.folder.is_dir():
            return found
        for path in sorted(self.folder.glob("*.json")):
            try:
                found.append(Conversation.from_json(json.loads(path.read_text("utf-8"))))
            except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
                problem = f"{path}: not a readable conversation: {exc}"
                logger.warning("%s", problem)
                self.problems.append(problem)
        found.sort(key=lambda c: c.updated, reverse=True)
        return found

    def save(self, conversation: Conversation) -> None:
        """Write it atomically (a crash leaves the old file or the new one, never half)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.path_of(conversation)
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(
                json.dumps(conversation.to_json(), ensure_ascii=False, indent=1), "utf-8"
            )
            os.replace(tmp, path)
        except OSError as exc:
            logger.warning("the conversation could not be saved in %s: %s", self.folder, exc)

    def delete(self, conversation: Conversation) -> None:
        try:
            self.path_of(conversation).unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("the conversation could not be deleted: %s", exc)


class ConversationsModel(QAbstractListModel):
    """The conversations, newest first, and the one being had (:attr:`current`).

    ``transcript_changed`` fires when the current conversation's turns change (a turn added,
    an answer's text grown, an answer ended); ``busy_changed(bool)`` when an answer starts or
    ends; ``status(text)`` with a sentence for the user (what failed, what is loaded).
    """

    transcript_changed = Signal()
    busy_changed = Signal(bool)
    status = Signal(str)

    def __init__(
        self,
        chat: LocalChat,
        store: ConversationStore | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.chat = chat
        self.store = store or ConversationStore()
        self.settings = ChatSettings()
        self.conversations: list[Conversation] = self.store.load_all()
        self.current: Conversation | None = self.conversations[0] if self.conversations else None
        self._answering: tuple[int, Conversation, ChatTurn] | None = None
        chat.delta.connect(self._on_delta)
        chat.answer_done.connect(self._on_done)
        chat.answer_failed.connect(self._on_failed)

    # -- Qt's list model --------------------------------------------------------------------
    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.conversations)

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self.conversations):
            return None
        conversation = self.conversations[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return conversation.title
        if role == Qt.ItemDataRole.ToolTipRole:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(conversation.updated))
            return f"{conversation.model or 'no model'}, {len(conversation.turns)} turns, {when}"
        return None

    # -- the user's actions -----------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """An answer is being written."""
        return self._answering is not None

    def new_conversation(self, system: str = "") -> Conversation:
        """Start a new conversation (saved once it has a turn) and make it current."""
        conversation = Conversation(system=system)
        self.beginInsertRows(QModelIndex(), 0, 0)
        self.conversations.insert(0, conversation)
        self.endInsertRows()
        self.current = conversation
        self.transcript_changed.emit()
        return conversation

    def select(self, row: int) -> None:
        if 0 <= row < len(self.conversations):
            self.current = self.conversations[row]
            self.transcript_changed.emit()

    def row_of(self, conversation: Conversation | None) -> int:
        try:
            return self.conversations.index(conversation)  # type: ignore[arg-type]
        except ValueError:
            return -1

    def delete(self, row: int) -> None:
        if not 0 <= row < len(self.conversations):
            return
        conversation = self.conversations[row]
        if self._answering is not None and self._answering[1] is conversation:
            self.chat.cancel()
            self._answering = None
            self.busy_changed.emit(False)
        self.beginRemoveRows(QModelIndex(), row, row)
        del self.conversations[row]
        self.endRemoveRows()
        self.store.delete(conversation)
        if self.current is conversation:
            self.current = self.conversations[0] if self.conversations else None
            self.transcript_changed.emit()

    def set_system(self, text: str) -> None:
        """The current conversation's system prompt (for its next answers)."""
        if self.current is None:
            self.new_conversation(text)
        elif self.current.system != text:
            self.current.system = text
            if self.current.turns:
                self._save(self.current)

    def send(self, text: str) -> bool:
        """Ask the loaded model: the user's turn, then an answer that streams in. False (and a
        ``status``) when no model is loaded or an answer is still being written."""
        text = text.strip()
        if not text:
            return False
        if self._answering is not None:
            self.status.emit("An answer is still being written: wait, or press Stop.")
            return False
        if not self.chat.ready:
            self.status.emit("Choose a model and press Load first.")
            return False
        conversation = self.current or self.new_conversation()
        if not conversation.turns:
            conversation.title = _title(text)
        conversation.model = self.chat.model_name or ""
        conversation.model_path = str(self.chat.model_path or "")
        conversation.turns.append(ChatTurn("user", text))
        messages = conversation.messages()
        answer = ChatTurn("assistant", "", done=False)
        conversation.turns.append(answer)
        request = self.chat.ask(messages, self.settings)
        self._answering = (request, conversation, answer)
        self._touch(conversation)
        self.busy_changed.emit(True)
        self.transcript_changed.emit()
        return True

    def stop(self) -> None:
        """End the answer being written (what it has so far is kept)."""
        if self._answering is not None:
            self.chat.cancel()

    # -- the model's answers (queued from the chat's thread) ---------------------------------
    def _on_delta(self, request: int, text: str) -> None:
        if self._answering is None or self._answering[0] != request:
            return
        _request, conversation, answer = self._answering
        answer.content += text
        if conversation is self.current:
            self.transcript_changed.emit()

    def _on_done(self, request: int, finish: str, tokens: int, tok_s: float) -> None:
        ended = self._end(request)
        if ended is not None:
            conversation, answer = ended
            answer.finish, answer.tokens, answer.tok_s = finish, tokens, tok_s
            answer.content = answer.content.rstrip()
            self._finish(conversation)

    def _on_failed(self, request: int, message: str) -> None:
        ended = self._end(request)
        if ended is not None:
            conversation, answer = ended
            answer.error = message
            self._finish(conversation)
        self.status.emit(message)

    def _end(self, request: int) -> tuple[Conversation, ChatTurn] | None:
        if self._answering is None or self._answering[0] != request:
            return None
        _request, conversation, answer = self._answering
        self._answering = None
        answer.done = True
        return conversation, answer

    def _finish(self, conversation: Conversation) -> None:
        self._save(conversation)
        self.busy_changed.emit(False)
        if conversation is self.current:
            self.transcript_changed.emit()

    def _touch(self, conversation: Conversation) -> None:
        """Mark it changed and move it to the top of the list."""
        conversation.updated = time.time()
        row = self.row_of(conversation)
        if row > 0:
            self.beginMoveRows(QModelIndex(), row, row, QModelIndex(), 0)
            self.conversations.insert(0, self.conversations.pop(row))
            self.endMoveRows()
        elif row == 0:
            top = self.index(0)
            self.dataChanged.emit(top, top)

    def _save(self, conversation: Conversation) -> None:
        conversation.updated = time.time()
        self.store.save(conversation)


def _title(text: str) -> str:
    line = " ".join(text.split())
    return (
        line if len(line) <= _TITLE_CHARS else line[: _TITLE_CHARS - 1] + "\N{HORIZONTAL ELLIPSIS}"
    )
