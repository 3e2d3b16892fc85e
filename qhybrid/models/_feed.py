"""Collects a runtime's events where they fire, for the GUI thread to take in batches.

Every :class:`~qhybrid.runtime.RuntimeEvents` signal fires on the orchestrator's loop thread,
hundreds or thousands of times a second. Forwarding each one to the GUI thread as a queued Qt
signal would cost the runtime a Qt event per message and the GUI a slot call per message, so
the feed's handlers only append the event to a ``collections.deque`` (atomic under the GIL,
no lock, no Qt) and the GUI thread takes everything gathered so far with :meth:`drain`, a few
dozen times a second. Whatever the event rate, the window then does a bounded amount of work
per frame.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import Any

from qhybrid.runtime import (
    AgentLog,
    AgentStateChanged,
    GpuAdapter,
    LlmTokens,
    RunStateChanged,
    RuntimeEvents,
    TaskFinished,
    TickFinished,
    WorkerRestarted,
)

__all__ = ["FeedBatch", "RuntimeFeed"]

#: Log lines kept between two drains; older ones are dropped (and counted) when agents log
#: faster than the window takes them.
MAX_PENDING_LOGS = 20_000


@dataclass(slots=True)
class FeedBatch:
    """What happened since the previous :meth:`RuntimeFeed.drain`, oldest first."""

    run_states: list[RunStateChanged] = field(default_factory=list)
    agent_states: list[AgentStateChanged] = field(default_factory=list)
    logs: list[AgentLog] = field(default_factory=list)
    logs_dropped: int = 0
    tasks: list[TaskFinished] = field(default_factory=list)
    llm: list[LlmTokens] = field(default_factory=list)
    restarts: list[WorkerRestarted] = field(default_factory=list)
    adapter: GpuAdapter | None = None
    ticks: int = 0
    last_tick: TickFinished | None = None

    def __bool__(self) -> bool:
        return bool(
            self.run_states
            or self.agent_states
            or self.logs
            or self.tasks
            or self.llm
            or self.restarts
            or self.adapter
            or self.ticks
        )


class RuntimeFeed:
    """Subscribes to a runtime's events; :meth:`drain` hands them over in one batch.

    The handlers run on the orchestrator's loop thread and do nothing but append; ``drain``
    may be called from any one other thread (the GUI thread).
    """

    def __init__(self) -> None:
        self._run_states: collections.deque[RunStateChanged] = collections.deque()
        self._agent_states: collections.deque[AgentStateChanged] = collections.deque()
        self._logs: collections.deque[AgentLog] = collections.deque(maxlen=MAX_PENDING_LOGS)
        self._log_count = 0  # appended so far: tells how many the bounded deque dropped
        self._log_taken = 0
        self._log_dropped = 0
        self._tasks: collections.deque[TaskFinished] = collections.deque(maxlen=10_000)
        self._llm: collections.deque[LlmTokens] = collections.deque()
        self._restarts: collections.deque[WorkerRestarted] = collections.deque()
        self._adapter: GpuAdapter | None = None
        self._ticks = 0
        self._ticks_taken = 0
        self._last_tick: TickFinished | None = None
        self._events: RuntimeEvents | None = None
        self._drain_lock = threading.Lock()

    # -- subscription ----------------------------------------------------------------------
    def attach(self, events: RuntimeEvents) -> None:
        """Listen to ``events`` (call before the runtime starts, from any thread)."""
        self.detach()
        self._events = events
        # deque.append has no signature for psygnal to check: it takes the one event.
        events.run_state.connect(self._run_states.append, check_nargs=False)
        events.agent_state.connect(self._agent_states.append, check_nargs=False)
        events.agent_log.connect(self._on_log)
        events.task_finished.connect(self._tasks.append, check_nargs=False)
        events.llm_tokens.connect(self._llm.append, check_nargs=False)
        events.worker_restarted.connect(self._restarts.append, check_nargs=False)
        events.gpu_adapter.connect(self._on_adapter)
        events.tick_finished.connect(self._on_tick)

    def detach(self) -> None:
        """Stop listening (the events gathered so far can still be drained)."""
        events, self._events = self._events, None
        if events is None:
            return
        events.run_state.disconnect(self._run_states.append)
        events.agent_state.disconnect(self._agent_states.append)
        events.agent_log.disconnect(self._on_log)
        events.task_finished.disconnect(self._tasks.append)
        events.llm_tokens.disconnect(self._llm.append)
        events.worker_restarted.disconnect(self._restarts.append)
        events.gpu_adapter.disconnect(self._on_adapter)
        events.tick_finished.disconnect(self._on_tick)

    # -- handlers: on the orchestrator's loop thread --------------------------------------
    def _on_log(self, event: AgentLog) -> None:
        self._logs.append(event)
        self._log_count += 1

    def _on_adapter(self, event: GpuAdapter) -> None:
        self._adapter = event

    def _on_tick(self, event: TickFinished) -> None:
        self._last_tick = event
        self._ticks += 1

    # -- the consumer's side ---------------------------------------------------------------
    def drain(self) -> FeedBatch:
        """Everything gathered since the last call, oldest first."""
        with self._drain_lock:
            batch = FeedBatch(
                run_states=_take(self._run_states),
                agent_states=_take(self._agent_states),
                tasks=_take(self._tasks),
                llm=_take(self._llm),
                restarts=_take(self._restarts),
            )
            # Count before taking: every line counted is then either taken or was dropped by
            # the bounded deque (lines appended meanwhile are taken early and even out later).
            count = self._log_count
            batch.logs = _take(self._logs)
            self._log_taken += len(batch.logs)
            dropped = max(0, count - self._log_taken)
            batch.logs_dropped = max(0, dropped - self._log_dropped)
            self._log_dropped = max(dropped, self._log_dropped)
            batch.adapter, self._adapter = self._adapter, None
            ticks = self._ticks
            batch.ticks = ticks - self._ticks_taken
            self._ticks_taken = ticks
            batch.last_tick = self._last_tick
            return batch


def _take(queue: collections.deque[Any]) -> list[Any]:
    """Pop everything ``queue`` holds now; appends racing with it stay for the next call."""
    out = []
    pop = queue.popleft
    for _ in range(len(queue)):
        out.append(pop())
    return out
