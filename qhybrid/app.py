"""The desktop application: a QApplication driven by a qasync event loop.

Qt is imported here and below (``qhybrid.views``, ``qhybrid.models``) only; the CLI imports
this module lazily, when no ``--headless`` flag is given, so that the headless runtime never
loads Qt.

One loop serves both worlds: qasync's ``QEventLoop`` runs Qt's event loop and is also the
asyncio loop, so the runtime's awaitables (futures from the worker pool and the GPU thread)
can be awaited from Qt slots on the GUI thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading

import qasync
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

import qhybrid
from qhybrid._resources import resource_path
from qhybrid.models import RuntimeController
from qhybrid.views import MainWindow

__all__ = ["run_app"]

logger = logging.getLogger(__name__)

APP_NAME = "qhybrid"
ORGANIZATION_NAME = "qhybrid"


def run_app(
    argv: list[str] | None = None,
    *,
    scenario: str | None = None,
    workers: int | None = None,
    device: str = "auto",
    start: bool = False,
) -> int:
    """Show the main window and run Qt's (and asyncio's) event loop until it closes.

    ``argv`` is a command line as Qt expects it, program name first (``sys.argv`` when None);
    Qt's own options such as ``-platform offscreen`` are honoured. ``scenario`` is the path of
    a scenario file to open in the window (default: the last one opened, else the demo);
    ``workers`` and ``device`` configure the runs (``workers`` defaults to the window's
    saved choice, else ``QHYBRID_WORKERS`` or 2); ``start`` starts the scenario at once.
    Returns the application's exit code: 0 after the
    last window was closed, or the code given to ``QApplication.exit``.

    An existing QApplication is reused (tests create one first), but its names and icon are set.
    """
    _set_application_metadata()
    app = QApplication.instance()
    if app is None:
        app = QApplication(list(sys.argv if argv is None else argv))
    if not isinstance(app, QApplication):
        raise RuntimeError(
            f"a {type(app).__name__} already exists; the window needs a QApplication"
        )
    icon_path = resource_path("icons", "qhybrid.svg")
    if icon_path.is_file():
        app.setWindowIcon(QIcon(str(icon_path)))
    else:
        logger.warning("window icon not found: %s", icon_path)

    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    window: MainWindow | None = None
    stopped_by: list[int] = []
    try:
        # The app owns the runtime's thread (through the controller); the window steers it
        # and shuts it down when it closes.
        controller = RuntimeController(workers=_default_workers(), device=device)
        window = MainWindow(scenario_path=scenario, controller=controller)
        controller.setParent(window)
        if workers is not None:
            window.workers_spin.setValue(workers)  # the command line wins over the saved value
        if window.scenario_path is None:
            demo = resource_path("scenarios", "demo.toml")
            if demo.is_file():
                window.set_scenario_path(demo)
        if start:
            window.start()
        stopped_by = _quit_on_signals(loop, app)
        window.show()
        # qasync's run_forever is QApplication.exec(): it returns Qt's exit code, after the
        # last window closed (quitOnLastWindowClosed) or an explicit QApplication.exit(code).
        exit_code = loop.run_forever()
    finally:
        if window is not None and window.isVisible():
            window.close()  # QApplication.exit(code) leaves it open: save its geometry too
        _close_loop(loop)
        asyncio.set_event_loop(None)
    logger.debug("event loop ended with exit code %s", exit_code)
    if stopped_by and stopped_by[0] != signal.SIGINT and int(exit_code) == 0:
        # As the headless run: a hangup or a kill ends with 128 + the signal's number.
        return 128 + stopped_by[0]
    return int(exit_code)


def _default_workers() -> int:
    try:
        return max(1, int(os.environ.get("QHYBRID_WORKERS", "2") or 2))
    except ValueError:
        return 2


def _set_application_metadata() -> None:
    # Before the QApplication exists: the X11 window class and QSettings' paths come from these.
    QApplication.setApplicationName(APP_NAME)
    QApplication.setOrganizationName(ORGANIZATION_NAME)
    QApplication.setApplicationVersion(qhybrid.__version__)
    # Lets Wayland and the desktop match the window with resources/qhybrid.desktop.
    QApplication.setDesktopFileName(APP_NAME)


#: What ends the window from outside, as closing it does: Ctrl-C in the terminal, the hangup
#: of a closed terminal, ``kill``.
_QUIT_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGHUP", "SIGTERM") if hasattr(signal, name)
)


def _quit_on_signals(loop: asyncio.AbstractEventLoop, app: QApplication) -> list[int]:
    """Make SIGINT (Ctrl-C), SIGHUP (the terminal closed) and SIGTERM close the windows, which
    stops the run and cleans up (worker processes, GPU thread, shared memory), instead of
    being ignored until Python code next runs or killing the process with segments left.

    The loop's signal handlers work under Qt: the C-level handler writes to asyncio's wake-up
    pipe, which qasync watches with a socket notifier, so the handler runs on the GUI thread
    at the next turn of Qt's loop. Returns the list that receives the first signal's number.
    """
    stopped_by: list[int] = []
    if hasattr(signal, "SIGHUP"):
        _start_resource_tracker_immune_to_hangup()

    def on_signal(signum: int) -> None:
        if not stopped_by:
            stopped_by.append(signum)
            logger.warning("%s: closing the window", signal.Signals(signum).name)
        app.closeAllWindows()

    # Not on Windows (the proactor loop has no signal handlers), nor outside the main thread.
    for sig in _QUIT_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal, int(sig))
    return stopped_by


def _start_resource_tracker_immune_to_hangup() -> None:
    """Start multiprocessing's resource tracker (the helper that unlinks this process's
    shared memory should it be SIGKILLed) with SIGHUP ignored, as the headless run does: it
    ignores SIGINT and SIGTERM but not SIGHUP, and the hangup of a closed terminal reaches
    the whole process group, the tracker too, before the window has cleaned up."""
    if threading.current_thread() is not threading.main_thread():
        return
    from multiprocessing import resource_tracker

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        resource_tracker.ensure_running()
    finally:
        signal.signal(signal.SIGHUP, previous)


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks still pending, let them finish, and close the loop (as asyncio.run)."""
    for sig in _QUIT_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(sig)
    try:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            # Re-enters Qt's event loop until the cancelled tasks have unwound.
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        for task in pending:
            if not task.cancelled() and task.exception() is not None:
                loop.call_exception_handler(
                    {
                        "message": "unhandled exception in a task at application exit",
                        "exception": task.exception(),
                        "task": task,
                    }
                )
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
