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

Holders: a :class:`~qhybrid.runtime.Runtime` from its start to its close, and the window's
controller while its run goes (a window can hold a run while ``bench ui`` starts another).
The heap goes back to the collector when the last holder lets go; a holder that asks
twice, or lets go twice or without having held, changes nothing.
"""

from __future__ import annotations

import gc
import threading

__all__ = ["freeze_heap", "heap_frozen", "unfreeze_heap"]

_lock = threading.Lock()
_holders: set[int] = set()  # id() of who holds it


def freeze_heap(holder: object) -> None:
    """Set the objects alive now aside from full collections, until ``holder`` (and every
    other holder) calls :func:`unfreeze_heap`."""
    with _lock:
        if id(holder) in _holders:
            return
        _holders.add(id(holder))
        gc.freeze()  # cheap: the generations' lists are spliced, nothing is walked


def unfreeze_heap(holder: object) -> None:
    """``holder`` lets go; the last one gives the objects back to the collector."""
    with _lock:
        if id(holder) not in _holders:
            return
        _holders.discard(id(holder))
        if not _holders:
            gc.unfreeze()


def heap_frozen() -> bool:
    """Whether anyone holds the heap frozen now."""
    return bool(_holders)
