"""Runs a scenario off the GUI thread and steers it: start, pause, step, stop, restart, post.

The runtime is an asyncio program (the orchestrator's loop), and it knows nothing about Qt.
:class:`RuntimeController` gives it a loop of its own on a :class:`QThread` that the controller
owns; the worker processes and the GPU thread hang off that loop as they would under
``asyncio.run``. The GUI thread never awaits runtime work: every control method schedules a
coroutine on the runtime's loop and returns at once; outcomes come back as Qt signals, which
are emitted on the loop thread and therefore delivered to GUI-thread slots as queued calls.

Events (messages, logs, ticks) do not go through Qt signals at all: they are collected by a
:class:`~qhybrid.models.RuntimeFeed` and taken by the GUI in batches (see ``_live.py``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from PySide6.QtCore import QObject, QThread, Signal

from qhybrid.models._feed import RuntimeFeed
from qhybrid.runtime import (
    RunResult,
    Runtime,
    RuntimeConfig,
    ScenarioError,
    freeze_heap,
    load_scenario,
    unfreeze_heap,
)

__all__ = ["ASK_KIND", "RuntimeController", "SessionState"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The message kind an LLM agent such as ``resources/agents/ask.c`` takes a prompt with.
ASK_KIND = 1


class SessionState:
    """What the controller is doing; ``state_changed`` carries one of these strings."""

    IDLE = "idle"  # no run yet
    STARTING = "starting"  # loading the scenario, starting workers and the GPU thread
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    COMPLETED = "completed"  # the run reached its stop condition
    STOPPED = "stopped"  # the run ended because it was asked to (Stop, Restart, closing)
    FAILED = "failed"  # the run failed (an agent, a timeout, ...), or could not start

    ACTIVE = frozenset({STARTING, RUNNING, PAUSED, STOPPING})
    ENDED = frozenset({COMPLETED, STOPPED, FAILED})


class _LoopThread(QThread):
    """A QThread that runs an asyncio event loop until asked to stop."""

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("qhybrid-runtime-loop")
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()

    def run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self.loop = loop
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            try:
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                # asyncio.to_thread's helpers: joined, or they would outlive the window.
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()
                _forget_dummy_thread()

    def wait_ready(self, timeout: float = 10.0) -> asyncio.AbstractEventLoop:
        if not self._ready.wait(timeout) or self.loop is None:
            raise RuntimeError("the runtime's event loop did not start")
        return self.loop


def _forget_dummy_thread() -> None:
    """Drop the ``threading._DummyThread`` Python made for this QThread (logging and asyncio
    ask for ``threading.current_thread()``). Before Python 3.12 such an entry outlives its
    thread and reads as alive forever, which looks like a thread left behind."""
    current = threading.current_thread()
    if isinstance(current, threading._DummyThread):
        with threading._active_limbo_lock:  # type: ignore[attr-defined]
            threading._active.pop(current.ident, None)  # type: ignore[attr-defined]


class RuntimeController(QObject):
    """Owns the runtime's thread and one run at a time; all methods are for the GUI thread.

    Signals (emitted on the runtime's loop thread, so queued to slots on the GUI thread):

    - ``state_changed(state, detail)``: a :class:`SessionState` string and a human sentence
      (why a run ended, what failed) or "".
    - ``runtime_changed(runtime)``: a new :class:`~qhybrid.runtime.Runtime` was created (its
      events are already fed to :attr:`feed`); ``None`` never.
    - ``run_finished(result)``: the run's :class:`~qhybrid.runtime.RunResult`.
    - ``error(message)``: something the user asked for could not be done (a bad scenario
      file, a post to an agent that does not exist, ...).
    """

    state_changed = Signal(str, str)
    runtime_changed = Signal(object)
    run_finished = Signal(object)
    error = Signal(str)

    def __init__(
        self, parent: QObject | None = None, *, workers: int = 2, device: str = "auto"
    ) -> None:
        super().__init__(parent)
        self.feed = RuntimeFeed()
        self.workers = workers
        self.device = device
        self.scenario_path: Path | None = None
        #: Runs are recorded in this run store (None: the default one, ``QHYBRID_STORE`` or
        #: the user's data folder); ``record = False`` turns it off. See ``_recording``.
        self.store_path: Path | None = None
        self.record = True
        #: The id of the run being (or last) recorded, when it is.
        self.run_id: str | None = None
        #: Answers agents' ABI v2 questions (set by the window's questions panel): called on
        #: the runtime's loop thread, it may block until a person answers (the run waits).
        self.answer: Any = None
        self._state = SessionState.IDLE  # as the GUI thread knows it
        self._loop_state = SessionState.IDLE  # as the runtime's loop knows it
        # Connected first, so every other slot sees the new state.
        self.state_changed.connect(self._record_state)
        self._thread: _LoopThread | None = None
        # Set and read on the loop thread only (the GUI reads ``runtime``, a plain reference).
        self._runtime: Runtime | None = None
        self._session: asyncio.Task[None] | None = None
        self._go: asyncio.Event | None = None  # set while ticks may run
        self._stop_reason: str | None = None
        self._step_lock: asyncio.Lock | None = None
        self._closed = False

    # -- what the GUI reads ----------------------------------------------------------------
    @property
    def state(self) -> str:
        return self._state

    @property
    def active(self) -> bool:
        """A run is starting, running, paused or stopping."""
        return self._state in SessionState.ACTIVE

    @property
    def runtime(self) -> Runtime | None:
        """The current (or last) run's runtime. Only its thread-safe parts may be used from
        the GUI thread: ``metrics()``, ``agent_summaries()``, ``device_info``, ``result``."""
        return self._runtime

    # -- controls (GUI thread; none of them waits for the runtime) --------------------------
    def start(self, scenario_path: str | Path | None = None, *, paused: bool = False) -> None:
        """Start a run of ``scenario_path`` (default: the last one); resume a paused run.

        With ``paused`` the run starts, runs its first tick, and waits for :meth:`resume` or
        :meth:`step` (what "Step" does when nothing runs yet).
        """
        if scenario_path is not None:
            self.scenario_path = Path(scenario_path)
        if self._state == SessionState.PAUSED and scenario_path is None and not paused:
            self.resume()
            return
        if self.active:
            self.error.emit("a run is already in progress: stop it first, or restart")
            return
        if self.scenario_path is None:
            self.error.emit("no scenario is open")
            return
        self._set_state(SessionState.STARTING, str(self.scenario_path))
        self._submit(self._start_session(self.scenario_path, self.workers, self.device, paused))

    def pause(self) -> None:
        if self._state == SessionState.RUNNING:
            self._submit(self._pause())

    def resume(self) -> None:
        if self._state == SessionState.PAUSED:
            self._submit(self._resume())

    def step(self) -> None:
        """Run one tick of a paused run, or start a run paused after its first tick."""
        if self._state == SessionState.PAUSED:
            self._submit(self._step())
        elif not self.active:
            self.start(paused=True)

    def stop(self) -> None:
        """End the run after the tick in progress (it reports "stopped")."""
        if self._state in (SessionState.STARTING, SessionState.RUNNING, SessionState.PAUSED):
            self._set_state(SessionState.STOPPING, "")
            # A run waiting for an answer stops waiting (its loop thread is blocked until then,
            # so the stop is requested right there, on that thread).
            self._cancel_questions("stopped from the window")
            self._submit(self._stop("stopped from the window"))

    def restart(self) -> None:
        """Stop the run in progress, if any, and start the same scenario again."""
        if self.scenario_path is None:
            self.error.emit("no scenario is open")
            return
        if self.active:
            self._cancel_questions("restarted from the window")
            self._set_state(SessionState.STOPPING, "restarting")
        path, workers, device = self.scenario_path, self.workers, self.device
        self._submit(self._restart(path, workers, device))

    def post(self, agent: str, text: str, *, kind: int = ASK_KIND) -> None:
        """Send ``text`` (UTF-8) to ``agent`` of the running scenario, for its next tick."""
        if self._state not in (SessionState.RUNNING, SessionState.PAUSED):
            self.error.emit("no run is in progress: start the scenario first")
            return
        self._submit(self._post(agent, text.encode("utf-8"), kind))

    def shutdown(self, timeout: float = 20.0) -> bool:
        """Stop the run, close the runtime (worker processes, GPU thread, shared memory) and
        end the loop's thread; blocks for at most about ``timeout`` seconds. Idempotent.

        Returns True when everything ended in time.
        """
        self._closed = True
        self._cancel_questions("the window was closed")
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        loop = thread.loop
        clean = True
        if loop is not None and not loop.is_closed():
            future = asyncio.run_coroutine_threadsafe(self._close_session(), loop)
            try:
                future.result(timeout)
            except concurrent.futures.TimeoutError:
                logger.error("the runtime did not close within %g s", timeout)
                clean = False
            except Exception:
                logger.exception("closing the runtime failed")
                clean = False
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
        if not thread.wait(int(timeout * 1000)):
            logger.error("the runtime's thread did not end within %g s", timeout)
            clean = False
        unfreeze_heap(self)  # the last state change may never be delivered now
        return clean

    def _cancel_questions(self, reason: str) -> None:
        cancel = getattr(self.answer, "cancel_all", None)
        if cancel is None:
            return

        def stop_now() -> None:  # on the loop thread
            self._stop_reason = reason
            runtime = self._runtime
            if runtime is not None and runtime.result is None:
                runtime.request_stop(reason)

        cancel(stop_now)

    # -- plumbing --------------------------------------------------------------------------
    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._closed:
            raise RuntimeError("the controller is shut down")
        if self._thread is None:
            self._thread = _LoopThread()
            self._thread.start()
        return self._thread.wait_ready()

    def _submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T] | None:
        """Run ``coroutine`` on the runtime's loop; report its exception as ``error``."""
        try:
            loop = self._ensure_loop()
        except RuntimeError as exc:
            coroutine.close()
            self.error.emit(str(exc))
            return None
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        future.add_done_callback(self._report)
        return future

    def _report(self, future: concurrent.futures.Future[Any]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            logger.error("runtime control failed", exc_info=exc)
            self.error.emit(f"{type(exc).__name__}: {exc}")

    def _set_state(self, state: str, detail: str) -> None:
        """Announce a state, from either thread. The loop's code reads ``_loop_state`` at once;
        :attr:`state` changes when the GUI thread gets the (queued) signal, so that it never
        runs ahead of what the window's slots have seen."""
        self._loop_state = state
        self.state_changed.emit(state, detail)

    def _record_state(self, state: str, _detail: str) -> None:
        self._state = state
        # The run's objects are made: long-lived ones from here on stay out of the collector's
        # full collections, which otherwise stop the GUI thread (see runtime/_heap.py).
        if state == SessionState.RUNNING:
            freeze_heap(self)
        elif state not in SessionState.ACTIVE:
            unfreeze_heap(self)

    # -- on the runtime's loop ------------------------------------------------------------
    # The controller drives the ticks itself with Runtime.step() instead of Runtime.run(), so
    # that a pause takes effect between two ticks it knows of, a single step can never run
    # beside a tick in flight (one lock covers both), and the scenario's wall-clock limit
    # counts running time only: a run paused in the window for a while does not time out.

    async def _start_session(self, path: Path, workers: int, device: str, paused: bool) -> None:
        previous = self._session
        if previous is not None and not previous.done():
            await previous  # a restart waits for the previous run to close
        self._stop_reason = None
        reopen = getattr(self.answer, "reopen", None)
        if reopen is not None:
            reopen()
        self._session = asyncio.ensure_future(self._run_session(path, workers, device, paused))
        self._session.add_done_callback(self._session_done)

    def _session_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.error("the run ended with an error", exc_info=exc)
            self._set_state(SessionState.FAILED, f"{type(exc).__name__}: {exc}")
            self.error.emit(f"the run ended with an error: {exc}")

    async def _run_session(self, path: Path, workers: int, device: str, paused: bool) -> None:
        self._step_lock = asyncio.Lock()
        self._go = asyncio.Event()
        self._runtime = None
        try:
            scenario = await asyncio.to_thread(load_scenario, path)
            config = RuntimeConfig(workers=workers, device=device)
            recording = await asyncio.to_thread(self._recording, path, scenario, config)
            runtime = (
                recording.runtime(scenario, config) if recording else Runtime(scenario, config)
            )
        except (ScenarioError, OSError, ValueError) as exc:
            self._set_state(SessionState.FAILED, f"cannot open the scenario: {exc}")
            self.error.emit(str(exc))
            return
        if self.answer is not None:
            runtime._v2.services.answer = self.answer
        self.feed.attach(runtime.events)
        self._runtime = runtime
        self.runtime_changed.emit(runtime)
        try:
            try:
                await runtime.start()
            except Exception as exc:
                logger.warning("the run could not start: %s", exc)
                self._set_state(SessionState.FAILED, f"could not start: {exc}")
                self.error.emit(f"the run could not start: {exc}")
                return
            if self._stop_reason is not None:
                runtime.request_stop(self._stop_reason)
                self._go.set()
            elif paused:
                runtime.pause()
                self._set_state(SessionState.PAUSED, "")
                await self._step()
            else:
                runtime.resume()  # announces "running"
                self._set_state(SessionState.RUNNING, "")
                self._go.set()
            timed_out = await self._drive(runtime)
        finally:
            await runtime.aclose()
            if recording is not None and runtime.result is None:
                await asyncio.to_thread(recording.finish, runtime, None)
        result = runtime.result
        assert result is not None
        state, detail = _outcome(result, timed_out, self._stop_reason)
        if recording is not None:
            await asyncio.to_thread(recording.finish, runtime, result, state, detail)
        if state == SessionState.FAILED:
            logger.warning("run %s failed at tick %d: %s", result.scenario, result.ticks, detail)
        else:
            logger.info(
                "run %s %s after %d ticks: %s", result.scenario, state, result.ticks, detail
            )
        self._set_state(state, detail)
        self.run_finished.emit(result)

    def _recording(
        self, path: Path, scenario: Any, config: RuntimeConfig
    ) -> _WindowRecording | None:
        """Create the run in the store (on a helper thread: it touches the disk). A store
        that cannot be used is reported and the run goes on, unrecorded."""
        self.run_id = None
        if not self.record:
            return None
        from qhybrid import __version__
        from qhybrid.runtime.store import RunRecorder, RunStore, StoreError, default_store_path

        store_path = self.store_path or default_store_path()
        every = scenario.checkpoint_every or 100
        try:
            with RunStore(store_path) as store:
                run_id = store.new_run(
                    scenario_name=scenario.name,
                    scenario_path=str(path.resolve()),
                    scenario_text=path.read_text(encoding="utf-8"),
                    seed=scenario.seed,
                    config={
                        "workers": config.workers,
                        "device": config.device,
                        "max_worker_restarts": config.max_worker_restarts,
                        "checkpoint_every": every,
                        "from": "window",
                    },
                    version=__version__,
                )
        except (StoreError, OSError) as exc:
            logger.warning("this run is not recorded: %s", exc)
            self.error.emit(f"this run is not recorded in the run store: {exc}")
            return None
        self.run_id = run_id
        return _WindowRecording(
            store_path, run_id, RunRecorder(store_path, run_id, checkpoint_every=every)
        )

    async def _drive(self, runtime: Runtime) -> str | None:
        """Run ticks while allowed to, until the run ends; returns why it timed out, if so."""
        go, lock = self._go, self._step_lock
        assert go is not None and lock is not None
        limit = runtime.scenario.stop.timeout_s
        running_s = 0.0
        timed_out: str | None = None
        clock = time.perf_counter
        while runtime.result is None:
            if not go.is_set():
                await go.wait()
            async with lock:
                if not go.is_set():
                    continue  # paused while a single step held the lock
                t0 = clock()
                waited = getattr(self.answer, "waited_s", 0.0)
                more = await runtime.step()
                # Time spent waiting for a person's answer is not running time.
                running_s += clock() - t0 - (getattr(self.answer, "waited_s", 0.0) - waited)
            if more and limit and running_s > limit and timed_out is None:
                timed_out = f"timed out after {limit:g} s of running time"
                runtime.request_stop(timed_out)
        return timed_out

    async def _pause(self) -> None:
        runtime = self._runtime
        if (
            runtime is None
            or runtime.result is not None
            or self._loop_state != SessionState.RUNNING
        ):
            return
        assert self._go is not None
        self._go.clear()
        runtime.pause()  # announces "paused"; the tick in flight, if any, still commits
        self._set_state(SessionState.PAUSED, f"after tick {runtime.tick}")

    async def _resume(self) -> None:
        runtime = self._runtime
        if runtime is None or self._step_lock is None:
            return
        # A single step may still be running (Resume clicked right after Step): wait for it,
        # or its "paused after tick N" would land after this "running" and win.
        async with self._step_lock:
            if runtime.result is not None or self._loop_state != SessionState.PAUSED:
                return
            assert self._go is not None
            runtime.resume()
            self._set_state(SessionState.RUNNING, "")
            self._go.set()

    async def _step(self) -> None:
        runtime = self._runtime
        if runtime is None or self._step_lock is None or self._go is None:
            return
        async with self._step_lock:
            if self._loop_state != SessionState.PAUSED or runtime.result is not None:
                return
            more = await runtime.step()
            if more:
                self._set_state(SessionState.PAUSED, f"after tick {runtime.tick}")
            else:
                self._set_state(SessionState.STOPPING, "")
                self._go.set()  # the driver sees the result and closes the run

    async def _stop(self, reason: str) -> None:
        self._stop_reason = reason
        runtime = self._runtime
        if runtime is not None and runtime.result is None:
            runtime.request_stop(reason)
        if self._go is not None:
            self._go.set()
        session = self._session
        if session is not None and not session.done():
            await asyncio.wait([session])

    async def _restart(self, path: Path, workers: int, device: str) -> None:
        await self._stop("restarted from the window")
        self._set_state(SessionState.STARTING, str(path))
        await self._start_session(path, workers, device, False)

    async def _post(self, agent: str, payload: bytes, kind: int) -> None:
        runtime = self._runtime
        if runtime is None or runtime.result is not None:
            self.error.emit("no run is in progress")
            return
        try:
            runtime.post(agent, payload, kind=kind)
        except (KeyError, ValueError) as exc:
            self.error.emit(str(exc.args[0]) if exc.args else str(exc))

    async def _close_session(self) -> None:
        await self._stop("the window was closed")
        runtime = self._runtime
        if runtime is not None:
            await runtime.aclose()  # idempotent; also when start() never finished
        self.feed.detach()


class _WindowRecording:
    """A window run being recorded in the run store, as ``qhybrid --headless`` records."""

    def __init__(self, path: Path, run_id: str, recorder: Any) -> None:
        self.path, self.run_id, self.recorder = path, run_id, recorder
        self.namespace = ""

    def runtime(self, scenario: Any, config: RuntimeConfig) -> Runtime:
        from qhybrid.runtime.store import DurableRuntime, RunStore

        runtime = DurableRuntime(scenario, config, recorder=self.recorder)
        self.namespace = scenario.memory.namespace
        if self.namespace:
            with RunStore(self.path) as store:
                runtime.memory.initial = store.load_memory(self.namespace)
        return runtime

    def finish(
        self, runtime: Runtime, result: RunResult | None, state: str = "", detail: str = ""
    ) -> None:
        if result is None:
            error = self.recorder.finish(runtime, "failed", "the run did not start or end")
        else:
            # Stopped from the window: interrupted, so that Resume goes on from a checkpoint.
            stopped = state == SessionState.STOPPED
            status = (
                "interrupted"
                if stopped
                else ("failed" if state == SessionState.FAILED else result.status)
            )
            summary = result.to_json()
            summary["run_id"] = self.run_id
            memory = (
                (self.namespace, runtime.memory.everyone())
                if self.namespace and not stopped and result.ok
                else None
            )
            error = self.recorder.finish(
                runtime,
                status,
                detail or result.reason,
                trace_hash=result.trace_hash,
                summary=summary,
                memory=memory,
            )
        if error:
            logger.warning("the run store stopped recording run %s: %s", self.run_id, error)


def _outcome(result: RunResult, timed_out: str | None, stop_reason: str | None) -> tuple[str, str]:
    """The session's end state: failed (the runtime's verdict, or the window's timeout),
    stopped (asked to end, and it did), or completed (its own stop condition)."""
    if timed_out is not None:
        return SessionState.FAILED, timed_out
    if not result.ok:
        return SessionState.FAILED, result.reason
    if stop_reason is not None and stop_reason in result.reason:
        return SessionState.STOPPED, result.reason
    return SessionState.COMPLETED, result.reason
