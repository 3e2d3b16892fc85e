"""Large messages on the worker pipes, and shutdown (issue 12, item 4).

What users rely on: a reply larger than one frame (an agent holding a gigabyte at a checkpoint,
a batch whose handlers sent a lot) is carried in bounded chunks instead of being taken for a
worker crash; a corrupt header is refused; and closing the pool always ends, a stopped worker
included, with bounded waits and then a kill.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time

import pytest

from qhybrid.runtime.wasm_pool import WorkerPool, _frames
from qhybrid.runtime.wasm_pool._protocol import ProtocolError, encode, read_frame, read_frame_sync


def _feed(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=1 << 30)
    reader.feed_data(data)
    reader.feed_eof()
    return reader


def test_a_message_larger_than_a_chunk_travels_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_frames, "CHUNK_BYTES", 1 << 16)
    big = {"snapshot": os.urandom(5 * (1 << 16) + 123), "n": 7}
    data = encode(big)
    assert len(data) > 5 * (1 << 16)
    # Every chunk is bounded.
    pos = 0
    while pos < len(data):
        (word,) = _frames.HEADER.unpack_from(data, pos)
        assert word & ~(1 << 31) <= 1 << 16
        pos += 4 + (word & ~(1 << 31))
    assert read_frame_sync(io.BytesIO(data)) == big

    async def read() -> object:
        return await read_frame(_feed(data))

    assert asyncio.run(read()) == big
    small = encode(("ok", 1))
    assert read_frame_sync(io.BytesIO(small)) == ("ok", 1)


def test_more_than_a_gigabyte_is_no_longer_a_protocol_error() -> None:
    # The header of a 1.5 GiB message: before, "frame ... is too large" (a worker crash).
    body_size = 3 << 29
    first = _frames.HEADER.pack(_frames.CHUNK_BYTES | (1 << 31))
    assert _frames._size(first, 0) == (_frames.CHUNK_BYTES, True)
    assert _frames._size(_frames.HEADER.pack(body_size % _frames.CHUNK_BYTES), body_size - 1)


def test_a_corrupt_header_is_refused() -> None:
    bogus = _frames.HEADER.pack((1 << 31) - 1) + b"x" * 16
    with pytest.raises(ProtocolError, match="too large"):
        read_frame_sync(io.BytesIO(bogus))

    async def read() -> object:
        return await read_frame(_feed(bogus))

    with pytest.raises(ProtocolError, match="too large"):
        asyncio.run(read())
    with pytest.raises(ProtocolError, match="ended"):
        read_frame_sync(io.BytesIO(encode("hello")[:-2]))


@pytest.mark.skipif(os.name != "posix", reason="SIGSTOP is POSIX")
def test_closing_the_pool_ends_even_with_a_stopped_worker() -> None:
    async def main() -> float:
        pool = WorkerPool(2)
        await pool.start()
        os.kill(pool.pids[0], signal.SIGSTOP)
        start = time.monotonic()
        await pool.aclose(timeout=1.0)
        return time.monotonic() - start

    assert asyncio.run(main()) < 10
