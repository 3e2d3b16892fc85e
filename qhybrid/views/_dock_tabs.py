"""A Qt quirk worked around: a stray, empty-looking tab bar over the window.

When a second group of tabbed docks grows from two docks to three (``tabifyDockWidget``),
Qt 6 (6.11 here) gives the group a new tab bar and leaves the old one, with the first two
tabs, shown where it was: a tab bar that no layout owns any more, never moved or updated,
painted over whatever is under it (the agent graph's bottom, at the default layout). A tab
bar that Qt still uses has tabs no other bar has; an orphan's tabs are all on another bar
with more tabs. Those are hidden (not deleted: Qt may still reuse them, and shows them again
when it does).
"""

from __future__ import annotations

from PySide6.QtWidgets import QMainWindow, QTabBar

__all__ = ["hide_stale_dock_tab_bars"]


def hide_stale_dock_tab_bars(window: QMainWindow) -> int:
    """Hide the orphaned dock tab bars of ``window``; returns how many were hidden."""
    bars = [bar for bar in window.findChildren(QTabBar) if bar.parent() is window]
    tabs = {bar: {bar.tabText(i) for i in range(bar.count())} for bar in bars}
    hidden = 0
    for bar in bars:
        mine = tabs[bar]
        if bar.isHidden() or not mine:
            continue
        if any(other is not bar and mine < tabs[other] for other in bars):
            bar.hide()
            hidden += 1
    return hidden
