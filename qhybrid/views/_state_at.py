"""The state of a recorded run at the chosen tick: agents (state, counters, snapshot and
memory), the queue and the tensors, rebuilt by replay off the GUI thread (a thin view over
:class:`~qhybrid.models.StateAtModel`)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSortFilterProxyModel, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from qhybrid.models import RowsModel, StateAtModel, memory_text

__all__ = ["StateAtPanel"]

#: A tick chosen on the timeline is rebuilt once the scrubber rests this long (ms).
SETTLE_MS = 250


def _table(model: RowsModel, parent: QWidget, name: str) -> QTableView:
    view = QTableView(parent)
    view.setObjectName(name)
    proxy = QSortFilterProxyModel(view)
    proxy.setSourceModel(model)
    proxy.setSortRole(Qt.ItemDataRole.UserRole)
    view.setModel(proxy)
    view.setSortingEnabled(True)
    view.sortByColumn(-1, Qt.SortOrder.AscendingOrder)
    view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    view.setAlternatingRowColors(True)
    view.setWordWrap(False)
    vertical = view.verticalHeader()
    vertical.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
    vertical.setDefaultSectionSize(view.fontMetrics().height() + 6)
    vertical.hide()
    view.horizontalHeader().setStretchLastSection(True)
    return view


class StateAtPanel(QWidget):
    """``fork_requested(tick)``: the user asked to fork the open run from the tick shown."""

    fork_requested = Signal(int)

    def __init__(self, parent: QWidget | None = None, model: StateAtModel | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("state_at_panel")
        self.model = model or StateAtModel(self)
        self.store_path: Path | None = None
        self.run_id: str | None = None
        self.tick: int | None = None
        self.title = QLabel("State at tick", self)
        self.title.setStyleSheet("font-weight: bold")
        self.summary = QLabel(self.model.summary(), self)
        self.summary.setObjectName("state_at_summary")
        self.summary.setWordWrap(True)
        self.fork_button = QPushButton("Fork from here\N{HORIZONTAL ELLIPSIS}", self)
        self.fork_button.setObjectName("state_at_fork")
        self.fork_button.setToolTip("A new run from this tick, with another seed or changes")
        self.fork_button.setEnabled(False)
        self.fork_button.clicked.connect(self._fork)
        self.tabs = QTabWidget(self)
        self.agents = _table(self.model.agents, self, "state_agents")
        self.queue = _table(self.model.queue, self, "state_queue")
        self.tensors = _table(self.model.tensors, self, "state_tensors")
        for column, width in enumerate((80, 60, 60, 55, 75, 75, 70)):
            self.agents.setColumnWidth(column, width)
        for column, width in enumerate((60, 45, 80, 80, 70)):
            self.queue.setColumnWidth(column, width)
        self.memory = QPlainTextEdit(self)
        self.memory.setObjectName("state_memory")
        self.memory.setReadOnly(True)
        self.memory.setPlaceholderText("Select an agent: its long-term memory at this tick")
        agents_split = QSplitter(Qt.Orientation.Vertical, self)
        agents_split.addWidget(self.agents)
        agents_split.addWidget(self.memory)
        agents_split.setSizes([260, 70])
        self.agents.selectionModel().currentRowChanged.connect(self._agent_chosen)
        self.tabs.addTab(agents_split, "Agents")
        self.tabs.addTab(self.queue, "Queue")
        self.tabs.addTab(self.tensors, "Tensors")
        top = QHBoxLayout()
        top.addWidget(self.title, 1)
        top.addWidget(self.fork_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(top)
        layout.addWidget(self.summary)
        layout.addWidget(self.tabs, 1)
        self._settle = QTimer(self)
        self._settle.setSingleShot(True)
        self._settle.setInterval(SETTLE_MS)
        self._settle.timeout.connect(self._ask)
        self.model.ready.connect(self._refresh)
        self.model.failed.connect(self._refresh)
        self.model.busy_changed.connect(self._refresh)

    def show_run(self, store_path: Path, run_id: str) -> None:
        self.store_path, self.run_id, self.tick = store_path, run_id, None
        self.model.agents.set_rows([])
        self.model.queue.set_rows([])
        self.model.tensors.set_rows([])
        self.model.state = None
        self.title.setText("State at tick \N{HORIZONTAL ELLIPSIS}")
        self.title.setToolTip(f"run {run_id}")
        self.summary.setText("Choose a tick on the timeline to see the run's state there")
        self.fork_button.setEnabled(True)
        self.memory.clear()

    def set_tick(self, tick: int | None) -> None:
        """The tick chosen on the timeline (None: all ticks, no state to show)."""
        self.tick = tick
        if tick is None or self.run_id is None:
            return
        self.title.setText(f"State at tick {tick}")
        self._settle.start()

    def _ask(self) -> None:
        if self.tick is None or self.run_id is None or self.store_path is None:
            return
        self.model.request(self.store_path, self.run_id, self.tick)
        self._refresh()

    def _refresh(self, *_args: object) -> None:
        text = self.model.summary()
        if self.model.busy:
            text = f"Rebuilding the state at tick {self.tick} by replay\N{HORIZONTAL ELLIPSIS}"
        elif self.model.error:
            text = f"Cannot rebuild the state: {self.model.error}"
        self.summary.setText(text)
        self._agent_chosen(self.agents.currentIndex())

    def _agent_chosen(self, current: object, _previous: object = None) -> None:
        state = self.model.state
        index = current
        if state is None or not getattr(index, "isValid", lambda: False)():
            self.memory.clear()
            return
        proxy = self.agents.model()
        assert isinstance(proxy, QSortFilterProxyModel)
        row = proxy.mapToSource(index).row()  # type: ignore[arg-type]
        if not 0 <= row < len(state.agents):
            return
        agent = state.agents[row]
        lines = [
            f"{agent.name}: {agent.state}, handled {agent.handled}, restarts {agent.restarts}",
            "snapshot: " + (f"{agent.snapshot_bytes:,} bytes" if agent.snapshot_bytes else "none"),
            f"long-term memory: {len(agent.memory)} keys, {agent.memory_bytes:,} bytes",
            memory_text(agent.memory, limit=200),
        ]
        if agent.error:
            lines.insert(1, f"error: {agent.error}")
        self.memory.setPlainText("\n".join(line for line in lines if line))

    def _fork(self) -> None:
        self.fork_requested.emit(self.tick if self.tick is not None else 0)

    def close_model(self) -> None:
        self._settle.stop()
        self.model.close()
