"""WASI's ``poll_oneoff`` on the run's logical clock, for every agent host.

wasmtime's own ``poll_oneoff`` waits in real time: an agent's ``sleep(3600)`` (C's ``sleep``,
Python's ``time.sleep``) would hold its worker for an hour, and the wait would depend on the
machine. On the logical clock no time passes inside a message, so every clock subscription is
due at once; agents have no file or socket to wait on, so fd subscriptions are answered with
EBADF. Deterministic, and never blocking.
"""

from __future__ import annotations

import struct

__all__ = ["EINVAL", "EVENT_SIZE", "SUBSCRIPTION_SIZE", "poll_events"]

SUBSCRIPTION_SIZE = 48  # userdata u64, tag u8 (0 clock, 1 fd_read, 2 fd_write), the union
EVENT_SIZE = 32  # userdata u64, error u16, type u8, fd_readwrite
EINVAL = 28
_EBADF = 8


def poll_events(subscriptions: bytes, n: int) -> bytes:
    """The ``n`` events answering ``n`` subscriptions (``48 * n`` bytes)."""
    events = bytearray(EVENT_SIZE * n)
    for i in range(n):
        userdata, tag = struct.unpack_from("<QB", subscriptions, SUBSCRIPTION_SIZE * i)
        struct.pack_into("<QHB", events, EVENT_SIZE * i, userdata, 0 if tag == 0 else _EBADF, tag)
    return bytes(events)
