"""The main window: for now a placeholder that says what it will show.

The real window (agents, the GPU queue, tensor memory and the trace as live pyqtgraph charts)
comes later; this one already has what every later version keeps: the File and Help menus,
a scenario chosen through a file dialog, and a geometry that survives a restart.
"""

from __future__ import annotations

import logging
from pathlib import Path

import PySide6
from PySide6.QtCore import QByteArray, QCoreApplication, QSettings, Qt, Signal, qVersion
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QVBoxLayout,
    QWidget,
)

import qhybrid

__all__ = ["MainWindow"]

logger = logging.getLogger(__name__)

# QSettings keys; the group keeps them apart from the settings of later windows and docks.
_GEOMETRY_KEY = "main_window/geometry"
_STATE_KEY = "main_window/state"
_SCENARIO_DIR_KEY = "main_window/last_scenario_dir"

_DEFAULT_SIZE = (1100, 720)

_PLACEHOLDER_TEXT = """\
<h2>qhybrid</h2>
<p>A local-first runtime for multi-agent systems and LLM inference.</p>
<p>This window will show a running scenario live: the agents and their state, the GPU
queue, shared tensor memory, LLM token throughput and the orchestrator's trace, as charts
that update while the runtime works on its own threads and processes.</p>
<p>Those views are not there yet. Choose <b>File &gt; Open scenario&hellip;</b> to pick a
scenario file (<code>*.toml</code>), or run the same runtime without any window:</p>
<pre>qhybrid --headless</pre>
<p>(<code>qhybrid --help</code> lists the options.)</p>
"""


class MainWindow(QMainWindow):
    """The qhybrid main window (placeholder).

    ``scenario_path`` is the scenario chosen with File > Open scenario... (or given at start),
    or None; ``scenario_changed`` fires with it (a ``Path``) on the GUI thread whenever it is
    set. The window's geometry is saved with QSettings when it closes and restored when it is
    created.
    """

    scenario_changed = Signal(object)

    def __init__(self, scenario_path: str | Path | None = None) -> None:
        super().__init__()
        self.scenario_path: Path | None = None

        self.setWindowTitle("qhybrid")
        self.setObjectName("qhybrid_main_window")  # saveState() needs object names

        central = QWidget(self)
        self.placeholder = QLabel(_PLACEHOLDER_TEXT, central)
        self.placeholder.setObjectName("placeholder")
        self.placeholder.setTextFormat(Qt.TextFormat.RichText)
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setWordWrap(True)
        self.placeholder.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.placeholder.setMaximumWidth(640)  # a readable line length on wide windows
        layout = QVBoxLayout(central)
        layout.setContentsMargins(24, 24, 24, 24)
        layout.addWidget(self.placeholder, 0, Qt.AlignmentFlag.AlignCenter)
        self.setCentralWidget(central)

        self._create_actions()
        self._create_menus()
        self.statusBar().showMessage("No scenario open")

        self._restore_geometry()
        if scenario_path is not None:
            self.set_scenario_path(scenario_path)

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
        """Make ``path`` the current scenario and show it in the status bar.

        Nothing is read or run yet: the file is only remembered and announced.
        """
        self.scenario_path = Path(path)
        logger.info("scenario chosen: %s", self.scenario_path)
        self.statusBar().showMessage(f"Scenario: {self.scenario_path}")
        self.setWindowFilePath(str(self.scenario_path))
        self.scenario_changed.emit(self.scenario_path)

    # -- menus ----------------------------------------------------------------------------

    def _create_actions(self) -> None:
        self.open_scenario_action = QAction("&Open scenario\N{HORIZONTAL ELLIPSIS}", self)
        self.open_scenario_action.setObjectName("open_scenario_action")
        self.open_scenario_action.setShortcut(QKeySequence(QKeySequence.StandardKey.Open))
        self.open_scenario_action.setStatusTip("Choose a scenario file (*.toml)")
        self.open_scenario_action.triggered.connect(self.open_scenario)

        self.quit_action = QAction("&Quit", self)
        self.quit_action.setObjectName("quit_action")
        # Spelled out: StandardKey.Quit has no binding on Windows. Qt maps Ctrl to Cmd on macOS.
        self.quit_action.setShortcut(QKeySequence("Ctrl+Q"))
        self.quit_action.setMenuRole(QAction.MenuRole.QuitRole)
        self.quit_action.setStatusTip("Close the window and quit qhybrid")
        self.quit_action.triggered.connect(self.close)

        self.about_action = QAction("&About qhybrid", self)
        self.about_action.setObjectName("about_action")
        self.about_action.setMenuRole(QAction.MenuRole.AboutRole)
        self.about_action.triggered.connect(self.show_about)

        self.about_qt_action = QAction("About &Qt", self)
        self.about_qt_action.setObjectName("about_qt_action")
        self.about_qt_action.setMenuRole(QAction.MenuRole.AboutQtRole)
        self.about_qt_action.triggered.connect(QApplication.aboutQt)

    def _create_menus(self) -> None:
        menu_bar = self.menuBar()
        self.file_menu = menu_bar.addMenu("&File")
        self.file_menu.setObjectName("file_menu")
        self.file_menu.addAction(self.open_scenario_action)
        self.file_menu.addSeparator()
        self.file_menu.addAction(self.quit_action)

        self.help_menu = menu_bar.addMenu("&Help")
        self.help_menu.setObjectName("help_menu")
        self.help_menu.addAction(self.about_action)
        self.help_menu.addAction(self.about_qt_action)

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

    # -- geometry -------------------------------------------------------------------------

    def _restore_geometry(self) -> None:
        settings = _settings()
        geometry = settings.value(_GEOMETRY_KEY)
        if not (isinstance(geometry, QByteArray) and self.restoreGeometry(geometry)):
            self.resize(*_DEFAULT_SIZE)
        state = settings.value(_STATE_KEY)
        if isinstance(state, QByteArray):
            self.restoreState(state)

    def save_geometry(self) -> None:
        """Write the window's geometry and dock/toolbar state to QSettings."""
        settings = _settings()
        settings.setValue(_GEOMETRY_KEY, self.saveGeometry())
        settings.setValue(_STATE_KEY, self.saveState())
        settings.sync()

    def closeEvent(self, event: QCloseEvent) -> None:
        self.save_geometry()
        super().closeEvent(event)


def _settings() -> QSettings:
    """The application's QSettings, under "qhybrid" when no organisation has been set."""
    if QCoreApplication.organizationName():
        return QSettings()
    return QSettings("qhybrid", "qhybrid")
