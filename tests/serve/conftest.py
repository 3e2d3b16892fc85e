"""Servers on ephemeral loopback ports.

``server`` is one per test module (the model loads once): its threads (uvicorn's loop, the
model's device thread) start before the module's first test and stop after its last, and the
fixture then checks that stopping left no thread behind. ``make_server(**options)`` starts
servers with other options for one test; they stop when it ends, and the autouse
``no_leftovers`` check sees that nothing stayed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from qhybrid.serve import BackgroundServer, ServeOptions


def _start(**fields: object) -> BackgroundServer:
    fields.setdefault("port", 0)
    fields.setdefault("device", "cpu")
    return BackgroundServer(ServeOptions(**fields), timeout=60).start()  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server() -> Iterator[BackgroundServer]:
    before = {t.ident for t in threading.enumerate()}
    srv = _start(slots=4)
    yield srv
    srv.stop()
    left = [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert not left, f"the server left threads running: {left}"


@pytest.fixture
def make_server() -> Iterator[Callable[..., BackgroundServer]]:
    servers: list[BackgroundServer] = []

    def make(**fields: object) -> BackgroundServer:
        srv = _start(**fields)
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.stop()
