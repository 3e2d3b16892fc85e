"""Model tests run Qt's offscreen platform (QtCore only, but pytest-qt's qapp is a QApplication)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
