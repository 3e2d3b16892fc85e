"""Qt models and view-models over the runtime.

Models adapt runtime events (which fire on runtime threads, as each event's docstring says)
into Qt item models and view-models, hopping to the GUI thread before anything a view reads
changes. They use QtCore only (no QtGui, no QtWidgets, no pyqtgraph), so they can be tested
without a display; widgets and charts live in ``qhybrid.views``.

Layering: ``qhybrid.app`` -> ``qhybrid.views`` -> ``qhybrid.models`` -> ``qhybrid.runtime``.
"""

from __future__ import annotations

__all__: list[str] = []
