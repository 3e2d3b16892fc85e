"""Frames on the worker pipes: bounded chunks, so a large reply is carried, not fatal.

A frame is a 4-byte little-endian header and up to :data:`CHUNK_BYTES` of body; the header's
top bit says that another chunk of the same message follows. Small messages (nearly all) are
one chunk, exactly as before. A large one (a snapshot of an agent holding a gigabyte, a batch
whose handlers sent a lot) is cut into chunks and put together again by the reader, up to
:data:`MAX_MESSAGE_BYTES` in all; a header announcing a larger chunk is corruption.
(issue 12: "an agent holding more than 1 GiB at a checkpoint is reported as a worker crash")
"""

from __future__ import annotations

import asyncio
import struct
from typing import IO

__all__ = ["CHUNK_BYTES", "MAX_MESSAGE_BYTES", "FrameError", "frame", "read_body", "read_body_sync"]

HEADER = struct.Struct("<I")
_MORE = 1 << 31
#: The largest chunk of one frame.
CHUNK_BYTES = 64 << 20
#: The largest message, all its chunks together (a whole wasm32 memory and then some).
MAX_MESSAGE_BYTES = 5 << 30


class FrameError(Exception):
    """A frame that cannot be read: too large, or the stream ended inside it."""


def frame(body: bytes) -> bytes:
    """``body`` as one frame, or as chunks when it is larger than :data:`CHUNK_BYTES`."""
    if len(body) <= CHUNK_BYTES:
        return HEADER.pack(len(body)) + body
    if len(body) > MAX_MESSAGE_BYTES:
        raise FrameError(
            f"a message of {len(body)} bytes is larger than the {MAX_MESSAGE_BYTES} allowed"
        )
    view = memoryview(body)
    parts: list[bytes | memoryview] = []
    for start in range(0, len(body), CHUNK_BYTES):
        chunk = view[start : start + CHUNK_BYTES]
        last = start + CHUNK_BYTES >= len(body)
        parts.append(HEADER.pack(len(chunk) | (0 if last else _MORE)))
        parts.append(chunk)
    return b"".join(parts)


def _size(header: bytes, total: int) -> tuple[int, bool]:
    (word,) = HEADER.unpack(header)
    size, more = word & ~_MORE, bool(word & _MORE)
    if size > CHUNK_BYTES or (more and size != CHUNK_BYTES):
        raise FrameError(f"frame of {size} bytes is too large")  # corrupt, or not ours
    if total + size > MAX_MESSAGE_BYTES:
        raise FrameError(f"a message of more than {MAX_MESSAGE_BYTES} bytes is too large")
    return size, more


async def read_body(reader: asyncio.StreamReader) -> bytes:
    """One message's body; ``asyncio.IncompleteReadError`` when the stream ends."""
    size, more = _size(await reader.readexactly(HEADER.size), 0)
    body = await reader.readexactly(size)
    if not more:
        return body
    parts = [body]
    total = size
    while more:
        size, more = _size(await reader.readexactly(HEADER.size), total)
        parts.append(await reader.readexactly(size))
        total += size
    return b"".join(parts)


def read_body_sync(stream: IO[bytes]) -> bytes | None:
    """Blocking :func:`read_body`; ``None`` at a clean end of stream before a frame."""
    parts: list[bytes] = []
    total = 0
    more = True
    while more:
        header = stream.read(HEADER.size)
        if not header and not parts:
            return None
        if len(header) != HEADER.size:
            raise FrameError("the stream ended inside a frame header")
        size, more = _size(header, total)
        body = stream.read(size)
        if len(body) != size:
            raise FrameError("the stream ended inside a frame")
        parts.append(body)
        total += size
    return parts[0] if len(parts) == 1 else b"".join(parts)
