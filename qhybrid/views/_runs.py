"""The Runs browser and the message inspector, over the run store (thin widgets over models)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QItemSelectionModel, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QFontDatabase, QHideEvent, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QSplitter,
    QTableView,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from qhybrid.models import (
    MessagesFilterModel,
    MessagesModel,
    RunCommand,
    RunsModel,
    parse_messages,
)
from qhybrid.runtime import printable_lines
from qhybrid.runtime.store import RunStore, StoreError
from qhybrid.views._fork_dialog import ForkDialog
from qhybrid.views._state_at import StateAtPanel
from qhybrid.views._timeline import TickTimeline

__all__ = ["MessageInspector", "RunsPanel"]

#: Seconds between re-reads of the store while the panel is shown.
REFRESH_S = 3.0


def _table(parent: QWidget) -> QTableView:
    view = QTableView(parent)
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


def _mono(parent: QWidget) -> QPlainTextEdit:
    text = QPlainTextEdit(parent)
    text.setReadOnly(True)
    text.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
    return text


class MessageInspector(QWidget):
    """The messages of a recorded run: by tick, by agent, by text; one in full below, with
    its reply chain one click away (Follow / Back, or a double click).
    ``tick_changed(tick)``: the tick chosen (None: all ticks)."""

    tick_changed = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("message_inspector")
        self.run_id: str | None = None  # the run shown
        self.model = MessagesModel(self)
        self.filter = MessagesFilterModel(self)
        self.filter.setSourceModel(self.model)
        self.run_label = QLabel("No run open: open one in the Runs panel", self)
        self.tick_spin = QSpinBox(self)
        self.tick_spin.setObjectName("messages_tick")
        self.tick_spin.setRange(-1, 0)
        self.tick_spin.setSpecialValueText("all ticks")
        self.tick_spin.setPrefix("tick ")
        self.tick_spin.valueChanged.connect(self._tick_changed)
        self.timeline = TickTimeline(self)
        self.timeline.tick_chosen.connect(self.tick_spin.setValue)
        # Wide enough for "tick 12,345" and an agent's name, whatever the window's width.
        self.tick_spin.setMinimumWidth(self.fontMetrics().horizontalAdvance("tick 000000") + 30)
        self.agent_combo = QComboBox(self)
        self.agent_combo.setObjectName("messages_agent")
        self.agent_combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.agent_combo.setMinimumContentsLength(10)
        self.agent_combo.currentIndexChanged.connect(self._agent_changed)
        self.text_edit = QLineEdit(self)
        self.text_edit.setObjectName("messages_filter")
        self.text_edit.setPlaceholderText("Filter (agent, status, kind, payload)")
        self.text_edit.setClearButtonEnabled(True)
        self.text_edit.setMinimumWidth(90)
        self.text_edit.textChanged.connect(self.filter.set_text)
        self.count_label = QLabel(self)
        self.back_button = QPushButton("\N{LEFTWARDS ARROW} Back", self)
        self.back_button.setObjectName("messages_back")
        self.back_button.setToolTip("The previous message of this one's reply chain")
        self.back_button.clicked.connect(lambda: self.follow(forward=False))
        self.follow_button = QPushButton("Follow \N{RIGHTWARDS ARROW}", self)
        self.follow_button.setObjectName("messages_follow")
        self.follow_button.setToolTip(
            "The next message of this one's reply chain (same correlation id): a request's "
            "reply, and round again (double click a row does the same)"
        )
        self.follow_button.clicked.connect(lambda: self.follow(forward=True))
        self.table = _table(self)
        self.table.setObjectName("messages_table")
        self.table.setModel(self.filter)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(-1, Qt.SortOrder.AscendingOrder)  # trace order
        for column, width in enumerate((40, 44, 48, 84, 84, 44, 38, 110, 64, 56)):
            self.table.setColumnWidth(column, width)
        self.table.doubleClicked.connect(lambda _i: self.follow(forward=True))
        self.detail = _mono(self)
        self.detail.setObjectName("message_detail")
        self.table.selectionModel().currentRowChanged.connect(self._show_detail)
        for signal in (
            self.filter.rowsInserted,
            self.filter.rowsRemoved,
            self.filter.modelReset,
            self.filter.layoutChanged,
        ):
            signal.connect(self._count)
        bar = QHBoxLayout()
        bar.addWidget(self.tick_spin)
        bar.addWidget(self.agent_combo)
        bar.addWidget(self.text_edit, 1)
        bar.addWidget(self.count_label)
        bar.addWidget(self.back_button)
        bar.addWidget(self.follow_button)
        split = QSplitter(Qt.Orientation.Vertical, self)
        split.setObjectName("messages_split")
        split.addWidget(self.table)
        split.addWidget(self.detail)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)
        split.setSizes([300, 100])
        split.setChildrenCollapsible(False)
        line = self.fontMetrics().height()
        self.table.setMinimumHeight(4 * line + 12)  # the header and three messages
        self.detail.setMinimumHeight(2 * line + 10)  # a message in full: two lines at least
        self.run_label.setMinimumWidth(40)
        self.run_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.setSpacing(2)
        layout.addWidget(self.run_label)
        layout.addWidget(self.timeline)
        layout.addLayout(bar)
        layout.addWidget(split, 1)

    def show_run(self, store_path: Path, run_id: str) -> None:
        """Read the run's trace and show its messages (on the GUI thread: a trace of tens of
        thousands of records takes a fraction of a second)."""
        with RunStore(store_path, readonly=True) as store:
            run = store.run(run_id)
            messages = parse_messages(store.records(run_id))
            payloads = store.payloads(run_id)
            usage = store.message_usage(run_id)
        names = [a["name"] for a in (run.get("summary") or {}).get("agents", [])]
        self.model.load(messages, names, payloads, usage)
        self.run_id = run_id
        self.run_label.setText(f"Run {run_id} ({run['scenario_name']}, seed {run['seed']})")
        self.tick_spin.setRange(-1, max((m.tick for m in messages), default=0))
        self.timeline.set_counts(self.model.per_tick())
        self.tick_spin.setValue(-1)
        self.timeline.set_tick(None)
        self.agent_combo.blockSignals(True)
        self.agent_combo.clear()
        self.agent_combo.addItem("all agents", None)
        for i, name in enumerate(names):
            self.agent_combo.addItem(name, i)
        self.agent_combo.blockSignals(False)
        self.filter.set_agent(None)
        self._count()

    def _tick_changed(self, value: int) -> None:
        tick = None if value < 0 else value
        self.filter.set_tick(tick)
        self.timeline.set_tick(tick)
        self.tick_changed.emit(tick)

    def current_row(self) -> int:
        """The source row of the message shown in full, or -1."""
        index = self.table.currentIndex()
        return self.filter.mapToSource(index).row() if index.isValid() else -1

    def go_to_row(self, row: int) -> None:
        """Show message ``row`` (a source row): its tick on the timeline, selected, in full.
        Filters that would hide it (tick, agent, text) give way."""
        m = self.model.messages[row]
        if self.filter.tick is not None and self.filter.tick != m.tick:
            self.tick_spin.setValue(m.tick)
        if self.filter.agent is not None and self.filter.agent not in (m.sender, m.receiver):
            self.agent_combo.setCurrentIndex(0)
        proxy = self.filter.mapFromSource(self.model.index(row, 0))
        if not proxy.isValid():
            self.text_edit.clear()
            proxy = self.filter.mapFromSource(self.model.index(row, 0))
        self.table.setCurrentIndex(proxy)
        self.table.selectRow(proxy.row())
        self.table.scrollTo(proxy)

    def select_record(self, n: int, tick: int | None = None) -> None:
        """Select the first message whose trace record is ``n`` or after it (of ``tick``,
        when given: else that tick's first message, the record being no message)."""
        messages = self.model.messages
        rows = [i for i, m in enumerate(messages) if tick is None or m.tick == tick]
        row = next((i for i in rows if messages[i].n >= n), rows[0] if rows else -1)
        if row >= 0:
            self.go_to_row(row)

    def follow(self, *, forward: bool = True) -> bool:
        """Along the current message's reply chain, one step; False when it has none."""
        row = self.current_row()
        if row < 0:
            return False
        target = self.model.follow(row) if forward else self.model.back(row)
        if target is None:
            return False
        self.go_to_row(target)
        return True

    def _agent_changed(self, _index: int) -> None:
        data = self.agent_combo.currentData()
        self.filter.set_agent(None if data is None else int(data))

    def _count(self, *_args: Any) -> None:
        self.count_label.setText(f"{self.filter.rowCount():,} of {self.model.rowCount():,}")
        # The message in full is the current row's, or none: never one the filter hid.
        self._show_detail(self.table.currentIndex())

    def _show_detail(self, current: Any, _previous: Any = None) -> None:
        if not current.isValid():
            self.detail.setPlainText("")
            self.follow_button.setEnabled(False)
            self.back_button.setEnabled(False)
            return
        row = self.filter.mapToSource(current).row()
        self.detail.setPlainText(self.model.detail(row))
        chained = len(self.model.chain(row)) > 1
        self.follow_button.setEnabled(chained)
        self.back_button.setEnabled(chained)


class RunsPanel(QWidget):
    """The store's runs; open one (details and messages), replay, resume, fork, diff."""

    run_opened = Signal(str)

    def __init__(
        self,
        runs: RunsModel,
        inspector: MessageInspector,
        parent: QWidget | None = None,
        state_panel: StateAtPanel | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("runs_panel")
        self.runs = runs
        self.inspector = inspector
        self.state_panel = state_panel
        if state_panel is not None:
            inspector.tick_changed.connect(state_panel.set_tick)
            state_panel.fork_requested.connect(self.fork_opened)
        #: Shows a dialog, True when accepted (tests answer in its place).
        self.exec_dialog: Callable[[QDialog], bool] = lambda dialog: (
            dialog.exec() == QDialog.DialogCode.Accepted
        )
        #: Asks a yes/no question, True for yes (tests answer in its place).
        self.confirm: Callable[[str], bool] = self._confirm
        self.command = RunCommand(runs.path, self)
        self.command.finished.connect(self._command_finished)
        self.opened: str | None = None
        self.last_diff: dict[str, Any] | None = None

        self.store_label = QLabel(self)
        self.store_label.setObjectName("runs_store")
        # One line at the tool bar's end (the full text in its tooltip): rows, not a header,
        # get the height of a small window.
        self.store_label.setMinimumWidth(40)
        self.store_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.table = _table(self)
        self.table.setObjectName("runs_table")
        self.table.setModel(runs)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        # Run ids keep their date and their suffix (elided in the middle), hashes their
        # start; the columns a user scans first get the room (the rest are a scroll away).
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        for column, width in enumerate((122, 34, 84, 40, 78, 45, 52, 90)):
            self.table.setColumnWidth(column, width)
        self.table.doubleClicked.connect(lambda _i: self.open_selected())
        self.table.selectionModel().selectionChanged.connect(self._update_buttons)

        # A tool bar, not a row of buttons: it folds what does not fit behind a chevron, so
        # the panel stays narrow when docked beside the log.
        self.toolbar = QToolBar(self)
        self.toolbar.setObjectName("runs_toolbar")
        self.toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)

        def button(text: str, name: str, tip: str) -> QAction:
            act = QAction(text, self)
            act.setObjectName(name)
            act.setToolTip(tip)
            self.toolbar.addAction(act)
            return act

        self.open_button = button("Open", "runs_open", "Show the run's details and messages")
        self.open_button.triggered.connect(self.open_selected)
        self.diff_button = button("Diff", "runs_diff", "Where two selected runs first differ")
        self.diff_button.triggered.connect(self.diff_selected)
        self.replay_button = button(
            "Replay", "runs_replay", "Re-execute the run (LLM answers from the store) and compare"
        )
        self.replay_button.triggered.connect(lambda: self._run_on_selected("replay"))
        self.resume_button = button(
            "Resume", "runs_resume", "Continue an interrupted run from its last checkpoint"
        )
        self.resume_button.triggered.connect(lambda: self._run_on_selected("resume"))
        self.refresh_button = button("Refresh", "runs_refresh", "Read the store again")
        self.refresh_button.triggered.connect(self.refresh)
        self.toolbar.addSeparator()
        self.fork_button = button(
            "Fork\N{HORIZONTAL ELLIPSIS}",
            "runs_fork",
            "A new run from this run at a tick: seed, config, modules, model",
        )
        self.fork_button.triggered.connect(lambda: self.fork_selected())
        self.toolbar.addSeparator()
        self.delete_button = button(
            "Delete\N{HORIZONTAL ELLIPSIS}",
            "runs_delete",
            "Delete the selected runs from the store (asks first)",
        )
        self.delete_button.triggered.connect(self.delete_selected)
        self.details = _mono(self)
        self.details.setObjectName("runs_details")
        self.status_label = QLabel(self)
        self.status_label.setObjectName("runs_status")
        self.status_label.setWordWrap(True)

        self.details.setMinimumWidth(120)
        self.table.setMinimumWidth(160)
        row = self.table.verticalHeader().defaultSectionSize()
        self.table.setMinimumHeight(4 * row + 20)  # the header, three runs, a scroll bar
        split = QSplitter(Qt.Orientation.Horizontal, self)
        split.setObjectName("runs_details_split")
        split.addWidget(self.table)
        split.addWidget(self.details)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setSizes([600, 400])
        split.setChildrenCollapsible(False)
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.toolbar)
        top.addWidget(self.store_label, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.setSpacing(2)
        layout.addLayout(top)
        layout.addWidget(split, 1)
        layout.addWidget(self.status_label)

        self.timer = QTimer(self)
        self.timer.setInterval(int(REFRESH_S * 1000))
        self.timer.timeout.connect(self.refresh)
        self.refresh()

    # -- what the buttons do ------------------------------------------------------------------
    def refresh(self) -> None:
        self.runs.refresh()
        count = self.runs.rowCount()
        where = f"run store {self.runs.path}"
        if self.runs.error:
            self.store_label.setText(f"store unreadable \N{MIDDLE DOT} {where}")
            self.status_label.setText(self.runs.error)  # (wraps: the whole message shows)
        elif not self.runs.path.exists():
            self.store_label.setText(
                f"no runs recorded yet (`qhybrid --headless` records) \N{MIDDLE DOT} {where}"
            )
        else:
            self.store_label.setText(f"{count} runs \N{MIDDLE DOT} {where}")
        self.store_label.setToolTip(f"Run store: {self.runs.path}")
        self._update_buttons()

    def selected_ids(self) -> list[str]:
        rows = sorted({i.row() for i in self.table.selectionModel().selectedRows()})
        return [self.runs.run_id(r) for r in rows]

    def select(self, *run_ids: str) -> None:
        selection = self.table.selectionModel()
        selection.clearSelection()
        for run_id in run_ids:
            row = self.runs.row_of(run_id)
            if row >= 0:
                selection.select(
                    self.runs.index(row, 0),
                    QItemSelectionModel.SelectionFlag.Select
                    | QItemSelectionModel.SelectionFlag.Rows,
                )

    def open_selected(self) -> None:
        ids = self.selected_ids()
        if ids:
            self.open_run(ids[0])

    def open_run(self, run_id: str) -> None:
        try:
            run = self.runs.details(run_id)
            self.inspector.show_run(self.runs.path, run_id)
        except StoreError as exc:
            self.status_label.setText(str(exc))
            return
        self.opened = run_id
        self.details.setPlainText(_details_text(run))
        if self.state_panel is not None:
            self.state_panel.show_run(self.runs.path, run_id)
        self.run_opened.emit(run_id)

    def diff_selected(self) -> None:
        ids = self.selected_ids()
        if len(ids) == 2:
            self._start("diff", ids[0], ids[1], "--context", "2")

    def fork_selected(self, tick: int | None = None) -> None:
        """The fork dialog for the selected run, from ``tick`` (default: the tick chosen in
        the message inspector, if that run is open, else the middle of the run)."""
        ids = self.selected_ids()
        if not ids:
            return
        try:
            run = self.runs.details(ids[0])
        except StoreError as exc:
            self.status_label.setText(str(exc))
            return
        if tick is None:
            chosen = self.inspector.tick_spin.value()
            tick = chosen if ids[0] == self.opened and chosen >= 0 else None
        if tick is None:
            tick = int(run.get("last_tick") or 0) // 2
        groups = sorted(
            {str(a["name"]).rsplit("-", 1)[0] for a in (run.get("summary") or {}).get("agents", [])}
        )
        dialog = ForkDialog(run, tick, groups, self)
        try:
            if not self.exec_dialog(dialog):
                return
            args, problem = dialog.arguments()
        finally:
            dialog.deleteLater()
        if problem is not None:
            self.status_label.setText(f"fork: {problem}")
            return
        self._start("fork", *args)

    def fork_opened(self, tick: int) -> None:
        """ "Fork from here": the open run, from ``tick``."""
        if self.opened is not None:
            self.select(self.opened)
            self.fork_selected(tick)

    def delete_selected(self) -> None:
        ids = self.selected_ids()
        if not ids:
            return
        children: list[str] = []
        for run_id in ids:
            try:
                children += self.runs.details(run_id).get("children") or []
            except StoreError:
                pass
        text = (
            f"Delete {len(ids)} run{'s' if len(ids) > 1 else ''} from {self.runs.path}?\n\n"
            + "\n".join(ids)
            + "\n\nIts trace, logs, checkpoints and the job outputs no other run uses go; "
            "this cannot be undone."
        )
        forks = [c for c in children if c not in ids]
        if forks:
            text += f"\n\nIts forks ({', '.join(forks)}) keep their own copy and go on working."
        if self.confirm(text):
            self._start("runs", "delete", *ids)

    def _confirm(self, text: str) -> bool:
        answer = QMessageBox.question(
            self,
            "Delete runs",
            text,
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Cancel,
        )
        return answer == QMessageBox.StandardButton.Yes

    def _run_on_selected(self, command: str) -> None:
        ids = self.selected_ids()
        if ids:
            self._start(command, ids[0])

    def _start(self, command: str, *args: str) -> None:
        self.command.store_path = self.runs.path
        if self.command.start(command, *args):
            self.status_label.setText(f"qhybrid {command} {' '.join(args)} \N{HORIZONTAL ELLIPSIS}")
        self._update_buttons()

    def _command_finished(self, command: str, code: int, payload: object, err: str) -> None:
        data = payload if isinstance(payload, dict) else {}
        self.refresh()
        if command == "diff":
            self._show_diff(code, data, err)
            return
        if code != 0:
            self.status_label.setText(f"qhybrid {command} failed (exit {code}): {err}")
            return
        if command == "runs":  # runs delete
            gone = [str(d["run_id"]) for d in data.get("deleted", [])]
            if self.opened in gone:
                self.opened = None
                self.inspector.model.clear()
                self.inspector.run_label.setText("The run shown was deleted")
                self.details.clear()
                if self.state_panel is not None:
                    self.state_panel.run_id = None
            self.status_label.setText(f"deleted {', '.join(gone)}")
            return
        new = data.get("run_id")
        text = f"qhybrid {command}: {data.get('status', 'done')}"
        if new:
            text += f", run {new}"
            self.select(str(new))
        if data.get("trace_hash"):
            text += f", trace {str(data['trace_hash'])[:16]}"
        self.status_label.setText(text)

    def _show_diff(self, code: int, data: dict[str, Any], err: str) -> None:
        if code not in (0, 1) or not data:
            self.status_label.setText(f"qhybrid diff failed (exit {code}): {err}")
            return
        self.last_diff = data
        a, b = data.get("run_a"), data.get("run_b")
        if data.get("identical"):
            self.status_label.setText(f"{a} and {b}: identical traces")
            self.details.setPlainText(f"{a}\n{b}\n\nidentical traces")
            return
        tick = int(data.get("first_tick", 0))
        lines = [
            f"{a} vs {b}",
            f"first divergence: record {data.get('first_record')}, tick {tick}",
            f"  a: {data.get('a')}",
            f"  b: {data.get('b')}",
            "",
            "first tick each agent's messages differ:",
        ]
        agents = data.get("agents") or {}
        lines.extend(
            f"  {name}: tick {t}" for name, t in sorted(agents.items(), key=lambda kv: kv[1])
        )
        self.details.setPlainText(printable_lines("\n".join(lines)))
        self.status_label.setText(f"first divergence at tick {tick}: showing run {a} there")
        # Jump to the first divergence: run A's messages of that tick.
        if isinstance(a, str):
            self.open_run(a)
            self.details.setPlainText(printable_lines("\n".join(lines)))
            self.inspector.tick_spin.setValue(tick)
            self.inspector.select_record(int(data.get("first_record") or 0), tick)

    def _update_buttons(self, *_args: Any) -> None:
        n = len(self.selected_ids())
        idle = not self.command.busy
        self.open_button.setEnabled(n >= 1)
        self.diff_button.setEnabled(n == 2 and idle)
        for b in (self.replay_button, self.resume_button, self.fork_button):
            b.setEnabled(n == 1 and idle)
        self.delete_button.setEnabled(n >= 1 and idle)

    # -- refresh only while shown ---------------------------------------------------------------
    def showEvent(self, event: QShowEvent) -> None:
        self.refresh()
        self.timer.start()
        super().showEvent(event)

    def hideEvent(self, event: QHideEvent) -> None:
        self.timer.stop()
        super().hideEvent(event)

    def close_command(self) -> None:
        """Stop a command still running (the window is closing)."""
        self.timer.stop()
        self.command.kill()
        if self.state_panel is not None:
            self.state_panel.close_model()


def _details_text(run: dict[str, Any]) -> str:
    summary = run.get("summary") or {}
    lines = [
        f"run {run['run_id']} ({run['kind']}), {run['scenario_name']}, seed {run['seed']}",
        f"status {run['status']}" + (f": {run['reason']}" if run.get("reason") else ""),
        f"ticks {run.get('last_tick')}, records {run.get('records')}, "
        f"checkpoints {run.get('checkpoints')}, LLM requests {run.get('llm_requests')}",
        f"trace {run.get('trace_hash') or '(none yet)'}",
        f"scenario {run.get('scenario_path')}",
    ]
    if run.get("parent"):
        gone = " (deleted since)" if run.get("parent_deleted") else ""
        lines.append(f"forked from {run['parent']}{gone} at tick {run.get('fork_tick')}")
    if run.get("children"):
        lines.append(f"forks: {', '.join(run['children'])}")
    agents = summary.get("agents") or []
    if agents:
        lines.append(f"{len(agents)} agents:")
        for a in agents:
            error = f"  {a['error']}" if a.get("error") else ""
            lines.append(f"  {a['name']}: {a['state']}, handled {a['handled']}{error}")
    return printable_lines("\n".join(lines))
