"""The heap kept out of full collections while someone holds it (runtime/_heap.py): the last
holder to let go gives it back; holding twice or letting go twice changes nothing."""

from __future__ import annotations

import gc

from qhybrid.runtime import freeze_heap, heap_frozen, unfreeze_heap


def test_the_last_holder_gives_the_heap_back() -> None:
    window, run = object(), object()
    assert not heap_frozen() and gc.get_freeze_count() == 0
    freeze_heap(window)
    freeze_heap(window)  # asked again (paused, then running): still one hold
    freeze_heap(run)
    assert heap_frozen() and gc.get_freeze_count() > 0
    unfreeze_heap(run)
    unfreeze_heap(run)  # let go twice: the window still holds it
    assert heap_frozen() and gc.get_freeze_count() > 0
    unfreeze_heap(object())  # never held: nothing
    assert heap_frozen()
    unfreeze_heap(window)
    assert not heap_frozen() and gc.get_freeze_count() == 0


def test_the_young_generation_is_collected_less_often_while_held() -> None:
    from qhybrid.runtime._heap import YOUNG_THRESHOLD

    before = gc.get_threshold()
    run = object()
    freeze_heap(run)
    try:
        young, *older = gc.get_threshold()
        assert young == max(before[0], YOUNG_THRESHOLD) and tuple(older) == before[1:]
    finally:
        unfreeze_heap(run)
    assert gc.get_threshold() == before  # given back as it was
