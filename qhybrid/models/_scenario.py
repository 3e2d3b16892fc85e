"""The scenario the window will run, checked when it is opened and whenever its file changes.

:class:`ScenarioCheck` loads the file with :func:`~qhybrid.runtime.load_scenario` (parsing and
validating a TOML file: milliseconds, so on the GUI thread) and keeps either the checked
:class:`~qhybrid.runtime.Scenario` or its error until the file is fixed: a
:class:`QFileSystemWatcher` re-checks it on every save.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QFileSystemWatcher, QObject, QTimer, Signal

from qhybrid.runtime import Scenario, ScenarioError, load_scenario

__all__ = ["ScenarioCheck", "scenario_outline"]

logger = logging.getLogger(__name__)

#: Editors save in bursts (truncate, write, rename): re-check once the file has settled.
_SETTLE_MS = 150


class ScenarioCheck(QObject):
    """The open scenario: :attr:`scenario` when it is valid, else :attr:`error`.

    ``checked(ok)`` fires (GUI thread) after every check: on :meth:`check` and whenever the
    file changes on disk.
    """

    checked = Signal(bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.path: Path | None = None
        self.scenario: Scenario | None = None
        self.error: str | None = None
        self.checks = 0
        self._watcher = QFileSystemWatcher(self)
        self._watcher.fileChanged.connect(self._file_changed)
        self._watcher.directoryChanged.connect(self._file_changed)
        self._settle = QTimer(self)
        self._settle.setSingleShot(True)
        self._settle.setInterval(_SETTLE_MS)
        self._settle.timeout.connect(self.recheck)

    @property
    def ok(self) -> bool:
        return self.scenario is not None

    def check(self, path: str | Path) -> bool:
        """Check ``path`` now and watch it; returns whether it is a valid scenario."""
        path = Path(path)
        if path != self.path:
            self._unwatch()
            self.path = path
        self._watch()
        return self.recheck()

    def recheck(self) -> bool:
        if self.path is None:
            return False
        self.checks += 1
        try:
            self.scenario, self.error = load_scenario(self.path), None
        except ScenarioError as exc:
            self.scenario, self.error = None, str(exc)
        except (OSError, ValueError) as exc:
            self.scenario, self.error = None, f"{self.path}: {exc}"
        if self.error is not None:
            logger.info("scenario %s: %s", self.path, self.error)
        self._watch()  # a save by rename drops the old watch
        self.checked.emit(self.ok)
        return self.ok

    def _file_changed(self, _path: str) -> None:
        self._settle.start()

    def _watch(self) -> None:
        if self.path is None:
            return
        wanted = [str(self.path.parent)] + ([str(self.path)] if self.path.is_file() else [])
        have = set(self._watcher.files()) | set(self._watcher.directories())
        missing = [p for p in wanted if p not in have and Path(p).exists()]
        if missing:
            self._watcher.addPaths(missing)

    def _unwatch(self) -> None:
        paths = self._watcher.files() + self._watcher.directories()
        if paths:
            self._watcher.removePaths(paths)


def scenario_outline(scenario: Scenario) -> list[str]:
    """What a scenario will do, one plain line each: its agents, messages, tensors, tasks."""
    stop = scenario.stop
    limits = [f"max_ticks {stop.max_ticks:,}" if stop.max_ticks else "no tick limit"]
    if stop.timeout_s:
        limits.append(f"timeout {stop.timeout_s:g} s")
    lines = [
        f"{scenario.name}: {scenario.description}" if scenario.description else scenario.name,
        f"seed {scenario.seed}, {', '.join(limits)}",
        f"{len(scenario.agent_names):,} agents in {len(scenario.agents)} groups:",
    ]
    for agent in scenario.agents:
        extra = [f"on_error {agent.on_error}"]
        if agent.limits.fuel is not None:
            extra.append(f"fuel {agent.limits.fuel:,}/message")
        if agent.limits.memory_bytes is not None:
            extra.append(f"memory {agent.limits.memory_bytes // 1024:,} KiB")
        if agent.limits.timeout_ms is not None:
            extra.append(f"{agent.limits.timeout_ms:,} ms/message")
        lines.append(
            f"  {agent.name} \N{MULTIPLICATION SIGN} {agent.count}  {agent.module.name}"
            f"  ({', '.join(extra)})"
        )
    lines.append(f"{len(scenario.messages)} initial messages")
    for tensor in scenario.tensors:
        shape = "\N{MULTIPLICATION SIGN}".join(str(d) for d in tensor.shape)
        lines.append(f"tensor {tensor.name} [{shape}]")
    for task in scenario.tasks:
        lines.append(
            f"task {task.name}: {task.kind} {task.op}({', '.join(task.inputs)}) -> {task.output}"
        )
    if scenario.llm is not None:
        lines.append(f"LLM: {scenario.llm.model.name} on {scenario.llm.device}")
    return lines
