"""The chat: what the user asked an LLM agent, and the answers streaming in.

Answers come from :class:`~qhybrid.runtime.LlmTokens` events: each request (by
``request_id``) grows one entry as its text streams, and ends with ``done``. The asking
agent's own log lines (an agent such as ``ask`` logs "answer: ..." or "llm error: ...") are
shown too, for the agents the user talks to, so that a scenario with no LLM model still
answers visibly; but an "answer: ..." line of an agent whose answers stream in is left out
(the answer would show twice).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from PySide6.QtCore import QObject, Signal

from qhybrid.runtime import AgentLog, LlmTokens

__all__ = ["ChatEntry", "ChatModel"]


@dataclass(slots=True, eq=False)  # compared by identity: one entry per stream
class ChatEntry:
    """One bubble: ``role`` is "user", "llm" (a streamed answer) or "agent" (a log line)."""

    role: str
    agent: str
    text: str
    request_id: int | None = None
    done: bool = True
    tokens: int = 0
    tok_s: float = 0.0
    ttft_s: float = 0.0
    finish: str | None = None
    error: str | None = None
    #: The user's text this answer continues (an agent such as ``ask`` completes its prompt,
    #: so the answer alone starts mid-sentence); None when the prompt was not the user's.
    prompt: str | None = None


class ChatModel(QObject):
    """The conversation, oldest first; ``changed(first)`` fires once per batch with the index
    of the first entry that was added or changed."""

    changed = Signal(int)

    def __init__(self, parent: QObject | None = None, capacity: int = 500) -> None:
        super().__init__(parent)
        self.capacity = capacity
        self.entries: list[ChatEntry] = []
        self._streams: dict[tuple[str, int], ChatEntry] = {}
        self._talked_to: set[str] = set()
        self._streamed: set[str] = set()  # agents whose LLM answers arrive as tokens
        self._prompts: dict[str, list[str]] = {}  # agent -> the user's texts not yet answered

    def add_user_message(self, agent: str, text: str) -> None:
        self._talked_to.add(agent)
        self._prompts.setdefault(agent, []).append(text)
        self._append([ChatEntry("user", agent, text)])

    def apply(self, tokens: Iterable[LlmTokens], logs: Iterable[AgentLog] = ()) -> None:
        """Take a batch of token events and log lines (GUI thread)."""
        first = len(self.entries)
        added: list[ChatEntry] = []
        for event in tokens:
            key = (event.agent, event.request_id)
            entry = self._streams.get(key)
            if entry is None:
                entry = ChatEntry("llm", event.agent, "", event.request_id, done=False)
                self._streams[key] = entry
                self._streamed.add(event.agent)
                waiting = self._prompts.get(event.agent)
                if waiting:
                    entry.prompt = waiting.pop(0)
                added.append(entry)
            elif entry in self.entries:
                first = min(first, self.entries.index(entry))
            entry.text += event.text
            entry.tokens += event.tokens
            entry.tok_s = event.tok_s or entry.tok_s
            entry.ttft_s = event.ttft_s or entry.ttft_s
            if event.done:
                entry.done = True
                entry.finish = event.finish
                entry.error = event.error
                del self._streams[key]
        for line in logs:
            if line.agent in self._talked_to:
                if line.agent in self._streamed and line.text.startswith("answer:"):
                    continue  # the streamed entry shows it already
                added.append(ChatEntry("agent", line.agent, line.text))
        if added:
            first = min(first, len(self.entries))
            self._append(added, notify=False)
        if first < len(self.entries):
            self.changed.emit(max(0, min(first, len(self.entries) - 1)))

    def clear(self) -> None:
        self.entries.clear()
        self._streams.clear()
        self._prompts.clear()
        self.changed.emit(0)

    def _append(self, entries: list[ChatEntry], *, notify: bool = True) -> None:
        first = len(self.entries)
        self.entries.extend(entries)
        overflow = len(self.entries) - self.capacity
        if overflow > 0:
            del self.entries[:overflow]
            first = 0
        if notify:
            self.changed.emit(first)
