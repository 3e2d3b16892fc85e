"""What the window says about a run is what happened: failed or skipped agents, a stopped
run, a failed run at warning level, no "nan", names in natural order."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from qhybrid._resources import resource_path
from qhybrid.models import (
    AgentsFilterModel,
    AgentsTableModel,
    LiveModels,
    RuntimeController,
    SessionState,
    natural_key,
)
from qhybrid.runtime import AgentSummary


@pytest.fixture
def controller(qtbot: QtBot):
    ctrl = RuntimeController(workers=2, device="cpu")
    live = LiveModels(ctrl)
    yield ctrl, live
    live.close()
    assert ctrl.shutdown()


def _scenario(tmp_path: Path, body: str, name: str = "s") -> Path:
    relay = resource_path("agents", "relay.wat").as_posix()
    sink = resource_path("agents", "sink.wat").as_posix()
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nseed = 1\n' + body.replace("RELAY", relay).replace("SINK", sink),
        encoding="utf-8",
    )
    return path


def _states(live: LiveModels) -> dict[str, str]:
    model = live.agents
    return {
        model.index(r, 0).data(): model.index(r, AgentsTableModel.STATE).data()
        for r in range(model.rowCount())
    }


@pytest.mark.parametrize(
    ("on_error", "agent_state", "session"),
    [
        ("skip", "skipped", SessionState.COMPLETED),
        ("fail", "failed", SessionState.FAILED),
    ],
)
def test_agents_out_of_fuel_show_as_skipped_or_failed(
    qtbot: QtBot, controller, tmp_path: Path, on_error: str, agent_state: str, session: str
) -> None:
    ctrl, live = controller
    # An agent whose handler never ends: any fuel limit stops it (its start is free).
    spin = tmp_path / "spin.wat"
    spin.write_text(
        """(module
  (memory (export "memory") 1)
  (func (export "qh_abi_version") (result i32) (i32.const 1))
  (func (export "qh_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "qh_on_message") (param i32 i32 i32 i32) (result i32)
    (loop $forever (br $forever))
    (i32.const 0)))
""",
        encoding="utf-8",
    )
    path = _scenario(
        tmp_path,
        f"""
[stop]
max_ticks = 50
[[agents]]
name = "starved"
module = "{spin.as_posix()}"
count = 2
on_error = "{on_error}"
limits = {{ fuel = 100000 }}
[[agents]]
name = "sink"
module = "SINK"
[[messages]]
to = "starved"
kind = 1
payload_i64 = [10, 0]
""",
    )
    with qtbot.waitSignal(ctrl.run_finished, timeout=60_000) as finished:
        ctrl.start(path)
    qtbot.waitUntil(lambda: ctrl.state in SessionState.ENDED, timeout=30_000)
    assert ctrl.state == session
    result = finished.args[0]
    assert {a.name: a.state for a in result.agents}["starved-0"] == agent_state
    states = _states(live)
    assert states["starved-0"] == agent_state
    assert states["sink"] == "loaded"
    row = live.agents.names.index("starved-0")
    assert "fuel" in live.agents.index(row, AgentsTableModel.ERROR).data()


def test_stop_says_stopped_and_a_timeout_is_a_failure_at_warning_level(
    qtbot: QtBot, controller, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ctrl, live = controller
    endless = """
[stop]
max_ticks = 100000000
timeout_s = TIMEOUT
[[agents]]
name = "relay"
module = "RELAY"
count = 4
[[agents]]
name = "sink"
module = "SINK"
[[messages]]
to = "relay"
kind = 1
payload_i64 = [100000000, 0]
"""
    states: list[str] = []
    ctrl.state_changed.connect(lambda s, d: states.append(s))
    ctrl.start(_scenario(tmp_path, endless.replace("TIMEOUT", "300"), "long"))
    qtbot.waitUntil(lambda: ctrl.state == SessionState.RUNNING, timeout=60_000)
    with qtbot.waitSignal(ctrl.run_finished, timeout=60_000):
        ctrl.stop()
    qtbot.waitUntil(lambda: ctrl.state in SessionState.ENDED, timeout=30_000)
    assert ctrl.state == SessionState.STOPPED
    assert SessionState.COMPLETED not in states
    texts = [live.log.line(r).text for r in range(live.log.rowCount())]
    assert any(t.startswith("run stopped") for t in texts)
    assert not any(t.startswith("run completed") for t in texts)

    caplog.set_level(logging.INFO, logger="qhybrid")
    with qtbot.waitSignal(ctrl.run_finished, timeout=60_000):
        ctrl.start(_scenario(tmp_path, endless.replace("TIMEOUT", "0.3"), "quick"))
    qtbot.waitUntil(lambda: ctrl.state in SessionState.ENDED, timeout=30_000)
    assert ctrl.state == SessionState.FAILED
    failed = [
        r for r in caplog.records if "failed" in r.getMessage() and "timed out" in r.getMessage()
    ]
    assert failed and all(r.levelno == logging.WARNING for r in failed)
    assert not [r for r in caplog.records if "quick completed" in r.getMessage()]
    qtbot.waitUntil(
        lambda: any(
            live.log.line(r).level == logging.WARNING and "timed out" in live.log.line(r).text
            for r in range(live.log.rowCount())
        ),
        timeout=5_000,
    )
    lines = [live.log.line(r) for r in range(live.log.rowCount())]
    assert not any(
        line.text.startswith("run completed") and "timed out" in line.text for line in lines
    )


def test_progress_never_shows_nan(qtbot: QtBot, controller) -> None:
    ctrl, live = controller
    texts: list[str] = []
    live.progress.connect(texts.append)
    with qtbot.waitSignal(ctrl.run_finished, timeout=60_000):
        ctrl.start(resource_path("scenarios", "demo.toml"))
    assert texts
    assert not [t for t in texts if "nan" in t.lower()]


def test_names_sort_naturally() -> None:
    assert natural_key("relay-2") < natural_key("relay-10") < natural_key("relay-11")
    model = AgentsTableModel()
    names = ["relay-10", "relay-2", "relay-1", "sink", "relay-11", "Relay-3"]
    model.update_agents([AgentSummary(n, "relay.wat", 0, "loaded", 0, None) for n in names])
    proxy = AgentsFilterModel()
    proxy.setSourceModel(model)
    proxy.sort(AgentsTableModel.NAME)
    shown = [proxy.index(r, 0).data() for r in range(proxy.rowCount())]
    assert shown == ["relay-1", "relay-2", "Relay-3", "relay-10", "relay-11", "sink"]
