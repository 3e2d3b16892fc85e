"""The window's update-check actions, against a feed on 127.0.0.1 (Qt offscreen)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QCoreApplication, QSettings
from PySide6.QtWidgets import QMainWindow, QMenu
from pytestqt.qtbot import QtBot

from qhybrid.runtime.update import FEED_ENV
from qhybrid.views._update import CHECK_AT_START_KEY, UpdateChecker, add_update_actions
from tests.installers.test_update import _Feed, _release


@pytest.fixture
def feed(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Feed]:
    server = _Feed()
    server.thread.start()
    monkeypatch.setenv(FEED_ENV, server.url)
    try:
        yield server
    finally:
        server.delay.set()
        server.server.shutdown()
        server.server.server_close()
        server.thread.join(10)


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path) -> None:
    for fmt in (QSettings.Format.NativeFormat, QSettings.Format.IniFormat):
        for scope in (QSettings.Scope.UserScope, QSettings.Scope.SystemScope):
            QSettings.setPath(fmt, scope, str(tmp_path / "settings"))
    QCoreApplication.setOrganizationName("qhybrid-tests")
    QCoreApplication.setApplicationName("qhybrid-tests")


def _window(qtbot: QtBot) -> tuple[QMainWindow, UpdateChecker, QMenu]:
    window = QMainWindow()
    qtbot.addWidget(window)
    menu = window.menuBar().addMenu("&Help")
    return window, add_update_actions(window, menu), menu


def _action(menu: QMenu, name: str):  # type: ignore[no-untyped-def]
    return next(a for a in menu.actions() if a.objectName() == name)


def test_check_now_says_in_the_status_bar_that_a_newer_version_exists(
    qtbot: QtBot, feed: _Feed
) -> None:
    feed.releases(_release("v99.0.0"))
    window, checker, menu = _window(qtbot)
    with qtbot.waitSignal(checker.finished, timeout=10_000) as blocker:
        _action(menu, "check_updates_action").trigger()
    checker.wait(5)
    assert "qhybrid 99.0.0 is available" in blocker.args[0]
    assert "99.0.0 is available" in window.statusBar().currentMessage()
    assert checker.info is not None and checker.info.newer


def test_check_now_reports_up_to_date_and_errors(qtbot: QtBot, feed: _Feed) -> None:
    feed.releases(_release("v0.0.1"))
    _, checker, _ = _window(qtbot)
    with qtbot.waitSignal(checker.finished, timeout=10_000) as blocker:
        checker.check()
    checker.wait(5)
    assert "is up to date" in blocker.args[0]
    feed.status = 500
    with qtbot.waitSignal(checker.finished, timeout=10_000) as blocker:
        checker.check()
    checker.wait(5)
    assert blocker.args[0].startswith("Update check failed") and "HTTP 500" in blocker.args[0]


def test_the_check_at_start_is_off_by_default_and_remembered(qtbot: QtBot, feed: _Feed) -> None:
    feed.releases(_release("v99.0.0"))
    _w, checker, menu = _window(qtbot)
    at_start = _action(menu, "check_updates_at_start_action")
    assert not at_start.isChecked()
    qtbot.wait(100)
    assert feed.requests == 0 and not checker.running  # nothing is fetched unless asked
    at_start.setChecked(True)
    assert QSettings().value(CHECK_AT_START_KEY, type=bool) is True
    # The next window checks at start, quietly, and speaks because there is news.
    window2, checker2, menu2 = _window(qtbot)
    assert _action(menu2, "check_updates_at_start_action").isChecked()
    with qtbot.waitSignal(checker2.finished, timeout=10_000):
        pass
    checker2.wait(5)
    assert feed.requests == 1
    assert "99.0.0" in window2.statusBar().currentMessage()


def test_the_main_window_has_the_actions_and_checks_nothing_by_default(
    qtbot: QtBot, feed: _Feed
) -> None:
    from qhybrid.views import MainWindow

    window = MainWindow()
    qtbot.addWidget(window)
    help_menu = window.help_menu
    assert _action(help_menu, "check_updates_action").text() == "Check for &updates now"
    assert not _action(help_menu, "check_updates_at_start_action").isChecked()
    qtbot.wait(100)
    assert feed.requests == 0 and not window.update_checker.running
    window.close()
