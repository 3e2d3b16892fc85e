"""The metrics ring buffers (runtime/_metrics.py): samples are kept as they come and written
into the buffers in bulk; a snapshot shows every sample, oldest first, whenever it is taken."""

from __future__ import annotations

import threading

import numpy as np

from qhybrid.runtime._metrics import FOLD_ROWS, SERIES, MetricsRecorder


def _row(i: int) -> tuple[float, ...]:
    return tuple(float(i * 100 + k) for k in range(len(SERIES) - 1))


def test_a_snapshot_holds_every_sample_in_order_across_folds_and_the_ring() -> None:
    m = MetricsRecorder(workers=2, capacity=FOLD_ROWS + 50)
    for i in range(3):
        m.record_row(_row(i), [i * 0.5, i * 0.25])
    snap = m.snapshot()  # read before a fold was due: the kept samples are written first
    assert snap.samples == 3
    assert snap.series["tick"].tolist() == [0.0, 100.0, 200.0]
    assert snap.worker_busy_s[:, 0].tolist() == [0.0, 0.5, 1.0]
    for i in range(3, 2 * FOLD_ROWS + 10):  # folds on the way, and the ring wraps
        m.record_row(_row(i), [i * 0.5, i * 0.25])
    snap = m.snapshot()
    assert snap.samples == FOLD_ROWS + 50
    first = 2 * FOLD_ROWS + 10 - (FOLD_ROWS + 50)
    assert snap.series["tick"].tolist() == [i * 100.0 for i in range(first, 2 * FOLD_ROWS + 10)]
    assert np.all(np.diff(snap.series["wall_s"]) >= 0)
    assert snap.worker_busy_s[-1].tolist() == [
        (2 * FOLD_ROWS + 9) * 0.5,
        (2 * FOLD_ROWS + 9) * 0.25,
    ]


def test_samples_recorded_while_another_thread_reads_are_all_kept() -> None:
    m = MetricsRecorder(workers=1, capacity=100_000)
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            m.snapshot()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(20_000):
            m.record_row(_row(i), [0.0])
    finally:
        done.set()
        reader.join()
    snap = m.snapshot()
    assert snap.samples == 20_000
    assert snap.series["tick"].tolist() == [i * 100.0 for i in range(20_000)]
