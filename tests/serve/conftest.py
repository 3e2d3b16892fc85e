"""A server on an ephemeral loopback port, one per test module (the model loads once).

The server's own threads (uvicorn's loop, the model's device thread) start before the first
test and stop after the last, so the autouse ``no_leftovers`` check sees only what a test
itself leaves; the fixture then checks that stopping left no thread behind.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from qhybrid.serve import BackgroundServer, ServeOptions

MODEL = "tiny-stories"


def _threads() -> set[int]:
    return {t.ident for t in threading.enumerate() if t.ident is not None}


@pytest.fixture(scope="module")
def make_server() -> Iterator[Callable[..., BackgroundServer]]:
    """``make_server(**options)``: a started server, stopped (and checked) at the module's end."""
    before = _threads()
    servers: list[BackgroundServer] = []

    def make(**fields: object) -> BackgroundServer:
        fields.setdefault("port", 0)
        fields.setdefault("device", "cpu")
        srv = BackgroundServer(ServeOptions(**fields), timeout=60).start()  # type: ignore[arg-type]
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.stop()
    left = [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert not left, f"the servers left threads running: {left}"


@pytest.fixture(scope="module")
def server(make_server: Callable[..., BackgroundServer]) -> BackgroundServer:
    return make_server(slots=4)
