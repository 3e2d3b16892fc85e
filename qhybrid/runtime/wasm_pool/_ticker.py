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

__all__ = ["COARSE_S", "EPOCH_S", "IDLE_S", "EpochTicker"]

#: The epoch's period: a handler's deadline is counted in these.
EPOCH_S = 0.002
#: How often the ticker looks while calls are short; timeouts are accurate to about this.
COARSE_S = 0.02
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
        # The epoch advances only for the time a call has been seen running across a whole
        # period, so it is never charged for time before it started: a timeout may fire up to
        # COARSE_S late, never early. While calls are short (the common case: tens of us),
        # the ticker wakes every COARSE_S instead of every EPOCH_S: waking 500 times a second
        # cost a worker about 1 us per message (issue 11).
        idle_since: float | None = None
        seen = -1  # calls started, at the last wake
        credited = time.monotonic()  # the time the epoch has been advanced to
        period = COARSE_S
        while not self._stop.wait(period):
            now = time.monotonic()
            started = self._started
            if started != self._ended and started == seen:
                # The same call is still running: it ran all of the time since the last wake.
                ticks = int((now - credited) / EPOCH_S)
                credited += ticks * EPOCH_S
                for engine in list(self._engines.values()):
                    for _ in range(ticks):
                        engine.increment_epoch()
                period = EPOCH_S
            else:
                credited = now
                period = COARSE_S
            if started != self._ended or started != seen:
                seen, idle_since = started, None
                continue
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
