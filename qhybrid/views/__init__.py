"""Qt widgets and pyqtgraph charts: thin views over ``qhybrid.models``.

Views only observe and steer: they never do runtime work on the GUI thread. They may import
``qhybrid.models`` and Qt, never the runtime's internals.
"""

from __future__ import annotations

from qhybrid.views._main_window import MainWindow

__all__ = ["MainWindow"]
