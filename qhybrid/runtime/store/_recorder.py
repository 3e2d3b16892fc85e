"""Recording a run into the store while it runs, off the orchestrator's thread.

:class:`RunRecorder` observes a :class:`~qhybrid.runtime.Runtime`: the trace's flushed
records (with their ``repr`` lines, the text the hash covers), agent logs, finished tasks,
tick timings and the LLM engine's requests and steps. Each tick's share goes as one batch to a
writer thread that owns its own connection and commits whatever batches are waiting in one
transaction, so a slow disk never stalls a tick and a crash loses at most the ticks not yet
committed (a resume starts from the last checkpoint anyway). Recording only observes: the trace
hash is the same with it or without it.

A store that fails mid-run (a full disk, a lock held too long) stops the recording, not the
run: :attr:`RunRecorder.error` says what happened and the run goes on to its end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
import time
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qhybrid.runtime._recovery import RunFailed
from qhybrid.runtime.store._checkpoint import (
    CheckpointUnavailable,
    SavedState,
    capture,
    checkpointable,
)
from qhybrid.runtime.store._llm_calls import ask_row
from qhybrid.runtime.store._schema import StoreError
from qhybrid.runtime.store._store import RunStore, blob_digest

if TYPE_CHECKING:
    from qhybrid.runtime._events import (
        AgentLog,
        LlmRequested,
        MessageUsage,
        TaskFinished,
        TickFinished,
    )
    from qhybrid.runtime._trace import Field
    from qhybrid.runtime.llm import GenerationParams, LlmEngine, RequestUpdate
    from qhybrid.runtime.store._runtime import DurableRuntime as Runtime

logger = logging.getLogger(__name__)

#: How often the tick loop hands what it recorded to the writer thread (seconds).
HAND_OVER_S = 0.05


def params_json(params: GenerationParams, owner: int | str | None = None) -> str:
    # Field by field: a grammar (an ABI v2 chat request's JSON Schema, bound to the model's
    # tokens) is no JSON and large; its schema is kept instead (a resume mid-answer rebuilds
    # such a request without it, see _llm_state._params).
    data = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    data["sampling"] = dataclasses.asdict(params.sampling)
    grammar = data.get("grammar")
    if grammar is not None:
        data["grammar"] = None
        data["json_schema"] = getattr(getattr(grammar, "grammar", None), "schema", None)
    if owner is not None:
        data["owner"] = owner
    return json.dumps(data, sort_keys=True)


def result_json(update: RequestUpdate) -> str | None:
    result = update.result
    if result is None:
        return None
    data = result.to_json()
    data["prefill_s"], data["decode_s"] = result.prefill_s, result.decode_s
    data["ttft_s"] = result.ttft_s
    return json.dumps(data, sort_keys=True)


class _Batch:
    __slots__ = (
        "blobs",
        "effects",
        "jobs",
        "llm_requests",
        "llm_updates",
        "logs",
        "payloads",
        "rows",
        "ticks",
        "usage",
    )

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, str]] = []
        self.logs: list[tuple[int, str, int, str]] = []
        self.llm_requests: list[tuple[int, int, str, str, str]] = []
        self.llm_updates: list[tuple[int, int, str, str, int, str | None]] = []
        self.jobs: list[tuple[int, str, str, str, str, float, str | None, str | None]] = []
        self.ticks: list[tuple[int, float, float, int, str, float]] = []
        self.blobs: dict[str, bytes] = {}
        self.payloads: list[tuple[int, int, bytes]] = []
        self.effects: list[tuple[str, int, str]] = []
        self.usage: list[tuple[int, bytes]] = []


class _Writer(threading.Thread):
    """Owns the store connection; commits queued batches, checkpoints and statuses in order."""

    def __init__(self, path: Path, run_id: str) -> None:
        super().__init__(name="qhybrid-run-store", daemon=True)
        self.path = path
        self.run_id = run_id
        self.queue: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self.error: str | None = None
        self.checkpoints: list[int] = []

    def run(self) -> None:
        try:
            store = RunStore(self.path)
        except StoreError as exc:
            self.error = str(exc)
            store = None
        try:
            done = False
            while not done:
                ops = [self.queue.get()]
                while True:
                    try:
                        ops.append(self.queue.get_nowait())
                    except queue.Empty:
                        break
                if ops[-1] is None:
                    done = True
                    ops.pop()
                if store is None or self.error is not None:
                    continue
                try:
                    self._apply(store, [op for op in ops if op is not None])
                except StoreError as exc:
                    self.error = str(exc)
                    logger.error("recording stopped: %s", exc)
                except Exception as exc:  # a bug must not take the run down with it
                    self.error = f"run store {self.path}: {type(exc).__name__}: {exc}"
                    logger.exception("recording stopped")
        finally:
            if store is not None:
                store.close()

    def _apply(self, store: RunStore, ops: Sequence[tuple[str, Any]]) -> None:
        run_id = self.run_id
        with store.transaction():
            for what, arg in ops:
                if what == "ticks":
                    for last_tick, records, b in arg:
                        store.append_tick(
                            run_id,
                            last_tick,
                            records,
                            b.rows,
                            b.logs,
                            b.llm_requests,
                            b.llm_updates,
                            b.jobs,
                            b.ticks,
                            b.blobs,
                            b.payloads,
                            b.effects,
                            b.usage,
                        )
                elif what == "checkpoint":
                    saved: SavedState = arg
                    store.save_checkpoint(
                        run_id, saved.tick, saved.records, saved.state, saved.blobs
                    )
                    self.checkpoints.append(saved.tick)
                elif what == "memory":
                    store.save_memory(*arg)
                elif what == "status":
                    store.set_status(run_id, *arg[:2], trace_hash=arg[2], summary=arg[3])


class _RecordingEngine:
    """The LLM engine as the orchestrator sees it, recording each request and each step."""

    def __init__(self, inner: LlmEngine, recorder: RunRecorder, runtime: Runtime) -> None:
        self._inner = inner
        self._recorder = recorder
        self._runtime = runtime

    def submit(
        self,
        prompt_tokens: Sequence[int],
        params: GenerationParams,
        request_id: int | None = None,
        owner: Hashable = None,
    ) -> int:
        rid = self._inner.submit(prompt_tokens, params, request_id, owner)
        # Submitted on the GPU thread before the next step: recorded at the tick that
        # accepted it (a rebuild submits it after that tick's step).
        at = self._runtime._parts.llm.submit_tick
        # The owner (the asking agent's id) decides who gets a free slot first: a rebuild of
        # the engine after a resume must submit with it, or waiting requests change order.
        kept = owner if isinstance(owner, int | str) else None
        self._recorder._batch.llm_requests.append(
            (
                rid,
                self._runtime.tick if at is None else at,
                json.dumps(list(prompt_tokens)),
                params_json(params, owner=kept),
                str(params.seed),
            )
        )
        return rid

    def step(self) -> list[RequestUpdate]:
        t0 = time.perf_counter()
        updates = self._inner.step()
        tick = self._runtime.tick
        self._recorder._llm_s[tick] = time.perf_counter() - t0
        rows = self._recorder._batch.llm_updates
        for u in updates:
            rows.append(
                (
                    tick,
                    u.request_id,
                    u.text,
                    json.dumps(list(u.new_tokens)),
                    int(u.done),
                    result_json(u),
                )
            )
        return updates

    def has_work(self) -> bool:
        return self._inner.has_work()

    def cancel(self, request_id: int) -> None:
        self._inner.cancel(request_id)

    @property
    def active(self) -> int:
        return self._inner.active

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class RunRecorder:
    """Records one run (``run_id``) into the store at ``path``; ``checkpoint_every`` ticks
    (0: never) it saves a checkpoint. ``base_records`` is how many trace records the run had
    before this process (a resume)."""

    def __init__(
        self,
        path: Path,
        run_id: str,
        *,
        checkpoint_every: int = 0,
        base_records: int = 0,
        start_tick: int = 0,
    ) -> None:
        self.path = path
        self.run_id = run_id
        self.checkpoint_every = checkpoint_every
        self._next_checkpoint = start_tick + checkpoint_every if checkpoint_every else None
        self._n = base_records
        self._tick = start_tick
        self._batch = _Batch()
        self._digests: dict[str, str] = {}
        self._llm_s: dict[int, float] = {}
        self._t0 = time.perf_counter()
        self.checkpoint_problem: str | None = None
        self._waiting: list[tuple[int, int, _Batch]] = []
        self._handed = time.perf_counter()
        self._writer = _Writer(path, run_id)
        self._writer.start()
        self._closed = False

    # -- wiring ---------------------------------------------------------------------------------
    def attach(self, rt: Runtime) -> None:
        """Observe ``rt`` (before it starts)."""
        rt._trace.sink = self._on_records
        rt.events.agent_log.connect(self._on_log)
        rt.events.task_finished.connect(self._on_task)
        rt.events.tick_finished.connect(self._on_tick)
        rt.events.llm_requested.connect(self._on_llm_request)
        # (Connected, the workers report each message's fuel and memory: see MessageUsage.)
        rt.events.message_usage.connect(self._on_usage)

    def attach_llm(self, rt: Runtime) -> None:
        """Record the LLM's traffic (after ``rt`` started, before its first tick)."""
        bridge = rt._parts.llm
        llm = bridge.loaded
        if llm is not None and not isinstance(llm.engine, _RecordingEngine):
            engine = _RecordingEngine(llm.engine, self, rt)
            bridge.loaded = dataclasses.replace(llm, engine=engine)  # type: ignore[arg-type]

    # -- observers (the orchestrator's thread) ------------------------------------------------
    def _on_records(self, records: list[tuple[Field, ...]], lines: list[str]) -> None:
        # One row per flush: the lines joined (each record's tick is read back from its line).
        self._batch.rows.append((self._n, self._tick, "\n".join(lines)))
        self._n += len(lines)

    def _on_usage(self, event: MessageUsage) -> None:
        rows = np.empty((len(event.seqs), 3), "<i8")
        rows[:, 0], rows[:, 1], rows[:, 2] = event.seqs, event.fuel, event.memory
        self._batch.usage.append((event.tick, rows.tobytes()))

    def _on_log(self, event: AgentLog) -> None:
        self._batch.logs.append((event.tick, event.agent, event.level, event.text))

    def _on_llm_request(self, event: LlmRequested) -> None:
        # Who asked and the prompt as text (the engine's rows have ids only): see _llm_calls.
        self._batch.effects.append(ask_row(event))

    def _on_task(self, event: TaskFinished) -> None:
        self._batch.jobs.append(
            (
                event.tick,
                event.task,
                event.kind,
                event.op,
                event.placement,
                event.elapsed_s,
                event.error,
                None,
            )
        )

    def _on_tick(self, event: TickFinished) -> None:
        self._tick = event.tick
        now = time.perf_counter() - self._t0
        self._batch.ticks.append(
            (
                event.tick,
                now - event.elapsed_s,
                event.elapsed_s,
                event.delivered,
                json.dumps([round(b, 6) for b in event.worker_busy_s]),
                0.0,
            )
        )

    def job_output(self, name: str, data: bytes) -> None:
        """A GPU job's output, kept (once per content) so that a replay can use it."""
        key = blob_digest(data)
        self._batch.blobs[key] = data
        self._digests[name] = key

    def message_payload(self, tick: int, seq: int, payload: bytes) -> None:
        """A queued message's full payload (one the trace keeps only a digest of)."""
        self._batch.payloads.append((tick, seq, payload))

    def effect(self, key: str, tick: int, text: str) -> None:
        """An ABI v2 tool result or a person's answer (``AgentServices.recording``)."""
        self._batch.effects.append((key, tick, text))

    # -- per tick -------------------------------------------------------------------------------
    def _send(self, rt: Runtime, *, force: bool = False) -> None:
        rt._trace.flush()
        b, self._batch = self._batch, _Batch()
        if self._llm_s:
            b.ticks = [
                (t, s, d, n, busy, self._llm_s.pop(t, 0.0)) for t, s, d, n, busy, _ in b.ticks
            ]
        if b.jobs and self._digests:
            b.jobs = [(*j[:7], self._digests.pop(j[1], None)) for j in b.jobs]
        self._waiting.append((rt.tick, self._n, b))
        now = time.perf_counter()
        if force or now - self._handed >= HAND_OVER_S:
            # Every few ticks, not every tick: each hand-over wakes the writer thread, which
            # then competes for the interpreter with the tick loop.
            self._writer.queue.put(("ticks", self._waiting))
            self._waiting = []
            self._handed = now

    async def end_tick(self, rt: Runtime) -> None:
        """After each tick: hand its records to the writer; checkpoint when one is due."""
        self._tick = rt.tick
        self._send(rt)
        due = self._next_checkpoint
        if due is None or rt.tick < due or rt.result is not None or not checkpointable(rt):
            return
        await self.checkpoint(rt)

    async def checkpoint(self, rt: Runtime) -> bool:
        """Save a checkpoint now (between ticks); False when this run cannot have one."""
        if self.checkpoint_problem is not None:
            return False
        try:
            saved = await capture(rt)
        except CheckpointUnavailable as exc:
            self.checkpoint_problem = str(exc)
            logger.warning("no checkpoints for this run: %s", exc)
            return False
        except RunFailed:  # a worker died and could not be replaced: the run's failure
            raise
        except Exception as exc:  # a checkpoint that cannot be made must not end the run
            self.checkpoint_problem = f"{type(exc).__name__}: {exc}"
            logger.exception("no checkpoints for this run")
            return False
        self._send(rt, force=True)
        self._writer.queue.put(("checkpoint", saved))
        if self.checkpoint_every:
            self._next_checkpoint = rt.tick + self.checkpoint_every
        return True

    def finish(
        self,
        rt: Runtime | None,
        status: str,
        reason: str | None,
        *,
        trace_hash: str | None = None,
        summary: dict[str, Any] | None = None,
        memory: tuple[str, dict[str, dict[bytes, bytes]]] | None = None,
    ) -> str | None:
        """Write what is left and the run's status; stop the writer. Returns the recording's
        error, if it failed (the run itself is not affected)."""
        if self._closed:
            return self._writer.error
        self._closed = True
        if rt is not None:
            self._send(rt, force=True)
        elif self._waiting:
            self._writer.queue.put(("ticks", self._waiting))
            self._waiting = []
        if memory is not None:
            self._writer.queue.put(("memory", memory))
        self._writer.queue.put(("status", (status, reason, trace_hash, summary)))
        self._writer.queue.put(None)
        self._writer.join()
        return self._writer.error

    @property
    def error(self) -> str | None:
        return self._writer.error

    @property
    def checkpoints(self) -> list[int]:
        return list(self._writer.checkpoints)
