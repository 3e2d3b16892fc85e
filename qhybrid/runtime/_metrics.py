"""Metrics kept in preallocated ring buffers, cheap to poll from any thread."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: Series recorded once per tick, each a column of the ring buffer.
SERIES = (
    "wall_s",  # seconds since the run started
    "tick",
    "delivered_total",
    "tasks_total",
    "queued_messages",
    "queued_cpu",
    "queued_gpu",
    "gpu_busy_s_total",
    "tensor_bytes",
    "llm_tokens_total",  # tokens the scenario's LLM generated
    "llm_active",  # LLM requests holding a KV-cache slot
    "fuel_total",  # fuel the agents' handlers burnt (reported by the workers, not traced)
    "agent_memory_bytes",  # the agents' linear memory together
)


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """A copy of the recent samples, oldest first; arrays have one entry per sample.

    ``series[name]`` for each name in :data:`SERIES`; ``worker_busy_s`` has one row per
    sample and one column per worker (cumulative busy seconds).
    """

    series: dict[str, npt.NDArray[np.float64]]
    worker_busy_s: npt.NDArray[np.float64]
    samples: int

    def rate(self, name: str) -> float:
        """Average per-second rate of a cumulative series over the window."""
        wall = self.series["wall_s"]
        values = self.series[name]
        if self.samples < 2 or wall[-1] <= wall[0]:
            return 0.0
        return float((values[-1] - values[0]) / (wall[-1] - wall[0]))


#: Samples kept before they are written into the ring buffers in one go.
FOLD_ROWS = 256


class MetricsRecorder:
    """Thread-safe ring buffers: the orchestrator writes a sample per tick, observers poll."""

    def __init__(self, workers: int, capacity: int = 4096) -> None:
        self.capacity = capacity
        self.workers = workers
        self._data = np.zeros((capacity, len(SERIES)), dtype=np.float64)
        self._busy = np.zeros((capacity, max(workers, 1)), dtype=np.float64)
        self._count = 0  # samples written into the buffers
        self._rows: collections.deque[tuple[float, Sequence[float], Sequence[float]]] = (
            collections.deque()
        )
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()

    def reset_clock(self) -> None:
        self._t0 = time.perf_counter()

    def record(self, values: dict[str, float], worker_busy_s: list[float]) -> None:
        row = [
            time.perf_counter() - self._t0 if n == "wall_s" else values.get(n, 0.0) for n in SERIES
        ]
        self.record_row(row[1:], worker_busy_s)

    def record_row(self, row: Sequence[float], worker_busy_s: Sequence[float]) -> None:
        """One sample: ``row`` holds every series after ``wall_s``, in :data:`SERIES` order
        (the orchestrator's way, once per tick: no dict to build and look up). Kept as it
        comes, and written into the ring buffers :data:`FOLD_ROWS` at a time or when
        someone reads them (a numpy row assignment per tick cost more than the row)."""
        self._rows.append((time.perf_counter() - self._t0, row, worker_busy_s))
        if len(self._rows) >= FOLD_ROWS:
            self._fold()

    def _fold(self) -> None:
        """Write the samples kept so far into the ring buffers (from any thread)."""
        with self._lock:
            rows = self._rows
            taken = []
            while rows:  # (popleft: the orchestrator may append meanwhile)
                taken.append(rows.popleft())
            if not taken:
                return
            taken = taken[-self.capacity :]
            width = self._busy.shape[1]
            data = np.array([(wall, *row) for wall, row, _ in taken], dtype=np.float64)
            busy = np.zeros((len(taken), width), dtype=np.float64)
            for i, (_, _, b) in enumerate(taken):
                busy[i, : min(len(b), width)] = b[:width]
            at = (self._count + np.arange(len(taken))) % self.capacity
            self._data[at] = data
            self._busy[at] = busy
            self._count += len(taken)

    def snapshot(self) -> MetricsSnapshot:
        self._fold()
        with self._lock:
            n = min(self._count, self.capacity)
            start = self._count % self.capacity if self._count > self.capacity else 0
            order = (np.arange(n) + start) % self.capacity
            data = self._data[order].copy()
            busy = self._busy[order].copy()
        return MetricsSnapshot(
            series={name: data[:, i] for i, name in enumerate(SERIES)},
            worker_busy_s=busy,
            samples=n,
        )
