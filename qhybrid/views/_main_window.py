"""The main window: live charts in the middle, the agents, the log and the chat in docks,
the run's controls in a toolbar, the run's state and the GPU adapter in the status bar.

The window only observes and steers. A :class:`~qhybrid.models.RuntimeController` runs the
scenario on its own thread (and the worker processes and GPU thread beside it); the window's
buttons call its non-blocking methods, and :class:`~qhybrid.models.LiveModels` brings the
run's events and metrics to the GUI thread in batches, about 40 times a second.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import PySide6
from PySide6.QtCore import (
    QByteArray,
    QCoreApplication,
    QEvent,
    QSettings,
    Qt,
    QTimer,
    Signal,
    qVersion,
)
from PySide6.QtGui import (
    QAction,
    QActionGroup,
    QCloseEvent,
    QDragEnterEvent,
    QDropEvent,
    QKeySequence,
    QShowEvent,
)
from PySide6.QtWidgets import (
    QApplication,
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QSpinBox,
    QSplitter,
    QTabWidget,
    QToolBar,
    QWidget,
)

import qhybrid
from qhybrid.models import (
    DebuggerModels,
    LiveModels,
    QuestionBox,
    QuestionsModel,
    RunsModel,
    RuntimeController,
    ScenarioCheck,
    ServerModel,
    SessionState,
    plain_tooltip,
)
from qhybrid.models._conversations import ConversationsModel
from qhybrid.models._local_chat import LocalChat
from qhybrid.runtime import printable
from qhybrid.views._agent_detail import AgentDetailPanel
from qhybrid.views._charts import ChartsWidget
from qhybrid.views._chat import ChatPanel
from qhybrid.views._chat_standalone import StandaloneChatPanel
from qhybrid.views._dock_tabs import hide_stale_dock_tab_bars
from qhybrid.views._graph import GraphPanel
from qhybrid.views._questions import QuestionsPanel
from qhybrid.views._runs import MessageInspector, RunsPanel
from qhybrid.views._scenario import ScenarioPanel
from qhybrid.views._server import ServerPanel
from qhybrid.views._state_at import StateAtPanel
from qhybrid.views._tables import AgentsView, LogView
from qhybrid.views._theme import THEMES, apply_theme
from qhybrid.views._update import add_update_actions

__all__ = ["MainWindow"]

logger = logging.getLogger(__name__)

# QSettings keys.
_GEOMETRY_KEY = "main_window/geometry"
_STATE_KEY = "main_window/state"
_SCENARIO_DIR_KEY = "main_window/last_scenario_dir"
_SCENARIO_KEY = "main_window/last_scenario"
_WORKERS_KEY = "runtime/workers"
_LOG_LEVEL_KEY = "log/min_level"
_THEME_KEY = "view/theme"

_DEFAULT_SIZE = (1100, 720)
#: The dock layout's version: a layout saved before the Scenario dock existed would leave it
#: off-screen, so it is not restored (the default layout is used).
_LAYOUT_VERSION = 2
_MAX_WORKERS = 64

_STATE_TEXT = {
    SessionState.IDLE: "Idle",
    SessionState.STARTING: "Starting\N{HORIZONTAL ELLIPSIS}",
    SessionState.RUNNING: "Running",
    SessionState.PAUSED: "Paused",
    SessionState.STOPPING: "Stopping\N{HORIZONTAL ELLIPSIS}",
    SessionState.COMPLETED: "Completed",
    SessionState.STOPPED: "Stopped",
    SessionState.FAILED: "Failed",
}


class MainWindow(QMainWindow):
    """The qhybrid main window.

    ``scenario_path`` is the scenario the controls run (given at start, opened with
    File > Open scenario..., dropped on the window, or the last one used); ``scenario_changed``
    fires with it (a ``Path``) whenever it is set. ``controller`` runs it; the window makes
    its own when none is given, and shuts it down (runtime, worker processes, GPU thread,
    shared memory) when it closes. Geometry, dock layout, the last scenario, the number of
    workers, the log level and the theme are kept with QSettings.
    """

    scenario_changed = Signal(object)

    def __init__(
        self,
        scenario_path: str | Path | None = None,
        *,
        controller: RuntimeController | None = None,
    ) -> None:
        super().__init__()
        self.scenario_path: Path | None = None
        settings = _settings()
        self.setWindowTitle("qhybrid")
        self.setObjectName("qhybrid_main_window")  # saveState() needs object names
        self.setAcceptDrops(True)
        self.setDockOptions(
            QMainWindow.DockOption.AnimatedDocks | QMainWindow.DockOption.AllowTabbedDocks
        )

        self.controller = controller or RuntimeController(self)
        self.controller.workers = _int(settings.value(_WORKERS_KEY), self.controller.workers)
        self.live = LiveModels(self.controller, self)
        #: Frames painted: repaints of the window that showed a refresh of the models not
        #: shown before (what ``qhybrid bench ui`` reports as fps).
        self.painted_frames = 0
        self._painted_refresh = 0

        self.charts = ChartsWidget(self.live, self)
        # The middle: the live run's charts, or the run store's recorded runs (the list above,
        # a run's messages below), which need the room more than a dock gives them.
        self.central_tabs = QTabWidget(self)
        self.central_tabs.setObjectName("central_tabs")
        self.central_tabs.setDocumentMode(True)
        self.central_tabs.addTab(self.charts, "Live run")
        self.setCentralWidget(self.central_tabs)
        self.agents_view = AgentsView(self.live, self)
        self.log_view = LogView(self.live, self)
        self.chat_panel = ChatPanel(self.live, self.controller, self)
        self.agents_dock = self._dock("Agents", "agents_dock", self.agents_view)
        self.log_dock = self._dock("Log", "log_dock", self.log_view)
        # The chat: with a local model, no run needed (its own threads), or with an LLM agent
        # of the run.
        self.local_chat = LocalChat(self, device=self.controller.device)
        self.conversations = ConversationsModel(self.local_chat, parent=self)
        self.model_chat_panel = StandaloneChatPanel(self.conversations, self)
        self.chat_tabs = QTabWidget(self)
        self.chat_tabs.setObjectName("chat_tabs")
        self.chat_tabs.setDocumentMode(True)
        self.chat_tabs.addTab(self.model_chat_panel, "Model")
        self.chat_tabs.addTab(self.chat_panel, "Run agent")
        self.chat_dock = self._dock("Chat", "chat_dock", self.chat_tabs)
        self.live.chat.changed.connect(self._run_chat_changed)
        self.server_model = ServerModel(self)
        self.server_panel = ServerPanel(self.server_model, self)
        self.server_dock = self._dock("Server", "server_dock", self.server_panel)
        self.scenario_check = ScenarioCheck(self)
        self.scenario_panel = ScenarioPanel(self.scenario_check, self)
        self.scenario_dock = self._dock("Scenario", "scenario_dock", self.scenario_panel)
        self.scenario_check.checked.connect(self._scenario_checked)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.agents_dock)
        self.tabifyDockWidget(self.agents_dock, self.scenario_dock)
        self.agents_dock.raise_()
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.log_dock)
        self.splitDockWidget(self.log_dock, self.chat_dock, Qt.Orientation.Horizontal)
        self.tabifyDockWidget(self.chat_dock, self.server_dock)
        # Agents' questions to a person (ABI v2 ask): asked here, the run waits for the answer.
        self.questions_box = QuestionBox(self)
        self.controller.answer = self.questions_box
        self.questions_model = QuestionsModel(self.questions_box, self)
        self.questions_panel = QuestionsPanel(self.questions_model, self)
        self.questions_dock = self._dock("Questions", "questions_dock", self.questions_panel)
        self.tabifyDockWidget(self.chat_dock, self.questions_dock)
        self.questions_panel.waiting.connect(self._questions_waiting)
        # The run store: its runs, and a recorded run's messages.
        self.runs_model = RunsModel(parent=self)
        self.message_inspector = MessageInspector(self)
        # The state at the chosen tick (rebuilt by replay), beside the messages of that tick.
        self.state_panel = StateAtPanel(self)
        self.runs_panel = RunsPanel(
            self.runs_model, self.message_inspector, self, state_panel=self.state_panel
        )
        self.runs_split = QSplitter(Qt.Orientation.Vertical, self)
        self.runs_split.setObjectName("runs_split")
        self.runs_split.addWidget(self.runs_panel)
        self.tick_split = QSplitter(Qt.Orientation.Horizontal, self)
        self.tick_split.setObjectName("tick_split")
        self.tick_split.addWidget(self.message_inspector)
        self.tick_split.addWidget(self.state_panel)
        self.tick_split.setSizes([600, 400])
        self.tick_split.setStretchFactor(0, 3)  # the messages get the room a window gains
        self.tick_split.setStretchFactor(1, 2)
        self.runs_split.addWidget(self.tick_split)
        # The runs list keeps about 150 pixels (three runs and its details; more by dragging),
        # the tick's messages and state get the rest, on a small screen or a large one.
        self.runs_split.setStretchFactor(0, 0)
        self.runs_split.setStretchFactor(1, 1)
        self.runs_split.setSizes([150, 400])
        self.runs_split.setChildrenCollapsible(False)
        # Squeezed rather than growing the window (the charts' tab asks for almost nothing).
        self.runs_split.setMinimumSize(100, 60)
        self.central_tabs.addTab(self.runs_split, "Recorded runs")
        self.chat_dock.raise_()
        self.log_view.set_min_level(_int(settings.value(_LOG_LEVEL_KEY), 20))

        self._create_actions()
        self._create_toolbar()
        self._create_menus()
        self._create_status_bar()
        self._add_debugger_views()

        self.controller.state_changed.connect(self._state_changed)
        self.controller.error.connect(self._show_error)
        self.controller.run_finished.connect(self._run_finished)
        self.live.adapter_changed.connect(self._adapter_changed)
        self.live.progress.connect(self.progress_label.setText)

        self._restore_geometry()
        hide_stale_dock_tab_bars(self)
        self._theme = str(settings.value(_THEME_KEY, "system") or "system")
        if self._theme != "system":
            self.set_theme(self._theme)
        if scenario_path is None:
            last = str(settings.value(_SCENARIO_KEY, "") or "")
            if last and Path(last).is_file():
                scenario_path = last
        if scenario_path is not None:
            self.set_scenario_path(scenario_path)
        self._state_changed(self.controller.state, "")
        if self.scenario_path is None:
            self.statusBar().showMessage("No scenario open")

    def _add_debugger_views(self) -> None:
        """The agent graph (a tab in the middle) and the per-agent detail (a dock beside the
        agents), over the live run or the recorded run opened in Recorded runs."""
        self.debugger = DebuggerModels(self.controller, self)
        self.graph_panel = GraphPanel(self.debugger, self)
        self.central_tabs.addTab(self.graph_panel, "Agent graph")
        self.agent_detail = AgentDetailPanel(self.debugger, self)
        self.agent_detail_dock = self._dock("Agent", "agent_detail_dock", self.agent_detail)
        self.tabifyDockWidget(self.agents_dock, self.agent_detail_dock)
        self.agents_dock.raise_()
        self.view_menu.insertAction(
            self.scenario_dock.toggleViewAction(), self.agent_detail_dock.toggleViewAction()
        )
        # Qt keeps a tabbed dock that is not the current tab "visible" (moved off-screen), so
        # the panels' show and hide events do not say whether anyone sees them; the docks'
        # visibilityChanged does. A table or a detail nobody sees is neither polled nor
        # redrawn (a thousand agents' summaries cost a frame's worth of GUI time).
        self.agents_dock.visibilityChanged.connect(self.live.set_agents_visible)
        self.agent_detail_dock.visibilityChanged.connect(self.agent_detail.set_seen)

        def show_agent(agent: int) -> None:
            self.agent_detail.show_agent(agent)
            self.graph_panel.select_agent(agent)
            self.agent_detail_dock.show()
            self.agent_detail_dock.raise_()

        self.graph_panel.agent_selected.connect(show_agent)
        table = self.agents_view.table

        def table_choice(current: object, _previous: object = None) -> None:
            index = self.live.agents_filter.mapToSource(current)  # type: ignore[arg-type]
            if index.isValid() and self.debugger.live:
                name = self.live.agents.names[index.row()]
                agent = self.debugger.agent_id(name)
                if agent >= 0:
                    self.agent_detail.show_agent(agent)
                    self.graph_panel.select_agent(agent)

        table.selectionModel().currentRowChanged.connect(table_choice)
        self.runs_panel.run_opened.connect(
            lambda run_id: self.debugger.load_run(self.runs_model.path, run_id)
        )

        def scrubbed(tick: int | None) -> None:
            # The Recorded runs tab's scrubber chooses the graph's ticks too (same run only).
            inspector = self.message_inspector
            if not self.debugger.live and inspector.run_id == self.debugger.run_id:
                self.debugger.select_ticks(tick)

        self.message_inspector.tick_changed.connect(scrubbed)

    def _dock(self, title: str, name: str, widget: QWidget) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(name)
        dock.setWidget(widget)
        dock.setFeatures(
            QDockWidget.DockWidgetFeature.DockWidgetMovable
            | QDockWidget.DockWidgetFeature.DockWidgetFloatable
            | QDockWidget.DockWidgetFeature.DockWidgetClosable
        )
        # A dock moved by the user may leave an orphaned tab bar too (see _dock_tabs).
        dock.dockLocationChanged.connect(
            lambda _area: QTimer.singleShot(0, lambda: hide_stale_dock_tab_bars(self))
        )
        return dock

    def event(self, event: QEvent) -> bool:
        if event.type() != QEvent.Type.UpdateRequest:
            return super().event(event)
        # The window's repaint: every widget changed since the last one is painted now, in
        # this call. Its cost counts in the models' frame cost (their throttle).
        c0 = time.thread_time()
        handled = super().event(event)
        self.live.add_paint_cost(time.thread_time() - c0)
        if self.live.frames != self._painted_refresh:
            self._painted_refresh = self.live.frames
            self.painted_frames += 1
        return handled

    # -- scenario -------------------------------------------------------------------------
    def open_scenario(self) -> Path | None:
        """Ask for a scenario file; set and return it, or return None if the user cancels."""
        settings = _settings()
        start_dir = str(settings.value(_SCENARIO_DIR_KEY, "") or "")
        if not start_dir and self.scenario_path is not None:
            start_dir = str(self.scenario_path.parent)
        file_name, _selected_filter = QFileDialog.getOpenFileName(
            self,
            "Open scenario",
            start_dir,
            "Scenarios (*.toml);;All files (*)",
        )
        if not file_name:
            return None
        path = Path(file_name)
        settings.setValue(_SCENARIO_DIR_KEY, str(path.parent))
        self.set_scenario_path(path)
        return path

    def set_scenario_path(self, path: str | Path) -> None:
        """Make ``path`` the scenario that Start runs (the run in progress, if any, goes on)."""
        self.scenario_path = Path(path)
        logger.info("scenario chosen: %s", self.scenario_path)
        self.controller.scenario_path = self.scenario_path
        self.statusBar().showMessage(f"Scenario: {self.scenario_path}")
        self.setWindowFilePath(str(self.scenario_path))
        self.setWindowTitle(f"{self.scenario_path.name} \N{EM DASH} qhybrid")
        _settings().setValue(_SCENARIO_KEY, str(self.scenario_path))
        self.scenario_check.check(self.scenario_path)  # shows its outline, or its error
        if not self.controller.active:
            self.scenario_dock.raise_()
        self._update_actions()
        self.scenario_changed.emit(self.scenario_path)

    def _scenario_checked(self, ok: bool) -> None:
        if not ok:
            self.scenario_dock.show()
            self.scenario_dock.raise_()
        self._update_actions()

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if _dropped_scenario(event) is not None:
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        path = _dropped_scenario(event)
        if path is None:
            event.ignore()
            return
        event.acceptProposedAction()
        self.set_scenario_path(path)

    # -- controls -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the scenario, or resume it when paused."""
        if self.controller.state == SessionState.PAUSED:
            self.controller.resume()
        else:
            self.controller.workers = self.workers_spin.value()
            self.controller.start(self.scenario_path)

    def _create_actions(self) -> None:
        def action(text: str, name: str, shortcut: str | QKeySequence, tip: str) -> QAction:
            act = QAction(text, self)
            act.setObjectName(name)
            act.setShortcut(QKeySequence(shortcut))
            act.setStatusTip(tip)
            act.setToolTip(f"{tip} ({QKeySequence(shortcut).toString()})")
            return act

        self.open_scenario_action = action(
            "&Open scenario\N{HORIZONTAL ELLIPSIS}",
            "open_scenario_action",
            QKeySequence(QKeySequence.StandardKey.Open),
            "Choose a scenario file (*.toml)",
        )
        self.open_scenario_action.triggered.connect(self.open_scenario)
        self.start_action = action("&Start", "start_action", "F5", "Start the scenario")
        self.start_action.triggered.connect(self.start)
        self.pause_action = action("&Pause", "pause_action", "F6", "Pause after this tick")
        self.pause_action.triggered.connect(self.controller.pause)
        self.step_action = action("S&tep", "step_action", "F10", "Run one tick, then pause")
        self.step_action.triggered.connect(self._step)
        self.stop_action = action("St&op", "stop_action", "Shift+F5", "Stop the run")
        self.stop_action.triggered.connect(self.controller.stop)
        self.restart_action = action(
            "&Restart", "restart_action", "Ctrl+Shift+F5", "Stop and start the scenario again"
        )
        self.restart_action.triggered.connect(self._restart)

        self.quit_action = QAction("&Quit", self)
        self.quit_action.setObjectName("quit_action")
        # Spelled out: StandardKey.Quit has no binding on Windows. Qt maps Ctrl to Cmd on macOS.
        self.quit_action.setShortcut(QKeySequence("Ctrl+Q"))
        self.quit_action.setMenuRole(QAction.MenuRole.QuitRole)
        self.quit_action.setStatusTip("Stop the run, close the window and quit qhybrid")
        self.quit_action.triggered.connect(self.close)

        self.about_action = QAction("&About qhybrid", self)
        self.about_action.setObjectName("about_action")
        self.about_action.setMenuRole(QAction.MenuRole.AboutRole)
        self.about_action.triggered.connect(self.show_about)

        self.about_qt_action = QAction("About &Qt", self)
        self.about_qt_action.setObjectName("about_qt_action")
        self.about_qt_action.setMenuRole(QAction.MenuRole.AboutQtRole)
        self.about_qt_action.triggered.connect(QApplication.aboutQt)

        self.theme_group = QActionGroup(self)
        self.theme_actions: dict[str, QAction] = {}
        for theme in THEMES:
            act = QAction(theme.capitalize(), self, checkable=True)
            act.setObjectName(f"theme_{theme}_action")
            act.triggered.connect(lambda _checked=False, t=theme: self.set_theme(t))
            self.theme_group.addAction(act)
            self.theme_actions[theme] = act

    def _step(self) -> None:
        if not self.controller.active:
            self.controller.workers = self.workers_spin.value()
        self.controller.step()

    def _restart(self) -> None:
        self.controller.workers = self.workers_spin.value()
        self.controller.restart()

    def _create_toolbar(self) -> None:
        bar = QToolBar("Run", self)
        bar.setObjectName("run_toolbar")
        bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        bar.setMovable(False)
        bar.addAction(self.open_scenario_action)
        bar.addSeparator()
        for act in (
            self.start_action,
            self.pause_action,
            self.step_action,
            self.stop_action,
            self.restart_action,
        ):
            bar.addAction(act)
        bar.addSeparator()
        label = QLabel(" Workers: ", bar)
        self.workers_spin = QSpinBox(bar)
        self.workers_spin.setObjectName("workers_spin")
        self.workers_spin.setRange(1, _MAX_WORKERS)
        self.workers_spin.setValue(max(1, min(self.controller.workers, _MAX_WORKERS)))
        self.workers_spin.setToolTip("Worker processes for agents and CPU tasks (next start)")
        self.workers_spin.valueChanged.connect(self._workers_changed)
        label.setBuddy(self.workers_spin)
        bar.addWidget(label)
        bar.addWidget(self.workers_spin)
        self.run_toolbar = bar
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, bar)

    def _workers_changed(self, value: int) -> None:
        if not self.controller.active:
            self.controller.workers = value
        _settings().setValue(_WORKERS_KEY, value)

    def _create_menus(self) -> None:
        menu_bar = self.menuBar()
        self.file_menu = menu_bar.addMenu("&File")
        self.file_menu.setObjectName("file_menu")
        self.file_menu.addAction(self.open_scenario_action)
        self.file_menu.addSeparator()
        self.file_menu.addAction(self.quit_action)

        self.run_menu = menu_bar.addMenu("&Run")
        self.run_menu.setObjectName("run_menu")
        for act in (
            self.start_action,
            self.pause_action,
            self.step_action,
            self.stop_action,
            self.restart_action,
        ):
            self.run_menu.addAction(act)

        self.view_menu = menu_bar.addMenu("&View")
        self.view_menu.setObjectName("view_menu")
        for dock in (
            self.agents_dock,
            self.scenario_dock,
            self.log_dock,
            self.chat_dock,
            self.server_dock,
        ):
            self.view_menu.addAction(dock.toggleViewAction())
        self.view_menu.addSeparator()
        theme_menu = self.view_menu.addMenu("&Theme")
        for act in self.theme_actions.values():
            theme_menu.addAction(act)

        self.help_menu = menu_bar.addMenu("&Help")
        self.help_menu.setObjectName("help_menu")
        self.help_menu.addAction(self.about_action)
        self.help_menu.addAction(self.about_qt_action)
        self.update_checker = add_update_actions(self, self.help_menu)  # off by default

    def _create_status_bar(self) -> None:
        bar = self.statusBar()
        self.state_label = QLabel(self)
        self.state_label.setObjectName("state_label")
        self.progress_label = QLabel(self)
        self.progress_label.setObjectName("progress_label")
        self.adapter_label = QLabel("GPU: not started", self)
        self.adapter_label.setObjectName("adapter_label")
        bar.addPermanentWidget(self.progress_label)
        bar.addPermanentWidget(self.state_label)
        bar.addPermanentWidget(self.adapter_label)

    # -- run state ------------------------------------------------------------------------
    def _state_changed(self, state: str, detail: str) -> None:
        text = _STATE_TEXT.get(state, state)
        self.state_label.setText(f"<b>{text}</b>")
        self.state_label.setToolTip(plain_tooltip(detail) if detail else "")
        if state == SessionState.STARTING:
            self.central_tabs.setCurrentWidget(self.charts)
            self.agents_dock.raise_()  # the run's agents, rather than the scenario's outline
        if state in SessionState.ENDED and detail:
            self.statusBar().showMessage(f"{text}: {printable(detail)}")
        self._update_actions()

    def _update_actions(self) -> None:
        state = self.controller.state
        have = self.scenario_path is not None and self.scenario_check.ok
        active = state in SessionState.ACTIVE
        paused = state == SessionState.PAUSED
        self.start_action.setText("&Resume" if paused else "&Start")
        self.start_action.setEnabled(paused or (have and not active))
        self.start_action.setToolTip(
            "Start the scenario (F5)"
            if have or self.scenario_path is None
            else "The scenario has an error: see the Scenario panel"
        )
        self.pause_action.setEnabled(state == SessionState.RUNNING)
        self.step_action.setEnabled(paused or (have and not active))
        self.stop_action.setEnabled(
            state in (SessionState.STARTING, SessionState.RUNNING, SessionState.PAUSED)
        )
        self.restart_action.setEnabled(have and state != SessionState.STOPPING)
        self.workers_spin.setEnabled(not active)

    def _run_chat_changed(self, _first: int) -> None:
        """A run's LLM agents answer: show them, unless a model chat is in use."""
        if self.chat_tabs.currentWidget() is self.model_chat_panel and not (
            self.local_chat.ready or self.conversations.busy
        ):
            self.chat_tabs.setCurrentWidget(self.chat_panel)

    def _questions_waiting(self, count: int) -> None:
        """A question waits: the panel comes to the front, the title says so."""
        self.questions_dock.setWindowTitle(f"Questions ({count})" if count else "Questions")
        if count:
            self.questions_dock.show()
            self.questions_dock.raise_()

    def _adapter_changed(self, text: str, _adapter: object) -> None:
        self.adapter_label.setText(text)

    def _show_error(self, message: str) -> None:
        self.statusBar().showMessage(f"Error: {printable(message)}", 15_000)

    def _run_finished(self, result: object) -> None:
        self.workers_spin.setValue(self.controller.workers)

    # -- theme ----------------------------------------------------------------------------
    def set_theme(self, theme: str) -> None:
        """ "system", "light" or "dark"; kept for the next start."""
        if theme not in THEMES:
            raise ValueError(f"theme must be one of {', '.join(THEMES)}, got {theme!r}")
        self._theme = theme
        self.theme_actions[theme].setChecked(True)
        apply_theme(theme)
        self.charts.apply_palette(self.palette())
        _settings().setValue(_THEME_KEY, theme)

    @property
    def theme(self) -> str:
        return self._theme

    # -- about ----------------------------------------------------------------------------
    def about_text(self) -> str:
        """The text of the About box (rich text)."""
        return (
            f"<h3>qhybrid {qhybrid.__version__}</h3>"
            "<p>A local-first runtime for multi-agent systems and LLM inference: "
            "WebAssembly agents, a wgpu compute thread, shared-memory tensors and a "
            "deterministic orchestrator, with this window to watch and steer it.</p>"
            f"<p>Qt {qVersion()}, PySide6 {PySide6.__version__}</p>"
        )

    def show_about(self) -> None:
        QMessageBox.about(self, "About qhybrid", self.about_text())

    # -- geometry and closing ---------------------------------------------------------------
    def _restore_geometry(self) -> None:
        settings = _settings()
        geometry = settings.value(_GEOMETRY_KEY)
        if not (isinstance(geometry, QByteArray) and self.restoreGeometry(geometry)):
            self.resize(*_DEFAULT_SIZE)
        state = settings.value(_STATE_KEY)
        if not (isinstance(state, QByteArray) and self.restoreState(state, _LAYOUT_VERSION)):
            # First start: the charts (the recorded runs, the graph) get most of the room; a
            # small window's right docks take less of it (330 of 1100 pixels, 400 of 1920).
            width = self.width()
            self.resizeDocks(
                [self.agents_dock], [max(300, min(400, width * 3 // 10))], Qt.Orientation.Horizontal
            )
            self.resizeDocks([self.log_dock], [200], Qt.Orientation.Vertical)
        self.theme_actions.get(
            str(settings.value(_THEME_KEY, "system") or "system"), self.theme_actions["system"]
        ).setChecked(True)

    def save_geometry(self) -> None:
        """Write the window's geometry, dock layout and settings to QSettings."""
        settings = _settings()
        settings.setValue(_GEOMETRY_KEY, self.saveGeometry())
        settings.setValue(_STATE_KEY, self.saveState(_LAYOUT_VERSION))
        settings.setValue(_LOG_LEVEL_KEY, self.log_view.min_level)
        settings.setValue(_WORKERS_KEY, self.workers_spin.value())
        settings.sync()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        hide_stale_dock_tab_bars(self)  # (Qt leaves one behind; see _dock_tabs)

    def closeEvent(self, event: QCloseEvent) -> None:
        self.save_geometry()
        if self.controller.active:
            self.statusBar().showMessage("Stopping the run\N{HORIZONTAL ELLIPSIS}")
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            # Bounded: stops the run after its tick in flight, then the worker processes, the
            # GPU thread and the shared memory, then the runtime's thread.
            self.live.close()
            self.controller.shutdown()
            self.server_model.close()
            self.runs_panel.close_command()
            self.local_chat.close()
        finally:
            QApplication.restoreOverrideCursor()
        super().closeEvent(event)


def _dropped_scenario(event: QDragEnterEvent | QDropEvent) -> Path | None:
    mime = event.mimeData()
    if not mime.hasUrls():
        return None
    for url in mime.urls():
        if url.isLocalFile() and url.toLocalFile().lower().endswith(".toml"):
            return Path(url.toLocalFile())
    return None


def _int(value: object, default: int) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return default


def _settings() -> QSettings:
    """The application's QSettings, under "qhybrid" when no organisation has been set."""
    if QCoreApplication.organizationName():
        return QSettings()
    return QSettings("qhybrid", "qhybrid")
