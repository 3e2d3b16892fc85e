"""Agent text in the window is shown as text: controls visible, tooltips never rich text."""

from __future__ import annotations

from PySide6.QtCore import Qt

from qhybrid.models._log import LogLine, LogModel

RAW = "\x1b[2J\x1b]0;pwned\x07\rcompleted: all agents finished\nhi\u202eevil\x1b[31mred\x08\x00end"
CONTROLS = ("\x1b", "\x07", "\r", "\x08", "\x00", "\u202e", "\n")


def test_window_log_model_shows_escapes() -> None:
    model = LogModel()
    model.append_lines([LogLine(1, 30, "evil\x1b[2J", RAW)])
    for column in (2, 3):
        shown = model.data(model.index(0, column), Qt.ItemDataRole.DisplayRole)
        for c in CONTROLS:
            assert c not in shown
    tip = model.data(model.index(0, 3), Qt.ItemDataRole.ToolTipRole)
    for c in CONTROLS:
        assert c not in tip
    # A tooltip is rich text when it looks like it: agent text must stay text.
    model.append_lines([LogLine(1, 30, "evil", "<img src='/etc/passwd'><b>x</b>")])
    tip = model.data(model.index(1, 3), Qt.ItemDataRole.ToolTipRole)
    assert "<img" not in tip and "&lt;img" in tip
