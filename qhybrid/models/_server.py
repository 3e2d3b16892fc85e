"""The window's HTTP server: ``qhybrid serve`` started and stopped from the GUI.

:class:`ServerModel` runs a :class:`~qhybrid.serve.BackgroundServer` (uvicorn on a thread of
its own, the model on its own device thread). Starting loads the model, which takes a while,
so it happens on a short-lived thread and the result comes back to the GUI thread as a
queued signal; stopping also runs off the GUI thread. Once a second a timer on the GUI thread
reads the server's counters (plain integers the server's loop writes) into
:attr:`ServerModel.stats`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from PySide6.QtCore import QObject, QTimer, Signal

from qhybrid.serve import BackgroundServer, ServeOptions

__all__ = ["ServerModel", "ServerState", "ServerStats"]

logger = logging.getLogger(__name__)


class ServerState:
    STOPPED = "stopped"
    STARTING = "starting"
    SERVING = "serving"
    STOPPING = "stopping"
    FAILED = "failed"


@dataclass
class ServerStats:
    """What the panel shows: requests since start, sequences in flight, HTTP connections
    open now, tokens generated and the rate over the last poll."""

    requests: int = 0
    in_flight: int = 0
    clients: int = 0
    tokens: int = 0
    tok_s: float = 0.0


class ServerModel(QObject):
    """Start and stop serving; signals on the GUI thread: ``state_changed(state, detail)``
    (detail: the URL when serving, the reason when failed) and ``stats_changed()``."""

    state_changed = Signal(str, str)
    stats_changed = Signal()
    _started = Signal(object, str)  # server or None, error (from the starting thread)
    _stopped = Signal()

    def __init__(self, parent: QObject | None = None, *, poll_ms: int = 1000) -> None:
        super().__init__(parent)
        self.state = ServerState.STOPPED
        self.url = ""
        self.stats = ServerStats()
        self._server: BackgroundServer | None = None
        self._thread: threading.Thread | None = None
        self._last = (0, time.perf_counter())
        self._timer = QTimer(self)
        self._timer.setInterval(poll_ms)
        self._timer.timeout.connect(self.poll)
        self._started.connect(self._on_started)
        self._stopped.connect(self._on_stopped)

    def start(self, options: ServeOptions) -> None:
        """Serve ``options.models`` (GUI thread); ignored unless stopped or failed."""
        if self.state not in (ServerState.STOPPED, ServerState.FAILED):
            return
        self._set_state(ServerState.STARTING, "")

        def run() -> None:
            try:
                server = BackgroundServer(options).start()
            except (RuntimeError, OSError, ValueError) as exc:
                self._started.emit(None, str(exc))
                return
            self._started.emit(server, "")

        self._join()
        self._thread = threading.Thread(target=run, name="qhybrid-serve-start", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving (GUI thread): requests in flight end, the model is closed."""
        server = self._server
        if server is None or self.state != ServerState.SERVING:
            return
        self._set_state(ServerState.STOPPING, "")
        self._timer.stop()

        def run() -> None:
            server.stop()
            self._stopped.emit()

        self._join()
        self._thread = threading.Thread(target=run, name="qhybrid-serve-stop", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop and wait (the window closing)."""
        self._timer.stop()
        self._join()
        if self._server is not None:
            self._server.stop()
            self._server = None
        self.state = ServerState.STOPPED

    def poll(self) -> None:
        """Read the counters (GUI thread; the timer calls it once a second)."""
        server = self._server
        if server is None:
            return
        models = list(server.registry.models)
        now = time.perf_counter()
        tokens = sum(m.tokens_total for m in models)
        last_tokens, last_t = self._last
        rate = (tokens - last_tokens) / (now - last_t) if now > last_t else 0.0
        self._last = (tokens, now)
        self.stats = ServerStats(
            requests=sum(m.requests_total for m in models),
            in_flight=sum(m.in_flight for m in models),
            clients=server.connections,
            tokens=tokens,
            tok_s=max(rate, 0.0),
        )
        self.stats_changed.emit()

    # -- GUI thread, from the worker threads' signals ---------------------------------------
    def _on_started(self, server: BackgroundServer | None, error: str) -> None:
        self._join()
        if server is None:
            self._set_state(ServerState.FAILED, error)
            return
        self._server = server
        self.url = server.url
        self._last = (0, time.perf_counter())
        self.stats = ServerStats()
        self._timer.start()
        self._set_state(ServerState.SERVING, server.url)

    def _on_stopped(self) -> None:
        self._join()
        self._server = None
        self.url = ""
        self._set_state(ServerState.STOPPED, "")

    def _set_state(self, state: str, detail: str) -> None:
        self.state = state
        self.state_changed.emit(state, detail)

    def _join(self) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(60)
            self._thread = None
