"""Qt widgets and pyqtgraph charts: thin views over ``qhybrid.models``.

Views only observe and steer: they never do runtime work on the GUI thread. They may import
``qhybrid.models`` and Qt, never the runtime's internals.
"""

from __future__ import annotations

from qhybrid.views._charts import ChartsWidget
from qhybrid.views._chat import ChatPanel
from qhybrid.views._main_window import MainWindow
from qhybrid.views._server import ServerPanel
from qhybrid.views._tables import AgentsView, LogView
from qhybrid.views._theme import THEMES, apply_theme, is_dark

__all__ = [
    "THEMES",
    "AgentsView",
    "ChartsWidget",
    "ChatPanel",
    "LogView",
    "MainWindow",
    "ServerPanel",
    "apply_theme",
    "is_dark",
]
