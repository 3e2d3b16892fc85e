"""The run store's runs, for the window's Runs browser, and its commands run off the GUI thread.

:class:`RunsModel` lists the runs of a :class:`~qhybrid.runtime.store.RunStore` (read-only:
the file is in WAL mode, so it reads while a headless run or a replay writes) and re-reads
them on :meth:`RunsModel.refresh`, resetting only when something changed.

:class:`RunCommand` runs ``qhybrid replay|resume|fork|diff ... --json`` against the same store
in a child process (:class:`QProcess`): the operation is the command line's own, it never
blocks the GUI thread, and its JSON answer comes back with ``finished``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QProcess,
    Qt,
    Signal,
)

from qhybrid.models._table import TableModel
from qhybrid.runtime import printable
from qhybrid.runtime.store import RunStore, StoreError, default_store_path

__all__ = ["RunCommand", "RunsModel", "format_duration"]

logger = logging.getLogger(__name__)

_Index = QModelIndex | QPersistentModelIndex


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class RunsModel(TableModel):
    """One row per recorded run, oldest first; :attr:`error` says why the store cannot be read."""

    COLUMNS = ("Run", "Kind", "Scenario", "Seed", "Status", "Ticks", "Duration", "Trace", "Parent")
    RUN, KIND, SCENARIO, SEED, STATUS, TICKS, DURATION, TRACE, PARENT = range(len(COLUMNS))

    def __init__(self, path: Path | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.path = path if path is not None else default_store_path()
        self.runs: list[dict[str, Any]] = []
        self.error: str | None = None

    def set_path(self, path: Path) -> None:
        self.path = path
        self.refresh()

    def refresh(self) -> bool:
        """Read the store's runs again; returns whether the list changed."""
        runs: list[dict[str, Any]] = []
        error = None
        if self.path.exists():
            try:
                with RunStore(self.path, readonly=True) as store:
                    runs = store.runs()
            except StoreError as exc:
                error = str(exc)
        self.error = error
        if runs == self.runs:
            return False
        self.beginResetModel()
        self.runs = runs
        self.endResetModel()
        return True

    def run_id(self, row: int) -> str:
        return str(self.runs[row]["run_id"])

    def row_of(self, run_id: str) -> int:
        return next((i for i, r in enumerate(self.runs) if r["run_id"] == run_id), -1)

    def details(self, run_id: str) -> dict[str, Any]:
        """Everything the store keeps about one run (``RunStore.run``)."""
        with RunStore(self.path, readonly=True) as store:
            return store.run(run_id)

    # -- QAbstractTableModel ---------------------------------------------------------------
    def row_count(self) -> int:
        return len(self.runs)

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        run = self.runs[index.row()]
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(run, column)
        if role == Qt.ItemDataRole.ToolTipRole:
            if column == self.TRACE:
                return run.get("trace_hash") or "no trace hash yet (not finished)"
            if column == self.STATUS and run.get("reason"):
                return printable(str(run["reason"]))
        if role == Qt.ItemDataRole.TextAlignmentRole and column in (self.SEED, self.TICKS):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def _display(self, run: dict[str, Any], column: int) -> str:
        if column == self.RUN:
            return str(run["run_id"])
        if column == self.KIND:
            return str(run["kind"])
        if column == self.SCENARIO:
            return printable(str(run["scenario_name"]))
        if column == self.SEED:
            return str(run["seed"])
        if column == self.STATUS:
            return str(run["status"])
        if column == self.TICKS:
            return "" if run["last_tick"] is None else f"{run['last_tick']:,}"
        if column == self.DURATION:
            end = run["finished"] if run["finished"] is not None else time.time()
            return format_duration(end - run["created"]) + ("" if run["finished"] else " \u2026")
        if column == self.TRACE:
            return str(run["trace_hash"] or "")[:16]
        if run["parent"] is None:
            return ""
        at = "" if run["fork_tick"] is None else f" @ tick {run['fork_tick']}"
        return f"{run['parent']}{at}"


class RunCommand(QObject):
    """One ``qhybrid <command> ... --store PATH --json`` at a time, in a child process.

    ``finished(command, exit_code, payload, error_text)`` (GUI thread): ``payload`` is the
    command's JSON answer (``{}`` when it printed none), ``error_text`` its stderr's last lines.
    """

    finished = Signal(str, int, object, str)
    started = Signal(str)

    def __init__(self, store_path: Path, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.store_path = store_path
        self.command = ""
        self._process: QProcess | None = None

    @property
    def busy(self) -> bool:
        return self._process is not None

    def start(self, command: str, *args: str) -> bool:
        """Start ``qhybrid command args...``; False (nothing started) while one still runs."""
        if self._process is not None:
            return False
        process = QProcess(self)
        process.setProgram(sys.executable)
        process.setArguments(
            ["-m", "qhybrid", command, *args, "--store", str(self.store_path), "--json"]
        )
        process.finished.connect(self._done)
        process.errorOccurred.connect(self._failed_to_start)
        self._process, self.command = process, command
        logger.info("running qhybrid %s %s", command, " ".join(args))
        process.start()
        self.started.emit(command)
        return True

    def wait(self, msecs: int = 60_000) -> bool:
        process = self._process
        return process is None or process.waitForFinished(msecs)

    def kill(self) -> None:
        process = self._process
        if process is not None:
            process.kill()
            process.waitForFinished(5_000)

    def _failed_to_start(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self._finish(-1, {}, f"could not start {sys.executable}: {error.name}")

    def _done(self, exit_code: int, _status: QProcess.ExitStatus) -> None:
        process = self._process
        if process is None:
            return
        out = bytes(process.readAllStandardOutput().data()).decode("utf-8", "replace")
        err = bytes(process.readAllStandardError().data()).decode("utf-8", "replace")
        payload: dict[str, Any] = {}
        for line in reversed(out.strip().splitlines()):
            try:
                payload = json.loads(line)
                break
            except ValueError:
                continue
        tail = "\n".join(err.strip().splitlines()[-6:])
        self._finish(exit_code, payload, tail)

    def _finish(self, exit_code: int, payload: dict[str, Any], err: str) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.deleteLater()
        self.finished.emit(self.command, exit_code, payload, err)
