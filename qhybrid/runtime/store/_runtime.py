"""A :class:`Runtime` that records into the store, checkpoints, resumes and replays.

:class:`DurableRuntime` adds three things to the orchestrator, each optional:

- a :class:`RunRecorder` that observes every tick (and checkpoints every N ticks);
- a restore point (a checkpoint's state and the trace lines before it) that ``start`` puts
  back instead of the scenario's initial tensors, agents and messages;
- a stand-in LLM (:class:`RecordedLlm`) that answers from the store, and a per-record check
  against the recorded trace that stops the run at the first divergence.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from qhybrid.runtime._orchestrator import Runtime, RuntimeConfig, _Item
from qhybrid.runtime.store._checkpoint import load_state, unplain
from qhybrid.runtime.wasm_pool import TensorEntry

if TYPE_CHECKING:
    from qhybrid.runtime._scenario import Scenario
    from qhybrid.runtime._trace import Field
    from qhybrid.runtime.llm import LoadedModel
    from qhybrid.runtime.store._recorder import RunRecorder

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RestorePoint:
    """What a resume or a fork starts from: a checkpoint's state, its blobs (snapshots and
    tensor contents by digest) and the ``repr`` lines of the trace records before it.
    ``reseed``: agent name -> a new random-stream state (a fork with another seed)."""

    state: bytes
    blobs: dict[str, bytes]
    lines: list[str]
    reseed: dict[str, int] | None = None


@dataclass(slots=True)
class Divergence:
    """The first record where a replay differs from the recording."""

    tick: int
    record: int
    expected: str | None
    got: str | None

    def to_json(self) -> dict[str, object]:
        return {
            "tick": self.tick,
            "record": self.record,
            "expected": self.expected,
            "got": self.got,
        }


class TraceCheck:
    """Compares each record a replay makes with the recorded one, in order."""

    def __init__(
        self, recorded: Iterator[tuple[int, int, str]], *, base: int = 0, to_tick: int | None = None
    ) -> None:
        self._recorded = recorded
        self._n = base
        self.to_tick = to_tick
        self.divergence: Divergence | None = None
        self.checked = 0

    def __call__(self, records: list[tuple[Field, ...]], lines: list[str]) -> None:
        if self.divergence is not None:
            return
        for rec, line in zip(records, lines, strict=True):
            tick = rec[1] if type(rec[1]) is int else -1
            if self.to_tick is not None and (tick < 0 or self.to_tick < tick):
                return  # past --to (or the replay's own end record, which --to made)
            want = next(self._recorded, None)
            if want is None:
                self.divergence = Divergence(tick, self._n, None, line)
                return
            if want[2] != line:
                self.divergence = Divergence(want[1], self._n, want[2], line)
                return
            self._n += 1
            self.checked += 1

    def finish(self, last_tick: int) -> None:
        """At the end of a full replay: the recording must have nothing left."""
        if self.divergence is None and self.to_tick is None:
            want = next(self._recorded, None)
            if want is not None:
                self.divergence = Divergence(want[1], self._n, want[2], None)


class DurableRuntime(Runtime):
    """See the module docstring."""

    def __init__(
        self,
        scenario: Scenario,
        config: RuntimeConfig | None = None,
        *,
        recorder: RunRecorder | None = None,
        restore: RestorePoint | None = None,
        llm: Callable[[Runtime], LoadedModel] | None = None,
        check: TraceCheck | None = None,
        stop_at: int | None = None,
    ) -> None:
        super().__init__(scenario, config)
        self.recorder = recorder
        self._restore_point = restore
        self._restore_state: dict[str, Any] | None = load_state(restore.state) if restore else None
        self._llm_factory = llm
        self.check = check
        self.stop_at = stop_at
        if recorder is not None:
            recorder.attach(self)
        if check is not None:
            sink = self._trace.sink
            if sink is None:
                self._trace.sink = check
            else:

                def both(records: list[tuple[Field, ...]], lines: list[str]) -> None:
                    sink(records, lines)
                    check(records, lines)

                self._trace.sink = both

    async def start(self) -> None:
        await super().start()
        if self.recorder is not None and self._llm_factory is None:
            self.recorder.attach_llm(self)

    async def step(self) -> bool:
        going = await super().step()
        if self.recorder is not None:
            await self.recorder.end_tick(self)
        else:
            self._trace.flush()
        if self.check is not None and self.check.divergence is not None:
            self.request_stop("diverged from the recording")
        if self.stop_at is not None and self.tick >= self.stop_at:
            self.request_stop(f"reached tick {self.stop_at}")
        return going

    # -- restoring --------------------------------------------------------------------------
    def _create_tensors(self) -> None:
        st, point = self._restore_state, self._restore_point
        if st is None or point is None:
            super()._create_tensors()
            return
        entries = []
        for name, shape, dtype, key, visible, writers in st["tensors"]:
            tensor = self.tensors.create(shape, dtype)
            flat = tensor.array.reshape(-1).view(np.uint8)
            flat[...] = np.frombuffer(point.blobs[key], np.uint8)
            self._named_tensors[name] = tensor
            entries.append(TensorEntry(name, tensor.handle, visible, writers))
        self.pool.add_tensors(entries)

    async def _open_llm(self) -> None:
        if self._llm_factory is None or self.scenario.llm is None:
            await super()._open_llm()
            return
        self._llm = loaded = self._llm_factory(self)
        self._trace.record(
            "llm_model", 0, 0, loaded.model.name, loaded.model.config.arch, loaded.placement
        )

    async def _load_agents(self) -> None:
        await super()._load_agents()
        st, point = self._restore_state, self._restore_point
        if st is None or point is None:
            return
        from qhybrid.runtime.store._fork import reseed_snapshot

        by_worker: dict[int, list[tuple[Any, bytes, list[Any]]]] = {}
        restored = []
        for agent, (state, handled, error, restarts, key) in zip(
            self._agents, st["agents"], strict=True
        ):
            agent.state, agent.handled, agent.error, agent.restarts = (
                state,
                handled,
                error,
                restarts,
            )
            if key is None or agent.load is None:
                continue
            snap = point.blobs[key]
            if point.reseed and agent.name in point.reseed:
                snap = reseed_snapshot(snap, point.reseed[agent.name])
            agent.snapshot, agent.log, agent.reads = snap, [], set()
            by_worker.setdefault(agent.worker, []).append((agent.load, snap, []))
            restored.append(agent)
        for worker, items in by_worker.items():
            problems = await self.pool.restore(worker, items)
            for problem in problems:
                if problem is not None:
                    raise RuntimeError(f"the checkpoint cannot be restored: {problem}")

    def _enqueue_initial(self) -> None:
        st, point = self._restore_state, self._restore_point
        if st is None or point is None:
            super()._enqueue_initial()
            return
        self.tick = st["tick"]
        (
            self.delivered,
            self.tasks_completed,
            self.cpu_tasks,
            self.gpu_tasks,
            self._gpu_busy_s,
            self.worker_restarts,
            self._llm_tokens,
            self._llm_done,
        ) = st["counters"]
        self._queue = [_Item(*unplain(item)) for item in st["queue"]]
        heapq.heapify(self._queue)
        self._queued_tasks = sum(1 for i in self._queue if i.task is not None)
        self._queued_gpu = sum(
            1 for i in self._queue if i.task is not None and i.task.kind == "gpu"
        )
        self._seq = itertools.count(st["seq"])
        self._llm_ids = itertools.count(st["llm_ids"])
        self._job_owner = dict(st["job_owner"])
        self._trace.resume_from(point.lines)
