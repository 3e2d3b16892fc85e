"""A worker's reply pipe, read as frames the moment its bytes arrive (issue 11).

The pool used to read each reply with two ``StreamReader.readexactly`` awaits, each wrapped
by the watchdog in a task and an ``asyncio.wait`` with a timeout, and to ``drain`` the request
the same way: four tasks and four waits per worker per tick, a third of the orchestrator's own
cost per message. Here the stdout pipe's protocol cuts the bytes into frames in
``pipe_data_received`` (the same chunked framing as ``_frames.py``: a frame header announcing
more than :data:`~qhybrid.runtime.wasm_pool._frames.CHUNK_BYTES` or a message of more than
:data:`~qhybrid.runtime.wasm_pool._frames.MAX_MESSAGE_BYTES` is corruption), decodes each
message and hands it to whoever waits for it: one future per reply, resolved straight from
the pipe, and one timer per reply that does the watchdog's rounds (``_watchdog.py``).

A pipe that ends, or carries garbage, fails the reply waited for, and every later one, with
:class:`~qhybrid.runtime.wasm_pool._protocol.ProtocolError`, which the pool reports as a crash.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from asyncio import base_subprocess
from collections.abc import Callable
from typing import Any

from qhybrid.runtime.wasm_pool import _frames
from qhybrid.runtime.wasm_pool._protocol import ProtocolError, decode
from qhybrid.runtime.wasm_pool._watchdog import POLL_S, STOPPED_GRACE_S, WorkerUnresponsive
from qhybrid.runtime.wasm_pool._watchdog import _stopped as stopped

__all__ = ["ReplyChannel", "Sink", "Watchdog", "spawn"]

#: ``sink(message, None)``, or ``sink(None, error)`` when no message will come: who waits for
#: a reply without a future (:meth:`ReplyChannel.expect`), called straight from the pipe.
Sink = Callable[[Any, BaseException | None], None]

_HEADER = _frames.HEADER.size
_unpack_header = _frames.HEADER.unpack_from
_MORE = 1 << 31


class ReplyChannel(asyncio.subprocess.SubprocessStreamProtocol):
    """The protocol of a worker process: stdin a ``StreamWriter`` as usual, stdout frames."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self._loop = loop
        self._buf = bytearray()
        self._need = -1  # the body bytes of the chunk being read; -1: reading a header
        self._more = False
        self._parts: list[bytes] = []
        self._total = 0
        self._ready: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[Any] | None = None
        self._sink: Sink | None = None
        self._failed: ProtocolError | None = None

    # -- reading ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # asyncio hands a subprocess pipe's data to its protocol through ``call_soon``: one
        # more turn of the loop (a ``select`` and a handle) per reply. The stdout pipe's data
        # comes here straight from its read instead. Safe from reordering: the data read
        # before now is queued in the same turn as this call, so it is handled before any
        # read that comes here directly.
        get_pipe = getattr(transport, "get_pipe_transport", None)
        pipe = get_pipe(1) if get_pipe is not None else None
        proto = getattr(pipe, "_protocol", None)
        if isinstance(proto, base_subprocess.ReadSubprocessPipeProto):
            proto.data_received = self._stdout_data  # type: ignore[method-assign]

    def _stdout_data(self, data: bytes) -> None:
        self.pipe_data_received(1, data)

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        if fd != 1 or isinstance(data, str):
            super().pipe_data_received(fd, data)
            return
        if self._failed is not None:
            return
        try:
            self._feed(data)
        except (_frames.FrameError, ProtocolError) as exc:
            self._fail(ProtocolError(str(exc)))
        except Exception as exc:  # a body that does not decode: not ours, or corrupt
            self._fail(ProtocolError(f"a frame that cannot be decoded: {exc}"))

    def _feed(self, data: bytes) -> None:
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data
        pos = 0
        end = len(view)
        while True:
            need = self._need
            if need < 0:
                if end - pos < _HEADER:
                    break
                (word,) = _unpack_header(view, pos)
                need, more = word & ~_MORE, bool(word & _MORE)
                if need > _frames.CHUNK_BYTES or (more and need != _frames.CHUNK_BYTES):
                    raise ProtocolError(f"frame of {need} bytes is too large")
                if self._total + need > _frames.MAX_MESSAGE_BYTES:
                    limit = _frames.MAX_MESSAGE_BYTES
                    raise ProtocolError(f"a message of more than {limit} bytes is too large")
                pos += _HEADER
                self._need, self._more = need, more
            if end - pos < need:
                break
            body = bytes(view[pos : pos + need]) if pos or need != end else bytes(view)
            pos += need
            self._need = -1
            if self._more:
                self._parts.append(body)
                self._total += need
                continue
            if self._parts:
                self._parts.append(body)
                body = b"".join(self._parts)
                self._parts.clear()
                self._total = 0
            self._deliver(decode(body))
        if pos == 0:
            if not buf:
                buf += data
        elif buf:
            del buf[:pos]
        elif pos < end:
            buf += view[pos:]

    def _deliver(self, message: Any) -> None:
        sink = self._sink
        if sink is not None:
            self._sink = None
            sink(message, None)
            return
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(message)
                return
        self._ready.append(message)

    def _fail(self, exc: ProtocolError) -> None:
        if self._failed is None:
            self._failed = exc
            self._buf.clear()
            self._parts.clear()
        sink = self._sink
        if sink is not None:
            self._sink = None
            sink(None, exc)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_exception(exc)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self._fail(ProtocolError("the stream ended"))
        super().pipe_connection_lost(fd, exc)

    # -- waiting ------------------------------------------------------------------------------
    def next_reply(self) -> asyncio.Future[Any]:
        """A future of the next message (already resolved if one is there)."""
        fut: asyncio.Future[Any] = self._loop.create_future()
        if self._ready:
            fut.set_result(self._ready.popleft())
        elif self._failed is not None:
            fut.set_exception(self._failed)
        else:
            self._waiter = fut
        return fut

    def expect(self, sink: Sink) -> None:
        """Hand the next message to ``sink`` (see :data:`Sink`) the moment it is read: no
        future, no callback scheduled (one tick's batches wait this way)."""
        if self._ready:
            sink(self._ready.popleft(), None)
        elif self._failed is not None:
            sink(None, self._failed)
        else:
            self._sink = sink

    def forget(self) -> None:
        """Nobody waits any more for what :meth:`expect` asked for."""
        self._sink = None

    def watch(self, fut: asyncio.Future[Any], pid: int, deadline_s: float, what: str) -> None:
        """The watchdog for ``fut``: it fails with :class:`WorkerUnresponsive` when the worker
        misses ``deadline_s`` or stays stopped :data:`STOPPED_GRACE_S`; looked at every
        :data:`POLL_S` until ``fut`` is done."""
        if fut.done():
            return
        loop = self._loop
        watched = _Watched(pid, deadline_s, what)

        def look() -> None:
            if fut.done():
                return
            problem = watched.problem()
            if problem is not None:
                fut.set_exception(WorkerUnresponsive(problem))
                self._drop(fut)
                return
            timer[0] = loop.call_later(POLL_S, look)

        timer = [loop.call_later(POLL_S, look)]
        fut.add_done_callback(lambda _: timer[0].cancel())

    def _drop(self, fut: asyncio.Future[Any]) -> None:
        if self._waiter is fut:
            self._waiter = None


class _Watched:
    """One reply waited for from worker ``pid``: is it late, or is the worker stopped?"""

    __slots__ = ("deadline_s", "pid", "start", "stopped_since", "what")

    def __init__(self, pid: int, deadline_s: float, what: str) -> None:
        self.pid = pid
        self.deadline_s = deadline_s
        self.what = what
        self.start = time.monotonic()
        self.stopped_since: float | None = None

    def problem(self) -> str | None:
        """Why the worker is unresponsive now, or None."""
        now = time.monotonic()
        if now - self.start > self.deadline_s:
            return f"no answer to {self.what} within its deadline of {self.deadline_s:.0f} s"
        if os.name == "posix" and stopped(self.pid):
            if self.stopped_since is None:
                self.stopped_since = now
            elif now - self.stopped_since >= STOPPED_GRACE_S:
                return (
                    f"stopped (SIGSTOP?) for {now - self.stopped_since:.1f} s "
                    f"while handling {self.what}"
                )
        else:
            self.stopped_since = None
        return None


class Watchdog:
    """The watchdog's rounds (see :meth:`ReplyChannel.watch`) for replies waited for through
    :meth:`ReplyChannel.expect`: one timer for all of them, every :data:`POLL_S` while any is
    outstanding, instead of a timer set and cancelled per reply. Keyed by worker: one reply
    waited for per worker at a time, forgotten the moment it comes (:meth:`done`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: dict[int, tuple[_Watched, Callable[[str], None]]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def watch(
        self, key: int, pid: int, deadline_s: float, what: str, fail: Callable[[str], None]
    ) -> None:
        """Until :meth:`done` ``(key)``, look at worker ``pid`` every round; ``fail(why)`` once
        it misses ``deadline_s`` or stays stopped :data:`STOPPED_GRACE_S`."""
        self._items[key] = (_Watched(pid, deadline_s, what), fail)
        if self._timer is None:
            self._timer = self._loop.call_later(POLL_S, self._look)

    def done(self, key: int) -> None:
        self._items.pop(key, None)

    def _look(self) -> None:
        self._timer = None
        for key, (watched, fail) in list(self._items.items()):
            problem = watched.problem()
            if problem is not None:
                del self._items[key]
                fail(problem)
        if self._items:
            self._timer = self._loop.call_later(POLL_S, self._look)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._items.clear()


async def spawn(
    command: list[str], env: dict[str, str]
) -> tuple[asyncio.subprocess.Process, ReplyChannel]:
    """Start a worker with its stdout read by a :class:`ReplyChannel`."""
    loop = asyncio.get_running_loop()
    factory: Callable[[], ReplyChannel] = lambda: ReplyChannel(1 << 16, loop)  # noqa: E731
    transport, protocol = await loop.subprocess_exec(
        factory,
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    return asyncio.subprocess.Process(transport, protocol, loop), protocol
