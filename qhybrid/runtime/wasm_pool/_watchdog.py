"""The watchdog: every request to a worker has a deadline (issue 12).

A worker that stops answering (stopped with SIGSTOP, swapped out for good, wedged in native
code) would otherwise hold the lock-step run until its wall-clock limit, and end it with a
generic timeout. So while the pool waits for a reply the watchdog watches the worker:

- a worker **stopped** (``T``/``t`` in ``/proc/<pid>/stat``) for :data:`STOPPED_GRACE_S` is
  unresponsive: it cannot answer until someone continues it;
- a request that passes its **deadline** is unresponsive too. A batch's deadline is what its
  messages may legitimately take (the sum of their agents' time limits per message, defaults
  included) plus :data:`TASK_DEADLINE_S` per CPU task and :data:`BASE_DEADLINE_S`, so a slow but
  working worker is never killed.

An unresponsive worker is killed; the pool reports it as crashed, and the usual recovery
replaces it (restoring its agents from their snapshots, replaying, re-sending the batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable
from typing import TypeVar

__all__ = [
    "BASE_DEADLINE_S",
    "STOPPED_GRACE_S",
    "TASK_DEADLINE_S",
    "WorkerUnresponsive",
    "batch_deadline",
    "watched",
]

T = TypeVar("T")

#: Every request may take this long, whatever it is.
BASE_DEADLINE_S = 60.0
#: And this much more per CPU task in a batch.
TASK_DEADLINE_S = 120.0
#: A worker stopped (SIGSTOP) this long is taken for unresponsive.
STOPPED_GRACE_S = 1.0
#: How often the watchdog looks at a worker that has not answered yet.
POLL_S = 0.25


class WorkerUnresponsive(Exception):
    """A worker missed its request's deadline or is stopped; it must be replaced."""


def batch_deadline(message_limits_ms: int, tasks: int) -> float:
    """The deadline of a batch whose messages may take ``message_limits_ms`` in all."""
    return BASE_DEADLINE_S + message_limits_ms / 1000.0 + TASK_DEADLINE_S * tasks


def _stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped (Linux /proc; elsewhere never known to be)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    # "pid (comm) S ...": the state follows the last ')' (comm may hold spaces and parens).
    end = stat.rfind(b")")
    return end >= 0 and stat[end + 2 : end + 3] in (b"T", b"t")


async def watched(reply: Awaitable[T], pid: int, deadline_s: float, what: str) -> T:
    """``await reply``, unless the worker ``pid`` misses ``deadline_s`` or stays stopped:
    then :class:`WorkerUnresponsive` (``reply`` is cancelled)."""
    task = asyncio.ensure_future(reply)
    start = time.monotonic()
    stopped_since: float | None = None
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=POLL_S)
            if done:
                return task.result()
            now = time.monotonic()
            if now - start > deadline_s:
                raise WorkerUnresponsive(
                    f"no answer to {what} within its deadline of {deadline_s:.0f} s"
                )
            if os.name == "posix" and _stopped(pid):
                stopped_since = now if stopped_since is None else stopped_since
                if now - stopped_since >= STOPPED_GRACE_S:
                    raise WorkerUnresponsive(
                        f"stopped (SIGSTOP?) for {now - stopped_since:.1f} s while handling {what}"
                    )
            else:
                stopped_since = None
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
