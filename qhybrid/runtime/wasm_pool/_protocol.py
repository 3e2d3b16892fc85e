"""Messages between the pool (parent) and a worker process, and their framing.

Each frame is a 4-byte little-endian length followed by a pickle. Only small control data
and message payloads travel this way; tensors travel as handles.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from dataclasses import dataclass, field
from typing import IO, Any, NamedTuple

from qhybrid.runtime.tensors import TensorHandle

_HEADER = struct.Struct("<I")
MAX_FRAME = 1 << 30


class ProtocolError(RuntimeError):
    """A frame that could not be read: the other side died or wrote garbage."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-agent sandbox limits; ``None`` means no limit of that kind."""

    fuel: int | None = None
    memory_bytes: int | None = None
    timeout_ms: int | None = None
    stack_bytes: int | None = None


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
    limits: Limits = Limits()
    #: (host path, guest path, writable) directories the agent may use through WASI.
    dirs: tuple[tuple[str, str, bool], ...] = ()
    #: Environment variables the agent sees through WASI.
    env: tuple[tuple[str, str], ...] = ()
    #: ABI v2: the tools (``[[tools]]`` names) the scenario grants the agent.
    tools: tuple[str, ...] = ()
    #: Long-term memory to start with (a persistent namespace's), and its quotas.
    memory: tuple[tuple[bytes, bytes], ...] = ()
    memory_keys: int = 1024
    memory_bytes: int = 1 << 20


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """A named tensor as agents see it: readable from tick ``visible_from`` on.

    ``writers`` are the agent ids that may write it; ``None`` means every agent.
    """

    name: str
    handle: TensorHandle
    visible_from: int
    writers: frozenset[int] | None = frozenset()

    def writable_by(self, agent_id: int) -> bool:
        return self.writers is None or agent_id in self.writers


class Delivery(NamedTuple):
    """One message to handle, in order, at the batch's tick.

    The hot path sends plain ``(agent_id, sender, kind, payload)`` tuples: a tuple pickles
    ten times faster than a class instance, and this is per message.
    """

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


#: Effects a handler asks for, applied by the orchestrator at the end of the tick, in order:
#: ("write", tensor name, byte offset, data), ("create", name, dtype str, shape),
#: ("gpu", job id, op, input names, output name, param), ("llm", request id, tag, prompt,
#: max tokens).
Effect = tuple[object, ...]


class Outcome(NamedTuple):
    """What handling one delivery produced (sent back as a plain tuple, see :class:`Delivery`).

    ``reads`` names the tensors the handler read (the orchestrator snapshots agents before it
    changes a tensor they read, so that a replay after a crash reads what they read).
    """

    ok: bool
    sent: tuple[tuple[int, int, bytes], ...] = ()
    logs: tuple[tuple[int, str], ...] = ()
    error: str | None = None
    elapsed_ns: int = 0
    effects: tuple[Effect, ...] = ()
    reads: tuple[str, ...] = ()


class TaskOutcome(NamedTuple):
    ok: bool
    error: str | None = None
    elapsed_ns: int = 0


class BatchReply(NamedTuple):
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
