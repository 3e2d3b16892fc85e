"""A recorded run's state as of a tick: rebuilt from the nearest checkpoint by replay.

:func:`state_at` takes the run's latest checkpoint at or before the tick (or the scenario's
start when there is none), restores it into a fresh runtime, replays the ticks up to the one
asked for exactly as ``qhybrid replay`` does (LLM answers, GPU and CPU job outputs from the
store, each trace record checked against the recording), then captures the state the way a
checkpoint does (``_checkpoint.capture``) and describes it: every agent's state, counters,
snapshot size and long-term memory, the queue, the named tensors.

It blocks (it runs its own event loop, worker processes included): call it off a GUI thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qhybrid.runtime.store._checkpoint import (
    CheckpointUnavailable,
    capture,
    check_restorable,
    load_state,
)
from qhybrid.runtime.store._replay import RecordedEngine
from qhybrid.runtime.store._runtime import DurableRuntime, RestorePoint, TraceCheck
from qhybrid.runtime.store._schema import StoreError
from qhybrid.runtime.store._store import RunStore

if TYPE_CHECKING:
    from qhybrid.runtime import RuntimeConfig, Scenario

logger = logging.getLogger(__name__)

__all__ = ["AgentAt", "QueuedAt", "StateAt", "TensorAt", "state_at"]


@dataclass(frozen=True, slots=True)
class AgentAt:
    """One agent as of the tick: ``snapshot_bytes`` is its sandbox snapshot's size (None: it
    has none, being failed, skipped or never loaded); ``memory`` its long-term memory."""

    agent_id: int
    name: str
    state: str
    handled: int
    error: str | None
    restarts: int
    snapshot_bytes: int | None
    memory: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def memory_bytes(self) -> int:
        return sum(len(k) + len(v) for k, v in self.memory.items())


@dataclass(frozen=True, slots=True)
class QueuedAt:
    """A queue item waiting after the tick: a message (``payload`` in full) or a task."""

    tick: int
    seq: int
    sender: int | None
    receiver: int | None
    kind: int | None
    payload: bytes | None
    task: str | None = None


@dataclass(frozen=True, slots=True)
class TensorAt:
    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    visible_from: int
    summary: str  # min, max, mean (or why not)


@dataclass(frozen=True, slots=True)
class StateAt:
    """The state of ``run_id`` after tick ``tick`` committed (``tick`` may be below the one
    asked for when no work was due in between: the state did not change since)."""

    run_id: str
    asked: int
    tick: int
    checkpoint: int | None  # the checkpoint it started from (None: the scenario's start)
    replayed_ticks: int
    agents: list[AgentAt]
    queue: list[QueuedAt]
    tensors: list[TensorAt]
    counters: dict[str, float]
    #: Where the replay first differed from the recording (the state is then not the run's).
    divergence: str | None = None
    #: The run it was rebuilt from when not this one: a fork's parent, before the fork tick.
    from_run: str | None = None


_COUNTERS = (
    "delivered",
    "tasks_completed",
    "cpu_tasks",
    "gpu_tasks",
    "gpu_busy_s",
    "worker_restarts",
    "llm_tokens",
    "llm_done",
)


def _summary(data: bytes, dtype: str) -> str:
    try:
        arr = np.frombuffer(data, dtype=np.dtype(dtype))
    except (TypeError, ValueError) as exc:
        return f"({exc})"
    if arr.size == 0:
        return "empty"
    if arr.dtype.kind not in "fiub":
        return f"{arr.size} values"
    values = arr.astype(np.float64)
    return f"min {values.min():.4g}, max {values.max():.4g}, mean {values.mean():.4g}"


def describe_state(
    run_id: str,
    asked: int,
    state: dict[str, Any],
    blobs: dict[str, bytes],
    names: list[str],
    *,
    checkpoint: int | None,
    replayed: int,
    divergence: str | None = None,
) -> StateAt:
    """A checkpoint's state (``_checkpoint.capture``'s layout) as :class:`StateAt`."""
    _initial, memory = state["memory"]
    agents = []
    for i, (agent_state, handled, error, restarts, key) in enumerate(state["agents"]):
        name = names[i] if i < len(names) else f"agent {i}"
        agents.append(
            AgentAt(
                i,
                name,
                str(agent_state),
                int(handled),
                error,
                int(restarts),
                len(blobs[key]) if key is not None and key in blobs else None,
                dict(memory.get(name, {})),
            )
        )
    queue = []
    for tick, _neg, seq, message, task in sorted(state["queue"], key=lambda q: (q[0], q[1], q[2])):
        if message is not None:
            sender, dst, kind, payload = message
            queue.append(QueuedAt(int(tick), int(seq), sender, dst, kind, bytes(payload)))
        else:
            queue.append(QueuedAt(int(tick), int(seq), None, None, None, None, task.name))
    tensors = []
    for name, shape, dtype, key, visible, _writers in state["tensors"]:
        data = blobs.get(key, b"")
        tensors.append(
            TensorAt(name, tuple(shape), str(dtype), len(data), int(visible), _summary(data, dtype))
        )
    counters = dict(zip(_COUNTERS, state["counters"], strict=False))
    return StateAt(
        run_id,
        asked,
        int(state["tick"]),
        checkpoint,
        replayed,
        agents,
        queue,
        tensors,
        counters,
        divergence,
    )


def _scenario(run: dict[str, Any]) -> Scenario:
    from qhybrid.runtime import parse_scenario

    source = Path(run["scenario_path"])
    return parse_scenario(
        run["scenario_text"], source=source, base_dir=source.parent, require_model=False
    ).with_seed(int(run["seed"]))


def _config(run: dict[str, Any], workers: int | None) -> RuntimeConfig:
    from qhybrid.runtime import RuntimeConfig

    cfg = run["config"]
    return RuntimeConfig(
        workers=workers or int(cfg.get("workers", 2)),
        device="cpu",  # GPU jobs come from the store; what is left is cheap on the CPU
        max_worker_restarts=int(cfg.get("max_worker_restarts", 3)),
    )


def _results(store: RunStore, run_id: str, kind: str) -> dict[tuple[int, str], tuple[bytes, str]]:
    jobs = [
        j
        for j in store.jobs(run_id)
        if j["kind"] == kind and j["error"] is None and j["digest"] and len(j["digest"]) == 64
    ]
    try:
        blobs = store.blobs(j["digest"] for j in jobs)
    except StoreError:
        return {}
    return {(j["tick"], j["name"]): (blobs[j["digest"]], j["placement"]) for j in jobs}


def _restore(store: RunStore, run_id: str, tick: int) -> tuple[RestorePoint | None, int | None]:
    cp = store.checkpoint(run_id, at_or_before=tick)
    if cp is None:
        return None, None
    try:
        state = load_state(cp.state)
        keys = [a[4] for a in state["agents"] if a[4]] + [t[3] for t in state["tensors"]]
        blobs = store.blobs(keys)
        check_restorable(state, blobs)
    except (CheckpointUnavailable, StoreError) as exc:
        logger.warning(
            "run %s: checkpoint at tick %d unusable (%s); from the start", run_id, cp.tick, exc
        )
        return None, None
    lines = [line for n, _, line in store.records(run_id) if n < cp.records]
    return RestorePoint(cp.state, blobs, lines), cp.tick


def replay_start(store: RunStore, run_id: str) -> tuple[RestorePoint | None, int | None]:
    """Where a replay of run ``run_id`` starts: a fork's own checkpoint at its fork tick (its
    records before it are its parent's, made with the parent's seed and config), else the
    scenario's start ``(None, None)``. Raises :class:`StoreError` for a fork whose checkpoint
    at its fork tick is missing or unusable."""
    run = store.run(run_id)
    fork_tick = run.get("fork_tick")
    if not run.get("parent") or fork_tick is None:
        return None, None
    restore, tick = _restore(store, run_id, int(fork_tick))
    if restore is None or tick != fork_tick:
        raise StoreError(
            f"run {run_id} is a fork at tick {fork_tick} with no usable checkpoint there: "
            "it cannot be replayed"
        )
    return restore, tick


def state_at(path: Path, run_id: str, tick: int, *, workers: int | None = None) -> StateAt:
    """The state of run ``run_id`` (in the store at ``path``) as of tick ``tick``; raises
    :class:`StoreError` (unreadable store, unknown run) or ``ValueError`` (a negative tick,
    a scenario whose files are gone)."""
    from qhybrid.runtime import ScenarioError
    from qhybrid.runtime.store._replay import recorded_llm

    if tick < 0:
        raise ValueError(f"tick must be >= 0, got {tick}")
    with RunStore(path, readonly=True) as store:
        run = store.run(run_id)
        parent, fork_tick = run.get("parent"), run.get("fork_tick")
        if parent and fork_tick is not None and tick < fork_tick and not run["parent_deleted"]:
            # Before its fork tick a fork is its parent (its trace up to there is a copy):
            # the parent's own checkpoints and seed rebuild it.
            store.close()
            got = state_at(path, str(parent), tick, workers=workers)
            return dataclasses.replace(got, run_id=run_id, from_run=got.from_run or parent)
        try:
            scenario = _scenario(run)
        except ScenarioError as exc:
            raise ValueError(f"the recorded scenario of run {run_id}: {exc}") from None
        restore, cp_tick = _restore(store, run_id, tick)
        base = len(restore.lines) if restore is not None else 0
        recorded = [r for r in store.records(run_id) if r[0] >= base]
        head = [line for _, _, line in store.records(run_id, to_tick=0)]
        updates = store.llm_updates(run_id)
        gpu = _results(store, run_id, "gpu")
        cpu = {k: d for k, (d, _) in _results(store, run_id, "cpu").items()}
        effects = store.effects(run_id)
    names = [a["name"] for a in (run.get("summary") or {}).get("agents", [])]
    check = TraceCheck(iter(recorded), base=base, to_tick=tick)
    llm = (lambda rt: recorded_llm(rt, head, updates)) if scenario.llm is not None else None
    runtime = ReplayRuntime(
        scenario,
        _config(run, workers),
        restore=restore,
        llm=llm,
        check=check,
        gpu_results=gpu,
        cpu_results=cpu,
        effects=effects,
    )
    state, blobs, replayed = asyncio.run(_replay_to(runtime, tick))
    if not names:
        names = [a.name for a in runtime.agent_summaries()]
    div = check.divergence
    divergence = (
        None
        if div is None
        else f"tick {div.tick}, record {div.record}: expected {div.expected}, got {div.got}"
    )
    return describe_state(
        run_id,
        tick,
        state,
        blobs,
        names,
        checkpoint=cp_tick,
        replayed=replayed,
        divergence=divergence,
    )


class ReplayRuntime(DurableRuntime):
    """A replay from a checkpoint with the recorded LLM stand-in (``recorded_llm``)."""

    async def _rebuild_llm(self, st: dict[str, Any], point: RestorePoint) -> None:
        # The stand-in engine answers from the store by request id: the requests in flight
        # at the checkpoint only have to be known to it.
        requests = st.get("llm_requests", {})
        bridge = self._parts.llm
        bridge._requests = dict(requests)
        loaded = bridge.loaded
        engine: object = loaded.engine if loaded is not None else None
        if requests and isinstance(engine, RecordedEngine):
            engine._pending.update(int(r) for r in requests)
        elif requests and loaded is not None:
            await super()._rebuild_llm(st, point)


async def _replay_to(rt: DurableRuntime, tick: int) -> tuple[dict[str, Any], dict[str, bytes], int]:
    async with rt:
        replayed = 0
        parts = rt._parts
        while rt.result is None:
            upcoming = parts.schedule.next_tick(parts.llm.busy)
            if isinstance(upcoming, str) or upcoming > tick:
                break
            if not await rt.step():
                break
            replayed += 1
            if rt.check is not None and rt.check.divergence is not None:
                break
        saved = await capture(rt)
    state = load_state(saved.state)
    return state, saved.blobs, replayed
