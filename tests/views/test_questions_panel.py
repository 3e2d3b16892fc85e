"""Human in the loop in the window: agents' questions (ABI v2 ask) appear in the Questions
panel, the run waits for them, the answers reach the agents and are recorded in the run store
(a replay from the store gives the same trace without asking); window runs are recorded."""

from __future__ import annotations

from pathlib import Path

from pytestqt.qtbot import QtBot

from qhybrid._resources import resource_path
from qhybrid.models import RuntimeController, SessionState
from qhybrid.runs_cli import main as runs_main
from qhybrid.runtime.store import RunStore
from qhybrid.views import MainWindow


def asking(tmp_path: Path) -> Path:
    path = tmp_path / "asking.toml"
    path.write_text(
        f"""
name = "asking"
[stop]
max_ticks = 20
timeout_s = 30
[[agents]]
name = "asker"
module = "{resource_path("agents", "asker.wat").as_posix()}"
count = 2
[[messages]]
to = "asker"
kind = 1
""",
        encoding="utf-8",
    )
    return path


def _window(qtbot: QtBot) -> MainWindow:
    window = MainWindow(controller=RuntimeController(workers=1, device="cpu"))
    qtbot.addWidget(window)
    window.resize(1100, 720)
    window.show()
    return window


def test_questions_are_answered_in_the_window_and_replay_from_the_store(
    qtbot: QtBot, tmp_path: Path, isolated_run_store: Path
) -> None:
    window = _window(qtbot)
    panel, model, ctrl = window.questions_panel, window.questions_model, window.controller
    window.set_scenario_path(asking(tmp_path))
    window.start()
    qtbot.waitUntil(lambda: model.first_waiting() == 0, timeout=30_000)
    assert model.questions[0].agent == "asker-0"
    assert "asker-0" in panel.prompt.text() and "Which colour?" in panel.prompt.text()
    assert window.questions_dock.windowTitle() == "Questions (1)"
    # The run waits: a second later it is still at tick 0, still running, one question open.
    tick = ctrl.runtime.tick if ctrl.runtime else -1
    qtbot.wait(1000)
    assert ctrl.state == SessionState.RUNNING and ctrl.runtime is not None
    assert ctrl.runtime.tick == tick and len(model.questions) == 1
    panel.answer_edit.setText("blue")
    panel.send_button.click()
    qtbot.waitUntil(lambda: model.first_waiting() == 1, timeout=10_000)
    assert model.questions[0].state == "answered" and model.questions[0].answer == "blue"
    panel.answer_edit.setText("green")
    panel.answer_edit.returnPressed.emit()
    qtbot.waitUntil(lambda: ctrl.state == SessionState.COMPLETED, timeout=30_000)
    logs = [window.live.log.index(r, 3).data() for r in range(window.live.log.rowCount())]
    assert any('"answer": "blue"' in (text or "") for text in logs), logs
    assert any('"answer": "green"' in (text or "") for text in logs), logs
    # Recorded in the store, answers included; a replay from it asks nobody and matches.
    run_id = ctrl.run_id
    assert run_id is not None
    with RunStore(isolated_run_store, readonly=True) as store:
        run = store.run(run_id)
        effects = store.effects(run_id)
    assert run["status"] == "completed" and run["config"]["from"] == "window"
    assert run["trace_hash"] == ctrl.runtime.result.trace_hash
    assert sorted(effects) == ["asker-0/ask/0", "asker-1/ask/0"]
    assert '"answer": "blue"' in effects["asker-0/ask/0"]
    assert runs_main(["replay", run_id, "--store", str(isolated_run_store)]) == 0
    window.close()


def test_stop_while_a_question_waits_ends_the_run_as_interrupted(
    qtbot: QtBot, tmp_path: Path, isolated_run_store: Path
) -> None:
    window = _window(qtbot)
    model, ctrl = window.questions_model, window.controller
    window.set_scenario_path(asking(tmp_path))
    window.start()
    qtbot.waitUntil(lambda: model.first_waiting() == 0, timeout=30_000)
    ctrl.stop()
    qtbot.waitUntil(lambda: ctrl.state == SessionState.STOPPED, timeout=30_000)
    assert model.questions[0].state == "unanswered"
    assert all(q.state != "waiting" for q in model.questions)
    with RunStore(isolated_run_store, readonly=True) as store:
        run = store.run(str(ctrl.run_id))
    assert run["status"] == "interrupted" and "stopped from the window" in run["reason"]
    window.close()
