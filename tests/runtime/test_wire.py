"""The worker reply pipe read as frames as bytes arrive, and batches to all workers at once
(issue 11, "a cheaper message").

What users rely on: whatever way the pipe cuts the bytes, every message arrives whole and in
order, chunked ones included; garbage or an ended stream is a protocol error (a crash), not a
hang; a batch sent to several workers at once answers as one batch each would.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from qhybrid.runtime.wasm_pool import BatchReply, WorkerCrashed, WorkerPool, _frames
from qhybrid.runtime.wasm_pool._channel import ReplyChannel, Watchdog
from qhybrid.runtime.wasm_pool._protocol import ProtocolError, encode, outcome_of
from tests.runtime.test_wasm_pool import ECHO, compile_text, in_pool, load


def _channel() -> tuple[asyncio.AbstractEventLoop, ReplyChannel]:
    loop = asyncio.new_event_loop()
    return loop, ReplyChannel(1 << 16, loop)


def _take(loop: asyncio.AbstractEventLoop, channel: ReplyChannel, n: int) -> list[object]:
    async def take() -> list[object]:
        return [await channel.next_reply() for _ in range(n)]

    return loop.run_until_complete(asyncio.wait_for(take(), 5))


@pytest.mark.parametrize("step", [1, 3, 7, 4096])
def test_messages_arrive_whole_however_the_pipe_cuts_them(
    monkeypatch: pytest.MonkeyPatch, step: int
) -> None:
    monkeypatch.setattr(_frames, "CHUNK_BYTES", 64)  # so that some messages are chunked
    messages: list[object] = [
        ("ready", 1, "wasmtime"),
        ("ok", None),
        ("ok", os.urandom(200)),  # 4 chunks
        ("ok", b"x" * 64),
        {"n": 7},
    ]
    data = b"".join(encode(m) for m in messages)
    loop, channel = _channel()
    try:
        for pos in range(0, len(data), step):
            channel.pipe_data_received(1, data[pos : pos + step])
        assert _take(loop, channel, len(messages)) == messages
    finally:
        loop.close()


def test_a_waiter_is_resolved_by_the_bytes_that_complete_its_reply() -> None:
    loop, channel = _channel()
    try:
        waiting = channel.next_reply()
        data = encode(("ok", 41))
        channel.pipe_data_received(1, data[:5])
        assert not waiting.done()
        channel.pipe_data_received(1, data[5:])
        assert loop.run_until_complete(waiting) == ("ok", 41)
    finally:
        loop.close()


def test_garbage_and_an_ended_stream_fail_the_reply() -> None:
    loop, channel = _channel()
    try:
        waiting = channel.next_reply()
        channel.pipe_data_received(1, _frames.HEADER.pack((1 << 31) - 1) + b"x" * 16)
        with pytest.raises(ProtocolError, match="too large"):
            loop.run_until_complete(waiting)
        with pytest.raises(ProtocolError):  # and every later one
            loop.run_until_complete(channel.next_reply())
    finally:
        loop.close()
    loop, channel = _channel()
    try:
        waiting = channel.next_reply()
        channel.pipe_data_received(1, encode(("ok", 1))[:-1])
        channel._fail(ProtocolError("the stream ended"))  # as pipe_connection_lost does
        with pytest.raises(ProtocolError, match="ended"):
            loop.run_until_complete(waiting)
    finally:
        loop.close()


def test_one_watchdog_round_for_all_batches_fails_only_the_late_one() -> None:
    """run_batches' watchdog: a reply past its deadline is given up on with the reason; one
    that came in time (``done``) is never failed, and the rounds stop when none is left."""

    async def main() -> tuple[list[tuple[int, str]], bool]:
        dog = Watchdog(asyncio.get_running_loop())
        failed: list[tuple[int, str]] = []
        dog.watch(0, os.getpid(), 0.3, "a 'batch' request", lambda why: failed.append((0, why)))
        dog.watch(1, os.getpid(), 0.3, "a 'batch' request", lambda why: failed.append((1, why)))
        dog.done(1)  # its reply came
        await asyncio.sleep(0.9)
        idle = dog._timer is None
        dog.close()
        return failed, idle

    failed, idle = asyncio.run(main())
    assert failed == [(0, "no answer to a 'batch' request within its deadline of 0 s")]
    assert idle


def test_batches_to_all_workers_at_once_and_a_dead_one_reported(tmp_path: Path) -> None:
    echo = compile_text(tmp_path, "echo", ECHO)

    async def body(pool: WorkerPool) -> None:
        await pool.set_directory(["a", "b"])
        await pool.install_module("echo", bytes(echo.serialize()))
        await pool.load_agents(0, [load(0, "echo", agent_count=2)])
        await pool.load_agents(1, [load(1, "echo", agent_count=2)])
        batches = {0: ([(0, 1, 5, b"a")], []), 1: ([(1, 0, 5, b"bc")], [])}
        got = await pool.run_batches(3, batches)
        for w, (deliveries, tasks) in batches.items():
            one = await pool.run_batch(w, 3, deliveries, tasks)
            reply = got[w]
            assert isinstance(reply, BatchReply)
            # (run_batches leaves the outcomes in the compact forms that came, for the
            # commit; outcome_of gives the same Outcomes as run_batch's.)
            assert [outcome_of(o)._replace(elapsed_ns=0) for o in reply.outcomes] == [
                o._replace(elapsed_ns=0) for o in one.outcomes
            ]
            assert reply.outcomes[0] == ((1 - w, 6, deliveries[0][3]),)
        pool.kill_worker(1)
        got = await pool.run_batches(4, batches)
        assert isinstance(got[0], BatchReply) and outcome_of(got[0].outcomes[0]).ok
        assert isinstance(got[1], WorkerCrashed)

    asyncio.run(in_pool(body))


def test_a_worker_known_dead_first_does_not_end_the_wait_for_the_others(tmp_path: Path) -> None:
    """Worker 0 is dead and its pipe closed before the batches go out: its answer (a crash)
    comes at once, while worker 1's batch is still to be written; the others are waited for."""
    echo = compile_text(tmp_path, "echo", ECHO)

    async def body(pool: WorkerPool) -> None:
        await pool.set_directory(["a", "b"])
        await pool.install_module("echo", bytes(echo.serialize()))
        await pool.load_agents(0, [load(0, "echo", agent_count=2)])
        await pool.load_agents(1, [load(1, "echo", agent_count=2)])
        pool.kill_worker(0)
        await pool._workers[0].proc.wait()
        for _ in range(20):  # the loop sees the pipe end
            await asyncio.sleep(0.01)
        batches = {0: ([(0, 1, 5, b"a")], []), 1: ([(1, 0, 5, b"bc")], [])}
        got = await pool.run_batches(3, batches)
        assert isinstance(got[0], WorkerCrashed)
        assert isinstance(got[1], BatchReply) and outcome_of(got[1].outcomes[0]).ok

    asyncio.run(in_pool(body))


class _CountingEngine:
    def __init__(self) -> None:
        self.epoch = 0

    def increment_epoch(self) -> None:
        self.epoch += 1


def test_the_epoch_is_never_ahead_of_a_running_call() -> None:
    """The epoch ticker looks every COARSE_S while calls are short; a long call is charged
    the time it ran, never more (a timeout may fire late by about COARSE_S, never early)."""
    import time

    from qhybrid.runtime.wasm_pool._ticker import EPOCH_S, EpochTicker

    engine = _CountingEngine()
    ticker = EpochTicker({"e": engine})  # type: ignore[dict-item]
    try:
        for _ in range(50):  # short calls: nothing charged to anybody
            ticker.call_started()
            ticker.call_ended()
        time.sleep(0.1)
        assert engine.epoch == 0
        ticker.call_started()
        start = time.monotonic()
        time.sleep(0.3)
        before_end = engine.epoch
        ran = time.monotonic() - start
        ticker.call_ended()
        assert 0 < before_end <= ran / EPOCH_S + 1
    finally:
        ticker.close()


@pytest.mark.skipif(not hasattr(__import__("fcntl"), "F_GETPIPE_SZ"), reason="Linux pipes only")
def test_a_workers_pipes_are_widened_for_large_replies() -> None:
    """A checkpoint's snapshots are megabytes: the request and reply pipes hold 1 MiB (where
    the system allows it), not the 64 KiB that made them cross in 32 turns."""
    import fcntl

    from qhybrid.runtime.wasm_pool._worker import PIPE_BYTES

    limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())

    async def body(pool: WorkerPool) -> None:
        for worker in pool._workers:
            transport = worker.proc._transport  # type: ignore[attr-defined]
            for fd in (0, 1):  # the worker's stdin and stdout, from the pool's side
                pipe = transport.get_pipe_transport(fd).get_extra_info("pipe")
                size = fcntl.fcntl(pipe.fileno(), fcntl.F_GETPIPE_SZ)
                assert size >= min(PIPE_BYTES, limit), (fd, size)

    asyncio.run(in_pool(body))
