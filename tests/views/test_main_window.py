"""The main window and the application around it, on Qt's offscreen platform."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import qasync
from PySide6.QtCore import QSettings, QTimer
from PySide6.QtGui import QIcon, QKeySequence
from PySide6.QtWidgets import QApplication, QFileDialog, QMessageBox, QTabBar
from pytestqt.qtbot import QtBot

import qhybrid
from qhybrid._resources import resource_path
from qhybrid.app import run_app
from qhybrid.views import MainWindow


@pytest.fixture
def window(qtbot: QtBot) -> MainWindow:
    main_window = MainWindow()
    qtbot.addWidget(main_window)
    main_window.show()
    qtbot.waitExposed(main_window)
    return main_window


def _menu_actions(main_window: MainWindow, title: str) -> dict[str, Any]:
    """The actions of the menu bar's menu called ``title``, by their text without '&'."""
    for action in main_window.menuBar().actions():
        if action.text().replace("&", "") == title:
            menu = action.menu()
            assert menu is not None
            return {a.text().replace("&", ""): a for a in menu.actions() if not a.isSeparator()}
    raise AssertionError(f"no {title!r} menu")


def test_window_shows_charts_agents_log_and_chat(window: MainWindow) -> None:
    assert window.isVisible()
    assert window.windowTitle() == "qhybrid"
    assert window.centralWidget() is window.central_tabs
    assert window.central_tabs.widget(0) is window.charts
    assert window.central_tabs.tabText(1) == "Recorded runs"
    for dock in (window.agents_dock, window.log_dock, window.chat_dock):
        assert dock.isVisible()
    assert set(window.charts.plots) >= {
        "Throughput",
        "Queue depth",
        "Worker load",
        "GPU busy",
        "GPU kernel time",
        "Shared tensors",
        "LLM tokens/s",
    }
    assert window.statusBar().currentMessage() == "No scenario open"
    assert not window.start_action.isEnabled()  # nothing to run yet
    assert window.adapter_label.text() == "GPU: not started"


def test_no_stray_dock_tab_bar_is_shown(window: MainWindow, qtbot: QtBot) -> None:
    """Qt leaves the tab bar of a two-dock group behind when a third dock joins it (shown
    over the middle of the window, owned by no layout): each shown bar has tabs of its own."""

    def shown() -> list[set[str]]:
        return [
            {bar.tabText(i) for i in range(bar.count())}
            for bar in window.findChildren(QTabBar)
            if bar.parent() is window and bar.isVisible()
        ]

    def alone(bars: list[set[str]]) -> bool:
        return all(not (a & b) for i, a in enumerate(bars) for b in bars[i + 1 :])

    bars = shown()
    assert {"Chat", "Server", "Questions"} in bars and alone(bars)
    # A dock moved by hand into another group: still one bar per group.
    window.tabifyDockWidget(window.log_dock, window.scenario_dock)
    qtbot.waitUntil(lambda: alone(shown()))


def test_file_and_help_menus_have_their_actions(window: MainWindow) -> None:
    file_actions = _menu_actions(window, "File")
    assert list(file_actions) == ["Open scenario\N{HORIZONTAL ELLIPSIS}", "Quit"]
    assert file_actions["Quit"].shortcut() == QKeySequence("Ctrl+Q")
    assert file_actions["Open scenario\N{HORIZONTAL ELLIPSIS}"].shortcut() == QKeySequence(
        QKeySequence.StandardKey.Open
    )
    help_actions = _menu_actions(window, "Help")
    assert "About qhybrid" in help_actions


def test_open_scenario_remembers_the_chosen_file(
    window: MainWindow, qtbot: QtBot, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    scenario = tmp_path / "demo.toml"
    scenario.write_text("[scenario]\n", encoding="utf-8")
    asked: list[tuple[Any, ...]] = []

    def fake_dialog(*args: Any, **kwargs: Any) -> tuple[str, str]:
        asked.append(args)
        return str(scenario), "Scenarios (*.toml)"

    monkeypatch.setattr(QFileDialog, "getOpenFileName", fake_dialog)
    with qtbot.waitSignal(window.scenario_changed) as blocker:
        window.open_scenario_action.trigger()

    assert blocker.args == [scenario]
    assert window.scenario_path == scenario
    assert str(scenario) in window.statusBar().currentMessage()
    assert "*.toml" in asked[0][3]  # the name filter
    # The next dialog starts in the folder of the last scenario.
    window.open_scenario_action.trigger()
    assert asked[1][2] == str(tmp_path)


def test_cancelled_dialog_changes_nothing(
    window: MainWindow, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *args, **kwargs: ("", ""))
    assert window.open_scenario() is None
    assert window.scenario_path is None
    assert window.statusBar().currentMessage() == "No scenario open"


def test_scenario_given_at_start_is_shown(qtbot: QtBot, tmp_path: Path) -> None:
    main_window = MainWindow(scenario_path=tmp_path / "start.toml")
    qtbot.addWidget(main_window)
    assert main_window.scenario_path == tmp_path / "start.toml"
    assert "start.toml" in main_window.statusBar().currentMessage()


def test_about_box_shows_the_version(window: MainWindow, monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[tuple[str, str]] = []
    monkeypatch.setattr(
        QMessageBox, "about", lambda parent, title, text: shown.append((title, text))
    )
    _menu_actions(window, "Help")["About qhybrid"].trigger()
    assert len(shown) == 1
    title, text = shown[0]
    assert title == "About qhybrid"
    assert qhybrid.__version__ in text


def test_quit_action_closes_the_window(window: MainWindow, qtbot: QtBot) -> None:
    window.quit_action.trigger()
    qtbot.waitUntil(lambda: not window.isVisible())


def test_geometry_is_saved_on_close_and_restored(qtbot: QtBot, isolated_settings: Path) -> None:
    first = MainWindow()
    qtbot.addWidget(first)
    first.show()
    qtbot.waitExposed(first)
    first.resize(640, 480)
    qtbot.waitUntil(lambda: (first.width(), first.height()) == (640, 480))
    first.close()

    saved = QSettings().value("main_window/geometry")
    assert saved is not None
    assert not saved.isEmpty()
    # Saved in the test's folder, not in the user's configuration.
    assert any(isolated_settings.rglob("*.conf")) or any(isolated_settings.rglob("*.ini"))

    second = MainWindow()
    qtbot.addWidget(second)
    assert (second.width(), second.height()) == (640, 480)


def test_window_has_default_size_without_saved_geometry(qtbot: QtBot) -> None:
    main_window = MainWindow()
    qtbot.addWidget(main_window)
    assert (main_window.width(), main_window.height()) == (1100, 720)


def test_resource_path_finds_the_icon(qapp: QApplication) -> None:
    icon_path = resource_path("icons", "qhybrid.svg")
    assert icon_path.is_file()
    icon = QIcon(str(icon_path))
    assert not icon.isNull()
    assert not icon.pixmap(64, 64).toImage().isNull()


# -- run_app: the QApplication and the qasync loop around the window -------------------------


@pytest.fixture
def during_app(qapp: QApplication) -> Iterator[Callable[[Callable[[], Any]], None]]:
    """Schedule a coroutine function to run once run_app's event loop is up.

    A watchdog closes all windows after 20 s, so that a broken run_app fails instead of hanging.
    """
    tasks: list[asyncio.Task[Any]] = []
    watchdog = QTimer()
    watchdog.setSingleShot(True)
    watchdog.timeout.connect(QApplication.closeAllWindows)

    def schedule(coroutine_function: Callable[[], Any]) -> None:
        QTimer.singleShot(0, lambda: tasks.append(asyncio.ensure_future(coroutine_function())))
        watchdog.start(20_000)

    yield schedule
    watchdog.stop()
    for task in tasks:
        assert task.done()
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


def _shown_main_window() -> MainWindow:
    windows = [
        w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()
    ]
    assert len(windows) == 1
    return windows[0]


def test_run_app_runs_asyncio_on_the_qt_loop_until_the_window_closes(
    during_app: Callable[[Callable[[], Any]], None], tmp_path: Path
) -> None:
    seen: dict[str, Any] = {}

    async def drive() -> None:
        seen["loop"] = asyncio.get_running_loop()
        await asyncio.sleep(0.01)  # asyncio timers fire through Qt's event loop
        main_window = _shown_main_window()
        seen["scenario"] = main_window.scenario_path
        seen["app"] = (QApplication.applicationName(), QApplication.organizationName())
        seen["icon"] = QApplication.windowIcon().isNull()
        seen["straggler"] = asyncio.ensure_future(asyncio.sleep(3600))
        main_window.close()

    during_app(drive)
    exit_code = run_app(["qhybrid"], scenario=str(tmp_path / "demo.toml"))

    assert exit_code == 0
    assert isinstance(seen["loop"], qasync.QEventLoop)
    assert seen["loop"].is_closed()
    assert seen["scenario"] == tmp_path / "demo.toml"
    assert seen["app"] == ("qhybrid", "qhybrid")
    assert seen["icon"] is False
    # A task still pending when the window closed is cancelled, not left dangling.
    assert seen["straggler"].cancelled()


def test_run_app_returns_the_exit_code_and_still_saves_geometry(
    during_app: Callable[[Callable[[], Any]], None],
) -> None:
    seen: dict[str, Any] = {}

    async def drive() -> None:
        main_window = _shown_main_window()
        main_window.resize(700, 500)
        await asyncio.sleep(0.01)
        seen["window"] = main_window
        QApplication.exit(3)

    during_app(drive)
    assert run_app(["qhybrid"]) == 3
    assert not seen["window"].isVisible()
    assert QSettings().value("main_window/geometry") is not None


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_in_the_terminal_closes_the_window(
    during_app: Callable[[Callable[[], Any]], None],
) -> None:
    async def drive() -> None:
        _shown_main_window()
        os.kill(os.getpid(), signal.SIGINT)

    during_app(drive)
    assert run_app(["qhybrid"]) == 0
    # The handler is gone with the loop: Ctrl+C is Python's KeyboardInterrupt again.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
