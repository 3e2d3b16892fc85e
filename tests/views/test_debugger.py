"""The window as a debugger of a recorded run, the issue's path: open it, scrub to a tick, see
the messages and every agent's state there, follow a reply chain, fork from that tick with
another seed, diff the two runs, and delete one, all in the window."""

from __future__ import annotations

from pathlib import Path

from pytestqt.qtbot import QtBot

from qhybrid._resources import resource_path
from qhybrid.models import MessagesModel, StateAtModel
from qhybrid.views import MainWindow
from qhybrid.views._fork_dialog import ForkDialog, fork_arguments
from tests.runtime.test_state_at import record


def crew(tmp_path: Path) -> Path:
    """The tour's C manager and three C workers: request/reply by correlation id."""
    path = tmp_path / "crew.toml"
    path.write_text(
        f"""
name = "crew"
[stop]
max_ticks = 60
[[tools]]
name = "sum"
kind = "python"
function = "{resource_path("scenarios", "tour_tools.py").as_posix()}:total"
[[agents]]
name = "manager"
module = "{resource_path("agents", "manager.wasm").as_posix()}"
config = {{ groups = ["crew"] }}
grants = {{ tools = ["sum"] }}
[[agents]]
name = "crew"
module = "{resource_path("agents", "crew.wasm").as_posix()}"
count = 3
[[messages]]
to = "manager"
kind = 1
""",
        encoding="utf-8",
    )
    return path


def test_open_scrub_state_follow_fork_diff_delete(
    qtbot: QtBot, tmp_path: Path, isolated_run_store: Path
) -> None:
    store = isolated_run_store
    run_id = record(store, crew(tmp_path), every=2)
    window = MainWindow()
    qtbot.addWidget(window)
    window.resize(1100, 720)
    window.show()
    panel, inspector, state = window.runs_panel, window.message_inspector, window.state_panel
    panel.refresh()
    panel.select(run_id)
    panel.open_button.trigger()
    messages = inspector.model

    # Scrub to tick 1: the manager's three jobs, enveloped, payloads decoded in full.
    with qtbot.waitSignal(state.model.ready, timeout=60_000) as got:
        inspector.timeline.scrubber.setValue(1)
    assert inspector.filter.rowCount() == 3
    first = inspector.filter.mapToSource(inspector.filter.index(0, 0)).row()
    assert messages.index(first, MessagesModel.KIND).data() == "10 env"
    assert messages.index(first, MessagesModel.PAYLOAD).data() == '{"n": 0}'
    assert messages.index(first, MessagesModel.CORR).data() == "0x100000001 (2)"

    # The state after tick 1, rebuilt from the start (the first checkpoint is at tick 2).
    at = got.args[0]
    assert (at.tick, at.checkpoint) == (1, None)
    model = state.model
    assert [model.agents.index(r, 0).data() for r in range(4)] == [
        "manager",
        "crew-0",
        "crew-1",
        "crew-2",
    ]
    # Handled by then: the manager its start (tick 0), each worker its job (tick 1).
    assert [model.agents.index(r, 2).data() for r in range(4)] == ["1"] * 4
    assert all(int(model.agents.index(r, 4).data().replace(",", "")) > 0 for r in range(4))
    # The queue after tick 1: the three replies and the progress timer, due at tick 2.
    kinds = [model.queue.index(r, 4).data() for r in range(model.queue.rowCount())]
    assert sum(k.startswith("11 env") for k in kinds) == 3
    # ready comes before busy_changed(False): the label says "Rebuilding" until then.
    qtbot.waitUntil(lambda: "State after tick 1" in state.summary.text(), timeout=10_000)

    # Follow the reply chain: the job to crew-0 -> its reply (tick 2) -> back to the job.
    inspector.table.selectRow(0)
    assert "reply chain (2 messages" in inspector.detail.toPlainText()
    assert inspector.follow_button.isEnabled()
    inspector.follow_button.click()
    reply = inspector.current_row()
    assert messages.messages[reply].tick == 2 and inspector.tick_spin.value() == 2
    assert messages.index(reply, MessagesModel.SENDER).data() == "crew-0"
    assert messages.index(reply, MessagesModel.PAYLOAD).data() == '{"n": 0, "steps": 0}'
    inspector.back_button.click()
    assert inspector.current_row() == first and inspector.tick_spin.value() == 1

    # A later tick comes from its checkpoint; the same tick again from the cache.
    with qtbot.waitSignal(state.model.ready, timeout=60_000) as got:
        inspector.tick_spin.setValue(3)
    assert got.args[0].checkpoint == 2 and got.args[0].replayed_ticks == 1

    # Fork from here (tick 3) with another seed, through the dialog.
    def answer(dialog: ForkDialog) -> bool:
        assert dialog.tick.value() == 3
        dialog.seed.setValue(77)
        return True

    panel.exec_dialog = answer
    with qtbot.waitSignal(panel.command.finished, timeout=120_000) as done:
        state.fork_button.click()
    assert done.args[1] == 0, done.args[3]
    fork = str(done.args[2]["run_id"])
    assert window.runs_model.index(window.runs_model.row_of(fork), 8).data() == (
        f"{run_id} @ tick 3"
    )

    # Diff the two: the traces are the same here (nothing random), so identical.
    panel.select(run_id, fork)
    with qtbot.waitSignal(panel.command.finished, timeout=120_000) as done:
        panel.diff_button.trigger()
    assert done.args[1] in (0, 1)
    assert panel.last_diff is not None

    # Delete the fork, after saying yes.
    questions: list[str] = []
    panel.confirm = lambda text: questions.append(text) or True
    panel.select(fork)
    with qtbot.waitSignal(panel.command.finished, timeout=60_000) as done:
        panel.delete_button.trigger()
    assert done.args[1] == 0, done.args[3]
    assert fork in questions[0]
    assert window.runs_model.row_of(fork) == -1 and window.runs_model.row_of(run_id) >= 0
    window.close()


def test_the_fork_dialog_checks_what_it_is_given(qtbot: QtBot, tmp_path: Path) -> None:
    module = tmp_path / "a.wat"
    module.write_text("(module)")
    args, problem = fork_arguments(
        "r1", 4, seed=9, sets="crew.config.rate = 2\n\n", modules=f"crew={module}"
    )
    assert problem is None
    assert args == [
        "r1", "--at", "4", "--seed", "9", "--set", "crew.config.rate = 2",
        "--module", f"crew={module}",
    ]  # fmt: skip
    assert "line 1" in str(fork_arguments("r1", 4, sets="crew.rate=2")[1])
    assert "no such file" in str(fork_arguments("r1", 4, modules="crew=/nope.wasm")[1])
    assert "no such file" in str(fork_arguments("r1", 4, model="/nope.gguf")[1])
    dialog = ForkDialog({"run_id": "r1", "seed": 3, "last_tick": 10}, 4, ["crew"])
    qtbot.addWidget(dialog)
    assert dialog.seed.value() == 4 and dialog.tick.value() == 4
    dialog.new_seed.setChecked(False)
    dialog.sets.setPlainText("oops")
    dialog._accept()
    assert "GROUP.config.KEY=VALUE" in dialog.problem.text()
    assert dialog.result() == 0  # not accepted
    assert dialog.arguments()[0] == []


def test_a_state_request_while_one_is_rebuilt_replaces_the_waiting_one(qtbot: QtBot) -> None:
    import threading

    from qhybrid.runtime.store import StateAt

    gate = threading.Event()
    asked: list[int] = []

    def compute(_path: Path, run: str, tick: int) -> StateAt:
        asked.append(tick)
        if tick == 1:
            gate.wait(10)
        return StateAt(run, tick, tick, None, tick, [], [], [], {"delivered": 0})

    model = StateAtModel(compute=compute)
    for tick in (1, 2, 3, 4):
        model.request(Path("x"), "r", tick)
    gate.set()
    qtbot.waitUntil(lambda: model.state is not None and model.state.asked == 4, timeout=5000)
    assert asked == [1, 4]  # 2 and 3 were replaced while 1 was rebuilt
    model.request(Path("x"), "r", 1)  # cached: no rebuild
    assert model.state is not None and model.state.asked == 1 and asked == [1, 4]
    model.close()
