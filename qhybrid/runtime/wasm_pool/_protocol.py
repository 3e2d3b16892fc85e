"""Messages between the pool (parent) and a worker process, and their framing.

Each message is a pickle in a frame: a 4-byte little-endian length and the body, cut into
bounded chunks when it is large (``_frames.py``). Only control data and message payloads travel
this way; tensors travel as handles.
"""

from __future__ import annotations

import asyncio
import dataclasses
import operator
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, NamedTuple

from qhybrid.runtime.tensors import TensorHandle
from qhybrid.runtime.wasm_pool._frames import (
    MAX_MESSAGE_BYTES,
    FrameError,
    frame,
    read_body,
    read_body_sync,
)
from qhybrid.runtime.wasm_pool._quotas import Quotas

#: The largest message (every chunk of it); one frame's chunk is at most CHUNK_BYTES.
MAX_FRAME = MAX_MESSAGE_BYTES


class ProtocolError(RuntimeError):
    """A frame that could not be read: the other side died or wrote garbage."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-agent sandbox limits; ``None`` means no limit of that kind."""

    fuel: int | None = None
    memory_bytes: int | None = None
    timeout_ms: int | None = None
    stack_bytes: int | None = None

    def __reduce__(self) -> tuple[type[Limits], tuple[Any, ...]]:
        # A plain tuple pickles several times faster than the dataclass's field-by-field
        # state, which matters with one per agent at start-up. Every field, in order.
        return Limits, _limits_fields(self)


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
    #: What one message may ask of the runtime (``_quotas.py``; ``[agents.quotas]``).
    quotas: Quotas = field(default_factory=Quotas)
    #: Linear memory of the worker's instances together; ``None``: the default (``_limits.py``).
    #: The scenario's ``[workers] memory_mb``, the same in every load.
    worker_memory_bytes: int | None = None
    #: ABI v2 lifecycle: the groups the agent may ``spawn`` from, and whether it may
    #: ``stop_run`` (``[agents.grants]`` ``spawn`` and ``stop_run``).
    spawn: tuple[str, ...] = ()
    stop_run: bool = False

    def __reduce__(self) -> tuple[type[AgentLoad], tuple[Any, ...]]:
        # As Limits: tens of thousands go to the workers at start-up. Every field, in order.
        return AgentLoad, _load_fields(self)


def _field_getter(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    """``obj -> (every field of cls, in order)``, in C (operator.attrgetter)."""
    names = [f.name for f in dataclasses.fields(cls)]
    get = operator.attrgetter(*names)
    return (lambda obj: (get(obj),)) if len(names) == 1 else get


_limits_fields = _field_getter(Limits)
_load_fields = _field_getter(AgentLoad)


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """A named tensor as agents see it: readable from tick ``visible_from`` on.

    ``writers`` are the agent ids that may write it; ``None`` means every agent.
    ``released``: the tensor is gone from tick ``visible_from`` on (``tensor_release``); the
    worker forgets the name and unmaps its memory.
    """

    name: str
    handle: TensorHandle
    visible_from: int
    writers: frozenset[int] | None = frozenset()
    released: bool = False

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


def outcome_of(entry: Outcome | tuple[Any, ...] | list[Any]) -> Outcome:
    """The :class:`Outcome` of one entry of ``BatchReply.outcomes`` (any of its forms)."""
    if entry.__class__ is tuple:  # the compact form: what a plain handled message sent
        return Outcome(True, entry)
    return entry if isinstance(entry, Outcome) else Outcome._make(entry)


def plain_sent(outcome: Outcome) -> tuple[tuple[int, int, bytes], ...] | None:
    """What ``outcome``'s message sent, when that is all its handler did (it succeeded, with
    no logs, effects or tensor reads: the common case); else None. (By position: 2 logs,
    5 effects, 6 reads.)"""
    if outcome[0] and not (outcome[2] or outcome[5] or outcome[6]):
        return outcome[1]
    return None


def wire_outcome(outcome: Outcome) -> tuple[Any, ...] | list[Any]:
    """How a worker sends ``outcome`` back (see ``BatchReply.outcomes``): for a plain handled
    message (:func:`plain_sent`), just what it sent (a tuple: about half the bytes and half
    the pickling of the whole record); else its fields, in a list."""
    sent = plain_sent(outcome)
    return list(outcome) if sent is None else sent


class TaskOutcome(NamedTuple):
    ok: bool
    error: str | None = None
    elapsed_ns: int = 0


#: A batch's usage report starts with three little-endian int64 ``(-1, fuel, memory)``: the
#: fuel the worker's handlers burnt since its last report and its linear memory in all. When
#: the batch asked for them (the parent does while someone reads the agents' usage,
#: ``Roster.summaries``), :data:`AGENT_USAGE_ROW` s follow, one per agent that had messages
#: since its last report. Packed bytes: the parent reads the first row per tick and the others
#: in bulk when someone asks.
USAGE_ROW = struct.Struct("<qqq")
#: The head of a batch report's per-message section, when the batch asked for rows: a
#: :data:`USAGE_ROW` ``(-2, count, 0)``, then ``count`` pairs of int64 ``(fuel, memory)``, one
#: per delivery in the batch's order: the fuel its handler burnt (-1: not metered) and the
#: agent's linear memory after it (observability only, like the rest of the report).
MESSAGE_USAGE_MARK = -2
#: What a batch request's last field asks the worker to add to its usage report (bits; the
#: old ``True`` means both): the agents' rows (:data:`AGENT_USAGE_ROW`), each delivery's.
USAGE_AGENTS, USAGE_MESSAGES = 1, 2
#: ``(agent_id, fuel_used, memory_bytes, fuel_last)``: the fuel the agent's handlers burnt
#: since its instance started (-1: not metered, a Python agent), its linear memory now, and
#: the fuel it burnt in the last tick it had messages in (-1: not metered). Also what a
#: ``usage`` request returns (rows only).
AGENT_USAGE_ROW = struct.Struct("<qqqq")


def split_usage(usage: bytes) -> tuple[tuple[int, int], bytes, bytes]:
    """A batch's usage report as ``((fuel burnt, worker memory), per-message pairs, agent
    rows)``: the packed pairs (empty when the batch did not ask for rows) and
    :data:`AGENT_USAGE_ROW` s."""
    _, fuel, memory = USAGE_ROW.unpack_from(usage)
    at = USAGE_ROW.size
    pairs = b""
    if len(usage) >= at + USAGE_ROW.size:
        mark, count, _ = USAGE_ROW.unpack_from(usage, at)
        if mark == MESSAGE_USAGE_MARK:
            start = at + USAGE_ROW.size
            pairs = usage[start : start + 16 * count]
            at = start + 16 * count
    return (fuel, memory), pairs, usage[at:]


class BatchReply(NamedTuple):
    #: One per delivery, in order: an :class:`Outcome` (``run_batch``), or (from
    #: ``WorkerPool.run_batches``, the orchestrator's hot path) the form it came over the
    #: pipe in (:func:`wire_outcome`): a plain ``tuple`` of the messages sent, for a handled
    #: message that did nothing else, or else a ``list`` of an Outcome's fields.
    #: :func:`outcome_of` turns any of them into an Outcome.
    outcomes: tuple[Outcome | tuple[Any, ...] | list[Any], ...]
    tasks: tuple[TaskOutcome, ...]
    #: CPU time the worker spent in the batch (its handlers and tasks, not the framing).
    busy_ns: int
    #: The usage report (:data:`USAGE_ROW`); observability only, never in the trace.
    usage: bytes = b""


@dataclass(frozen=True, slots=True)
class Request:
    """``op`` is one of: module, load, batch, shutdown."""

    op: str
    args: tuple[Any, ...] = field(default=())

    def __reduce__(self) -> tuple[type[Request], tuple[Any, ...]]:
        # Two or more per tick: a tuple pickles several times faster than a dataclass.
        return Request, _request_fields(self)


_request_fields = _field_getter(Request)


def encode(obj: object) -> bytes:
    """``obj`` pickled, in one frame or in bounded chunks (``_frames.py``)."""
    return frame(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def decode(body: bytes) -> Any:
    """The message in one frame's ``body`` (as :func:`encode` made it)."""
    return pickle.loads(body)


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """Read one message; :class:`ProtocolError` when the stream ends or is corrupt."""
    try:
        body = await read_body(reader)
    except asyncio.IncompleteReadError:
        raise ProtocolError("the stream ended") from None
    except FrameError as exc:
        raise ProtocolError(str(exc)) from None
    return decode(body)


def read_frame_sync(stream: IO[bytes]) -> Any:
    """Blocking read of one message; ``None`` at a clean end of stream."""
    try:
        body = read_body_sync(stream)
    except FrameError as exc:
        raise ProtocolError(str(exc)) from None
    return None if body is None else decode(body)


def write_frame_sync(stream: IO[bytes], obj: object) -> None:
    stream.write(encode(obj))
    stream.flush()
