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

While it is frozen, the youngest generation is also collected less often (every
:data:`YOUNG_THRESHOLD` net allocations of tracked objects instead of Python's 700): a run
allocates and frees a few tuples per message, and at 700 the collector ran every couple of
ticks, about 1% of the orchestrator's time at 64 agents (``qhybrid bench dispatch``). Each
collection walks only the young objects still alive, which a run keeps few of.

Holders: a :class:`~qhybrid.runtime.Runtime` from its start to its close, and the window's
controller while its run goes (a window can hold a run while ``bench ui`` starts another).
The heap goes back to the collector when the last holder lets go; a holder that asks
twice, or lets go twice or without having held, changes nothing.
"""

from __future__ import annotations

import gc
import threading

__all__ = ["freeze_heap", "heap_frozen", "unfreeze_heap"]

#: The youngest generation's threshold while the heap is frozen (see the module's docstring).
YOUNG_THRESHOLD = 10_000

_lock = threading.Lock()
_holders: set[int] = set()  # id() of who holds it
_thresholds: tuple[int, ...] | None = None  # what they were before the first holder


def freeze_heap(holder: object) -> None:
    """Set the objects alive now aside from full collections, until ``holder`` (and every
    other holder) calls :func:`unfreeze_heap`."""
    with _lock:
        global _thresholds
        if id(holder) in _holders:
            return
        if not _holders:
            _thresholds = gc.get_threshold()
            young, *older = _thresholds
            gc.set_threshold(max(young, YOUNG_THRESHOLD), *older)
        _holders.add(id(holder))
        gc.freeze()  # cheap: the generations' lists are spliced, nothing is walked


def unfreeze_heap(holder: object) -> None:
    """``holder`` lets go; the last one gives the objects back to the collector."""
    with _lock:
        if id(holder) not in _holders:
            return
        global _thresholds
        _holders.discard(id(holder))
        if not _holders:
            gc.unfreeze()
            if _thresholds is not None:
                gc.set_threshold(*_thresholds)
                _thresholds = None


def heap_frozen() -> bool:
    """Whether anyone holds the heap frozen now."""
    return bool(_holders)
