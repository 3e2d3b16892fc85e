"""Measures how long the GUI thread's event loop goes without running a timer."""

from __future__ import annotations

import time

from PySide6.QtCore import QObject, Qt, QTimer

__all__ = ["StallMonitor"]


class StallMonitor(QObject):
    """A precise timer every ``interval_ms``; a stall is how late it fires.

    ``max_stall_ms`` is the longest delay beyond the interval since :meth:`start` (or the last
    :meth:`reset`): the longest time the event loop was busy and could not have answered the
    user.
    """

    def __init__(self, parent: QObject | None = None, interval_ms: int = 5) -> None:
        super().__init__(parent)
        self.interval_s = interval_ms / 1000
        self._timer = QTimer(self)
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)
        self.reset()

    def reset(self) -> None:
        self.max_stall_ms = 0.0
        self.samples = 0
        self._last = time.perf_counter()

    def start(self) -> None:
        self.reset()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def _tick(self) -> None:
        now = time.perf_counter()
        stall = (now - self._last - self.interval_s) * 1000
        self._last = now
        self.samples += 1
        if stall > self.max_stall_ms:
            self.max_stall_ms = stall
