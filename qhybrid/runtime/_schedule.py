"""The schedule: the run's queue, its logical clock and its stop conditions.

Owns: the priority queue of work items keyed by ``(tick, -priority, sequence)``, the sequence
counter that orders everything pushed, the current tick, the counts of queued tasks, and the
first failure of the run (a failure is a stop condition like ``max_ticks``). Nothing else
pushes to or pops from the queue: the commit, the GPU bridge and the LLM bridge push through
:meth:`Schedule.push_message` and :meth:`Schedule.push_task`.
"""

from __future__ import annotations

import heapq
import itertools
from typing import NamedTuple

from qhybrid.runtime._scenario import Scenario, StopSpec, TaskSpec
from qhybrid.runtime.wasm_pool import RUNTIME_SENDER

__all__ = ["Item", "Message", "Schedule", "new_item"]

#: An agent message as queued: ``(sender, destination, kind, payload)``.
Message = tuple[int, int, int, bytes]


class Item(NamedTuple):
    """A queued unit of work; a tuple, so the heap compares it in C. ``seq`` is unique, so
    comparison never reaches ``message`` or ``task``, exactly one of which is set."""

    tick: int
    neg_priority: int
    seq: int
    message: Message | None = None
    task: TaskSpec | None = None


new_item = Item._make  # tuple.__new__: the cheapest way to build one, per message


class Schedule:
    """The queue and the clock. ``tick`` is the tick in progress (or the last one run)."""

    def __init__(self, stop: StopSpec) -> None:
        self.stop = stop
        self.tick = 0
        self.queue: list[Item] = []
        self._seq = itertools.count()
        self._queued_tasks = 0
        self._queued_gpu = 0
        #: Why the run must stop after the tick in progress (the first failure), or None.
        self.failure: str | None = None

    # -- pushing ----------------------------------------------------------------------------
    @property
    def sequence(self) -> itertools.count[int]:
        """The sequence numbers, in push order: the commit's hot loop pushes as
        :meth:`push_message` does (``new_item`` onto :attr:`queue` with ``heapq.heappush``)."""
        return self._seq

    def push_message(
        self, tick: int, priority: int, sender: int, dst: int, kind: int, payload: bytes
    ) -> None:
        """Queue a message for ``tick``; among equal ticks and priorities, first pushed first."""
        heapq.heappush(
            self.queue,
            new_item((tick, -priority, next(self._seq), (sender, dst, kind, payload), None)),
        )

    def push_task(self, tick: int, neg_priority: int, task: TaskSpec) -> None:
        """Queue a CPU or GPU task for ``tick``."""
        self._queued_tasks += 1
        self._queued_gpu += task.kind == "gpu"
        heapq.heappush(self.queue, Item(tick, neg_priority, next(self._seq), task=task))

    def enqueue_initial(self, scenario: Scenario, by_name: dict[str, int]) -> None:
        """The scenario's messages (one per recipient), then its tasks."""
        for msg in scenario.messages:
            for name in msg.to:
                self.push_message(
                    msg.at, msg.priority, RUNTIME_SENDER, by_name[name], msg.kind, msg.payload
                )
        for task in scenario.tasks:
            self.push_task(task.at, -task.priority, task)

    def fail(self, reason: str) -> None:
        """Stop the run after this tick; the first reason given is the one reported."""
        if self.failure is None:
            self.failure = reason

    # -- the clock --------------------------------------------------------------------------
    def next_tick(self, llm_busy: bool) -> int | str:
        """The next tick with work due, or why the run is over (idle, ``max_ticks``).

        A running LLM request advances one token per tick, so it keeps the clock moving.
        """
        queue = self.queue
        if not queue and not llm_busy:
            return "idle: no work left"
        tick = queue[0].tick if queue else self.tick + 1
        if llm_busy:
            tick = min(tick, self.tick + 1)
        if tick >= self.stop.max_ticks:
            return f"reached max_ticks={self.stop.max_ticks}"
        return tick

    def pop_due(self, tick: int) -> list[Item]:
        """Advance the clock to ``tick`` and take every item due at it, in queue order."""
        self.tick = tick
        due: list[Item] = []
        queue = self.queue
        pop = heapq.heappop
        while queue and queue[0].tick == tick:
            item = pop(queue)
            if item.task is not None:
                self._queued_tasks -= 1
                self._queued_gpu -= item.task.kind == "gpu"
            due.append(item)
        return due

    def stop_after(self, delivered: int) -> str | None:
        """Why the run ends after a tick that brought the total to ``delivered`` messages."""
        limit = self.stop.max_messages
        if limit is not None and delivered >= limit:
            return f"reached max_messages={limit}"
        return None

    def depths(self) -> tuple[int, int, int]:
        """Queued (messages, CPU tasks, GPU tasks)."""
        gpu = self._queued_gpu
        cpu = self._queued_tasks - gpu
        return len(self.queue) - self._queued_tasks, cpu, gpu
