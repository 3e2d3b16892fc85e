"""Messages between the pool (parent) and a worker process, and their framing.

Each frame is a 4-byte little-endian length followed by a pickle. Only small control data
and message payloads travel this way; tensors travel as handles.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from dataclasses import dataclass, field
from typing import IO, Any

from qhybrid.runtime.tensors import TensorHandle

_HEADER = struct.Struct("<I")
MAX_FRAME = 1 << 30


class ProtocolError(RuntimeError):
    """A frame that could not be read: the other side died or wrote garbage."""


@dataclass(frozen=True, slots=True)
class AgentLoad:
    """Instantiate one agent in a worker."""

    agent_id: int
    name: str
    module_key: str
    peers: tuple[int, ...]
    agent_count: int
    rng_seed: int
    config_json: bytes


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message to handle, in order, at the batch's tick."""

    agent_id: int
    sender: int
    kind: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class TaskRun:
    """One CPU task: a tensor op on shared tensors, computed with numpy in the worker."""

    task_id: int
    op: str
    inputs: tuple[TensorHandle, ...]
    output: TensorHandle
    params: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Outcome:
    """What handling one delivery produced."""

    ok: bool
    sent: tuple[tuple[int, int, bytes], ...] = ()
    logs: tuple[tuple[int, str], ...] = ()
    error: str | None = None
    elapsed_ns: int = 0


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    ok: bool
    error: str | None = None
    elapsed_ns: int = 0


@dataclass(frozen=True, slots=True)
class BatchReply:
    outcomes: tuple[Outcome, ...]
    tasks: tuple[TaskOutcome, ...]
    busy_ns: int


@dataclass(frozen=True, slots=True)
class Request:
    """``op`` is one of: module, load, batch, shutdown."""

    op: str
    args: tuple[Any, ...] = field(default=())


def encode(obj: object) -> bytes:
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """Read one frame; :class:`ProtocolError` when the stream ends or is corrupt."""
    try:
        header = await reader.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(header)
        if size > MAX_FRAME:
            raise ProtocolError(f"frame of {size} bytes is too large")
        body = await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise ProtocolError("the stream ended") from None
    return pickle.loads(body)


def read_frame_sync(stream: IO[bytes]) -> Any:
    """Blocking read of one frame; ``None`` at a clean end of stream."""
    header = stream.read(_HEADER.size)
    if not header:
        return None
    if len(header) != _HEADER.size:
        raise ProtocolError("the stream ended inside a frame header")
    (size,) = _HEADER.unpack(header)
    body = stream.read(size)
    if len(body) != size:
        raise ProtocolError("the stream ended inside a frame")
    return pickle.loads(body)


def write_frame_sync(stream: IO[bytes], obj: object) -> None:
    stream.write(encode(obj))
    stream.flush()
