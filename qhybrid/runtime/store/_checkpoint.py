"""Checkpoints: the orchestrator's whole state after a tick's commit, and putting it back.

A checkpoint holds the queue and the logical clock, the counters, every agent's snapshot (the
crash-recovery machinery's, taken fresh), the named tensors' contents (deduplicated by
digest in the store's blobs), the random states (each agent's stream lives in its snapshot;
everything else derives from the scenario's seed), and the number of trace records so far.

LLM requests in flight are not saved with it: a restore rebuilds the engine's state by
replaying its recorded steps (``_llm_state``). Restoring rebuilds the trace hash from the
stored records, so a resumed run ends with the hash of an undisturbed one.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from qhybrid.runtime.store._codec import CodecError, decode, encode, plain_pickle
from qhybrid.runtime.store._store import blob_digest

if TYPE_CHECKING:
    from qhybrid.runtime._roster import AgentRecord
    from qhybrid.runtime.store._runtime import DurableRuntime

#: Bumped when the state's layout changes; an older checkpoint is refused, not misread.
#: (1: a pickle, refused since because loading one can run code; 2: ``_codec``'s JSON.)
STATE_VERSION = 2


class CheckpointUnavailable(RuntimeError):
    """This run cannot be checkpointed (an agent cannot be snapshotted); it says why."""


@dataclass(frozen=True, slots=True)
class SavedState:
    tick: int
    records: int
    state: bytes
    blobs: dict[str, bytes]


def _peek(counter: itertools.count[int]) -> tuple[int, itertools.count[int]]:
    value = next(counter)
    return value, itertools.count(value)


def checkpointable(rt: DurableRuntime) -> bool:
    """Whether the state after this tick can be saved (LLM requests in flight are rebuilt
    from the store's history on restore, see ``_llm_state``; a replay's stand-in LLM has
    no engine to rebuild)."""
    return rt.checkpoints_ok


async def capture(rt: DurableRuntime) -> SavedState:
    """The state after the tick just committed (call between ticks, on the runtime's loop)."""
    parts = rt._parts
    # LLM requests accepted at this commit are tokenised and submitted now, so that the
    # store's history (what a restore rebuilds the engine from) holds them.
    await parts.llm.flush()
    blobs: dict[str, bytes] = {}
    by_worker: dict[int, list[AgentRecord]] = {}
    agents_ = parts.roster.agents
    for agent in agents_:
        if agent.state == "loaded":
            by_worker.setdefault(agent.worker, []).append(agent)
    snaps: dict[int, str] = {}
    for worker, group in by_worker.items():
        # A worker that dies here is replaced as in a tick (RunFailed past the limit).
        got = await parts.recovery.snapshot(worker, group, rt.tick)
        for agent_id, snap in got.items():
            if not isinstance(snap, bytes):
                raise CheckpointUnavailable(snap)
            key = blob_digest(snap)
            blobs[key] = snap
            snaps[agent_id] = key
    agents = [(a.state, a.handled, a.error, a.restarts, snaps.get(a.agent_id)) for a in agents_]
    entries = rt.tensor_entries
    tensors = []
    for name, tensor in parts.named.by_name.items():
        data = np.ascontiguousarray(tensor.array).tobytes()
        key = blob_digest(data)
        blobs[key] = data
        entry = entries.get(name)
        visible = entry.visible_from if entry is not None else 0
        writers = entry.writers if entry is not None else frozenset()
        tensors.append((name, tensor.handle.shape, tensor.handle.dtype, key, visible, writers))
    schedule, commit = parts.schedule, parts.commit
    seq, schedule._seq = _peek(schedule._seq)
    llm_ids, parts.llm._ids = _peek(parts.llm._ids)
    rt._trace.flush()
    state: dict[str, Any] = {
        "version": STATE_VERSION,
        "tick": schedule.tick,
        "counters": (
            commit.delivered,
            commit.tasks_completed,
            commit.cpu_tasks,
            commit.gpu_tasks,
            parts.gpu.busy_s,
            parts.recovery.worker_restarts,
            parts.llm.tokens,
            parts.llm.done,
        ),
        "queue": [_plain(item) for item in schedule.queue],
        "seq": seq,
        "llm_ids": llm_ids,
        "job_owner": dict(parts.gpu._job_owner),
        "agents": agents,
        "tensors": tensors,
        "memory": (rt.memory.initial, rt.memory.everyone()),
        "llm_requests": dict(parts.llm._requests),
        # ABI v2 spawn: the agents made at run time (name, group, config), in id order; a
        # restore makes them again before their states go back. Absent: none (older states).
        "spawned": [list(entry) for entry in rt._lifecycle.spawned],
        # Answers to LLM requests that could not be made, due at the next commit.
        "llm_failed": [list(entry) for entry in parts.llm.failed],
    }
    return SavedState(schedule.tick, rt._trace.records, encode(state), blobs)


def _plain(item: Any) -> tuple[Any, ...]:
    """A queue item as plain values (a task's read-only params as a dict)."""
    task = item.task
    if task is not None:
        task = dataclasses.replace(task, params=dict(task.params))
    return (item.tick, item.neg_priority, item.seq, item.message, task)


def unplain(item: tuple[Any, ...]) -> tuple[Any, ...]:
    tick, neg_priority, seq, message, task = item
    if task is not None:
        task = dataclasses.replace(task, params=MappingProxyType(dict(task.params)))
    return (tick, neg_priority, seq, message, task)


def load_state(data: bytes) -> dict[str, Any]:
    """A checkpoint's state, decoded without running code (see ``_codec``);
    :class:`CheckpointUnavailable` says why one cannot be used."""
    try:
        state = decode(data)
    except CodecError as exc:
        raise CheckpointUnavailable(f"the checkpoint cannot be loaded: {exc}") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise CheckpointUnavailable(
            "the checkpoint cannot be loaded: it was written in another format "
            f"(state version {state.get('version') if isinstance(state, dict) else '?'}, "
            f"this qhybrid reads {STATE_VERSION})"
        )
    return state


def check_snapshot(data: bytes) -> None:
    """Refuse an agent snapshot that is not plain values (before a worker unpickles it)."""
    try:
        plain_pickle(data)
    except CodecError as exc:
        raise CheckpointUnavailable(str(exc)) from None


def check_restorable(state: dict[str, Any], blobs: dict[str, bytes]) -> None:
    """Everything a restore will hand on checked in this process: the snapshots are plain
    values and the tensors' dtypes hold no Python objects; else :class:`CheckpointUnavailable`."""
    try:
        for agent in state["agents"]:
            key = agent[4]
            if key is not None:
                check_snapshot(blobs[key])
        for _name, _shape, dtype, key, _visible, _writers in state["tensors"]:
            if np.dtype(dtype).hasobject:
                raise CheckpointUnavailable(f"the checkpoint names an object dtype {dtype!r}")
            blobs[key]
    except CheckpointUnavailable:
        raise
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise CheckpointUnavailable(
            f"the checkpoint cannot be loaded: it is corrupt ({type(exc).__name__}: {exc})"
        ) from None
