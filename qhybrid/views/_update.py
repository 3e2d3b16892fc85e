"""The window's update check: two Help-menu actions and the QObject that runs the check.

"Check for updates at start" is a setting (QSettings ``updates/check_at_start``), off by
default; "Check for updates now" checks once. The check itself is
:func:`qhybrid.runtime.update.check_for_update`, run on a short-lived thread (one HTTP
request, bounded by its timeout); its answer comes back to the GUI thread through a queued
signal and is shown in the status bar.
"""

from __future__ import annotations

import logging
import threading

from PySide6.QtCore import QCoreApplication, QObject, QSettings, QTimer, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMainWindow, QMenu

import qhybrid
from qhybrid.runtime.update import UpdateCheckError, UpdateInfo, check_for_update, feed_url

__all__ = ["CHECK_AT_START_KEY", "UpdateChecker", "add_update_actions"]

logger = logging.getLogger(__name__)

CHECK_AT_START_KEY = "updates/check_at_start"
_MESSAGE_MS = 30_000


class UpdateChecker(QObject):
    """Checks the release feed off the GUI thread.

    ``finished`` fires on the GUI thread (queued from the check's thread) with a one-line
    message for the user; ``info`` is the last :class:`UpdateInfo` (None after an error).
    """

    finished = Signal(str)
    _done = Signal(object)

    def __init__(self, parent: QObject | None = None, *, timeout: float = 5.0) -> None:
        super().__init__(parent)
        self.timeout = timeout
        self.info: UpdateInfo | None = None
        self._thread: threading.Thread | None = None
        self._done.connect(self._show)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def check(self, *, quiet: bool = False) -> bool:
        """Start a check (not if one is running). ``quiet``: say nothing unless there is a
        newer version (the check at start). Returns whether a check was started."""
        if self.running:
            return False
        url, current = feed_url(), qhybrid.__version__
        self._thread = threading.Thread(
            target=self._run, args=(url, current, quiet), name="qhybrid-update-check", daemon=True
        )
        self._thread.start()
        return True

    def wait(self, timeout: float | None = None) -> None:
        """Join the check's thread (tests, and the window when it closes)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, url: str, current: str, quiet: bool) -> None:
        try:
            result: UpdateInfo | str = check_for_update(url, current, timeout=self.timeout)
        except UpdateCheckError as exc:
            logger.info("update check failed: %s", exc)
            result = f"Update check failed: {exc}"
        self._done.emit((result, quiet))

    def _show(self, payload: tuple[UpdateInfo | str, bool]) -> None:
        result, quiet = payload
        if isinstance(result, str):
            self.info = None
            message = result
        else:
            self.info = result
            if result.newer:
                message = f"qhybrid {result.latest} is available (you have {result.current})"
                if result.url:
                    message += f": {result.url}"
            else:
                message = f"qhybrid {result.current} is up to date"
        if quiet and (self.info is None or not self.info.newer):
            return
        self.finished.emit(message)


def _settings() -> QSettings:
    if QCoreApplication.organizationName():
        return QSettings()
    return QSettings("qhybrid", "qhybrid")


def add_update_actions(window: QMainWindow, menu: QMenu) -> UpdateChecker:
    """Add the two actions to ``menu``; messages go to ``window``'s status bar. When the
    setting is on, a quiet check starts once the event loop runs."""
    checker = UpdateChecker(window)
    checker.setObjectName("update_checker")
    checker.finished.connect(lambda text: window.statusBar().showMessage(text, _MESSAGE_MS))
    menu.addSeparator()
    now = QAction("Check for &updates now", window)
    now.setObjectName("check_updates_action")
    now.triggered.connect(lambda: checker.check())
    at_start = QAction("Check for updates at &start", window)
    at_start.setObjectName("check_updates_at_start_action")
    at_start.setCheckable(True)
    at_start.setChecked(_settings().value(CHECK_AT_START_KEY, False, type=bool) is True)
    at_start.toggled.connect(lambda on: _settings().setValue(CHECK_AT_START_KEY, bool(on)))
    menu.addAction(now)
    menu.addAction(at_start)
    if at_start.isChecked():
        QTimer.singleShot(0, lambda: checker.check(quiet=True))
    return checker
