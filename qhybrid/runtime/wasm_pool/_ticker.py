"""The epoch ticker: what makes a wall-clock limit fire inside a running handler.

wasmtime interrupts a call when the engine's epoch passes the store's deadline; something must
advance the epoch. One thread per worker does, every :data:`EPOCH_S`, but only while calls
run: every agent has a time limit (the default one at least), so a ticker that never stopped
would wake a paused or idle worker 500 times a second. It exits after :data:`IDLE_S` without a
call in flight and starts again with the next call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import wasmtime

__all__ = ["EPOCH_S", "IDLE_S", "EpochTicker"]

#: The ticker's period: timeouts are accurate to about this.
EPOCH_S = 0.002
#: The ticker stops after this long with no call in flight.
IDLE_S = 0.5


class EpochTicker:
    """Advances the epoch of ``engines`` while calls run (any thread may start and end them)."""

    def __init__(self, engines: Mapping[Any, wasmtime.Engine]) -> None:
        self._engines = engines
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._started = 0
        self._ended = 0

    def call_started(self) -> None:
        """A limited call is about to run: make sure the epoch advances."""
        self._started += 1
        if self._thread is None:
            with self._lock:
                if self._thread is None and not self._stop.is_set():
                    self._thread = threading.Thread(
                        target=self._run, name="qhybrid-epoch", daemon=True
                    )
                    self._thread.start()

    def call_ended(self) -> None:
        self._ended += 1

    def _run(self) -> None:
        idle_since: float | None = None
        seen = -1
        while not self._stop.wait(EPOCH_S):
            for engine in list(self._engines.values()):
                engine.increment_epoch()
            started = self._started
            if started != self._ended or started != seen:
                seen, idle_since = started, None
                continue
            now = time.monotonic()
            if idle_since is None:
                idle_since = now
            elif now - idle_since >= IDLE_S:
                with self._lock:
                    if self._started == seen:  # no call started meanwhile: stop
                        self._thread = None
                        return
                    idle_since = None

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=1.0)
