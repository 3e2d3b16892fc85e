"""One tick through the parts, in the order that makes the trace, and the tick hooks.

:class:`TickPipeline` owns the tick hooks (``Runtime.add_tick_hook``) and nothing else: every
step's state belongs to the part that does it (see ``_orchestrator``'s docstring). A tick:
``schedule.pop_due`` -> ``dispatch.plan`` -> ``dispatch.execute`` (the workers' usage to the
roster, untraced) -> ``commit.apply`` -> ``report.tick`` -> the LLM's failed and new answers ->
``lifecycle.after_commit`` (spawns, stops) -> ``recovery.after_commit`` (checkpoints, dead
workers) -> the trace flush -> the tick hooks, with the records made since the last call.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from qhybrid.runtime._ports import TickHook

if TYPE_CHECKING:
    from qhybrid.runtime._lifecycle import Lifecycle
    from qhybrid.runtime._parts import Parts
    from qhybrid.runtime._trace import TraceRecorder

__all__ = ["TickPipeline"]


class TickPipeline:
    """Runs a tick over ``parts``; hands each tick's trace records to the hooks."""

    def __init__(self, parts: Parts, lifecycle: Lifecycle, trace: TraceRecorder) -> None:
        self._parts = parts
        self._lifecycle = lifecycle
        self._trace = trace
        #: Called ``hook(tick, records)`` after each tick, in the order they were added.
        self.hooks: list[TickHook] = []

    async def run(self, tick: int) -> None:
        """Tick ``tick``: raises what the parts raise (``RunFailed``, a worker's or the GPU
        thread's error) for the runtime to end the run with."""
        t0 = time.perf_counter()
        parts = self._parts
        plan = parts.dispatch.plan(tick, parts.schedule.pop_due(tick))
        results = await parts.dispatch.execute(plan)
        # Fuel and memory, not traced; by message while someone listens for them.
        used = parts.roster.take_usage(results.replies, plan.placements, tick)
        if used is not None:
            parts.dispatch.events.message_usage.emit(used)
        parts.report.tick(tick, parts.commit.apply(plan, results), t0)
        parts.llm.answer_failed(tick)  # prepared LLM requests that could not be made
        if results.llm_updates:
            parts.llm.commit(tick, results.llm_updates)
        await self._lifecycle.after_commit(tick)
        await parts.recovery.after_commit(tick)
        self.flush(tick)

    def flush(self, tick: int) -> None:
        """The trace records made since the last flush, to the hooks (none: no call)."""
        records = self._trace.flush()
        if records:
            for hook in self.hooks:
                hook(tick, records)
