"""Agents' questions to a person (ABI v2 ``ask``), answered in the window; the run waits.

The runtime asks for an answer synchronously, on its loop thread, while it applies the tick's
effects in commit order (``AgentServices``): :class:`QuestionBox` is that callable. It puts the
question up and blocks the loop thread until the window answers it (or the run is stopped,
or the window closes: then the agent is told that no person answered). Blocking there is what
"the run waits" means: no later tick runs, in commit order nothing changes, and the answer
is recorded (trace digest, the run store's ``effects``) like a tool's result, so a replay
gives the same trace without asking again.

:class:`QuestionsModel` lists the questions, the open one first in line; it changes on the GUI
thread only (``asked`` and ``settled`` are emitted on the loop thread, queued to it).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import (
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    Signal,
    Slot,
)

from qhybrid.models._table import TableModel
from qhybrid.runtime import printable

__all__ = ["Question", "QuestionBox", "QuestionsModel"]

_Index = QModelIndex | QPersistentModelIndex


@dataclass
class Question:
    id: int
    agent: str
    text: str
    asked_at: float
    answer: str | None = None
    state: str = "waiting"  # waiting, answered, unanswered (stopped: no person answered)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)


class QuestionBox(QObject):
    """The ``answer(agent, question)`` callable a window run's agent services use.

    ``asked(question)`` and ``settled(question)`` fire on the runtime's loop thread.
    """

    asked = Signal(object)
    settled = Signal(object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._open: dict[int, Question] = {}
        self._cancelled = False
        self._then: Callable[[], None] | None = None
        #: Seconds runs spent waiting for people (the controller's timeout leaves them out).
        self.waited_s = 0.0

    def __call__(self, agent: str, text: str) -> str | None:
        """On the runtime's loop thread: wait for the person's answer (None: nobody)."""
        question = Question(next(self._ids), agent, text, time.time())
        with self._lock:
            if self._cancelled:
                return None
            self._open[question.id] = question
        self.asked.emit(question)
        t0 = time.perf_counter()
        question._done.wait()
        self.waited_s += time.perf_counter() - t0
        with self._lock:
            self._open.pop(question.id, None)
            then, self._then = (
                (self._then, None) if question.state == "unanswered" else (None, self._then)
            )
        if then is not None:
            then()  # on the loop thread, before the tick goes on (a stop takes effect now)
        self.settled.emit(question)
        return question.answer

    def answer(self, question_id: int, text: str) -> bool:
        """From the GUI thread: answer an open question; False if it is not open."""
        with self._lock:
            question = self._open.get(question_id)
            if question is None or question._done.is_set():
                return False
            question.answer, question.state = text, "answered"
        question._done.set()
        return True

    def cancel_all(self, then: Callable[[], None] | None = None) -> None:
        """No person will answer (the run is stopping, the window closing): every open
        question, and every one asked from now on until :meth:`reopen`, gets None. ``then``
        runs on the runtime's loop thread as a waiting question wakes (before its tick goes
        on): what makes a Stop take effect after that tick, as it would have."""
        with self._lock:
            self._cancelled = True
            open_ = list(self._open.values())
            self._then = then if open_ else None
        for question in open_:
            if not question._done.is_set():
                question.state = "unanswered"
                question._done.set()

    def reopen(self) -> None:
        """A new run: questions are put to the person again."""
        with self._lock:
            self._cancelled = False

    @property
    def waiting(self) -> list[Question]:
        with self._lock:
            return [q for q in self._open.values() if not q._done.is_set()]


class QuestionsModel(TableModel):
    """Every question of the window's runs, newest last: agent, question, state, answer."""

    COLUMNS = ("Agent", "Question", "State", "Answer")
    AGENT, QUESTION, STATE, ANSWER = range(len(COLUMNS))
    #: ``changed()``: a question came or was settled (the panel updates its answer box).
    changed = Signal()

    def __init__(self, box: QuestionBox, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.box = box
        self.questions: list[Question] = []
        box.asked.connect(self._asked)
        box.settled.connect(self._settled)

    @Slot(object)
    def _asked(self, question: Question) -> None:
        if any(q.id == question.id for q in self.questions):
            return
        row = len(self.questions)
        self.beginInsertRows(QModelIndex(), row, row)
        self.questions.append(question)
        self.endInsertRows()
        self.changed.emit()

    @Slot(object)
    def _settled(self, question: Question) -> None:
        for row, q in enumerate(self.questions):
            if q.id == question.id:
                self.dataChanged.emit(self.index(row, 0), self.index(row, len(self.COLUMNS) - 1))
        self.changed.emit()

    def first_waiting(self) -> int:
        """The row of the oldest question still waiting, or -1."""
        return next((r for r, q in enumerate(self.questions) if q.state == "waiting"), -1)

    def answer(self, row: int, text: str) -> bool:
        if not 0 <= row < len(self.questions):
            return False
        ok = self.box.answer(self.questions[row].id, text)
        if ok:
            self.dataChanged.emit(self.index(row, 0), self.index(row, len(self.COLUMNS) - 1))
            self.changed.emit()
        return ok

    # -- QAbstractTableModel ---------------------------------------------------------------
    def row_count(self) -> int:
        return len(self.questions)

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        q = self.questions[index.row()]
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
            values = (q.agent, q.text, q.state, q.answer or "")
            return printable(values[index.column()])
        return None
