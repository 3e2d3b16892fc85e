"""The charts' data: preallocated numpy ring buffers, one sample per frame.

Rates come from the runtime's own metrics (:meth:`Runtime.metrics`, cumulative counters
sampled once per tick on the runtime's clock), taken over the last :data:`RATE_WINDOW_S`, so
they do not depend on when the GUI happens to sample. Each buffer is stored twice over
(``2 * capacity``), every sample written at ``i`` and ``i + capacity``: the last ``capacity``
samples are then always one contiguous slice, handed to pyqtgraph without a copy.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from qhybrid.runtime import LlmTokens, MetricsSnapshot, TaskFinished

__all__ = ["CHANNELS", "RATE_WINDOW_S", "LiveSeries"]

Array = npt.NDArray[np.float64]

#: Seconds of runtime history a rate is taken over.
RATE_WINDOW_S = 0.5
#: Seconds of token history the LLM rate is taken over.
LLM_WINDOW_S = 1.0

#: What the charts can draw, each a ring buffer of floats (NaN: no value at that sample).
CHANNELS = (
    "tasks_per_s",  # messages handled plus CPU/GPU tasks completed, per second
    "messages_per_s",
    "queued_messages",
    "queued_cpu",
    "queued_gpu",
    "gpu_busy",  # fraction of wall time the GPU thread spent in jobs
    "kernel_ms",  # mean time of the GPU jobs that finished since the previous sample
    "tensor_mib",  # shared-tensor memory
    "llm_tok_s",  # LLM tokens received per second
    "tick",
)


class LiveSeries:
    """Ring buffers of the last ``capacity`` samples of :data:`CHANNELS` and worker loads."""

    def __init__(self, capacity: int = 1800, max_workers: int = 64) -> None:
        self.capacity = capacity
        self.max_workers = max_workers
        self._t = np.zeros(2 * capacity)
        self._data = np.full((len(CHANNELS), 2 * capacity), np.nan)
        self._load = np.full((max_workers, 2 * capacity), np.nan)
        self._index = {name: i for i, name in enumerate(CHANNELS)}
        self._llm: collections.deque[tuple[float, int]] = collections.deque()
        self.reset()

    def reset(self) -> None:
        """Forget every sample (a new run starts)."""
        self._count = 0
        self._data.fill(np.nan)
        self._load.fill(np.nan)
        self._t.fill(0.0)
        self._llm.clear()
        self.workers = 0
        self._last_tick = -1.0
        self._last_change = 0.0
        self.latest: dict[str, float] = {}

    @property
    def samples(self) -> int:
        """Samples held (at most ``capacity``)."""
        return min(self._count, self.capacity)

    # -- writing ---------------------------------------------------------------------------
    def sample(
        self,
        now: float,
        metrics: MetricsSnapshot | None,
        tasks: Iterable[TaskFinished] = (),
        llm: Iterable[LlmTokens] = (),
    ) -> None:
        """Append one sample taken at ``now`` (seconds, any monotonic clock)."""
        values = dict.fromkeys(CHANNELS, np.nan)
        kernel = [t.elapsed_s for t in tasks if t.kind == "gpu" and t.error is None]
        if kernel:
            values["kernel_ms"] = 1000.0 * sum(kernel) / len(kernel)
        for event in llm:
            if event.tokens:
                self._llm.append((now, event.tokens))
        while self._llm and self._llm[0][0] < now - LLM_WINDOW_S:
            self._llm.popleft()
        values["llm_tok_s"] = sum(n for _, n in self._llm) / LLM_WINDOW_S
        loads: Array | None = None
        if metrics is not None and metrics.samples:
            loads = self._from_metrics(now, metrics, values)
        self._write(now, values, loads)

    def _from_metrics(self, now: float, m: MetricsSnapshot, values: dict[str, float]) -> Array:
        s = m.series
        wall = s["wall_s"]
        last = len(wall) - 1
        tick = float(s["tick"][last])
        for name in ("queued_messages", "queued_cpu", "queued_gpu", "tick"):
            values[name] = float(s[name][last])
        values["tensor_mib"] = float(s["tensor_bytes"][last]) / (1 << 20)
        if tick != self._last_tick:
            self._last_tick, self._last_change = tick, now
        workers = m.worker_busy_s.shape[1]
        self.workers = min(workers, self.max_workers)
        stalled = now - self._last_change > RATE_WINDOW_S  # paused, or one very long tick
        first = int(np.searchsorted(wall, wall[last] - RATE_WINDOW_S))
        first = min(first, last - 1)
        dt = float(wall[last] - wall[first]) if first >= 0 else 0.0
        if stalled or dt <= 0.0:
            for name in ("tasks_per_s", "messages_per_s", "gpu_busy"):
                values[name] = 0.0
            return np.zeros(self.workers)
        values["tasks_per_s"] = float(s["tasks_total"][last] - s["tasks_total"][first]) / dt
        values["messages_per_s"] = (
            float(s["delivered_total"][last] - s["delivered_total"][first]) / dt
        )
        gpu = float(s["gpu_busy_s_total"][last] - s["gpu_busy_s_total"][first]) / dt
        values["gpu_busy"] = min(gpu, 1.0)
        busy = m.worker_busy_s[:, : self.workers]
        loads: Array = np.clip((busy[last] - busy[first]) / dt, 0.0, 1.0)
        return loads

    def _write(self, now: float, values: dict[str, float], loads: Array | None) -> None:
        i = self._count % self.capacity
        j = i + self.capacity
        self._t[i] = self._t[j] = now
        column = np.fromiter((values[n] for n in CHANNELS), dtype=np.float64, count=len(CHANNELS))
        self._data[:, i] = self._data[:, j] = column
        self._load[:, i] = self._load[:, j] = np.nan
        if loads is not None:
            self._load[: len(loads), i] = self._load[: len(loads), j] = loads
        self._count += 1
        self.latest = values

    # -- reading (views) ----------------------------------------------------------------------
    def _window(self) -> slice:
        n = self.samples
        end = self._count % self.capacity + self.capacity
        return slice(end - n, end)

    def times(self) -> Array:
        """The samples' times, oldest first (a view: copy it to keep it)."""
        return self._t[self._window()]

    def channel(self, name: str) -> Array:
        """One channel's samples, oldest first, aligned with :meth:`times` (a view)."""
        return self._data[self._index[name], self._window()]

    def worker_load(self, worker: int) -> Array:
        """Worker ``worker``'s busy fraction (0 to 1) per sample, aligned with :meth:`times`."""
        return self._load[worker, self._window()]
