"""The parent's side of the worker pool: starting, talking to and stopping worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from qhybrid.runtime.wasm_pool._abi import AgentModuleError
from qhybrid.runtime.wasm_pool._channel import ReplyChannel, Sink, Watchdog, spawn
from qhybrid.runtime.wasm_pool._pool_base import PoolBase
from qhybrid.runtime.wasm_pool._protocol import (
    BatchReply,
    ProtocolError,
    Request,
    TaskOutcome,
    TaskRun,
    TensorEntry,
    encode,
)
from qhybrid.runtime.wasm_pool._watchdog import (
    BASE_DEADLINE_S,
    WorkerUnresponsive,
    batch_deadline,
    watched,
)

logger = logging.getLogger(__name__)

WORKER_MODULE = "qhybrid.runtime.wasm_pool"
#: The argument a frozen app (PyInstaller) is started with to become a worker; its entry
#: point must hand over to :func:`qhybrid.runtime.wasm_pool.run_worker` when it sees it.
WORKER_FLAG = "--qhybrid-worker"


class WorkerError(RuntimeError):
    """A request a worker could not carry out."""


class WorkerCrashed(WorkerError):
    """A worker process died (killed, crashed, out of memory) or stopped answering."""

    def __init__(self, index: int, pid: int | None, returncode: int | None, detail: str) -> None:
        self.index = index
        self.pid = pid
        self.returncode = returncode
        if returncode is not None and returncode < 0:
            try:
                how = f"killed by {signal.Signals(-returncode).name}"
            except ValueError:
                how = f"killed by signal {-returncode}"
        elif returncode is not None:
            how = f"exited with code {returncode}"
        else:
            how = detail
        super().__init__(f"worker {index} (pid {pid}) died: {how}")


def _unwrap(index: int, reply: Any) -> Any:
    status, value = reply
    if status == "ok":
        return value
    if status == "module-error":
        raise AgentModuleError(value)
    raise WorkerError(f"worker {index}: {value}")


def worker_command() -> list[str]:
    """How to start a worker: the same interpreter running the worker module, or, in a
    frozen app where ``sys.executable`` is the app itself, the app with :data:`WORKER_FLAG`."""
    if getattr(sys, "frozen", False):
        return [sys.executable, WORKER_FLAG]
    return [sys.executable, "-m", WORKER_MODULE]


class _Slot:
    """One batch of :meth:`WorkerPool.run_batches`: sent when, answered when, with what."""

    __slots__ = ("error", "got_at", "index", "message", "news", "sent_at", "worker")

    def __init__(self, index: int, worker: _Worker, news: int, sent_at: int) -> None:
        self.index = index
        self.worker = worker
        self.news = news
        self.sent_at = sent_at
        self.got_at = 0
        self.message: Any = None
        self.error: BaseException | None = None


class _Worker:
    def __init__(self, index: int, proc: asyncio.subprocess.Process, channel: ReplyChannel) -> None:
        self.index = index
        self.proc = proc
        self.channel = channel
        self.lock = asyncio.Lock()
        self.busy_ns = 0
        # Of that, the time the worker itself reports spending in its batches' handlers and
        # tasks (the rest is the pipe, the framing and the scheduling between the two).
        self.batch_ns = 0
        self.requests = 0
        self.tensors_seen = 0

    @property
    def pid(self) -> int:
        return self.proc.pid


class WorkerPool(PoolBase):
    """A fixed set of worker processes, each hosting agents and running CPU tasks.

    All methods are coroutines for the loop the pool was started on (the orchestrator's).
    Each worker handles one request at a time; requests to different workers run in parallel.
    """

    def __init__(self, size: int, *, start_timeout: float = 60.0) -> None:
        super().__init__(size)
        self.start_timeout = start_timeout
        self._workers: list[_Worker] = []
        self._closed = False
        self._env: dict[str, str] = {}
        self._watchdog: Watchdog | None = None  # run_batches' (made on the pool's loop)

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self._workers]

    def busy_ns(self) -> list[int]:
        """Nanoseconds each worker has spent handling batches so far."""
        return [w.busy_ns for w in self._workers]

    def batch_ns(self) -> list[int]:
        """Nanoseconds each worker reports having spent inside its batches (handlers and
        tasks, without reading and writing the frames)."""
        return [w.batch_ns for w in self._workers]

    async def _spawn(self, index: int) -> _Worker:
        proc, channel = await spawn(worker_command(), self._env)
        return _Worker(index, proc, channel)

    async def start(self) -> None:
        """Start every worker and wait for each one's READY handshake."""
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # Each worker is one core's worth of work; nested BLAS threads only oversubscribe.
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("MKL_NUM_THREADS", "1")
        self._env = env
        try:
            for index in range(self.size):
                self._workers.append(await self._spawn(index))
            await asyncio.wait_for(
                asyncio.gather(*(self._handshake(w) for w in self._workers)),
                timeout=self.start_timeout,
            )
        except BaseException:
            await self.aclose()
            raise
        logger.info("worker pool started: %d workers, pids %s", self.size, self.pids)

    async def _handshake(self, worker: _Worker) -> None:
        try:
            hello = await worker.channel.next_reply()
        except ProtocolError:
            raise await self._crashed(worker, "no READY handshake") from None
        if not (isinstance(hello, tuple) and hello[0] == "ready"):
            raise WorkerError(f"worker {worker.index} sent {hello!r} instead of READY")

    async def _crashed(self, worker: _Worker, detail: str) -> WorkerCrashed:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(worker.proc.wait(), timeout=2.0)
        return WorkerCrashed(worker.index, worker.pid, worker.proc.returncode, detail)

    async def _request(
        self, index: int, request: Request, deadline_s: float = BASE_DEADLINE_S
    ) -> Any:
        if self._closed:
            raise WorkerError("the worker pool is closed")
        worker = self._workers[index]
        async with worker.lock:
            start = time.perf_counter_ns()
            waiting = await self._send(worker, request, deadline_s)
            try:
                reply = await waiting
            except (ProtocolError, WorkerUnresponsive) as exc:
                raise await self._lost(worker, exc) from None
            worker.requests += 1
            worker.busy_ns += time.perf_counter_ns() - start
        return _unwrap(index, reply)

    async def _send(
        self, worker: _Worker, request: Request, deadline_s: float
    ) -> asyncio.Future[Any]:
        """Write ``request`` to ``worker`` (the caller holds its lock); the future of its
        reply, watched by the watchdog (_watchdog.py): a stopped or silent worker is killed
        and reported as crashed, so the usual recovery replaces it."""
        await self._write(worker, request, deadline_s)
        waiting = worker.channel.next_reply()
        worker.channel.watch(waiting, worker.pid, deadline_s, f"a {request.op!r} request")
        return waiting

    async def _write(self, worker: _Worker, request: Request, deadline_s: float) -> None:
        """Write ``request`` to ``worker``; :class:`WorkerCrashed` when it cannot be."""
        stdin = worker.proc.stdin
        assert stdin is not None
        try:
            # As a plain (op, args) tuple: pickling the Request class by reference cost
            # more than a one-message batch's own bytes, on both sides of the pipe.
            stdin.write(encode((request.op, request.args)))
            # Only a request the pipe could not take at once has anything to drain.
            if stdin.transport.get_write_buffer_size():
                what = f"a {request.op!r} request"
                await watched(stdin.drain(), worker.pid, deadline_s, what)
        except (ProtocolError, ConnectionError, WorkerUnresponsive) as exc:
            raise await self._lost(worker, exc) from None

    async def _lost(self, worker: _Worker, exc: BaseException) -> WorkerCrashed:
        """What a request that got no reply (``exc``) means: the worker died, or it is
        unresponsive and is killed now."""
        if isinstance(exc, WorkerUnresponsive):
            with contextlib.suppress(ProcessLookupError):
                worker.proc.kill()
            logger.warning("worker %d (pid %d) %s: killed", worker.index, worker.pid, exc)
            return await self._crashed(worker, f"unresponsive: {exc}")
        return await self._crashed(worker, str(exc))

    async def respawn(self, index: int) -> None:
        """Replace a dead worker with a new process that knows what the old one knew
        (names, modules, tensors) but hosts no agents yet."""
        old = self._workers[index]
        with contextlib.suppress(ProcessLookupError):
            old.proc.kill()
        await old.proc.wait()
        worker = await self._spawn(index)
        self._workers[index] = worker
        try:
            await asyncio.wait_for(self._handshake(worker), timeout=self.start_timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.kill()
            raise
        worker.busy_ns = old.busy_ns
        worker.batch_ns = old.batch_ns
        self.restarts += 1
        await self._tell_again(index)
        logger.warning("worker %d replaced (old pid %d, new pid %d)", index, old.pid, worker.pid)

    def _host(self, index: int) -> _Worker:
        return self._workers[index]

    async def run_batch(
        self,
        index: int,
        tick: int,
        deliveries: Sequence[tuple[int, int, int, bytes]],
        tasks: Sequence[TaskRun] = (),
    ) -> BatchReply:
        """Handle ``deliveries`` (``(agent_id, sender, kind, payload)``, e.g. :class:`Delivery`)
        in order, then ``tasks``, on worker ``index``."""
        if self._closed:
            raise WorkerError("the worker pool is closed")
        reply = await self._batch(index, tick, deliveries, tasks)
        self._workers[index].batch_ns += reply.busy_ns
        return reply

    async def run_batches(
        self,
        tick: int,
        batches: Mapping[int, tuple[Sequence[tuple[int, int, int, bytes]], Sequence[TaskRun]]],
        *,
        while_waiting: Callable[[], None] | None = None,
    ) -> dict[int, BatchReply | BaseException]:
        """:meth:`run_batch` on several workers at once: every batch written, then one wait
        for all the replies, each resolved straight from its pipe (no task per worker).
        Returns each worker's reply or what went wrong with it (a :class:`WorkerCrashed`
        for a worker that died or stopped answering: the caller recovers it).
        ``while_waiting()`` runs once the batches are written, before the wait."""
        if self._closed:
            raise WorkerError("the worker pool is closed")
        if type(self).run_batch is not WorkerPool.run_batch:  # a subclass's batches: its way
            if while_waiting is not None:
                while_waiting()
            calls = [self.run_batch(i, tick, d, t) for i, (d, t) in batches.items()]
            done = await asyncio.gather(*calls, return_exceptions=True)
            return dict(zip(batches, done, strict=True))
        loop = asyncio.get_running_loop()
        watchdog = self._watchdog
        if watchdog is None:
            watchdog = self._watchdog = Watchdog(loop)
        clock = time.perf_counter_ns
        # Per batch sent: its worker, the tensors it tells of, when it went out and when its
        # answer came in (0: not yet), and the answer: (message, None) or (None, error).
        slots: list[_Slot] = []
        results: dict[int, BatchReply | BaseException] = {}
        all_in = loop.create_future()
        # One more than the batches not answered yet while they are being written: a worker
        # found dead at once answers before the next batch goes out, and that must not look
        # like the last answer (the others' would then never be waited for).
        left = 1

        def arrive(slot: _Slot, message: Any, error: BaseException | None) -> None:
            nonlocal left
            if slot.got_at:  # answered already (the watchdog gave up on it)
                return
            watchdog.done(slot.index)
            slot.got_at = clock()
            slot.message, slot.error = message, error
            left -= 1
            if left == 0 and not all_in.done():
                all_in.set_result(None)

        try:
            for index, (deliveries, tasks) in batches.items():
                worker = self._workers[index]
                await worker.lock.acquire()
                new = self._tensors[worker.tensors_seen :]
                request, deadline = self._batch_request(tick, deliveries, tasks, new)
                slot = _Slot(index, worker, len(new), clock())
                slots.append(slot)
                try:
                    await self._write(worker, request, deadline)
                except WorkerCrashed as crashed:  # the caller recovers it, as a late death
                    slot.got_at, slot.error = clock(), crashed
                    continue
                left += 1
                sink = functools.partial(arrive, slot)
                # The answer is handed over straight from the pipe (no future, no callback).
                worker.channel.expect(sink)
                if not slot.got_at:
                    watchdog.watch(
                        index,
                        worker.pid,
                        deadline,
                        "a 'batch' request",
                        functools.partial(self._unresponsive, worker, sink),
                    )
            left -= 1  # every batch is out
            if while_waiting is not None:
                while_waiting()
            if left:
                await all_in
            for slot in slots:
                index, worker, error = slot.index, slot.worker, slot.error
                if error is not None:
                    if isinstance(error, ProtocolError | WorkerUnresponsive):
                        error = await self._lost(worker, error)
                    results[index] = error
                    continue
                worker.requests += 1
                worker.busy_ns += slot.got_at - slot.sent_at
                try:
                    reply = _unwrap(index, slot.message)
                    results[index] = self._batch_reply(worker, slot.news, reply)
                except WorkerError as failure:
                    results[index] = failure
        except BaseException:
            for slot in slots:
                if not slot.got_at:
                    slot.worker.channel.forget()
                    watchdog.done(slot.index)
            raise
        finally:
            for slot in slots:
                slot.worker.lock.release()
        return results

    @staticmethod
    def _unresponsive(worker: _Worker, sink: Sink, why: str) -> None:
        """The watchdog gave up on ``worker``'s answer: whoever waits for it is told."""
        worker.channel.forget()
        sink(None, WorkerUnresponsive(why))

    def _batch_request(
        self,
        tick: int,
        deliveries: Sequence[tuple[int, int, int, bytes]],
        tasks: Sequence[TaskRun],
        new: list[TensorEntry],
    ) -> tuple[Request, float]:
        """The batch request, and its deadline (what its messages may take), as
        :meth:`PoolBase._batch` makes them."""
        budget = self._message_budget(deliveries)
        if not isinstance(deliveries, list):
            deliveries = list(deliveries)
        if not isinstance(tasks, list):
            tasks = list(tasks)
        request = Request("batch", (tick, deliveries, tasks, new, self.usage_rows))
        return request, batch_deadline(budget, len(tasks))

    @staticmethod
    def _batch_reply(worker: _Worker, new: int, reply: Any) -> BatchReply:
        """As :meth:`PoolBase._batch` reads a reply (and the batch's CPU time counted)."""
        worker.tensors_seen += new
        outcomes, tasks_done, busy_ns, *usage = reply
        worker.batch_ns += busy_ns
        return BatchReply(
            outcomes,  # plain tuples, read by position (BatchReply.outcomes)
            tuple(map(TaskOutcome._make, tasks_done)),
            busy_ns,
            usage[0] if usage else b"",
        )

    def kill_worker(self, index: int) -> None:
        """SIGKILL one worker (for tests of crash handling)."""
        self._workers[index].proc.kill()

    async def aclose(self, timeout: float = 5.0) -> None:
        """Ask every worker to exit; kill those that do not within ``timeout``. Idempotent."""
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.close()
        workers, self._workers = self._workers, []
        for w in workers:
            if w.proc.stdin is not None and w.proc.returncode is None:
                with contextlib.suppress(Exception):
                    w.proc.stdin.write(encode(Request("shutdown")))
                    w.proc.stdin.close()

        async def reap(w: _Worker) -> None:
            try:
                await asyncio.wait_for(w.proc.wait(), timeout=timeout)
            except (TimeoutError, asyncio.CancelledError):
                logger.warning("worker %d (pid %d) did not exit; killing it", w.index, w.pid)
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
                # Bounded too: shutdown always ends (issue 12), even if the exit is not seen.
                try:
                    await asyncio.wait_for(w.proc.wait(), timeout=timeout)
                except (TimeoutError, asyncio.CancelledError):
                    logger.error("worker %d (pid %d) was killed but not reaped", w.index, w.pid)

        await asyncio.gather(*(reap(w) for w in workers), return_exceptions=True)
