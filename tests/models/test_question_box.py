"""The window's answerer of agents' questions: it blocks the asking (loop) thread until the
person answers, or until a stop answers nobody; the model lists every question."""

from __future__ import annotations

import threading

from pytestqt.qtbot import QtBot

from qhybrid.models import QuestionBox, QuestionsModel


def test_a_question_waits_for_its_answer_and_a_stop_answers_nobody(qtbot: QtBot) -> None:
    box = QuestionBox()
    model = QuestionsModel(box)
    got: list[str | None] = []
    asker = threading.Thread(target=lambda: got.append(box("planner-0", "Go ahead?")))
    asker.start()
    qtbot.waitUntil(lambda: model.first_waiting() == 0, timeout=5000)
    assert model.index(0, QuestionsModel.AGENT).data() == "planner-0"
    assert model.index(0, QuestionsModel.STATE).data() == "waiting"
    asker.join(0.3)
    assert asker.is_alive() and got == []  # still waiting: nobody answered
    assert not model.answer(5, "no such row")
    assert model.answer(0, "yes")
    asker.join(5)
    assert got == ["yes"] and box.waited_s > 0.2
    qtbot.waitUntil(lambda: model.first_waiting() == -1, timeout=5000)
    assert model.index(0, QuestionsModel.ANSWER).data() == "yes"
    assert not model.answer(0, "again")  # answered once only
    # A stop: the waiting question gets no answer, ``then`` runs on the asking thread, and
    # later questions are not put to anyone until the next run.
    woke: list[str] = []
    asker = threading.Thread(target=lambda: got.append(box("planner-1", "And now?")))
    asker.start()
    qtbot.waitUntil(lambda: model.first_waiting() == 1, timeout=5000)
    box.cancel_all(lambda: woke.append(threading.current_thread().name))
    asker.join(5)
    assert got[-1] is None and woke == [asker.name]
    qtbot.waitUntil(lambda: model.questions[1].state == "unanswered", timeout=5000)
    assert box("planner-2", "Anyone?") is None and len(model.questions) == 2
    box.reopen()
    assert box.waiting == []
