"""A recorded run's state at a chosen tick, for the window: rebuilt off the GUI thread.

:class:`StateAtModel` asks :func:`qhybrid.runtime.store.state_at` (a replay from the nearest
checkpoint, with its own worker processes) on a thread of its own, one request at a time; a
tick chosen while one is being rebuilt replaces any other waiting request, so scrubbing never
queues up replays. Results are cached per (store, run, tick). ``ready(state)`` and
``failed(message)`` are emitted on that thread and so reach GUI-thread slots queued; the
tables (:attr:`agents`, :attr:`queue`, :attr:`tensors`) change on the GUI thread only.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    Signal,
    Slot,
)

from qhybrid.models._messages import decode_payload, envelope_of
from qhybrid.models._table import TableModel
from qhybrid.runtime import printable
from qhybrid.runtime.store import StateAt, StoreError, state_at

__all__ = ["RowsModel", "StateAtModel", "memory_text"]

logger = logging.getLogger(__name__)

_Index = QModelIndex | QPersistentModelIndex

#: States kept per model (each is small: agents, queue, tensor summaries).
CACHE_SIZE = 32


class RowsModel(TableModel):
    """A read-only table of rows; ``UserRole`` gives the raw value (numbers sort as numbers)."""

    def __init__(self, columns: Sequence[str], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.COLUMNS = tuple(columns)
        self.rows: list[tuple[Any, ...]] = []
        self.tips: list[str] = []

    def set_rows(self, rows: Sequence[tuple[Any, ...]], tips: Sequence[str] = ()) -> None:
        self.beginResetModel()
        self.rows = list(rows)
        self.tips = list(tips)
        self.endResetModel()

    def row_count(self) -> int:
        return len(self.rows)

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        value = self.rows[index.row()][index.column()]
        if role == Qt.ItemDataRole.DisplayRole:
            if value is None:
                return ""
            return f"{value:,}" if isinstance(value, int) else printable(str(value))
        if role == Qt.ItemDataRole.UserRole:
            return value if value is not None else ""
        if role == Qt.ItemDataRole.ToolTipRole and index.row() < len(self.tips):
            return self.tips[index.row()] or None
        if role == Qt.ItemDataRole.TextAlignmentRole and isinstance(value, int | float):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


def memory_text(memory: dict[bytes, bytes], limit: int = 12) -> str:
    """An agent's long-term memory, key by key, values decoded (text, JSON or hex)."""
    lines = []
    for key, value in sorted(memory.items())[:limit]:
        how, text = decode_payload(value)
        shown = text if len(text) <= 120 else text[:117] + "..."
        lines.append(f"{key.decode('utf-8', 'replace')} = {shown}  ({how}, {len(value)} B)")
    if len(memory) > limit:
        lines.append(f"... and {len(memory) - limit} more keys")
    return "\n".join(lines)


class StateAtModel(QObject):
    """See the module docstring. ``names`` maps agent ids to names for the queue table."""

    ready = Signal(object)  # StateAt
    failed = Signal(str)
    busy_changed = Signal(bool)

    AGENT_COLUMNS = (
        "Agent",
        "State",
        "Handled",
        "Restarts",
        "Snapshot B",
        "Memory keys",
        "Memory B",
        "Error",
    )
    QUEUE_COLUMNS = ("Due tick", "Seq", "From", "To", "Kind", "Payload")
    TENSOR_COLUMNS = ("Tensor", "Shape", "Dtype", "Bytes", "Visible from", "Values")

    def __init__(
        self,
        parent: QObject | None = None,
        *,
        compute: Callable[[Path, str, int], StateAt] | None = None,
    ) -> None:
        super().__init__(parent)
        self._compute = compute or (lambda path, run, tick: state_at(path, run, tick))
        self.agents = RowsModel(self.AGENT_COLUMNS, self)
        self.queue = RowsModel(self.QUEUE_COLUMNS, self)
        self.tensors = RowsModel(self.TENSOR_COLUMNS, self)
        self.state: StateAt | None = None
        self.error: str | None = None
        self._cache: OrderedDict[tuple[str, str, int], StateAt] = OrderedDict()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, "qhybrid-state-at")
        self._lock = threading.Lock()
        self._running = False
        self._waiting: tuple[Path, str, int] | None = None
        self._wanted: tuple[str, str, int] | None = None
        self._closed = False
        self.ready.connect(self._show)
        self.failed.connect(self._fail)

    @property
    def busy(self) -> bool:
        return self._running

    def request(self, path: Path, run_id: str, tick: int) -> None:
        """Show the state of ``run_id`` after ``tick`` (GUI thread; returns at once)."""
        key = (str(path), run_id, tick)
        self._wanted = key
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self._show(cached)
            return
        with self._lock:
            if self._closed:
                return
            if self._running:
                self._waiting = (path, run_id, tick)
                return
            self._running = True
        self.busy_changed.emit(True)
        self._pool.submit(self._work, path, run_id, tick)

    def _work(self, path: Path, run_id: str, tick: int) -> None:
        # On the pool's thread: compute, then take the request that waited meanwhile, if any.
        while True:
            try:
                got = self._compute(path, run_id, tick)
            except (StoreError, ValueError, OSError, RuntimeError) as exc:
                logger.warning("state of run %s at tick %d: %s", run_id, tick, exc)
                self.failed.emit(f"tick {tick}: {exc}")
            except Exception as exc:  # a replay that breaks must not take the window down
                logger.exception("state of run %s at tick %d", run_id, tick)
                self.failed.emit(f"tick {tick}: {type(exc).__name__}: {exc}")
            else:
                self._cache[(str(path), run_id, tick)] = got
                while len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
                self.ready.emit(got)
            with self._lock:
                nxt, self._waiting = self._waiting, None
                if nxt is None or self._closed:
                    self._running = False
                    break
            path, run_id, tick = nxt
        self.busy_changed.emit(False)

    @Slot(object)
    def _show(self, state: StateAt) -> None:
        if self._wanted is not None and (state.run_id, state.asked) != self._wanted[1:]:
            return  # an older request's answer, after the user moved on
        self.state, self.error = state, None
        self.agents.set_rows(
            [
                (
                    a.name,
                    a.state,
                    a.handled,
                    a.restarts,
                    a.snapshot_bytes,
                    len(a.memory),
                    a.memory_bytes,
                    a.error or "",
                )
                for a in state.agents
            ],
            [memory_text(a.memory) or "no long-term memory" for a in state.agents],
        )
        names = {a.agent_id: a.name for a in state.agents}

        def who(agent: int | None) -> str:
            if agent is None:
                return ""
            return "(runtime)" if agent < 0 else names.get(agent, f"agent {agent}")

        rows: list[tuple[Any, ...]] = []
        tips: list[str] = []
        for q in state.queue:
            if q.task is not None:
                rows.append((q.tick, q.seq, "", "", "task", q.task))
                tips.append(f"task {q.task}")
                continue
            payload = q.payload or b""
            env = envelope_of(q.kind or 0, payload)
            body = env.body if env is not None else payload
            kind: object = q.kind if env is None else f"{env.kind} env, corr {env.corr:#x}"
            rows.append(
                (q.tick, q.seq, who(q.sender), who(q.receiver), kind, decode_payload(body)[1])
            )
            tips.append(decode_payload(body, pretty=True)[1][:2000])
        self.queue.set_rows(rows, tips)
        self.tensors.set_rows(
            [
                (t.name, "x".join(map(str, t.shape)), t.dtype, t.nbytes, t.visible_from, t.summary)
                for t in state.tensors
            ]
        )

    @Slot(str)
    def _fail(self, message: str) -> None:
        self.error = message

    def summary(self) -> str:
        """One line: which tick, rebuilt from where, and whether the replay matched."""
        s = self.state
        if s is None:
            return self.error or "Choose a tick on the timeline to see the run's state there"
        where = f"checkpoint at tick {s.checkpoint}" if s.checkpoint is not None else "the start"
        if s.from_run:
            where += f" of its parent {s.from_run} (before the fork)"
        text = (
            f"State after tick {s.tick}"
            + (f" (asked {s.asked}: nothing ran in between)" if s.asked != s.tick else "")
            + f", rebuilt from {where} by replaying {s.replayed_ticks} ticks: "
            f"{len(s.agents)} agents, {len(s.queue)} queued, {len(s.tensors)} tensors, "
            f"{int(s.counters.get('delivered', 0)):,} delivered"
        )
        if s.divergence:
            text += f"; WARNING: the replay diverged at {s.divergence}"
        return text

    def close(self) -> None:
        """Let a rebuild in progress finish, drop waiting ones, join the thread."""
        with self._lock:
            self._closed = True
            self._waiting = None
        self._pool.shutdown(wait=True, cancel_futures=True)
