"""The CPU path's int8 activations for decode products, in one numba pass (no numpy calls).

:func:`quantize_act` gives what the int8-activation kernels of :mod:`._cpu_kernels` take for
``x[M, K]``: llama.cpp's Q8_0 blocks of 32 (``q`` int8, ``d = max|x| / 127`` per block), the
per-block sums of ``q`` (int64) and of ``x`` (float32). It computes bit for bit what the numpy
expressions it replaces computed (``np.abs(..).max() / 127``, ``1 / d``, ``np.rint``, numpy's
pairwise float32 sum of a 32-element block); a test checks that, so outputs do not move. It is
compiled without fast-math flags, since reassociating the sums would change them.

One call instead of about ten numpy calls per product; the runner also quantizes once for the
products that share an input (q, k and v; gate and up).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from qhybrid.runtime.llm._jit import njit

F32 = npt.NDArray[np.float32]


class Act(NamedTuple):
    """``x`` and its int8 blocks: ``q[M, K]``, ``d[M, K/32]``, ``qsum`` (int64) and ``xsum``
    (float32) ``[M, K/32]``."""

    x: F32
    q: npt.NDArray[np.int8]
    d: F32
    qsum: npt.NDArray[np.int64]
    xsum: F32


_jit = njit(nogil=True, boundscheck=False)


@_jit
def _quantize(x: Any, q: Any, d: Any, qsum: Any, xsum: Any) -> None:  # pragma: no cover (jit)
    m_rows, k = x.shape
    r = np.zeros(8, dtype=np.float32)
    for m in range(m_rows):
        for b in range(k // 32):
            o = b * 32
            amax = np.float32(0.0)
            for j in range(32):
                a = abs(x[m, o + j])
                if a > amax:
                    amax = a
            db = amax / np.float32(127.0)
            d[m, b] = db
            inv = np.float32(1.0) / db if db > 0 else np.float32(0.0)
            s = np.int64(0)
            for j in range(32):
                v = np.int8(np.rint(x[m, o + j] * inv))
                q[m, o + j] = v
                s += np.int64(v)
            qsum[m, b] = s
            # numpy's pairwise sum of 32 float32 (8 accumulators, then a tree).
            for j in range(8):
                r[j] = x[m, o + j]
            for i in range(8, 32, 8):
                for j in range(8):
                    r[j] += x[m, o + i + j]
            xsum[m, b] = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))


def quantize_act(x: F32) -> Act:
    """``x[M, K]`` (K a multiple of 32) as :class:`Act`."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    m, k = x.shape
    q = np.empty((m, k), dtype=np.int8)
    d = np.empty((m, k // 32), dtype=np.float32)
    qsum = np.empty((m, k // 32), dtype=np.int64)
    xsum = np.empty((m, k // 32), dtype=np.float32)
    _quantize(x, q, d, qsum, xsum)
    return Act(x, q, d, qsum, xsum)
