"""Light or dark: the system's choice by default, or the user's (View > Theme).

Qt (6.5 and later) already follows the platform's colour scheme where the platform says what
it is (Windows, macOS, GNOME and KDE through their portals); the charts follow the palette
(see ``ChartsWidget.apply_palette``). A forced choice uses Fusion, whose palettes are
complete in both schemes, and Qt's own ``setColorScheme`` where it exists (Qt 6.8).
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication, QStyleFactory

__all__ = ["THEMES", "apply_theme", "is_dark"]

THEMES = ("system", "light", "dark")

_system_style: str | None = None


def is_dark(palette: QPalette | None = None) -> bool:
    """Whether the window text is lighter than the window: a dark scheme."""
    palette = palette or QGuiApplication.palette()
    window = palette.color(QPalette.ColorRole.Window)
    text = palette.color(QPalette.ColorRole.WindowText)
    return text.lightness() > window.lightness()


def apply_theme(theme: str) -> None:
    """Apply "system", "light" or "dark" to the running QApplication."""
    global _system_style
    app = QApplication.instance()
    if not isinstance(app, QApplication):
        return
    hints = app.styleHints()
    if _system_style is None:
        _system_style = app.style().name()
    if theme == "system":
        if hasattr(hints, "unsetColorScheme"):
            hints.unsetColorScheme()
        if _system_style:
            app.setStyle(QStyleFactory.create(_system_style))
        app.setPalette(app.style().standardPalette())
        return
    dark = theme == "dark"
    app.setStyle(QStyleFactory.create("Fusion"))
    if hasattr(hints, "setColorScheme"):
        hints.setColorScheme(Qt.ColorScheme.Dark if dark else Qt.ColorScheme.Light)
    app.setPalette(_dark_palette() if dark else app.style().standardPalette())


def _dark_palette() -> QPalette:
    p = QPalette()
    role = QPalette.ColorRole
    for r, colour in (
        (role.Window, "#2b2d30"),
        (role.WindowText, "#dfe1e5"),
        (role.Base, "#1e1f22"),
        (role.AlternateBase, "#26282b"),
        (role.ToolTipBase, "#2b2d30"),
        (role.ToolTipText, "#dfe1e5"),
        (role.Text, "#dfe1e5"),
        (role.Button, "#35373b"),
        (role.ButtonText, "#dfe1e5"),
        (role.BrightText, "#ff6b6b"),
        (role.Highlight, "#2f65ca"),
        (role.HighlightedText, "#ffffff"),
        (role.Link, "#56b4e9"),
        (role.PlaceholderText, "#8c8f94"),
    ):
        p.setColor(r, QColor(colour))
    for r in (role.WindowText, role.Text, role.ButtonText):
        p.setColor(QPalette.ColorGroup.Disabled, r, QColor("#6f737a"))
    return p
