"""The models update from a runtime's event stream and metrics, batched, on the GUI thread."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QModelIndex, Qt
from pytestqt.qtbot import QtBot

from qhybrid._resources import resource_path
from qhybrid.models import (
    SORT_ROLE,
    AgentsFilterModel,
    AgentsTableModel,
    ChatModel,
    LiveModels,
    LiveSeries,
    LogFilterModel,
    LogLine,
    LogModel,
    RuntimeController,
    RuntimeFeed,
    SessionState,
)
from qhybrid.runtime import (
    SERIES,
    AgentLog,
    AgentSummary,
    GpuAdapter,
    LlmTokens,
    MetricsSnapshot,
    RunStateChanged,
    RuntimeEvents,
    TaskFinished,
    TickFinished,
)


def _summary(name: str, handled: int = 0, state: str = "loaded", error: str | None = None):
    return AgentSummary(name, "relay.wat", 0, state, handled, error)


# -- the feed: events from another thread, taken in one batch ---------------------------------


def test_feed_batches_events_emitted_on_another_thread() -> None:
    events = RuntimeEvents()
    feed = RuntimeFeed()
    feed.attach(events)

    def loop_thread() -> None:
        events.run_state.emit(RunStateChanged("running", 0))
        events.gpu_adapter.emit(GpuAdapter("llvmpipe", "vulkan", "software"))
        for tick in range(100):
            events.agent_log.emit(AgentLog("a", 20, f"line {tick}", tick))
            events.tick_finished.emit(TickFinished(tick, 1, 0, 0, 0, 0, 0, (0.0,)))
        events.llm_tokens.emit(LlmTokens(1, "ask", "Hi", 1, False))

    thread = threading.Thread(target=loop_thread)
    thread.start()
    thread.join()
    batch = feed.drain()
    assert [e.state for e in batch.run_states] == ["running"]
    assert batch.adapter == GpuAdapter("llvmpipe", "vulkan", "software")
    assert [e.text for e in batch.logs] == [f"line {i}" for i in range(100)]
    assert batch.ticks == 100
    assert batch.last_tick is not None and batch.last_tick.tick == 99
    assert batch.llm[0].text == "Hi"
    # Taken once: the next batch is empty.
    assert not feed.drain()
    feed.detach()
    events.agent_log.emit(AgentLog("a", 20, "after detach", 0))
    assert not feed.drain().logs


def test_feed_counts_log_lines_it_had_to_drop(monkeypatch: pytest.MonkeyPatch) -> None:
    import qhybrid.models._feed as feed_module

    monkeypatch.setattr(feed_module, "MAX_PENDING_LOGS", 10)
    events = RuntimeEvents()
    feed = RuntimeFeed()
    feed.attach(events)
    for i in range(25):
        events.agent_log.emit(AgentLog("a", 20, str(i), i))
    batch = feed.drain()
    assert [e.text for e in batch.logs] == [str(i) for i in range(15, 25)]
    assert batch.logs_dropped == 15
    events.agent_log.emit(AgentLog("a", 20, "x", 0))
    assert feed.drain().logs_dropped == 0


# -- the agents table --------------------------------------------------------------------------


def test_agents_model_updates_changed_rows_without_reset(qtbot: QtBot) -> None:
    model = AgentsTableModel()
    resets: list[int] = []
    changes: list[tuple[int, int]] = []
    model.modelReset.connect(lambda: resets.append(1))
    model.dataChanged.connect(lambda a, b, roles: changes.append((a.row(), b.row())))
    agents = [_summary(f"agent-{i}") for i in range(1000)]
    assert model.update_agents(agents) == 1000
    assert len(resets) == 1 and model.rowCount() == 1000

    agents[10] = _summary("agent-10", handled=5)
    agents[20] = _summary("agent-20", state="failed", error="out of fuel")
    assert model.update_agents(agents) == 2
    assert len(resets) == 1  # same agents: no reset
    assert changes == [(10, 20)]
    assert model.data(model.index(10, AgentsTableModel.HANDLED)) == "5"
    assert model.data(model.index(20, AgentsTableModel.STATE)) == "failed"
    assert model.data(model.index(20, AgentsTableModel.ERROR)) == "out of fuel"
    assert model.update_agents(agents) == 0
    assert len(changes) == 1


def test_agents_filter_sorts_numbers_as_numbers_and_filters_text() -> None:
    model = AgentsTableModel()
    model.update_agents(
        [_summary("a", handled=9), _summary("b", handled=100), _summary("c", handled=20)]
    )
    proxy = AgentsFilterModel()
    proxy.setSourceModel(model)
    proxy.sort(AgentsTableModel.HANDLED, Qt.SortOrder.DescendingOrder)
    assert [proxy.index(r, 0).data() for r in range(3)] == ["b", "c", "a"]
    assert proxy.index(0, AgentsTableModel.HANDLED).data(SORT_ROLE) == 100
    proxy.setFilterFixedString("C")
    assert proxy.rowCount() == 1


# -- the log -----------------------------------------------------------------------------------


def test_log_model_keeps_the_last_lines_and_filters_by_level() -> None:
    model = LogModel(capacity=5)
    model.append_lines(LogLine(i, 10 if i % 2 else 30, "a", f"line {i}") for i in range(8))
    assert model.rowCount() == 5
    assert model.index(0, 3).data() == "line 3"
    proxy = LogFilterModel()
    proxy.setSourceModel(model)
    proxy.set_min_level(30)
    assert [proxy.index(r, 3).data() for r in range(proxy.rowCount())] == ["line 4", "line 6"]
    proxy.setFilterFixedString("6")
    assert proxy.rowCount() == 1
    assert model.index(0, 1).data() == "debug"
    assert model.rowCount(model.index(0, 0)) == 0
    assert model.rowCount(QModelIndex()) == 5


# -- the chat: streamed tokens grow one entry per request ------------------------------------


def test_chat_model_streams_tokens_into_one_entry_per_request(qtbot: QtBot) -> None:
    chat = ChatModel()
    chat.add_user_message("ask", "The capital of France is")
    with qtbot.waitSignal(chat.changed):
        chat.apply([LlmTokens(7, "ask", " Par", 1, False, tok_s=0.0, ttft_s=0.2)])
    chat.apply([LlmTokens(7, "ask", "is", 1, False, tok_s=12.5)])
    chat.apply([LlmTokens(7, "ask", ".", 1, True, tok_s=13.0, finish="stop")])
    assert [e.role for e in chat.entries] == ["user", "llm"]
    answer = chat.entries[1]
    assert answer.text == " Paris."
    assert answer.tokens == 3 and answer.done and answer.finish == "stop"
    assert answer.tok_s == 13.0 and answer.ttft_s == 0.2
    # The agent's own log lines show for an agent the user talks to, not for others.
    chat.apply([], [AgentLog("ask", 30, "llm error: no model", 3), AgentLog("x", 20, "hi", 3)])
    assert chat.entries[-1].role == "agent" and chat.entries[-1].text == "llm error: no model"
    assert len(chat.entries) == 3


def test_chat_model_reports_errors_of_a_request() -> None:
    chat = ChatModel()
    chat.apply([LlmTokens(1, "ask", "", 0, True, finish="error", error="model missing")])
    assert chat.entries[0].error == "model missing"


# -- the chart series --------------------------------------------------------------------------


def _snapshot(walls: list[float], tasks_per_s: float, loads: tuple[float, float]):
    wall = np.array(walls)
    series = {name: np.zeros(len(wall)) for name in SERIES}
    series["wall_s"] = wall
    series["tick"] = np.arange(len(wall), dtype=float)
    series["tasks_total"] = series["delivered_total"] = wall * tasks_per_s
    busy = np.stack([wall * loads[0], wall * loads[1]], axis=1)
    return MetricsSnapshot(series=series, worker_busy_s=busy, samples=len(wall))


def test_series_rates_come_from_the_runtime_metrics() -> None:
    series = LiveSeries(capacity=8)
    for i in range(1, 12):
        walls = [j * 0.1 for j in range(i)]
        series.sample(walls[-1], _snapshot(walls, 1000.0, (0.5, 0.25)))
    assert series.samples == 8
    assert series.channel("tasks_per_s")[-1] == pytest.approx(1000.0)
    assert series.channel("messages_per_s")[-1] == pytest.approx(1000.0)
    assert series.worker_load(0)[-1] == pytest.approx(0.5)
    assert series.worker_load(1)[-1] == pytest.approx(0.25)
    assert series.workers == 2
    times = series.times()
    assert np.all(np.diff(times) > 0)  # oldest first, contiguous
    assert times[-1] == pytest.approx(1.0)
    # No new tick for longer than the rate window: the rates drop to 0 (paused).
    series.sample(2.0, _snapshot([j * 0.1 for j in range(11)], 1000.0, (0.5, 0.25)))
    assert series.channel("tasks_per_s")[-1] == 0.0
    series.reset()
    assert series.samples == 0


def test_series_llm_rate_and_kernel_times_come_from_events() -> None:
    series = LiveSeries(capacity=16)
    series.sample(
        0.0,
        None,
        tasks=[
            TaskFinished("k", "gpu", "matmul", 1, "gpu", 0.002),
            TaskFinished("c", "cpu", "relu", 1, "worker", 0.5),
        ],
        llm=[LlmTokens(1, "ask", "ab", 20, False)],
    )
    assert series.channel("kernel_ms")[-1] == pytest.approx(2.0)
    assert series.channel("llm_tok_s")[-1] == pytest.approx(20.0)
    series.sample(0.5, None)
    assert np.isnan(series.channel("kernel_ms")[-1])
    series.sample(2.0, None)
    assert series.channel("llm_tok_s")[-1] == 0.0


# -- the controller and the live models over a real runtime -----------------------------------


@pytest.fixture
def controller(qtbot: QtBot):
    ctrl = RuntimeController(workers=2, device="cpu")
    live = LiveModels(ctrl)
    yield ctrl, live
    live.close()
    assert ctrl.shutdown()


def _wait_state(qtbot: QtBot, ctrl: RuntimeController, *states: str, timeout: int = 60_000):
    qtbot.waitUntil(lambda: ctrl.state in states, timeout=timeout)


def test_live_models_follow_a_real_run_to_its_end(qtbot: QtBot, controller) -> None:
    ctrl, live = controller
    with qtbot.waitSignal(ctrl.run_finished, timeout=60_000) as finished:
        ctrl.start(resource_path("scenarios", "demo.toml"))
    result = finished.args[0]
    assert result.status == "completed"
    _wait_state(qtbot, ctrl, SessionState.COMPLETED)
    assert not live.timer.isActive()  # no frames while nothing runs
    assert live.agents.rowCount() == len(result.agents) > 1
    handled = {
        live.agents.index(r, 0).data(): int(live.agents.index(r, 3).data().replace(",", ""))
        for r in range(live.agents.rowCount())
    }
    assert handled == {a.name: a.handled for a in result.agents}
    texts = [live.log.line(r).text for r in range(live.log.rowCount())]
    assert "relay: chain finished" in texts
    assert any(t.startswith("run completed") for t in texts)
    assert live.adapter is not None and live.adapter.kind == "cpu"
    assert live.series.samples > 0


def test_controls_pause_step_resume_stop(qtbot: QtBot, controller, tmp_path: Path) -> None:
    ctrl, _live = controller
    # A long run: many hops, so that it is still going when paused.
    scenario = tmp_path / "long.toml"
    scenario.write_text(
        f"""
name = "long"
seed = 1
[stop]
max_ticks = 1000000
timeout_s = 300
[[agents]]
name = "relay"
module = "{resource_path("agents", "relay.wat").as_posix()}"
count = 8
[[agents]]
name = "sink"
module = "{resource_path("agents", "sink.wat").as_posix()}"
[[messages]]
to = "relay"
kind = 1
payload_i64 = [100000000, 0]
""",
        encoding="utf-8",
    )
    ctrl.scenario_path = scenario
    states: list[str] = []
    ctrl.state_changed.connect(lambda s, d: states.append(s))
    # Step with nothing running: starts the run paused after one tick.
    ctrl.step()
    _wait_state(qtbot, ctrl, SessionState.PAUSED)
    runtime = ctrl.runtime
    assert runtime is not None
    qtbot.waitUntil(lambda: runtime.delivered >= 8, timeout=30_000)  # tick 0 ran
    tick = runtime.tick
    ctrl.step()
    qtbot.waitUntil(lambda: runtime.tick == tick + 1, timeout=30_000)
    qtbot.wait(200)
    assert runtime.tick == tick + 1  # one tick, then paused again
    ctrl.resume()
    _wait_state(qtbot, ctrl, SessionState.RUNNING)
    qtbot.waitUntil(lambda: runtime.tick > tick + 20, timeout=30_000)
    ctrl.pause()
    _wait_state(qtbot, ctrl, SessionState.PAUSED)
    qtbot.wait(100)
    paused_at = runtime.tick
    qtbot.wait(300)
    assert runtime.tick == paused_at  # really paused
    ctrl.post("relay-0", "hello")  # a message from outside, accepted while paused
    with qtbot.waitSignal(ctrl.run_finished, timeout=60_000) as finished:
        ctrl.stop()
    assert finished.args[0].status == "completed"
    assert "stopped from the window" in finished.args[0].reason
    assert states[:2] == [SessionState.STARTING, SessionState.PAUSED]
    assert SessionState.STOPPED in states and SessionState.COMPLETED not in states
    # Restart runs the same scenario again from the start.
    with qtbot.waitSignal(ctrl.runtime_changed, timeout=60_000):
        ctrl.restart()
    assert ctrl.runtime is not runtime
    _wait_state(qtbot, ctrl, SessionState.RUNNING)
    with qtbot.waitSignal(ctrl.run_finished, timeout=60_000):
        ctrl.stop()


def test_a_bad_scenario_is_reported_not_raised(qtbot: QtBot, controller, tmp_path: Path) -> None:
    ctrl, _live = controller
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 3\n[stop\n", encoding="utf-8")
    with qtbot.waitSignal(ctrl.error, timeout=30_000) as error:
        ctrl.start(bad)
    assert "bad.toml" in error.args[0]
    _wait_state(qtbot, ctrl, SessionState.FAILED)
    with qtbot.waitSignal(ctrl.error):
        ctrl.post("nobody", "hi")  # nothing runs
