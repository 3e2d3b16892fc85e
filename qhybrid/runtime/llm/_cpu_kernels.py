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

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from qhybrid.runtime.llm._cpu_act import Act, quantize_act
from qhybrid.runtime.llm._jit import intrinsic, ir, njit, types
from qhybrid.runtime.wgpu_thread._quants import IQ4_KVALUES

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

#: float16 bit patterns -> float32 (256 KiB, looked up once per block).
_F16 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
_KV = np.array(IQ4_KVALUES, dtype=np.float32)
_FLAGS = {"reassoc", "contract"}  # vectorized sums; no finite-math assumptions


def _njit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """numba.njit with this module's options (see :mod:`._jit`: the JIT, or the same kernels
    compiled ahead of time in the frozen app)."""
    return njit(fastmath=_FLAGS, boundscheck=False, **options)


_jit = _njit(nogil=True)
_inline = _njit(inline="always")


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
def _b_q8_0(acc: bool, row: Any, rowi: Any, n_blocks: int, x: Any, lanes: Any) -> None:
    for b in range(n_blocks):
        o = b * 34
        xo = b * 32
        d = _h(row, o)
        for j in range(32):
            _put(acc, lanes, x, xo, j, np.float32(np.int8(row[o + 2 + j])) * d)


@_inline
def _b_q4_0(acc: bool, row: Any, rowi: Any, n_blocks: int, x: Any, lanes: Any) -> None:
    for b in range(n_blocks):
        o = b * 18
        xo = b * 32
        d = _h(row, o)
        m = np.float32(-8.0) * d
        for j in range(16):
            v = row[o + 2 + j]
            _put(acc, lanes, x, xo, j, np.float32(v & 15) * d + m)
            _put(acc, lanes, x, xo, 16 + j, np.float32(v >> 4) * d + m)


@_inline
def _b_q4_1(acc: bool, row: Any, rowi: Any, n_blocks: int, x: Any, lanes: Any) -> None:
    for b in range(n_blocks):
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
def _b_q5_0(acc: bool, row: Any, rowi: Any, n_blocks: int, x: Any, lanes: Any) -> None:
    for b in range(n_blocks):
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
def _b_q5_1(acc: bool, row: Any, rowi: Any, n_blocks: int, x: Any, lanes: Any) -> None:
    for b in range(n_blocks):
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
def _b_iq4_nl(acc: bool, row: Any, rowi: Any, n_blocks: int, x: Any, lanes: Any) -> None:
    for b in range(n_blocks):
        o = b * 18
        xo = b * 32
        d = _h(row, o)
        for j in range(16):
            v = row[o + 2 + j]
            _put(acc, lanes, x, xo, j, _KV[v & 15] * d)
            _put(acc, lanes, x, xo, 16 + j, _KV[v >> 4] * d)


@_inline
def _b_q2_k(acc: bool, row: Any, rowi: Any, n_blocks: int, x: Any, lanes: Any) -> None:
    for b in range(n_blocks):
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
def _b_q3_k(acc: bool, row: Any, rowi: Any, n_blocks: int, x: Any, lanes: Any) -> None:
    for b in range(n_blocks):
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
def _b_q4_k(acc: bool, row: Any, rowi: Any, n_blocks: int, x: Any, lanes: Any) -> None:
    for b in range(n_blocks):
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
def _b_q5_k(acc: bool, row: Any, rowi: Any, n_blocks: int, x: Any, lanes: Any) -> None:
    for b in range(n_blocks):
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
def _b_q6_k(acc: bool, row: Any, rowi: Any, n_blocks: int, x: Any, lanes: Any) -> None:
    for b in range(n_blocks):
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
                    q1 = ((row[ql + 16 + lane] >> shl) & 15) | (
                        ((row[qh + 16 + lane] >> shh) & 3) << 4
                    )
                    _put(acc, lanes, x, e, lane, np.float32(q0 - 32) * d0)
                    _put(acc, lanes, x, e, 16 + lane, np.float32(q1 - 32) * d1)


@_inline
def _b_iq4_xs(acc: bool, row: Any, rowi: Any, n_blocks: int, x: Any, lanes: Any) -> None:
    for b in range(n_blocks):
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
    lanes = np.zeros(32, dtype=np.float32)
    for n in range(raw.shape[0]):
        for m in range(x.shape[0]):
            lanes[:] = 0.0
            _b_q8_0(True, raw[n], rawi[n], n_blocks, x[m], lanes)
            y[m, col0 + n] = _sum32(lanes)


@_jit
def _dq_q8_0(raw: Any, rawi: Any, out: Any) -> None:
    n_blocks = raw.shape[1] // 34
    for n in range(raw.shape[0]):
        _b_q8_0(False, raw[n], rawi[n], n_blocks, out[n], out[n])


@_jit
def _mv_q4_0(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    n_blocks = raw.shape[1] // 18
    lanes = np.zeros(32, dtype=np.float32)
    for n in range(raw.shape[0]):
        for m in range(x.shape[0]):
            lanes[:] = 0.0
            _b_q4_0(True, raw[n], rawi[n], n_blocks, x[m], lanes)
            y[m, col0 + n] = _sum32(lanes)


@_jit
def _dq_q4_0(raw: Any, rawi: Any, out: Any) -> None:
    n_blocks = raw.shape[1] // 18
    for n in range(raw.shape[0]):
        _b_q4_0(False, raw[n], rawi[n], n_blocks, out[n], out[n])


@_jit
def _mv_q4_1(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    n_blocks = raw.shape[1] // 20
    lanes = np.zeros(32, dtype=np.float32)
    for n in range(raw.shape[0]):
        for m in range(x.shape[0]):
            lanes[:] = 0.0
            _b_q4_1(True, raw[n], rawi[n], n_blocks, x[m], lanes)
            y[m, col0 + n] = _sum32(lanes)


@_jit
def _dq_q4_1(raw: Any, rawi: Any, out: Any) -> None:
    n_blocks = raw.shape[1] // 20
    for n in range(raw.shape[0]):
        _b_q4_1(False, raw[n], rawi[n], n_blocks, out[n], out[n])


@_jit
def _mv_q5_0(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    n_blocks = raw.shape[1] // 22
    lanes = np.zeros(32, dtype=np.float32)
    for n in range(raw.shape[0]):
        for m in range(x.shape[0]):
            lanes[:] = 0.0
            _b_q5_0(True, raw[n], rawi[n], n_blocks, x[m], lanes)
            y[m, col0 + n] = _sum32(lanes)


@_jit
def _dq_q5_0(raw: Any, rawi: Any, out: Any) -> None:
    n_blocks = raw.shape[1] // 22
    for n in range(raw.shape[0]):
        _b_q5_0(False, raw[n], rawi[n], n_blocks, out[n], out[n])


@_jit
def _mv_q5_1(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    n_blocks = raw.shape[1] // 24
    lanes = np.zeros(32, dtype=np.float32)
    for n in range(raw.shape[0]):
        for m in range(x.shape[0]):
            lanes[:] = 0.0
            _b_q5_1(True, raw[n], rawi[n], n_blocks, x[m], lanes)
            y[m, col0 + n] = _sum32(lanes)


@_jit
def _dq_q5_1(raw: Any, rawi: Any, out: Any) -> None:
    n_blocks = raw.shape[1] // 24
    for n in range(raw.shape[0]):
        _b_q5_1(False, raw[n], rawi[n], n_blocks, out[n], out[n])


@_jit
def _mv_iq4_nl(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    n_blocks = raw.shape[1] // 18
    lanes = np.zeros(32, dtype=np.float32)
    for n in range(raw.shape[0]):
        for m in range(x.shape[0]):
            lanes[:] = 0.0
            _b_iq4_nl(True, raw[n], rawi[n], n_blocks, x[m], lanes)
            y[m, col0 + n] = _sum32(lanes)


@_jit
def _dq_iq4_nl(raw: Any, rawi: Any, out: Any) -> None:
    n_blocks = raw.shape[1] // 18
    for n in range(raw.shape[0]):
        _b_iq4_nl(False, raw[n], rawi[n], n_blocks, out[n], out[n])


@_jit
def _mv_q2_k(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    n_blocks = raw.shape[1] // 84
    lanes = np.zeros(32, dtype=np.float32)
    for n in range(raw.shape[0]):
        for m in range(x.shape[0]):
            lanes[:] = 0.0
            _b_q2_k(True, raw[n], rawi[n], n_blocks, x[m], lanes)
            y[m, col0 + n] = _sum32(lanes)


@_jit
def _dq_q2_k(raw: Any, rawi: Any, out: Any) -> None:
    n_blocks = raw.shape[1] // 84
    for n in range(raw.shape[0]):
        _b_q2_k(False, raw[n], rawi[n], n_blocks, out[n], out[n])


@_jit
def _mv_q3_k(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    n_blocks = raw.shape[1] // 110
    lanes = np.zeros(32, dtype=np.float32)
    for n in range(raw.shape[0]):
        for m in range(x.shape[0]):
            lanes[:] = 0.0
            _b_q3_k(True, raw[n], rawi[n], n_blocks, x[m], lanes)
            y[m, col0 + n] = _sum32(lanes)


@_jit
def _dq_q3_k(raw: Any, rawi: Any, out: Any) -> None:
    n_blocks = raw.shape[1] // 110
    for n in range(raw.shape[0]):
        _b_q3_k(False, raw[n], rawi[n], n_blocks, out[n], out[n])


@_jit
def _mv_q4_k(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    n_blocks = raw.shape[1] // 144
    lanes = np.zeros(32, dtype=np.float32)
    for n in range(raw.shape[0]):
        for m in range(x.shape[0]):
            lanes[:] = 0.0
            _b_q4_k(True, raw[n], rawi[n], n_blocks, x[m], lanes)
            y[m, col0 + n] = _sum32(lanes)


@_jit
def _dq_q4_k(raw: Any, rawi: Any, out: Any) -> None:
    n_blocks = raw.shape[1] // 144
    for n in range(raw.shape[0]):
        _b_q4_k(False, raw[n], rawi[n], n_blocks, out[n], out[n])


@_jit
def _mv_q5_k(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    n_blocks = raw.shape[1] // 176
    lanes = np.zeros(32, dtype=np.float32)
    for n in range(raw.shape[0]):
        for m in range(x.shape[0]):
            lanes[:] = 0.0
            _b_q5_k(True, raw[n], rawi[n], n_blocks, x[m], lanes)
            y[m, col0 + n] = _sum32(lanes)


@_jit
def _dq_q5_k(raw: Any, rawi: Any, out: Any) -> None:
    n_blocks = raw.shape[1] // 176
    for n in range(raw.shape[0]):
        _b_q5_k(False, raw[n], rawi[n], n_blocks, out[n], out[n])


@_jit
def _mv_q6_k(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    n_blocks = raw.shape[1] // 210
    lanes = np.zeros(32, dtype=np.float32)
    for n in range(raw.shape[0]):
        for m in range(x.shape[0]):
            lanes[:] = 0.0
            _b_q6_k(True, raw[n], rawi[n], n_blocks, x[m], lanes)
            y[m, col0 + n] = _sum32(lanes)


@_jit
def _dq_q6_k(raw: Any, rawi: Any, out: Any) -> None:
    n_blocks = raw.shape[1] // 210
    for n in range(raw.shape[0]):
        _b_q6_k(False, raw[n], rawi[n], n_blocks, out[n], out[n])


@_jit
def _mv_iq4_xs(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    n_blocks = raw.shape[1] // 136
    lanes = np.zeros(32, dtype=np.float32)
    for n in range(raw.shape[0]):
        for m in range(x.shape[0]):
            lanes[:] = 0.0
            _b_iq4_xs(True, raw[n], rawi[n], n_blocks, x[m], lanes)
            y[m, col0 + n] = _sum32(lanes)


@_jit
def _dq_iq4_xs(raw: Any, rawi: Any, out: Any) -> None:
    n_blocks = raw.shape[1] // 136
    for n in range(raw.shape[0]):
        _b_iq4_xs(False, raw[n], rawi[n], n_blocks, out[n], out[n])


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


@intrinsic
def _dot32_i8(typingctx: Any, a: Any, ao: Any, b: Any, bo: Any) -> Any:
    """``sum(a[ao : ao + 32] * b[bo : bo + 32])`` of two int8 arrays, as int32: one vector
    multiply-add and reduction (LLVM lowers it to the CPU's widening multiply-adds)."""
    sig = types.int32(a, types.intp, b, types.intp)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        va_arr, va_off, vb_arr, vb_off = args
        arr_a = context.make_array(signature.args[0])(context, builder, va_arr)
        arr_b = context.make_array(signature.args[2])(context, builder, vb_arr)
        v32i8 = ir.VectorType(ir.IntType(8), 32)
        v32i32 = ir.VectorType(ir.IntType(32), 32)
        pa = builder.bitcast(builder.gep(arr_a.data, [va_off]), v32i8.as_pointer())
        pb = builder.bitcast(builder.gep(arr_b.data, [vb_off]), v32i8.as_pointer())
        prod = builder.mul(
            builder.sext(builder.load(pa, align=1), v32i32),
            builder.sext(builder.load(pb, align=1), v32i32),
        )
        name = "llvm.vector.reduce.add.v32i32"
        fn = builder.module.globals.get(name) or ir.Function(
            builder.module, ir.FunctionType(ir.IntType(32), [v32i32]), name
        )
        return builder.call(fn, [prod])

    return sig, codegen


_dot_i8: Any = _dot32_i8  # (numba calls it by value; typed loosely for mypy)


@_jit
def _mv_q8_0_i8(raw: Any, rawi: Any, xq: Any, xd: Any, y: Any, col0: int) -> None:
    n_blocks = raw.shape[1] // 34
    for n in range(raw.shape[0]):
        r = raw[n]
        ri = rawi[n]
        for m in range(xq.shape[0]):
            xqm = xq[m]
            xdm = xd[m]
            total = np.float32(0.0)
            for b in range(n_blocks):
                o = b * 34
                dot = _dot_i8(ri, o + 2, xqm, b * 32)
                total += np.float32(dot) * (_h(r, o) * xdm[b])
            y[m, col0 + n] = total


@intrinsic
def _dot32_nibbles(typingctx: Any, w: Any, wo: Any, qh: Any, x: Any, xo: Any) -> Any:
    """``sum(q[j] * x[xo + j])`` over a q4/q5 block's 32 values, as int32: ``q[j]`` the low
    nibble of ``w[wo + j]`` for j < 16 and the high nibble of ``w[wo + j - 16]`` after, plus
    bit j of ``qh`` (a q5 block's fifth bits; 0 for q4) times 16."""
    sig = types.int32(w, types.intp, types.int64, x, types.intp)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        w_arr, w_off, qh_bits, x_arr, x_off = args
        i8, i32 = ir.IntType(8), ir.IntType(32)
        v16i8, v32i8, v32i32 = ir.VectorType(i8, 16), ir.VectorType(i8, 32), ir.VectorType(i32, 32)
        arr_w = context.make_array(signature.args[0])(context, builder, w_arr)
        arr_x = context.make_array(signature.args[3])(context, builder, x_arr)
        pw = builder.bitcast(builder.gep(arr_w.data, [w_off]), v16i8.as_pointer())
        raw = builder.load(pw, align=1)
        lo = builder.and_(raw, ir.Constant(v16i8, [15] * 16))
        hi = builder.lshr(raw, ir.Constant(v16i8, [4] * 16))
        q = builder.zext(
            builder.shuffle_vector(lo, hi, ir.Constant(v32i32, list(range(32)))), v32i32
        )
        bits = builder.insert_element(
            ir.Constant(v32i32, None), builder.trunc(qh_bits, i32), ir.Constant(i32, 0)
        )
        bits = builder.shuffle_vector(
            bits, ir.Constant(v32i32, None), ir.Constant(v32i32, [0] * 32)
        )
        fifth = builder.and_(
            builder.lshr(bits, ir.Constant(v32i32, list(range(32)))), ir.Constant(v32i32, [1] * 32)
        )
        q = builder.or_(q, builder.shl(fifth, ir.Constant(v32i32, [4] * 32)))
        px = builder.bitcast(builder.gep(arr_x.data, [x_off]), v32i8.as_pointer())
        prod = builder.mul(q, builder.sext(builder.load(px, align=1), v32i32))
        name = "llvm.vector.reduce.add.v32i32"
        fn = builder.module.globals.get(name) or ir.Function(
            builder.module, ir.FunctionType(i32, [v32i32]), name
        )
        return builder.call(fn, [prod])

    return sig, codegen


_dot_nib: Any = _dot32_nibbles


@_inline
def _mv_q45_body(
    kind: int, raw: Any, xq: Any, xd: Any, xqs: Any, xsum: Any, y: Any, col0: int
) -> None:
    # kind 0 q4_0, 1 q4_1, 2 q5_0, 3 q5_1: sum over a block of (d q + m) x, with x ~ xd * xq:
    # d xd sum(q xq) + m sum(x), and q4_0/q5_0's offset as -8 / -16 times d xd sum(xq).
    nbytes = (18, 20, 22, 24)[kind]
    qs_at = (2, 4, 6, 8)[kind]
    offset = (-8, 0, -16, 0)[kind]
    n_blocks = raw.shape[1] // nbytes
    for n in range(raw.shape[0]):
        r = raw[n]
        for m in range(xq.shape[0]):
            xqm, xdm, xsm, xfm = xq[m], xd[m], xqs[m], xsum[m]
            total = np.float32(0.0)
            for b in range(n_blocks):
                o = b * nbytes
                qh = np.int64(0)
                if kind == 2:
                    qh = _qh32(r, o + 2)
                elif kind == 3:
                    qh = _qh32(r, o + 4)
                dot = _dot_nib(r, o + qs_at, qh, xqm, b * 32) + offset * xsm[b]
                total += np.float32(dot) * (_h(r, o) * xdm[b])
                if kind == 1 or kind == 3:
                    total += _h(r, o + 2) * xfm[b]
            y[m, col0 + n] = total


@_jit
def _mv_q4_0_i8(raw: Any, xq: Any, xd: Any, xqs: Any, xsum: Any, y: Any, col0: int) -> None:
    _mv_q45_body(0, raw, xq, xd, xqs, xsum, y, col0)  # the format a constant: no branches


@_jit
def _mv_q4_1_i8(raw: Any, xq: Any, xd: Any, xqs: Any, xsum: Any, y: Any, col0: int) -> None:
    _mv_q45_body(1, raw, xq, xd, xqs, xsum, y, col0)  # the format a constant: no branches


@_jit
def _mv_q5_0_i8(raw: Any, xq: Any, xd: Any, xqs: Any, xsum: Any, y: Any, col0: int) -> None:
    _mv_q45_body(2, raw, xq, xd, xqs, xsum, y, col0)  # the format a constant: no branches


@_jit
def _mv_q5_1_i8(raw: Any, xq: Any, xd: Any, xqs: Any, xsum: Any, y: Any, col0: int) -> None:
    _mv_q45_body(3, raw, xq, xd, xqs, xsum, y, col0)  # the format a constant: no branches


@intrinsic
def _dot32_nibble_run(typingctx: Any, w: Any, wo: Any, shift: Any, x: Any, xo: Any) -> Any:
    """``sum(((w[wo + j] >> shift) & 15) * x[xo + j] for j < 32)`` as int32 (a q4_k
    sub-block: 32 low or high nibbles of 32 bytes)."""
    sig = types.int32(w, types.intp, types.intp, x, types.intp)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        w_arr, w_off, sh, x_arr, x_off = args
        i8, i32 = ir.IntType(8), ir.IntType(32)
        v32i8, v32i32 = ir.VectorType(i8, 32), ir.VectorType(i32, 32)
        arr_w = context.make_array(signature.args[0])(context, builder, w_arr)
        arr_x = context.make_array(signature.args[3])(context, builder, x_arr)
        pw = builder.bitcast(builder.gep(arr_w.data, [w_off]), v32i8.as_pointer())
        raw = builder.zext(builder.load(pw, align=1), v32i32)
        splat = builder.insert_element(
            ir.Constant(v32i32, None), builder.trunc(sh, i32), ir.Constant(i32, 0)
        )
        splat = builder.shuffle_vector(
            splat, ir.Constant(v32i32, None), ir.Constant(v32i32, [0] * 32)
        )
        q = builder.and_(builder.lshr(raw, splat), ir.Constant(v32i32, [15] * 32))
        px = builder.bitcast(builder.gep(arr_x.data, [x_off]), v32i8.as_pointer())
        prod = builder.mul(q, builder.sext(builder.load(px, align=1), v32i32))
        name = "llvm.vector.reduce.add.v32i32"
        fn = builder.module.globals.get(name) or ir.Function(
            builder.module, ir.FunctionType(i32, [v32i32]), name
        )
        return builder.call(fn, [prod])

    return sig, codegen


_dot_run: Any = _dot32_nibble_run


@_jit
def _mv_q4_k_i8(raw: Any, xq: Any, xd: Any, xqs: Any, xsum: Any, y: Any, col0: int) -> None:
    # Sub-block j of 32: d sc_j xd sum(q xq) - dmin m_j sum(x).
    n_blocks = raw.shape[1] // 144
    for n in range(raw.shape[0]):
        r = raw[n]
        for m in range(xq.shape[0]):
            xqm, xdm, xfm = xq[m], xd[m], xsum[m]
            total = np.float32(0.0)
            for b in range(n_blocks):
                o = b * 144
                d = _h(r, o)
                dmin = _h(r, o + 2)
                for j in range(8):
                    sc, mn = _k_scale_min(r, o + 4, j)
                    k = 8 * b + j
                    dot = _dot_run(r, o + 16 + 32 * (j >> 1), 4 * (j & 1), xqm, 32 * k)
                    total += np.float32(dot) * (d * np.float32(sc) * xdm[k])
                    total -= dmin * np.float32(mn) * xfm[k]
            y[m, col0 + n] = total


_Q45 = {
    "q4_0": _mv_q4_0_i8,
    "q4_1": _mv_q4_1_i8,
    "q5_0": _mv_q5_0_i8,
    "q5_1": _mv_q5_1_i8,
    "q4_k": _mv_q4_k_i8,
}


def quantize_q8(x: F32) -> tuple[npt.NDArray[np.int8], F32]:
    """``x[M, K]`` (K a multiple of 32) as int8 blocks of 32 and their scales (llama.cpp's
    Q8_0 activations): ``x ~ q * d``, ``d = max|x| / 127`` per block."""
    m, k = x.shape
    blocks = x.reshape(m, k // 32, 32)
    d = np.abs(blocks).max(axis=2) / np.float32(127.0)
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
    q = np.rint(blocks * inv[:, :, None]).astype(np.int8).reshape(m, k)
    return q, d.astype(np.float32)


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


def matvec(
    x: F32,
    raw: U8,
    qtype: str,
    out: F32,
    col0: int = 0,
    *,
    exact: bool = True,
    act: Act | None = None,
) -> None:
    """``out[:, col0 : col0 + rows] = x @ W.T`` for ``W`` the rows of GGUF blocks ``raw``
    (``uint8[rows, row_bytes]``, e.g. a view of the mapped file) and ``x[M, K]`` float32.

    Quantized formats: the weights are decoded in registers, one pass over them per row of
    ``x`` (meant for decode, a few rows). Float formats: BLAS on the rows. ``exact`` False:
    Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K weights multiply int8-quantized
    activations in int32, as llama.cpp does (about twice as fast; the product then differs
    from the float32 one by the activations' rounding, ~1e-2 relative). ``act``: ``x``
    already quantized (:func:`._cpu_act.quantize_act`, shared by products of one input).
    """
    if qtype not in KERNELS:
        rows = _float_rows(raw, qtype, x.shape[1])
        np.matmul(x, rows.T, out=out[:, col0 : col0 + rows.shape[0]])
        return
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not exact and (qtype == "q8_0" or qtype in _Q45):
        a = act if act is not None else quantize_act(x)
        if qtype == "q8_0":
            _mv_q8_0_i8(raw, raw.view(np.int8), a.q, a.d, out, col0)
        else:
            _Q45[qtype](raw, a.q, a.d, a.qsum, a.xsum, out, col0)
        return
    if not exact and qtype in ("q5_k", "q6_k"):
        from qhybrid.runtime.llm._cpu_kq import matvec_k_i8  # (it imports this module)

        matvec_k_i8(raw, qtype, act if act is not None else quantize_act(x), out, col0)
        return
    KERNELS[qtype][0](raw, raw.view(np.int8), x, out, col0)
