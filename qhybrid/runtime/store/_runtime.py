"""A :class:`Runtime` that records into the store, checkpoints, resumes and replays.

:class:`DurableRuntime` adds three things to the orchestrator, each optional:

- a :class:`RunRecorder` that observes every tick (and checkpoints every N ticks);
- a restore point (a checkpoint's state and the trace lines before it) that ``start`` puts
  back instead of the scenario's initial tensors, agents and messages;
- a stand-in LLM (:class:`RecordedLlm`) that answers from the store, and a per-record check
  against the recorded trace that stops the run at the first divergence.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import heapq
import itertools
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from qhybrid.runtime._orchestrator import RunFailed, Runtime, RuntimeConfig
from qhybrid.runtime._schedule import Item
from qhybrid.runtime.store._checkpoint import (
    check_restorable,
    checkpointable,
    load_state,
    unplain,
)
from qhybrid.runtime.store._llm_calls import LLM_KEY
from qhybrid.runtime.tensors import TensorHandle
from qhybrid.runtime.wasm_pool import BatchReply, TaskOutcome, TaskRun, TensorEntry
from qhybrid.runtime.wgpu_thread import GpuJobResult

if TYPE_CHECKING:
    from qhybrid.runtime._dispatch import TickPlan
    from qhybrid.runtime._scenario import Scenario, TaskSpec
    from qhybrid.runtime._trace import Field
    from qhybrid.runtime.store._llm_state import RecordedRequest
    from qhybrid.runtime.store._recorder import RunRecorder

logger = logging.getLogger(__name__)

#: The store's ``effects`` key prefix of a message posted from outside (the window's chat):
#: recorded like an answer, so that a replay posts it again at the same point.
POST_KEY = "(post) "

#: Message payloads kept beside the trace: longer than the trace keeps (32 bytes), at most this.
PAYLOAD_KEEP_MAX = 64 * 1024


@dataclass(frozen=True, slots=True)
class RestorePoint:
    """What a resume or a fork starts from: a checkpoint's state, its blobs (snapshots and
    tensor contents by digest) and the ``repr`` lines of the trace records before it.
    ``reseed``: agent name -> a new random-stream state (a fork with another seed)."""

    state: bytes
    blobs: dict[str, bytes]
    lines: list[str]
    reseed: dict[str, int] | None = None
    #: Agents left as fresh instances (a fork that changed their group's config).
    fresh: frozenset[str] = frozenset()
    #: The LLM engine's history to replay (from tick ``t0``), for requests in flight.
    llm: tuple[int, list[RecordedRequest]] | None = None


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
        llm: Callable[[DurableRuntime], Any] | None = None,
        check: TraceCheck | None = None,
        stop_at: int | None = None,
        gpu_results: dict[tuple[int, str], tuple[bytes, str]] | None = None,
        cpu_results: dict[tuple[int, str], bytes] | None = None,
        effects: dict[str, str] | None = None,
        checkpoint_at_start: bool = False,
    ) -> None:
        super().__init__(scenario, config)
        #: Save a checkpoint as soon as the restore is in place (a fork: its own state at its
        #: fork tick, reseeded and changed, from which its replays and states start).
        self.checkpoint_at_start = checkpoint_at_start
        #: ABI v2 tool results and answers: a replay's from the store (asked never again).
        services = self._v2.services
        #: Posts to make again (a replay): the tick after which each was made -> in order.
        self._replay_posts: dict[int, list[dict[str, Any]]] = {}
        self._posts = 0
        for key, text in sorted((effects or {}).items()):
            if key.startswith(POST_KEY):
                post = json.loads(text)
                self._replay_posts.setdefault(int(post["tick"]), []).append(post)
            elif key.startswith(LLM_KEY):
                continue  # an LLM request's observer record: it answers nothing
            else:
                services.recording[key] = text
        self._effects_kept = set(services.recording)
        self.recorder = recorder
        self._restore_point = restore
        self._restore_state: dict[str, Any] | None = load_state(restore.state) if restore else None
        self._llm_factory = llm
        self.check = check
        self.stop_at = stop_at
        #: False when a checkpoint could not be restored as it was (a replay's stand-in LLM).
        self.checkpoints_ok = llm is None
        #: LLM engine steps replayed to rebuild requests in flight at the restore point.
        self.llm_steps_rebuilt = 0
        #: The latest pool entry of each named tensor (visibility and writers, for checkpoints).
        self.tensor_entries: dict[str, TensorEntry] = {}
        add_tensors = self.pool.add_tensors

        def add(entries: Sequence[TensorEntry]) -> None:
            for entry in entries:
                self.tensor_entries[entry.name] = entry
            add_tensors(entries)

        setattr(self.pool, "add_tensors", add)  # noqa: B010 (an instance's own method)
        #: A replay's GPU job results: (tick, task) -> (output bytes, placement).
        self.gpu_results = gpu_results
        self.gpu_jobs_replayed = 0
        self._gpu_outputs: list[tuple[str, TensorHandle]] = []
        self._wrap_gpu()
        #: A replay's CPU task results: (tick, task) -> output bytes.
        self.cpu_results = cpu_results
        self.cpu_tasks_replayed = 0
        self._cpu_names: dict[int, str] = {}
        self._wrap_cpu()
        if llm is not None:
            setattr(self._parts.llm, "open", self._open_recorded)  # noqa: B010
        if recorder is not None:
            recorder.attach(self)
            self._wrap_push()
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
        try:
            if self._restore_state is not None:
                await self._restore()
        except BaseException:
            await self.aclose()
            raise
        if self.recorder is not None and self._llm_factory is None:
            self.recorder.attach_llm(self)
        if self.checkpoint_at_start and self.recorder is not None and checkpointable(self):
            try:
                await self.recorder.checkpoint(self)
            except RunFailed as exc:
                self._finish("failed", str(exc))

    def _wrap_gpu(self) -> None:
        """GPU jobs: a recording keeps each output; a replay takes it from the recording
        instead of running the job (the device, and where it places an op, may differ)."""
        gpu = self._parts.gpu
        submit = gpu.submit

        def wrapped(
            task: TaskSpec, inputs: tuple[TensorHandle, ...], out: TensorHandle
        ) -> concurrent.futures.Future[GpuJobResult]:
            found = self.gpu_results.get((self.tick, task.name)) if self.gpu_results else None
            if found is not None:
                data, placement = found
                self._fill(out, data)
                done: concurrent.futures.Future[GpuJobResult] = concurrent.futures.Future()
                done.set_result(GpuJobResult(-1, task.op, placement, 0.0))  # type: ignore[arg-type]
                self.gpu_jobs_replayed += 1
                return done
            if self.recorder is not None:
                self._gpu_outputs.append((task.name, out))
            return submit(task, inputs, out)

        setattr(gpu, "submit", wrapped)  # noqa: B010 (this bridge's own method)

    def _fill(self, out: TensorHandle, data: bytes) -> None:
        tensor = self.tensors.open(out)
        try:
            tensor.array.reshape(-1).view(np.uint8)[...] = np.frombuffer(data, np.uint8)
        finally:
            tensor.close()

    def _wrap_cpu(self) -> None:
        """CPU tasks: a recording keeps each output, like a GPU job's; a replay writes the
        recorded output instead of sending the task to a worker (the worker's batch then
        carries only the deliveries, and the task's outcome is made here, in its place)."""
        dispatch = self._parts.dispatch
        plan_tick, run_batch = dispatch.plan, dispatch.run_batch

        def plan(tick: int, due: list[Item]) -> TickPlan:
            made = plan_tick(tick, due)
            names = self._cpu_names
            names.clear()
            for run in made.all_cpu_runs():  # chained ones too (issue 14)
                task = due[run.task_id].task
                assert task is not None
                names[run.task_id] = task.name
                if self.recorder is not None and not self.cpu_results:
                    self._gpu_outputs.append((task.name, run.output))
            return made

        async def batch(
            worker: int,
            tick: int,
            deliveries: list[tuple[int, int, int, bytes]],
            runs: list[TaskRun],
        ) -> BatchReply:
            found = self.cpu_results
            if not found or not runs:
                return await run_batch(worker, tick, deliveries, runs)
            live: list[TaskRun] = []
            done: dict[int, TaskOutcome] = {}
            for i, run in enumerate(runs):
                data = found.get((tick, self._cpu_names.get(run.task_id, "")))
                if data is None or len(data) != run.output.nbytes:
                    live.append(run)
                    continue
                self._fill(run.output, data)
                done[i] = TaskOutcome(True, None, 0)
                self.cpu_tasks_replayed += 1
            if not done:
                return await run_batch(worker, tick, deliveries, runs)
            if deliveries or live:
                reply = await run_batch(worker, tick, deliveries, live)
            else:
                reply = BatchReply((), (), 0)
            ran = iter(reply.tasks)
            tasks = tuple(done[i] if i in done else next(ran) for i in range(len(runs)))
            return reply._replace(tasks=tasks)

        setattr(dispatch, "plan", plan)  # noqa: B010 (this dispatcher's own methods)
        if self.cpu_results:  # a replay's: a recording's ticks keep the pool's cheaper path
            setattr(dispatch, "run_batch", batch)  # noqa: B010

    def _keep_gpu_outputs(self) -> None:
        outputs, self._gpu_outputs = self._gpu_outputs, []
        assert self.recorder is not None
        for name, handle in outputs:
            if self.tensors.refcount(handle) == 0:
                continue  # the job failed: its output is gone
            tensor = self.tensors.open(handle)
            try:
                self.recorder.job_output(name, tensor.array.tobytes())
            finally:
                tensor.close()

    def _wrap_push(self) -> None:
        """A recording keeps the full payload of each message queued that the trace keeps
        only a digest of (the inspector decodes them, envelopes too), by (due tick, seq)."""
        schedule = self._parts.schedule
        push = schedule.push_message
        assert self.recorder is not None
        keep = self.recorder.message_payload

        def wrapped(
            tick: int, priority: int, sender: int, dst: int, kind: int, payload: bytes
        ) -> None:
            if 32 < len(payload) <= PAYLOAD_KEEP_MAX:
                seq = next(schedule._seq)  # the seq this push takes
                schedule._seq = itertools.count(seq)
                keep(tick, seq, payload)
            push(tick, priority, sender, dst, kind, payload)

        setattr(schedule, "push_message", wrapped)  # noqa: B010 (this schedule's own method)
        self._v2.services.push = wrapped  # (it took the method when the runtime was made)

    def _keep_effects(self) -> None:
        """Hand the recorder the tool results and answers this tick added."""
        assert self.recorder is not None
        recording = self._v2.services.recording
        if len(recording) == len(self._effects_kept):
            return
        for key, text in recording.items():
            if key not in self._effects_kept:
                self._effects_kept.add(key)
                self.recorder.effect(key, self.tick, text)

    def post(self, to: str, payload: bytes, *, kind: int = 0, priority: int = 0) -> None:
        """A message from outside (the window's chat), recorded so a replay posts it too."""
        super().post(to, payload, kind=kind, priority=priority)
        if self.recorder is not None:
            text = json.dumps(
                {
                    "tick": self.tick,
                    "to": to,
                    "kind": kind,
                    "priority": priority,
                    "payload": payload.hex(),
                },
                sort_keys=True,
            )
            self.recorder.effect(f"{POST_KEY}{self._posts:08d}", self.tick, text)
        self._posts += 1

    async def step(self) -> bool:
        posts = self._replay_posts.pop(self.tick, None) if self._replay_posts else None
        for p in posts or ():
            Runtime.post(
                self, p["to"], bytes.fromhex(p["payload"]), kind=p["kind"], priority=p["priority"]
            )
        going = await super().step()
        if self.recorder is not None:
            self._keep_effects()
        if self._gpu_outputs:
            self._keep_gpu_outputs()
        if self.recorder is not None:
            try:
                await self.recorder.end_tick(self)
            except RunFailed as exc:  # a worker died during the checkpoint, past the limit
                self._finish("failed", str(exc))
                return False
        else:
            self._trace.flush()
        if self.check is not None and self.check.divergence is not None:
            self.request_stop("diverged from the recording")
        if self.stop_at is not None and self.tick >= self.stop_at:
            self.request_stop(f"reached tick {self.stop_at}")
        return going

    async def _open_recorded(self) -> None:
        """The LLM bridge's ``open`` in a replay: the stand-in, not the model file."""
        if self.scenario.llm is None or self._llm_factory is None:
            return
        bridge = self._parts.llm
        bridge.loaded = loaded = self._llm_factory(self)
        self._trace.record(
            "llm_model", 0, 0, loaded.model.name, loaded.model.config.arch, loaded.placement
        )

    async def _rebuild_llm(self, st: dict[str, Any], point: RestorePoint) -> None:
        """Requests in flight at the checkpoint: the engine's recorded steps again."""
        bridge = self._parts.llm
        requests = st.get("llm_requests", {})
        bridge._requests = dict(requests)
        loaded = bridge.loaded
        if not requests or loaded is None or point.llm is None:
            return
        from qhybrid.runtime.store._llm_state import rebuild

        t0, history = point.llm
        engine, at = loaded.engine, st["tick"]
        self.llm_steps_rebuilt = await asyncio.wrap_future(
            self.device.call(lambda _ctx: rebuild(engine, t0, at, history))
        )

    # -- restoring --------------------------------------------------------------------------
    async def _restore(self) -> None:
        """Put the checkpoint's state in place of the scenario's start (after ``start``)."""
        from qhybrid.runtime.store._fork import reseed_snapshot

        st, point = self._restore_state, self._restore_point
        assert st is not None and point is not None
        check_restorable(st, point.blobs)  # nothing but values reaches a worker
        parts = self._parts
        # Tensors: the checkpoint's contents, under the same names and visibility.
        named = parts.named
        entries = []
        for name, shape, dtype, key, visible, writers in st["tensors"]:
            old = named.by_name.pop(name, None)
            if old is not None:
                old.close()
            tensor = self.tensors.create(shape, dtype)
            flat = tensor.array.reshape(-1).view(np.uint8)
            flat[...] = np.frombuffer(point.blobs[key], np.uint8)
            named.by_name[name] = tensor
            entries.append(TensorEntry(name, tensor.handle, visible, writers))
        self.pool.add_tensors(entries)
        # The memory first: an agent's load carries the memory a ``restart`` starts it from,
        # which is the memory its run started with (docs/agent-abi.md), not what this
        # process's start found (nothing: a restore does not read a persistent namespace).
        self.memory.initial, self.memory.by_agent = st["memory"]
        # Agents spawned before the checkpoint: made again (same ids, names, workers, loads).
        spawned = st.get("spawned", [])
        if spawned:
            self._lifecycle.recreate([(str(n), str(g), str(c)) for n, g, c in spawned])
            await self._lifecycle.after_commit(st["tick"])
        # Agents: their states and counters, and their snapshots in fresh instances.
        by_worker: dict[int, list[tuple[Any, bytes | None, list[Any]]]] = {}
        for agent, (state, handled, error, restarts, key) in zip(
            parts.roster.agents, st["agents"], strict=True
        ):
            agent.state, agent.handled, agent.error = state, handled, error
            agent.restarts = restarts
            if key is None or agent.load is None or agent.name in point.fresh:
                continue
            snap = point.blobs[key]
            if point.reseed and agent.name in point.reseed:
                snap = reseed_snapshot(snap, point.reseed[agent.name])
            agent.snapshot, agent.log, agent.reads = snap, [], set()
            start = self.memory.initial.get(agent.name, {})
            agent.load = dataclasses.replace(agent.load, memory=tuple(sorted(start.items())))
            by_worker.setdefault(agent.worker, []).append((agent.load, snap, []))
        for worker, items in by_worker.items():
            for problem in await self.pool.restore(worker, items):
                if problem is not None:
                    raise RuntimeError(f"the checkpoint cannot be restored: {problem}")
        # The queue, the clock and the counters.
        schedule, commit = parts.schedule, parts.commit
        schedule.tick = st["tick"]
        schedule.queue = [Item(*unplain(item)) for item in st["queue"]]
        heapq.heapify(schedule.queue)
        tasks = [i.task for i in schedule.queue if i.task is not None]
        schedule._queued_tasks = len(tasks)
        schedule._queued_gpu = sum(1 for t in tasks if t.kind == "gpu")
        schedule._seq = itertools.count(st["seq"])
        parts.llm._ids = itertools.count(st["llm_ids"])
        (
            commit.delivered,
            commit.tasks_completed,
            commit.cpu_tasks,
            commit.gpu_tasks,
            parts.gpu.busy_s,
            parts.recovery.worker_restarts,
            parts.llm.tokens,
            parts.llm.done,
        ) = st["counters"]
        parts.gpu._job_owner = dict(st["job_owner"])
        parts.llm.failed = [
            (int(r), int(a), int(k), bytes(p)) for r, a, k, p in st.get("llm_failed", [])
        ]
        await self._rebuild_llm(st, point)
        self._trace.resume_from(point.lines)
