"""The CPU path's GGUF block decoders (numba), one per quantized format, and the jit helpers.

Why numba: the quantized formats need loops over bytes and nibbles that numpy can only do by
materialising float32 copies (4-8x the file); numba compiles them to vectorized machine code
on the user's CPU, from a wheel on PyPI (no compiler at install time), and ``cache=True`` keeps
the machine code between runs. Every kernel runs on one thread (``parallel=False``): the same
input gives the same floats, run after run.

For each format of :data:`~qhybrid.runtime.wgpu_thread._quants.FORMATS` one *block function*
``_b_<format>(acc, row, rowi, n_blocks, x, lanes)`` decodes the blocks of a row, element by
element, and either accumulates ``w * x`` into 32 float32 lanes (``acc`` True: the matrix x
vector product, with the lanes summed once per row) or stores ``w`` (``acc`` False:
dequantization). It is inlined into the drivers of :mod:`._cpu_kernels` with ``acc`` a
constant, so each driver compiles to its own loop without the branch. :mod:`._cpu_i8` reads the
same blocks with int8 activations and shares the scale helpers (:func:`half`,
:func:`k_scale_min`, :func:`qh32`).

Caching: numba checks only the caller's own source file before it reuses cached machine code,
not the files of the helpers compiled into it. After editing this module (or ``_cpu_dots``,
``_cpu_act``), delete ``qhybrid/runtime/llm/__pycache__/*.nb[ic]`` so that the kernels that
inline it are compiled again (a release changes every file, so users are not affected).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from qhybrid.runtime.llm._jit import njit
from qhybrid.runtime.wgpu_thread._quants import IQ4_KVALUES

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

#: float16 bit patterns -> float32 (256 KiB, looked up once per block).
_F16 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
_KV = np.array(IQ4_KVALUES, dtype=np.float32)
_FLAGS = {"reassoc", "contract"}  # vectorized sums; no finite-math assumptions


def _njit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """numba.njit with these kernels' options (see :mod:`._jit`: the JIT, or the same kernels
    compiled ahead of time in the frozen app)."""
    return njit(fastmath=_FLAGS, boundscheck=False, **options)


#: A kernel called from Python (releases the GIL).
jit = _njit(nogil=True)
#: A helper inlined into the kernels at numba's IR level (its constant arguments fold away).
inline = _njit(inline="always")


@inline
def put(acc: bool, lanes: Any, x: Any, xo: int, lane: int, w: Any) -> None:
    if acc:
        lanes[lane] += w * x[xo + lane]
    else:
        lanes[xo + lane] = w


@inline
def half(row: Any, o: int) -> Any:
    return _F16[row[o] | (np.int64(row[o + 1]) << 8)]


@inline
def b_q8_0(acc: bool, row: Any, rowi: Any, n_blocks: int, x: Any, lanes: Any) -> None:
    for b in range(n_blocks):
        o = b * 34
        xo = b * 32
        d = half(row, o)
        for j in range(32):
            put(acc, lanes, x, xo, j, np.float32(np.int8(row[o + 2 + j])) * d)


@inline
def b_q4_0(acc: bool, row: Any, rowi: Any, n_blocks: int, x: Any, lanes: Any) -> None:
    for b in range(n_blocks):
        o = b * 18
        xo = b * 32
        d = half(row, o)
        m = np.float32(-8.0) * d
        for j in range(16):
            v = row[o + 2 + j]
            put(acc, lanes, x, xo, j, np.float32(v & 15) * d + m)
            put(acc, lanes, x, xo, 16 + j, np.float32(v >> 4) * d + m)


@inline
def b_q4_1(acc: bool, row: Any, rowi: Any, n_blocks: int, x: Any, lanes: Any) -> None:
    for b in range(n_blocks):
        o = b * 20
        xo = b * 32
        d = half(row, o)
        m = half(row, o + 2)
        for j in range(16):
            v = row[o + 4 + j]
            put(acc, lanes, x, xo, j, np.float32(v & 15) * d + m)
            put(acc, lanes, x, xo, 16 + j, np.float32(v >> 4) * d + m)


@inline
def qh32(row: Any, o: int) -> Any:
    return (
        np.int64(row[o])
        | (np.int64(row[o + 1]) << 8)
        | (np.int64(row[o + 2]) << 16)
        | (np.int64(row[o + 3]) << 24)
    )


@inline
def b_q5_0(acc: bool, row: Any, rowi: Any, n_blocks: int, x: Any, lanes: Any) -> None:
    for b in range(n_blocks):
        o = b * 22
        xo = b * 32
        d = half(row, o)
        m = np.float32(-16.0) * d
        qh = qh32(row, o + 2)
        for j in range(16):
            v = np.int64(row[o + 6 + j])
            lo = (v & 15) | (((qh >> j) & 1) << 4)
            hi = (v >> 4) | (((qh >> (j + 16)) & 1) << 4)
            put(acc, lanes, x, xo, j, np.float32(lo) * d + m)
            put(acc, lanes, x, xo, 16 + j, np.float32(hi) * d + m)


@inline
def b_q5_1(acc: bool, row: Any, rowi: Any, n_blocks: int, x: Any, lanes: Any) -> None:
    for b in range(n_blocks):
        o = b * 24
        xo = b * 32
        d = half(row, o)
        m = half(row, o + 2)
        qh = qh32(row, o + 4)
        for j in range(16):
            v = np.int64(row[o + 8 + j])
            lo = (v & 15) | (((qh >> j) & 1) << 4)
            hi = (v >> 4) | (((qh >> (j + 16)) & 1) << 4)
            put(acc, lanes, x, xo, j, np.float32(lo) * d + m)
            put(acc, lanes, x, xo, 16 + j, np.float32(hi) * d + m)


@inline
def b_iq4_nl(acc: bool, row: Any, rowi: Any, n_blocks: int, x: Any, lanes: Any) -> None:
    for b in range(n_blocks):
        o = b * 18
        xo = b * 32
        d = half(row, o)
        for j in range(16):
            v = row[o + 2 + j]
            put(acc, lanes, x, xo, j, _KV[v & 15] * d)
            put(acc, lanes, x, xo, 16 + j, _KV[v >> 4] * d)


@inline
def b_q2_k(acc: bool, row: Any, rowi: Any, n_blocks: int, x: Any, lanes: Any) -> None:
    for b in range(n_blocks):
        o = b * 84
        xo = b * 256
        d = half(row, o + 80)
        dmin = half(row, o + 82)
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
                    put(acc, lanes, x, e, lane, np.float32((row[q + lane] >> sh) & 3) * d0 - m0)
                    w1 = np.float32((row[q + 16 + lane] >> sh) & 3) * d1 - m1
                    put(acc, lanes, x, e, 16 + lane, w1)


@inline
def _q3_scale(row: Any, s: int, i: int) -> Any:
    lo = (np.int64(row[s + (i & 7)]) >> (4 * (i >> 3))) & 15
    hi = (np.int64(row[s + 8 + (i & 3)]) >> (2 * (i >> 2))) & 3
    return np.float32((lo | (hi << 4)) - 32)


@inline
def b_q3_k(acc: bool, row: Any, rowi: Any, n_blocks: int, x: Any, lanes: Any) -> None:
    for b in range(n_blocks):
        o = b * 110
        xo = b * 256
        d = half(row, o + 108)
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
                    put(acc, lanes, x, e, lane, np.float32(q0) * d0)
                    put(acc, lanes, x, e, 16 + lane, np.float32(q1) * d1)


@inline
def k_scale_min(row: Any, s: int, j: int) -> Any:
    if j < 4:
        return row[s + j] & 63, row[s + j + 4] & 63
    sc = (row[s + j + 4] & 15) | ((row[s + j - 4] >> 6) << 4)
    mn = (row[s + j + 4] >> 4) | ((row[s + j] >> 6) << 4)
    return sc, mn


@inline
def b_q4_k(acc: bool, row: Any, rowi: Any, n_blocks: int, x: Any, lanes: Any) -> None:
    for b in range(n_blocks):
        o = b * 144
        xo = b * 256
        d = half(row, o)
        dmin = half(row, o + 2)
        for p in range(4):
            sc0, mn0 = k_scale_min(row, o + 4, 2 * p)
            sc1, mn1 = k_scale_min(row, o + 4, 2 * p + 1)
            d0, m0 = d * np.float32(sc0), dmin * np.float32(mn0)
            d1, m1 = d * np.float32(sc1), dmin * np.float32(mn1)
            q = o + 16 + 32 * p
            e0 = xo + 64 * p
            e1 = e0 + 32
            for lane in range(32):
                v = row[q + lane]
                put(acc, lanes, x, e0, lane, np.float32(v & 15) * d0 - m0)
            for lane in range(32):
                v = row[q + lane]
                put(acc, lanes, x, e1, lane, np.float32(v >> 4) * d1 - m1)


@inline
def b_q5_k(acc: bool, row: Any, rowi: Any, n_blocks: int, x: Any, lanes: Any) -> None:
    for b in range(n_blocks):
        o = b * 176
        xo = b * 256
        d = half(row, o)
        dmin = half(row, o + 2)
        for p in range(4):
            sc0, mn0 = k_scale_min(row, o + 4, 2 * p)
            sc1, mn1 = k_scale_min(row, o + 4, 2 * p + 1)
            d0, m0 = d * np.float32(sc0), dmin * np.float32(mn0)
            d1, m1 = d * np.float32(sc1), dmin * np.float32(mn1)
            q = o + 48 + 32 * p
            e0 = xo + 64 * p
            e1 = e0 + 32
            b0 = 2 * p
            for lane in range(32):
                v = (row[q + lane] & 15) | (((row[o + 16 + lane] >> b0) & 1) << 4)
                put(acc, lanes, x, e0, lane, np.float32(v) * d0 - m0)
            for lane in range(32):
                v = (row[q + lane] >> 4) | (((row[o + 16 + lane] >> (b0 + 1)) & 1) << 4)
                put(acc, lanes, x, e1, lane, np.float32(v) * d1 - m1)


@inline
def b_q6_k(acc: bool, row: Any, rowi: Any, n_blocks: int, x: Any, lanes: Any) -> None:
    for b in range(n_blocks):
        o = b * 210
        xo = b * 256
        d = half(row, o + 208)
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
                    put(acc, lanes, x, e, lane, np.float32(q0 - 32) * d0)
                    put(acc, lanes, x, e, 16 + lane, np.float32(q1 - 32) * d1)


@inline
def b_iq4_xs(acc: bool, row: Any, rowi: Any, n_blocks: int, x: Any, lanes: Any) -> None:
    for b in range(n_blocks):
        o = b * 136
        xo = b * 256
        d = half(row, o)
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
                put(acc, lanes, x, e, lane, _KV[v & 15] * dl)
                put(acc, lanes, x, e, 16 + lane, _KV[v >> 4] * dl)


@inline
def sum32(lanes: Any) -> Any:
    total = np.float32(0.0)
    for j in range(32):
        total += lanes[j]
    return total
