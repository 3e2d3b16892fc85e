"""What the debugger views (agent graph, per-agent detail) take from a live runtime.

The runtime's tick hook hands over each tick's trace records (the list it already made) and
its LLM events fire as agents ask and answers stream. All of these arrive **on the
orchestrator's loop thread**; :class:`DebugFeed` only appends them to deques there (no Qt,
no per-record work), and the GUI thread takes them with :meth:`DebugFeed.drain` a few times a
second. Every record is then looked at once, on the GUI thread, in
:meth:`~qhybrid.models.MessageHistory.add_records`.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from qhybrid.runtime import LlmRequested, LlmTokens, MessageUsage, Runtime

__all__ = ["DebugBatch", "DebugFeed"]


@dataclass(slots=True)
class DebugBatch:
    records: list[tuple[Any, ...]] = field(default_factory=list)
    requests: list[LlmRequested] = field(default_factory=list)
    tokens: list[LlmTokens] = field(default_factory=list)
    usage: list[MessageUsage] = field(default_factory=list)


class DebugFeed:
    """Attach to a :class:`Runtime` before it starts (on its loop thread, or before the run)."""

    def __init__(self) -> None:
        self._ticks: collections.deque[Sequence[tuple[Any, ...]]] = collections.deque()
        self._requests: collections.deque[LlmRequested] = collections.deque()
        self._tokens: collections.deque[LlmTokens] = collections.deque()
        self._usage: collections.deque[MessageUsage] = collections.deque()
        self._runtime: Runtime | None = None
        self._lock = threading.Lock()

    def attach(self, runtime: Runtime) -> None:
        self.detach()
        self._runtime = runtime
        ticks = self._ticks

        def on_tick(_tick: int, records: Sequence[tuple[Any, ...]]) -> None:
            # The hook cannot be removed: a detached feed's hook just stops appending.
            if self._runtime is runtime:
                ticks.append(records)

        runtime.add_tick_hook(on_tick)
        runtime.events.llm_requested.connect(self._requests.append, check_nargs=False)
        runtime.events.llm_tokens.connect(self._tokens.append, check_nargs=False)
        # Connected, the workers report each message's fuel and memory (a little more work
        # per message, for as long as a window watches the run).
        runtime.events.message_usage.connect(self._usage.append, check_nargs=False)

    def detach(self) -> None:
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            runtime.events.llm_requested.disconnect(self._requests.append)
            runtime.events.llm_tokens.disconnect(self._tokens.append)
            runtime.events.message_usage.disconnect(self._usage.append)

    def drain(self) -> DebugBatch:
        """Everything gathered since the last call (records oldest first)."""
        with self._lock:
            batch = DebugBatch()
            for _ in range(len(self._ticks)):
                batch.records.extend(self._ticks.popleft())
            for _ in range(len(self._requests)):
                batch.requests.append(self._requests.popleft())
            for _ in range(len(self._tokens)):
                batch.tokens.append(self._tokens.popleft())
            for _ in range(len(self._usage)):
                batch.usage.append(self._usage.popleft())
            return batch
