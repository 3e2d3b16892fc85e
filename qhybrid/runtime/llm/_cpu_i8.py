"""The CPU path's decode products on int8 activations (llama.cpp's way), numba.

The activations come as :class:`._cpu_act.Act`: Q8_0 blocks of 32 (``x ~ xd * xq``), with the
per-block sums of ``xq`` and of ``x``. A block's weights are ``d * q + m`` (or ``d * (q -
offset)``), so its share of ``x . w`` is ``d * xd * sum(q * xq) + m * sum(x)``: the integer sum
is one vector product (:mod:`._cpu_dots`), the float work one or two multiply-adds per block (or
per K-quant sub-block). One thread, a fixed order: the same floats every run.

Formats: :data:`I8_FORMATS`. The others take float32 activations (:mod:`._cpu_kernels`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qhybrid.runtime.llm._cpu_act import Act
from qhybrid.runtime.llm._cpu_blocks import half, inline, jit, k_scale_min, qh32
from qhybrid.runtime.llm._cpu_dots import dot_i8, dot_nibbles, dot_planes16, dot_planes32


@jit
def _mv_q8_0(raw: Any, rawi: Any, xq: Any, xd: Any, y: Any, col0: int) -> None:
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
                dot = dot_i8(ri, o + 2, xqm, b * 32)
                total += np.float32(dot) * (half(r, o) * xdm[b])
            y[m, col0 + n] = total


@inline
def _q45_body(
    kind: int, raw: Any, xq: Any, xd: Any, xqs: Any, xsum: Any, y: Any, col0: int
) -> None:
    # kind 0 q4_0, 1 q4_1, 2 q5_0, 3 q5_1 (a constant: the branches fold away): the offset of
    # q4_0/q5_0 (-8 / -16) as offset * d xd sum(xq); q4_1/q5_1's m as m sum(x).
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
                    qh = qh32(r, o + 2)
                elif kind == 3:
                    qh = qh32(r, o + 4)
                dot = dot_nibbles(r, o + qs_at, qh, xqm, b * 32) + offset * xsm[b]
                total += np.float32(dot) * (half(r, o) * xdm[b])
                if kind == 1 or kind == 3:
                    total += half(r, o + 2) * xfm[b]
            y[m, col0 + n] = total


@jit
def _mv_q4_0(raw: Any, xq: Any, xd: Any, xqs: Any, xsum: Any, y: Any, col0: int) -> None:
    _q45_body(0, raw, xq, xd, xqs, xsum, y, col0)


@jit
def _mv_q4_1(raw: Any, xq: Any, xd: Any, xqs: Any, xsum: Any, y: Any, col0: int) -> None:
    _q45_body(1, raw, xq, xd, xqs, xsum, y, col0)


@jit
def _mv_q5_0(raw: Any, xq: Any, xd: Any, xqs: Any, xsum: Any, y: Any, col0: int) -> None:
    _q45_body(2, raw, xq, xd, xqs, xsum, y, col0)


@jit
def _mv_q5_1(raw: Any, xq: Any, xd: Any, xqs: Any, xsum: Any, y: Any, col0: int) -> None:
    _q45_body(3, raw, xq, xd, xqs, xsum, y, col0)


@inline
def _k45_body(
    nbytes: int, qs_at: int, hmask: int, raw: Any, xq: Any, xd: Any, xsum: Any, y: Any, col0: int
) -> None:
    # Q4_K (hmask 0: no high bits) and Q5_K (hmask 1: the fifth bits at byte 16 of a block).
    # Sub-block j of 32: d sc_j xd sum(q xq) - dmin m_j sum(x).
    n_blocks = raw.shape[1] // nbytes
    for n in range(raw.shape[0]):
        r = raw[n]
        for m in range(xq.shape[0]):
            xqm, xdm, xfm = xq[m], xd[m], xsum[m]
            total = np.float32(0.0)
            for b in range(n_blocks):
                o = b * nbytes
                d = half(r, o)
                dmin = half(r, o + 2)
                for j in range(8):
                    sc, mn = k_scale_min(r, o + 4, j)
                    k = 8 * b + j
                    lo = o + qs_at + 32 * (j >> 1)
                    dot = dot_planes32(r, lo, 4 * (j & 1), o + 16, j, hmask, 0, xqm, 32 * k)
                    total += np.float32(dot) * (d * np.float32(sc) * xdm[k])
                    total -= dmin * np.float32(mn) * xfm[k]
            y[m, col0 + n] = total


@jit
def _mv_q4_k(raw: Any, xq: Any, xd: Any, xsum: Any, y: Any, col0: int) -> None:
    _k45_body(144, 16, 0, raw, xq, xd, xsum, y, col0)


@jit
def _mv_q5_k(raw: Any, xq: Any, xd: Any, xsum: Any, y: Any, col0: int) -> None:
    _k45_body(176, 48, 1, raw, xq, xd, xsum, y, col0)


@jit
def _mv_q6_k(raw: Any, rawi: Any, xq: Any, xd: Any, y: Any, col0: int) -> None:
    # 16 weights per scale: d xd (sc_a sum(q xq)[:16] + sc_b sum(q xq)[16:]), q = 6 bits - 32.
    n_blocks = raw.shape[1] // 210
    for n in range(raw.shape[0]):
        r = raw[n]
        ri = rawi[n]
        for m in range(xq.shape[0]):
            xqm, xdm = xq[m], xd[m]
            total = np.float32(0.0)
            for b in range(n_blocks):
                o = b * 210
                d = half(r, o + 208)
                for part in range(2):
                    for quarter in range(4):
                        ql = o + 64 * part + (quarter & 1) * 32
                        qh = o + 128 + 32 * part
                        shl = (quarter >> 1) * 4
                        shh = 2 * quarter
                        s = o + 192 + 8 * part + 2 * quarter
                        k = 8 * b + 4 * part + quarter
                        e = 32 * k
                        dot_a = dot_planes16(r, ql, shl, qh, shh, 3, 32, xqm, e)
                        dot_b = dot_planes16(r, ql + 16, shl, qh + 16, shh, 3, 32, xqm, e + 16)
                        sub = np.float32(np.int32(ri[s]) * dot_a + np.int32(ri[s + 1]) * dot_b)
                        total += sub * (d * xdm[k])
            y[m, col0 + n] = total


_Q45 = {"q4_0": _mv_q4_0, "q4_1": _mv_q4_1, "q5_0": _mv_q5_0, "q5_1": _mv_q5_1}
_K45 = {"q4_k": _mv_q4_k, "q5_k": _mv_q5_k}
#: The formats with int8-activation kernels.
I8_FORMATS = frozenset({"q8_0", "q6_k", *_Q45, *_K45})


def matvec_i8(raw: Any, qtype: str, act: Act, out: Any, col0: int) -> None:
    """``out[:, col0 : col0 + rows] = x @ W.T`` for the blocks ``raw`` of a format of
    :data:`I8_FORMATS`, ``x`` as ``act``."""
    if qtype == "q8_0":
        _mv_q8_0(raw, raw.view(np.int8), act.q, act.d, out, col0)
    elif qtype in _Q45:
        _Q45[qtype](raw, act.q, act.d, act.qsum, act.xsum, out, col0)
    elif qtype in _K45:
        _K45[qtype](raw, act.q, act.d, act.xsum, out, col0)
    elif qtype == "q6_k":
        _mv_q6_k(raw, raw.view(np.int8), act.q, act.d, out, col0)
    else:
        raise ValueError(f"no int8-activation kernel for {qtype}")


def bind_i8(raw: Any, qtype: str) -> Any:
    """``product(act, out)``: :func:`matvec_i8` into ``out[:, :rows]`` with the kernel chosen
    once (a decode step makes 100-200 products; the dispatch is their Python overhead)."""
    if qtype == "q8_0":
        rawi = raw.view(np.int8)
        return lambda a, out: _mv_q8_0(raw, rawi, a.q, a.d, out, 0)
    if qtype in _Q45:
        fn = _Q45[qtype]
        return lambda a, out: fn(raw, a.q, a.d, a.qsum, a.xsum, out, 0)
    if qtype in _K45:
        fk = _K45[qtype]
        return lambda a, out: fk(raw, a.q, a.d, a.xsum, out, 0)
    if qtype == "q6_k":
        rawi = raw.view(np.int8)
        return lambda a, out: _mv_q6_k(raw, rawi, a.q, a.d, out, 0)
    raise ValueError(f"no int8-activation kernel for {qtype}")
