"""A scenario is checked when it is opened: its outline is shown before Start, and its error
stays in the Scenario panel (Start disabled) until the file is fixed."""

from __future__ import annotations

from pathlib import Path

from pytestqt.qtbot import QtBot

from qhybrid._resources import resource_path
from qhybrid.models import ScenarioCheck, scenario_outline
from qhybrid.runtime import load_scenario
from qhybrid.views import MainWindow


def test_outline_says_what_the_demo_will_run() -> None:
    lines = scenario_outline(load_scenario(resource_path("scenarios", "demo.toml")))
    text = "\n".join(lines)
    assert lines[0].startswith("demo: ")
    assert "seed 42" in text and "max_ticks 1,000" in text and "timeout 120 s" in text
    assert "19 agents in 3 groups" in text
    assert "relay \N{MULTIPLICATION SIGN} 16  relay.wat" in text
    assert "tensor x [256\N{MULTIPLICATION SIGN}512]" in text
    assert "task project: gpu matmul(x, w) -> y" in text


def test_an_error_stays_until_the_file_is_fixed(qtbot: QtBot, tmp_path: Path) -> None:
    good = f"""
name = "mine"
[[agents]]
name = "relay"
module = "{resource_path("agents", "relay.wat").as_posix()}"
count = 16
"""
    path = tmp_path / "mine.toml"
    path.write_text(good.replace("count = 16", "cuont = 16"), encoding="utf-8")
    window = MainWindow()
    qtbot.addWidget(window)
    window.resize(1100, 720)
    window.show()
    window.set_scenario_path(path)
    panel = window.scenario_panel
    assert not window.scenario_check.ok
    assert not window.start_action.isEnabled() and not window.step_action.isEnabled()
    assert "mine.toml:" in panel.text.toPlainText()
    assert 'unknown field "cuont"' in panel.text.toPlainText()
    assert "cannot run" in panel.status_label.text()
    assert window.scenario_dock.isVisible()
    qtbot.wait(2_000)  # long after a status-bar message would have gone: still there
    assert 'unknown field "cuont"' in panel.text.toPlainText()

    # Saved fixed: the watcher re-checks it.
    with qtbot.waitSignal(window.scenario_check.checked, timeout=10_000) as checked:
        path.write_text(good, encoding="utf-8")
    assert checked.args == [True]
    assert window.start_action.isEnabled()
    assert "valid" in panel.status_label.text()
    assert "relay \N{MULTIPLICATION SIGN} 16" in panel.text.toPlainText()
    window.close()


def test_a_missing_file_is_an_error_not_a_traceback(qtbot: QtBot, tmp_path: Path) -> None:
    check = ScenarioCheck()
    assert not check.check(tmp_path / "nowhere.toml")
    assert check.error is not None and "nowhere.toml" in check.error
