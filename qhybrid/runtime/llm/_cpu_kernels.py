"""The CPU path's weight kernels: products and dequantization straight from GGUF blocks (numba).

Why numba: the quantized formats need loops over bytes and nibbles that numpy can only do by
materialising float32 copies (4-8x the file); numba compiles them to vectorized machine code
on the user's CPU, from a wheel on PyPI (no compiler at install time), and ``cache=True`` keeps
the machine code between runs. Every kernel runs on one thread (``parallel=False``): the same
input gives the same floats, run after run.

For each format of :data:`~qhybrid.runtime.wgpu_thread._quants.FORMATS` one *block function*
decodes block ``b`` of a row, element by element, and either accumulates ``w * x`` into 32
float32 lanes (``acc`` True: the matrix x vector product, with the lanes summed once per row)
or stores ``w`` (``acc`` False: dequantization). It is inlined into the drivers with ``acc`` a
constant, so each driver compiles to its own loop without the branch.

- :func:`matvec` ``y[M, N] = x[M, K] @ W.T`` for a few rows of x (decode): weights are read
  once per x row from the mapped file, never copied.
- :func:`dequantize_rows` float32 rows (embeddings, and tiles of a prefill product that BLAS
  then multiplies).

Lanes hold partial sums in a fixed order: the float32 result differs from the reference's
dequantize-then-matmul only by summation order (tests check it against ``gguf.quants``).
"""

from __future__ import annotations

from typing import Any

import numba as nb
import numpy as np
import numpy.typing as npt

from qhybrid.runtime.wgpu_thread._quants import IQ4_KVALUES

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

#: float16 bit patterns -> float32 (256 KiB, looked up once per block).
_F16 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
_KV = np.array(IQ4_KVALUES, dtype=np.float32)
_FLAGS = {"reassoc", "contract"}  # vectorized sums; no finite-math assumptions
_jit = nb.njit(cache=True, fastmath=_FLAGS, boundscheck=False, nogil=True)
_inline = nb.njit(cache=True, fastmath=_FLAGS, boundscheck=False, inline="always")


@_inline
def _put(acc: bool, lanes: Any, x: Any, xo: int, lane: int, w: Any) -> None:
    if acc:
        lanes[lane] += w * x[xo + lane]
    else:
        lanes[xo + lane] = w


@_inline
def _h(row: Any, o: int) -> Any:
    return _F16[row[o] | (np.int64(row[o + 1]) << 8)]


@_inline
def _b_q8_0(acc: bool, row: Any, rowi: Any, b: int, x: Any, lanes: Any) -> None:
    o = b * 34
    xo = b * 32
    d = _h(row, o)
    for j in range(32):
        _put(acc, lanes, x, xo, j, np.float32(np.int8(row[o + 2 + j])) * d)


@_inline
def _b_q4_0(acc: bool, row: Any, rowi: Any, b: int, x: Any, lanes: Any) -> None:
    o = b * 18
    xo = b * 32
    d = _h(row, o)
    m = np.float32(-8.0) * d
    for j in range(16):
        v = row[o + 2 + j]
        _put(acc, lanes, x, xo, j, np.float32(v & 15) * d + m)
        _put(acc, lanes, x, xo, 16 + j, np.float32(v >> 4) * d + m)


@_inline
def _b_q4_1(acc: bool, row: Any, rowi: Any, b: int, x: Any, lanes: Any) -> None:
    o = b * 20
    xo = b * 32
    d = _h(row, o)
    m = _h(row, o + 2)
    for j in range(16):
        v = row[o + 4 + j]
        _put(acc, lanes, x, xo, j, np.float32(v & 15) * d + m)
        _put(acc, lanes, x, xo, 16 + j, np.float32(v >> 4) * d + m)


@_inline
def _qh32(row: Any, o: int) -> Any:
    return (
        np.int64(row[o])
        | (np.int64(row[o + 1]) << 8)
        | (np.int64(row[o + 2]) << 16)
        | (np.int64(row[o + 3]) << 24)
    )


@_inline
def _b_q5_0(acc: bool, row: Any, rowi: Any, b: int, x: Any, lanes: Any) -> None:
    o = b * 22
    xo = b * 32
    d = _h(row, o)
    m = np.float32(-16.0) * d
    qh = _qh32(row, o + 2)
    for j in range(16):
        v = np.int64(row[o + 6 + j])
        lo = (v & 15) | (((qh >> j) & 1) << 4)
        hi = (v >> 4) | (((qh >> (j + 16)) & 1) << 4)
        _put(acc, lanes, x, xo, j, np.float32(lo) * d + m)
        _put(acc, lanes, x, xo, 16 + j, np.float32(hi) * d + m)


@_inline
def _b_q5_1(acc: bool, row: Any, rowi: Any, b: int, x: Any, lanes: Any) -> None:
    o = b * 24
    xo = b * 32
    d = _h(row, o)
    m = _h(row, o + 2)
    qh = _qh32(row, o + 4)
    for j in range(16):
        v = np.int64(row[o + 8 + j])
        lo = (v & 15) | (((qh >> j) & 1) << 4)
        hi = (v >> 4) | (((qh >> (j + 16)) & 1) << 4)
        _put(acc, lanes, x, xo, j, np.float32(lo) * d + m)
        _put(acc, lanes, x, xo, 16 + j, np.float32(hi) * d + m)


@_inline
def _b_iq4_nl(acc: bool, row: Any, rowi: Any, b: int, x: Any, lanes: Any) -> None:
    o = b * 18
    xo = b * 32
    d = _h(row, o)
    for j in range(16):
        v = row[o + 2 + j]
        _put(acc, lanes, x, xo, j, _KV[v & 15] * d)
        _put(acc, lanes, x, xo, 16 + j, _KV[v >> 4] * d)


@_inline
def _b_q2_k(acc: bool, row: Any, rowi: Any, b: int, x: Any, lanes: Any) -> None:
    o = b * 84
    xo = b * 256
    d = _h(row, o + 80)
    dmin = _h(row, o + 82)
    for h in range(2):
        for j in range(4):
            s0 = row[o + 8 * h + 2 * j]
            s1 = row[o + 8 * h + 2 * j + 1]
            d0, m0 = d * np.float32(s0 & 15), dmin * np.float32(s0 >> 4)
            d1, m1 = d * np.float32(s1 & 15), dmin * np.float32(s1 >> 4)
            q = o + 16 + 32 * h
            e = xo + 128 * h + 32 * j
            sh = 2 * j
            for lane in range(16):
                _put(acc, lanes, x, e, lane, np.float32((row[q + lane] >> sh) & 3) * d0 - m0)
                w1 = np.float32((row[q + 16 + lane] >> sh) & 3) * d1 - m1
                _put(acc, lanes, x, e, 16 + lane, w1)


@_inline
def _q3_scale(row: Any, s: int, i: int) -> Any:
    lo = (np.int64(row[s + (i & 7)]) >> (4 * (i >> 3))) & 15
    hi = (np.int64(row[s + 8 + (i & 3)]) >> (2 * (i >> 2))) & 3
    return np.float32((lo | (hi << 4)) - 32)


@_inline
def _b_q3_k(acc: bool, row: Any, rowi: Any, b: int, x: Any, lanes: Any) -> None:
    o = b * 110
    xo = b * 256
    d = _h(row, o + 108)
    for h in range(2):
        for j in range(4):
            i = 8 * h + 2 * j
            d0 = d * _q3_scale(row, o + 96, i)
            d1 = d * _q3_scale(row, o + 96, i + 1)
            q = o + 32 + 32 * h
            e = xo + 128 * h + 32 * j
            sh = 2 * j
            hs = 4 * h + j
            for lane in range(16):
                q0 = ((row[q + lane] >> sh) & 3) - 4 + 4 * ((row[o + lane] >> hs) & 1)
                q1 = ((row[q + 16 + lane] >> sh) & 3) - 4 + 4 * ((row[o + 16 + lane] >> hs) & 1)
                _put(acc, lanes, x, e, lane, np.float32(q0) * d0)
                _put(acc, lanes, x, e, 16 + lane, np.float32(q1) * d1)


@_inline
def _k_scale_min(row: Any, s: int, j: int) -> Any:
    if j < 4:
        return row[s + j] & 63, row[s + j + 4] & 63
    sc = (row[s + j + 4] & 15) | ((row[s + j - 4] >> 6) << 4)
    mn = (row[s + j + 4] >> 4) | ((row[s + j] >> 6) << 4)
    return sc, mn


@_inline
def _b_q4_k(acc: bool, row: Any, rowi: Any, b: int, x: Any, lanes: Any) -> None:
    o = b * 144
    xo = b * 256
    d = _h(row, o)
    dmin = _h(row, o + 2)
    for p in range(4):
        sc0, mn0 = _k_scale_min(row, o + 4, 2 * p)
        sc1, mn1 = _k_scale_min(row, o + 4, 2 * p + 1)
        d0, m0 = d * np.float32(sc0), dmin * np.float32(mn0)
        d1, m1 = d * np.float32(sc1), dmin * np.float32(mn1)
        q = o + 16 + 32 * p
        e0 = xo + 64 * p
        e1 = e0 + 32
        for lane in range(32):
            v = row[q + lane]
            _put(acc, lanes, x, e0, lane, np.float32(v & 15) * d0 - m0)
        for lane in range(32):
            v = row[q + lane]
            _put(acc, lanes, x, e1, lane, np.float32(v >> 4) * d1 - m1)


@_inline
def _b_q5_k(acc: bool, row: Any, rowi: Any, b: int, x: Any, lanes: Any) -> None:
    o = b * 176
    xo = b * 256
    d = _h(row, o)
    dmin = _h(row, o + 2)
    for p in range(4):
        sc0, mn0 = _k_scale_min(row, o + 4, 2 * p)
        sc1, mn1 = _k_scale_min(row, o + 4, 2 * p + 1)
        d0, m0 = d * np.float32(sc0), dmin * np.float32(mn0)
        d1, m1 = d * np.float32(sc1), dmin * np.float32(mn1)
        q = o + 48 + 32 * p
        e0 = xo + 64 * p
        e1 = e0 + 32
        b0 = 2 * p
        for lane in range(32):
            v = (row[q + lane] & 15) | (((row[o + 16 + lane] >> b0) & 1) << 4)
            _put(acc, lanes, x, e0, lane, np.float32(v) * d0 - m0)
        for lane in range(32):
            v = (row[q + lane] >> 4) | (((row[o + 16 + lane] >> (b0 + 1)) & 1) << 4)
            _put(acc, lanes, x, e1, lane, np.float32(v) * d1 - m1)


@_inline
def _b_q6_k(acc: bool, row: Any, rowi: Any, b: int, x: Any, lanes: Any) -> None:
    o = b * 210
    xo = b * 256
    d = _h(row, o + 208)
    for n in range(2):
        for quarter in range(4):
            ql = o + 64 * n + (quarter & 1) * 32
            qh = o + 128 + 32 * n
            shl = (quarter >> 1) * 4
            shh = 2 * quarter
            s = o + 192 + 8 * n + 2 * quarter
            d0 = d * np.float32(rowi[s])
            d1 = d * np.float32(rowi[s + 1])
            e = xo + 128 * n + 32 * quarter
            for lane in range(16):
                q0 = ((row[ql + lane] >> shl) & 15) | (((row[qh + lane] >> shh) & 3) << 4)
                q1 = ((row[ql + 16 + lane] >> shl) & 15) | (((row[qh + 16 + lane] >> shh) & 3) << 4)
                _put(acc, lanes, x, e, lane, np.float32(q0 - 32) * d0)
                _put(acc, lanes, x, e, 16 + lane, np.float32(q1 - 32) * d1)


@_inline
def _b_iq4_xs(acc: bool, row: Any, rowi: Any, b: int, x: Any, lanes: Any) -> None:
    o = b * 136
    xo = b * 256
    d = _h(row, o)
    sh = np.int64(row[o + 2]) | (np.int64(row[o + 3]) << 8)
    for ib in range(8):
        ls = ((np.int64(row[o + 4 + (ib >> 1)]) >> (4 * (ib & 1))) & 15) | (
            ((sh >> (2 * ib)) & 3) << 4
        )
        dl = d * np.float32(ls - 32)
        q = o + 8 + 16 * ib
        e = xo + 32 * ib
        for lane in range(16):
            v = row[q + lane]
            _put(acc, lanes, x, e, lane, _KV[v & 15] * dl)
            _put(acc, lanes, x, e, 16 + lane, _KV[v >> 4] * dl)


@_inline
def _sum32(lanes: Any) -> Any:
    total = np.float32(0.0)
    for j in range(32):
        total += lanes[j]
    return total


# One driver pair per format (not one driver branching on the format: LLVM vectorizes the
# block loops of a driver with one format about twice as well, measured on the dev VM).
@_jit
def _mv_q8_0(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    n_blocks = raw.shape[1] // 34
    rows = raw.shape[0]
    l0 = np.zeros(32, dtype=np.float32)
    l1 = np.zeros(32, dtype=np.float32)
    for n in range(0, rows - 1, 2):  # two rows at a time: twice the independent sums
        r0, i0, r1, i1 = raw[n], rawi[n], raw[n + 1], rawi[n + 1]
        for m in range(x.shape[0]):
            xm = x[m]
            l0[:] = 0.0
            l1[:] = 0.0
            for b in range(n_blocks):
                _b_q8_0(True, r0, i0, b, xm, l0)
                _b_q8_0(True, r1, i1, b, xm, l1)
            y[m, col0 + n] = _sum32(l0)
            y[m, col0 + n + 1] = _sum32(l1)
    if rows % 2:
        n = rows - 1
        for m in range(x.shape[0]):
            l0[:] = 0.0
            for b in range(n_blocks):
                _b_q8_0(True, raw[n], rawi[n], b, x[m], l0)
            y[m, col0 + n] = _sum32(l0)


@_jit
def _dq_q8_0(raw: Any, rawi: Any, out: Any) -> None:
    n_blocks = raw.shape[1] // 34
    for n in range(raw.shape[0]):
        for b in range(n_blocks):
            _b_q8_0(False, raw[n], rawi[n], b, out[n], out[n])


@_jit
def _mv_q4_0(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    n_blocks = raw.shape[1] // 18
    rows = raw.shape[0]
    l0 = np.zeros(32, dtype=np.float32)
    l1 = np.zeros(32, dtype=np.float32)
    for n in range(0, rows - 1, 2):  # two rows at a time: twice the independent sums
        r0, i0, r1, i1 = raw[n], rawi[n], raw[n + 1], rawi[n + 1]
        for m in range(x.shape[0]):
            xm = x[m]
            l0[:] = 0.0
            l1[:] = 0.0
            for b in range(n_blocks):
                _b_q4_0(True, r0, i0, b, xm, l0)
                _b_q4_0(True, r1, i1, b, xm, l1)
            y[m, col0 + n] = _sum32(l0)
            y[m, col0 + n + 1] = _sum32(l1)
    if rows % 2:
        n = rows - 1
        for m in range(x.shape[0]):
            l0[:] = 0.0
            for b in range(n_blocks):
                _b_q4_0(True, raw[n], rawi[n], b, x[m], l0)
            y[m, col0 + n] = _sum32(l0)


@_jit
def _dq_q4_0(raw: Any, rawi: Any, out: Any) -> None:
    n_blocks = raw.shape[1] // 18
    for n in range(raw.shape[0]):
        for b in range(n_blocks):
            _b_q4_0(False, raw[n], rawi[n], b, out[n], out[n])


@_jit
def _mv_q4_1(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    n_blocks = raw.shape[1] // 20
    rows = raw.shape[0]
    l0 = np.zeros(32, dtype=np.float32)
    l1 = np.zeros(32, dtype=np.float32)
    for n in range(0, rows - 1, 2):  # two rows at a time: twice the independent sums
        r0, i0, r1, i1 = raw[n], rawi[n], raw[n + 1], rawi[n + 1]
        for m in range(x.shape[0]):
            xm = x[m]
            l0[:] = 0.0
            l1[:] = 0.0
            for b in range(n_blocks):
                _b_q4_1(True, r0, i0, b, xm, l0)
                _b_q4_1(True, r1, i1, b, xm, l1)
            y[m, col0 + n] = _sum32(l0)
            y[m, col0 + n + 1] = _sum32(l1)
    if rows % 2:
        n = rows - 1
        for m in range(x.shape[0]):
            l0[:] = 0.0
            for b in range(n_blocks):
                _b_q4_1(True, raw[n], rawi[n], b, x[m], l0)
            y[m, col0 + n] = _sum32(l0)


@_jit
def _dq_q4_1(raw: Any, rawi: Any, out: Any) -> None:
    n_blocks = raw.shape[1] // 20
    for n in range(raw.shape[0]):
        for b in range(n_blocks):
            _b_q4_1(False, raw[n], rawi[n], b, out[n], out[n])


@_jit
def _mv_q5_0(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    n_blocks = raw.shape[1] // 22
    rows = raw.shape[0]
    l0 = np.zeros(32, dtype=np.float32)
    l1 = np.zeros(32, dtype=np.float32)
    for n in range(0, rows - 1, 2):  # two rows at a time: twice the independent sums
        r0, i0, r1, i1 = raw[n], rawi[n], raw[n + 1], rawi[n + 1]
        for m in range(x.shape[0]):
            xm = x[m]
            l0[:] = 0.0
            l1[:] = 0.0
            for b in range(n_blocks):
                _b_q5_0(True, r0, i0, b, xm, l0)
                _b_q5_0(True, r1, i1, b, xm, l1)
            y[m, col0 + n] = _sum32(l0)
            y[m, col0 + n + 1] = _sum32(l1)
    if rows % 2:
        n = rows - 1
        for m in range(x.shape[0]):
            l0[:] = 0.0
            for b in range(n_blocks):
                _b_q5_0(True, raw[n], rawi[n], b, x[m], l0)
            y[m, col0 + n] = _sum32(l0)


@_jit
def _dq_q5_0(raw: Any, rawi: Any, out: Any) -> None:
    n_blocks = raw.shape[1] // 22
    for n in range(raw.shape[0]):
        for b in range(n_blocks):
            _b_q5_0(False, raw[n], rawi[n], b, out[n], out[n])


@_jit
def _mv_q5_1(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    n_blocks = raw.shape[1] // 24
    rows = raw.shape[0]
    l0 = np.zeros(32, dtype=np.float32)
    l1 = np.zeros(32, dtype=np.float32)
    for n in range(0, rows - 1, 2):  # two rows at a time: twice the independent sums
        r0, i0, r1, i1 = raw[n], rawi[n], raw[n + 1], rawi[n + 1]
        for m in range(x.shape[0]):
            xm = x[m]
            l0[:] = 0.0
            l1[:] = 0.0
            for b in range(n_blocks):
                _b_q5_1(True, r0, i0, b, xm, l0)
                _b_q5_1(True, r1, i1, b, xm, l1)
            y[m, col0 + n] = _sum32(l0)
            y[m, col0 + n + 1] = _sum32(l1)
    if rows % 2:
        n = rows - 1
        for m in range(x.shape[0]):
            l0[:] = 0.0
            for b in range(n_blocks):
                _b_q5_1(True, raw[n], rawi[n], b, x[m], l0)
            y[m, col0 + n] = _sum32(l0)


@_jit
def _dq_q5_1(raw: Any, rawi: Any, out: Any) -> None:
    n_blocks = raw.shape[1] // 24
    for n in range(raw.shape[0]):
        for b in range(n_blocks):
            _b_q5_1(False, raw[n], rawi[n], b, out[n], out[n])


@_jit
def _mv_iq4_nl(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    n_blocks = raw.shape[1] // 18
    rows = raw.shape[0]
    l0 = np.zeros(32, dtype=np.float32)
    l1 = np.zeros(32, dtype=np.float32)
    for n in range(0, rows - 1, 2):  # two rows at a time: twice the independent sums
        r0, i0, r1, i1 = raw[n], rawi[n], raw[n + 1], rawi[n + 1]
        for m in range(x.shape[0]):
            xm = x[m]
            l0[:] = 0.0
            l1[:] = 0.0
            for b in range(n_blocks):
                _b_iq4_nl(True, r0, i0, b, xm, l0)
                _b_iq4_nl(True, r1, i1, b, xm, l1)
            y[m, col0 + n] = _sum32(l0)
            y[m, col0 + n + 1] = _sum32(l1)
    if rows % 2:
        n = rows - 1
        for m in range(x.shape[0]):
            l0[:] = 0.0
            for b in range(n_blocks):
                _b_iq4_nl(True, raw[n], rawi[n], b, x[m], l0)
            y[m, col0 + n] = _sum32(l0)


@_jit
def _dq_iq4_nl(raw: Any, rawi: Any, out: Any) -> None:
    n_blocks = raw.shape[1] // 18
    for n in range(raw.shape[0]):
        for b in range(n_blocks):
            _b_iq4_nl(False, raw[n], rawi[n], b, out[n], out[n])


@_jit
def _mv_q2_k(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    n_blocks = raw.shape[1] // 84
    rows = raw.shape[0]
    l0 = np.zeros(32, dtype=np.float32)
    l1 = np.zeros(32, dtype=np.float32)
    for n in range(0, rows - 1, 2):  # two rows at a time: twice the independent sums
        r0, i0, r1, i1 = raw[n], rawi[n], raw[n + 1], rawi[n + 1]
        for m in range(x.shape[0]):
            xm = x[m]
            l0[:] = 0.0
            l1[:] = 0.0
            for b in range(n_blocks):
                _b_q2_k(True, r0, i0, b, xm, l0)
                _b_q2_k(True, r1, i1, b, xm, l1)
            y[m, col0 + n] = _sum32(l0)
            y[m, col0 + n + 1] = _sum32(l1)
    if rows % 2:
        n = rows - 1
        for m in range(x.shape[0]):
            l0[:] = 0.0
            for b in range(n_blocks):
                _b_q2_k(True, raw[n], rawi[n], b, x[m], l0)
            y[m, col0 + n] = _sum32(l0)


@_jit
def _dq_q2_k(raw: Any, rawi: Any, out: Any) -> None:
    n_blocks = raw.shape[1] // 84
    for n in range(raw.shape[0]):
        for b in range(n_blocks):
            _b_q2_k(False, raw[n], rawi[n], b, out[n], out[n])


@_jit
def _mv_q3_k(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    n_blocks = raw.shape[1] // 110
    rows = raw.shape[0]
    l0 = np.zeros(32, dtype=np.float32)
    l1 = np.zeros(32, dtype=np.float32)
    for n in range(0, rows - 1, 2):  # two rows at a time: twice the independent sums
        r0, i0, r1, i1 = raw[n], rawi[n], raw[n + 1], rawi[n + 1]
        for m in range(x.shape[0]):
            xm = x[m]
            l0[:] = 0.0
            l1[:] = 0.0
            for b in range(n_blocks):
                _b_q3_k(True, r0, i0, b, xm, l0)
                _b_q3_k(True, r1, i1, b, xm, l1)
            y[m, col0 + n] = _sum32(l0)
            y[m, col0 + n + 1] = _sum32(l1)
    if rows % 2:
        n = rows - 1
        for m in range(x.shape[0]):
            l0[:] = 0.0
            for b in range(n_blocks):
                _b_q3_k(True, raw[n], rawi[n], b, x[m], l0)
            y[m, col0 + n] = _sum32(l0)


@_jit
def _dq_q3_k(raw: Any, rawi: Any, out: Any) -> None:
    n_blocks = raw.shape[1] // 110
    for n in range(raw.shape[0]):
        for b in range(n_blocks):
            _b_q3_k(False, raw[n], rawi[n], b, out[n], out[n])


@_jit
def _mv_q4_k(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    n_blocks = raw.shape[1] // 144
    rows = raw.shape[0]
    l0 = np.zeros(32, dtype=np.float32)
    l1 = np.zeros(32, dtype=np.float32)
    for n in range(0, rows - 1, 2):  # two rows at a time: twice the independent sums
        r0, i0, r1, i1 = raw[n], rawi[n], raw[n + 1], rawi[n + 1]
        for m in range(x.shape[0]):
            xm = x[m]
            l0[:] = 0.0
            l1[:] = 0.0
            for b in range(n_blocks):
                _b_q4_k(True, r0, i0, b, xm, l0)
                _b_q4_k(True, r1, i1, b, xm, l1)
            y[m, col0 + n] = _sum32(l0)
            y[m, col0 + n + 1] = _sum32(l1)
    if rows % 2:
        n = rows - 1
        for m in range(x.shape[0]):
            l0[:] = 0.0
            for b in range(n_blocks):
                _b_q4_k(True, raw[n], rawi[n], b, x[m], l0)
            y[m, col0 + n] = _sum32(l0)


@_jit
def _dq_q4_k(raw: Any, rawi: Any, out: Any) -> None:
    n_blocks = raw.shape[1] // 144
    for n in range(raw.shape[0]):
        for b in range(n_blocks):
            _b_q4_k(False, raw[n], rawi[n], b, out[n], out[n])


@_jit
def _mv_q5_k(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    n_blocks = raw.shape[1] // 176
    rows = raw.shape[0]
    l0 = np.zeros(32, dtype=np.float32)
    l1 = np.zeros(32, dtype=np.float32)
    for n in range(0, rows - 1, 2):  # two rows at a time: twice the independent sums
        r0, i0, r1, i1 = raw[n], rawi[n], raw[n + 1], rawi[n + 1]
        for m in range(x.shape[0]):
            xm = x[m]
            l0[:] = 0.0
            l1[:] = 0.0
            for b in range(n_blocks):
                _b_q5_k(True, r0, i0, b, xm, l0)
                _b_q5_k(True, r1, i1, b, xm, l1)
            y[m, col0 + n] = _sum32(l0)
            y[m, col0 + n + 1] = _sum32(l1)
    if rows % 2:
        n = rows - 1
        for m in range(x.shape[0]):
            l0[:] = 0.0
            for b in range(n_blocks):
                _b_q5_k(True, raw[n], rawi[n], b, x[m], l0)
            y[m, col0 + n] = _sum32(l0)


@_jit
def _dq_q5_k(raw: Any, rawi: Any, out: Any) -> None:
    n_blocks = raw.shape[1] // 176
    for n in range(raw.shape[0]):
        for b in range(n_blocks):
            _b_q5_k(False, raw[n], rawi[n], b, out[n], out[n])


@_jit
def _mv_q6_k(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    n_blocks = raw.shape[1] // 210
    rows = raw.shape[0]
    l0 = np.zeros(32, dtype=np.float32)
    l1 = np.zeros(32, dtype=np.float32)
    for n in range(0, rows - 1, 2):  # two rows at a time: twice the independent sums
        r0, i0, r1, i1 = raw[n], rawi[n], raw[n + 1], rawi[n + 1]
        for m in range(x.shape[0]):
            xm = x[m]
            l0[:] = 0.0
            l1[:] = 0.0
            for b in range(n_blocks):
                _b_q6_k(True, r0, i0, b, xm, l0)
                _b_q6_k(True, r1, i1, b, xm, l1)
            y[m, col0 + n] = _sum32(l0)
            y[m, col0 + n + 1] = _sum32(l1)
    if rows % 2:
        n = rows - 1
        for m in range(x.shape[0]):
            l0[:] = 0.0
            for b in range(n_blocks):
                _b_q6_k(True, raw[n], rawi[n], b, x[m], l0)
            y[m, col0 + n] = _sum32(l0)


@_jit
def _dq_q6_k(raw: Any, rawi: Any, out: Any) -> None:
    n_blocks = raw.shape[1] // 210
    for n in range(raw.shape[0]):
        for b in range(n_blocks):
            _b_q6_k(False, raw[n], rawi[n], b, out[n], out[n])


@_jit
def _mv_iq4_xs(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    n_blocks = raw.shape[1] // 136
    rows = raw.shape[0]
    l0 = np.zeros(32, dtype=np.float32)
    l1 = np.zeros(32, dtype=np.float32)
    for n in range(0, rows - 1, 2):  # two rows at a time: twice the independent sums
        r0, i0, r1, i1 = raw[n], rawi[n], raw[n + 1], rawi[n + 1]
        for m in range(x.shape[0]):
            xm = x[m]
            l0[:] = 0.0
            l1[:] = 0.0
            for b in range(n_blocks):
                _b_iq4_xs(True, r0, i0, b, xm, l0)
                _b_iq4_xs(True, r1, i1, b, xm, l1)
            y[m, col0 + n] = _sum32(l0)
            y[m, col0 + n + 1] = _sum32(l1)
    if rows % 2:
        n = rows - 1
        for m in range(x.shape[0]):
            l0[:] = 0.0
            for b in range(n_blocks):
                _b_iq4_xs(True, raw[n], rawi[n], b, x[m], l0)
            y[m, col0 + n] = _sum32(l0)


@_jit
def _dq_iq4_xs(raw: Any, rawi: Any, out: Any) -> None:
    n_blocks = raw.shape[1] // 136
    for n in range(raw.shape[0]):
        for b in range(n_blocks):
            _b_iq4_xs(False, raw[n], rawi[n], b, out[n], out[n])


#: The formats the numba kernels decode: (matrix x vector, dequantize) drivers. The float
#: formats go through numpy and BLAS instead (:func:`matvec` and :func:`dequantize_rows`).
KERNELS: dict[str, tuple[Any, Any]] = {
    "q8_0": (_mv_q8_0, _dq_q8_0),
    "q4_0": (_mv_q4_0, _dq_q4_0),
    "q4_1": (_mv_q4_1, _dq_q4_1),
    "q5_0": (_mv_q5_0, _dq_q5_0),
    "q5_1": (_mv_q5_1, _dq_q5_1),
    "iq4_nl": (_mv_iq4_nl, _dq_iq4_nl),
    "q2_k": (_mv_q2_k, _dq_q2_k),
    "q3_k": (_mv_q3_k, _dq_q3_k),
    "q4_k": (_mv_q4_k, _dq_q4_k),
    "q5_k": (_mv_q5_k, _dq_q5_k),
    "q6_k": (_mv_q6_k, _dq_q6_k),
    "iq4_xs": (_mv_iq4_xs, _dq_iq4_xs),
}


def _float_rows(raw: U8, qtype: str, cols: int) -> F32:
    if qtype == "f32":
        return raw.view(np.float32).reshape(-1, cols)
    if qtype == "f16":
        return raw.view(np.float16).reshape(-1, cols).astype(np.float32)
    bits = raw.view(np.uint16).reshape(-1, cols).astype(np.uint32) << 16
    return bits.view(np.float32)


def dequantize_rows(raw: U8, qtype: str, cols: int, out: F32 | None = None) -> F32:
    """Rows of GGUF blocks (``uint8[rows, row_bytes]``) as float32 ``[rows, cols]``."""
    raw = np.ascontiguousarray(raw)
    if qtype not in KERNELS:
        rows = _float_rows(raw, qtype, cols)
        if out is None:
            return np.array(rows, dtype=np.float32)
        out[...] = rows
        return out
    if out is None:
        out = np.empty((raw.shape[0], cols), dtype=np.float32)
    KERNELS[qtype][1](raw, raw.view(np.int8), out)
    return out


def matvec(x: F32, raw: U8, qtype: str, out: F32, col0: int = 0) -> None:
    """``out[:, col0 : col0 + rows] = x @ W.T`` for ``W`` the rows of GGUF blocks ``raw``
    (``uint8[rows, row_bytes]``, e.g. a view of the mapped file) and ``x[M, K]`` float32.

    Quantized formats: the weights are decoded in registers, one pass over them per row of
    ``x`` (meant for decode, a few rows). Float formats: BLAS on the rows.
    """
    if qtype not in KERNELS:
        rows = _float_rows(raw, qtype, x.shape[1])
        np.matmul(x, rows.T, out=out[:, col0 : col0 + rows.shape[0]])
        return
    x = np.ascontiguousarray(x, dtype=np.float32)
    KERNELS[qtype][0](raw, raw.view(np.int8), x, out, col0)
