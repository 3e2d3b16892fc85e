"""Keeps the process's long-lived objects out of the cyclic garbage collector during a run.

A full collection walks every tracked object with the GIL held, on whichever thread made
it due, most often the runtime's loop thread. In the window's process that is a hundred
thousand objects (Qt's and pyqtgraph's modules, the widgets, the loaded run) walked again
every few seconds: each full collection stopped the GUI thread for tens of milliseconds,
more than any frame, and it was the window's longest stall (``qhybrid bench ui``).

:func:`freeze_heap` moves every object alive now to the collector's permanent generation
(:func:`gc.freeze`), so that the run's collections walk only what the run made since.
Objects that die meanwhile are still freed by their reference counts; cycles among the
frozen ones wait for :func:`unfreeze_heap`, at the end of the run.
"""

from __future__ import annotations

import gc
import threading

__all__ = ["freeze_heap", "heap_frozen", "unfreeze_heap"]

_lock = threading.Lock()
_holders = 0  # runs that asked (a window can hold a run while the bench starts another)


def freeze_heap() -> None:
    """Set the objects alive now aside from full collections (until :func:`unfreeze_heap`)."""
    global _holders
    with _lock:
        _holders += 1
        gc.freeze()  # cheap: the generations' lists are spliced, nothing is walked


def unfreeze_heap() -> None:
    """One :func:`freeze_heap` is over; the last one gives the objects back to the collector."""
    global _holders
    with _lock:
        if _holders == 0:
            return
        _holders -= 1
        if _holders == 0:
            gc.unfreeze()


def heap_frozen() -> bool:
    """Whether a run holds the heap frozen now."""
    return _holders > 0
