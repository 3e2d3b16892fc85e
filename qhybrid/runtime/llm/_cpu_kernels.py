"""The CPU path's weight products and dequantization straight from GGUF blocks (numba).

- :func:`matvec` ``y[M, N] = x[M, K] @ W.T`` for a few rows of x (decode): weights are read
  once per x row from the mapped file, never copied. Float32 activations by default (the
  drivers below, over :mod:`._cpu_blocks`' block decoders); ``exact=False``: int8 activations
  (:mod:`._cpu_i8`, llama.cpp's way).
- :func:`dequantize_rows` float32 rows (embeddings, and tiles of a prefill product that BLAS
  then multiplies).

Lanes hold partial sums in a fixed order: the float32 result differs from the reference's
dequantize-then-matmul only by summation order (tests check it against ``gguf.quants``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from qhybrid.runtime.llm import _cpu_blocks as blk
from qhybrid.runtime.llm._cpu_act import Act, quantize_act
from qhybrid.runtime.llm._cpu_blocks import inline, jit
from qhybrid.runtime.llm._cpu_i8 import I8_FORMATS, matvec_i8

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]


@inline
def _mv_body(block: Any, nbytes: int, raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    n_blocks = raw.shape[1] // nbytes
    lanes = np.zeros(32, dtype=np.float32)
    for n in range(raw.shape[0]):
        for m in range(x.shape[0]):
            lanes[:] = 0.0
            block(True, raw[n], rawi[n], n_blocks, x[m], lanes)
            y[m, col0 + n] = blk.sum32(lanes)


@inline
def _dq_body(block: Any, nbytes: int, raw: Any, rawi: Any, out: Any) -> None:
    n_blocks = raw.shape[1] // nbytes
    for n in range(raw.shape[0]):
        block(False, raw[n], rawi[n], n_blocks, out[n], out[n])


# One driver pair per format, the block decoder and its size constants (not one driver
# branching on the format: LLVM vectorizes the block loops of a driver with one format about
# twice as well, measured on the dev VM).
@jit
def _mv_q8_0(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    _mv_body(blk.b_q8_0, 34, raw, rawi, x, y, col0)


@jit
def _dq_q8_0(raw: Any, rawi: Any, out: Any) -> None:
    _dq_body(blk.b_q8_0, 34, raw, rawi, out)


@jit
def _mv_q4_0(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    _mv_body(blk.b_q4_0, 18, raw, rawi, x, y, col0)


@jit
def _dq_q4_0(raw: Any, rawi: Any, out: Any) -> None:
    _dq_body(blk.b_q4_0, 18, raw, rawi, out)


@jit
def _mv_q4_1(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    _mv_body(blk.b_q4_1, 20, raw, rawi, x, y, col0)


@jit
def _dq_q4_1(raw: Any, rawi: Any, out: Any) -> None:
    _dq_body(blk.b_q4_1, 20, raw, rawi, out)


@jit
def _mv_q5_0(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    _mv_body(blk.b_q5_0, 22, raw, rawi, x, y, col0)


@jit
def _dq_q5_0(raw: Any, rawi: Any, out: Any) -> None:
    _dq_body(blk.b_q5_0, 22, raw, rawi, out)


@jit
def _mv_q5_1(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    _mv_body(blk.b_q5_1, 24, raw, rawi, x, y, col0)


@jit
def _dq_q5_1(raw: Any, rawi: Any, out: Any) -> None:
    _dq_body(blk.b_q5_1, 24, raw, rawi, out)


@jit
def _mv_iq4_nl(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    _mv_body(blk.b_iq4_nl, 18, raw, rawi, x, y, col0)


@jit
def _dq_iq4_nl(raw: Any, rawi: Any, out: Any) -> None:
    _dq_body(blk.b_iq4_nl, 18, raw, rawi, out)


@jit
def _mv_q2_k(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    _mv_body(blk.b_q2_k, 84, raw, rawi, x, y, col0)


@jit
def _dq_q2_k(raw: Any, rawi: Any, out: Any) -> None:
    _dq_body(blk.b_q2_k, 84, raw, rawi, out)


@jit
def _mv_q3_k(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    _mv_body(blk.b_q3_k, 110, raw, rawi, x, y, col0)


@jit
def _dq_q3_k(raw: Any, rawi: Any, out: Any) -> None:
    _dq_body(blk.b_q3_k, 110, raw, rawi, out)


@jit
def _mv_q4_k(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    _mv_body(blk.b_q4_k, 144, raw, rawi, x, y, col0)


@jit
def _dq_q4_k(raw: Any, rawi: Any, out: Any) -> None:
    _dq_body(blk.b_q4_k, 144, raw, rawi, out)


@jit
def _mv_q5_k(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    _mv_body(blk.b_q5_k, 176, raw, rawi, x, y, col0)


@jit
def _dq_q5_k(raw: Any, rawi: Any, out: Any) -> None:
    _dq_body(blk.b_q5_k, 176, raw, rawi, out)


@jit
def _mv_q6_k(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    _mv_body(blk.b_q6_k, 210, raw, rawi, x, y, col0)


@jit
def _dq_q6_k(raw: Any, rawi: Any, out: Any) -> None:
    _dq_body(blk.b_q6_k, 210, raw, rawi, out)


@jit
def _mv_iq4_xs(raw: Any, rawi: Any, x: Any, y: Any, col0: int) -> None:
    _mv_body(blk.b_iq4_xs, 136, raw, rawi, x, y, col0)


@jit
def _dq_iq4_xs(raw: Any, rawi: Any, out: Any) -> None:
    _dq_body(blk.b_iq4_xs, 136, raw, rawi, out)


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
    if not exact and qtype in I8_FORMATS:
        matvec_i8(raw, qtype, act if act is not None else quantize_act(x), out, col0)
        return
    KERNELS[qtype][0](raw, raw.view(np.int8), x, out, col0)
