"""The numpy reference of every GPU kernel: the semantics the WGSL kernels must match.

Each function computes in float32 exactly what the kernel of the same name does (up to
floating-point summation order). Tests compare the kernels with these; the LLM engine's CPU path
runs its graph with them. Weights come as GGUF does: a 2-D matrix of ``rows x cols`` whose rows
are stored one after another, each row a run of quantization blocks (``qtype`` one of
:data:`QTYPES`); dequantization is the ``gguf`` package's own.

Layouts are row-major and named by their shape: ``x[T, H, D]`` is T tokens, H heads, D per head.
"""

from __future__ import annotations

import math
import typing
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from qhybrid.runtime.wgpu_thread._quants import FORMATS

F32 = npt.NDArray[np.float32]
Array = npt.NDArray[Any]

QType = Literal[
    "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl",
    "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_xs",
]  # fmt: skip
#: The weight formats the kernels read directly (the block table of :mod:`._quants`).
QTYPES: tuple[QType, ...] = typing.get_args(QType)
#: (elements per block, bytes per block) of each format, as GGUF stores them.
BLOCK: dict[str, tuple[int, int]] = {q: (FORMATS[q].elements, FORMATS[q].nbytes) for q in QTYPES}
#: The most candidates :func:`sample` keeps (``top_k`` 0 or larger means this many).
SAMPLE_MAX_K = 64
RopeMode = Literal["normal", "neox"]


def row_nbytes(qtype: str, cols: int) -> int:
    """Bytes of one row of ``cols`` elements; ``cols`` must be a multiple of the block size."""
    per_block, block_bytes = BLOCK[qtype]
    if cols % per_block:
        raise ValueError(f"{qtype} rows need a multiple of {per_block} columns, got {cols}")
    return cols // per_block * block_bytes


def _ggml_type(qtype: str) -> Any:
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[qtype.upper()]


def dequantize(raw: Array, qtype: str, rows: int, cols: int) -> F32:
    """The ``rows x cols`` float32 matrix stored in ``raw`` (bytes, or f32/f16 values)."""
    if qtype == "f32":
        return np.asarray(raw).view(np.float32).reshape(rows, cols)
    if qtype == "f16":
        return np.asarray(raw).view(np.float16).reshape(rows, cols).astype(np.float32)
    if qtype == "bf16":
        bits = np.asarray(raw).view(np.uint16).reshape(rows, cols).astype(np.uint32) << 16
        return bits.view(np.float32)
    from gguf import quants

    data = np.asarray(raw).view(np.uint8).reshape(rows, row_nbytes(qtype, cols))
    return np.asarray(quants.dequantize(data, _ggml_type(qtype)), dtype=np.float32)


def random_quantized(rng: np.random.Generator, qtype: str, rows: int, cols: int) -> Array:
    """Valid random blocks for a ``rows x cols`` matrix (uint8 ``[rows, row_nbytes]``), with
    scales that keep values near unit size; for tests and random models."""
    if qtype == "f32":
        return rng.standard_normal((rows, cols), dtype=np.float32)
    if qtype == "f16":
        return rng.standard_normal((rows, cols), dtype=np.float32).astype(np.float16)
    if qtype == "bf16":
        values = rng.standard_normal((rows, cols), dtype=np.float32)
        return (values.view(np.uint32) >> 16).astype(np.uint16)
    per_block, block_bytes = BLOCK[qtype]
    blocks = rows * cols // per_block
    raw = rng.integers(0, 256, size=(blocks, block_bytes), dtype=np.uint8)
    for offset, low, high in FORMATS[qtype].scales:
        scale = rng.uniform(low, high, blocks).astype(np.float16)
        raw[:, offset : offset + 2] = scale.view(np.uint8).reshape(blocks, 2)
    return raw.reshape(rows, row_nbytes(qtype, cols))


def quantize(values: F32, qtype: str) -> Array:
    """``values`` (2-D float32) in ``qtype``: f32, f16, q8_0 and q4_0 only (gguf's quantizer)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if qtype == "f32":
        return values
    if qtype == "f16":
        return values.astype(np.float16)
    from gguf import quants

    return np.asarray(quants.quantize(values, _ggml_type(qtype)))


# -- matrix products -----------------------------------------------------------------------
def matmul(a: F32, b: F32) -> F32:
    """``c[M, N] = a[M, K] @ b[K, N]``."""
    result: Array = np.matmul(a, b, dtype=np.float32)
    return result


def linear(x: F32, w: Array, qtype: str, n: int, k: int) -> F32:
    """``y[M, N] = x[M, K] @ W.T`` with ``W[N, K]`` stored in ``qtype``: llama.cpp's mul_mat.

    The GPU runs it as matrix x vector for small M (decode, a few sequences) and as a tiled
    matrix product for large M (prefill).
    """
    result: Array = np.matmul(x, dequantize(w, qtype, n, k).T, dtype=np.float32)
    return result


def get_rows(table: Array, qtype: str, rows: int, cols: int, ids: Array) -> F32:
    """``out[T, cols]``: the rows ``ids[T]`` of a ``rows x cols`` table (embedding lookup)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= rows):
        raise IndexError(f"row id out of range 0..{rows - 1}")
    if qtype in ("f32", "f16", "bf16"):
        return dequantize(table, qtype, rows, cols)[ids]
    data = np.asarray(table).view(np.uint8).reshape(rows, -1)
    return dequantize(data[ids], qtype, len(ids), cols)


# -- elementwise ----------------------------------------------------------------------------
def add(a: F32, b: F32) -> F32:
    return np.add(a, b, dtype=np.float32)


def mul(a: F32, b: F32) -> F32:
    return np.multiply(a, b, dtype=np.float32)


def scale(a: F32, factor: float) -> F32:
    return np.multiply(a, np.float32(factor), dtype=np.float32)


def silu(x: F32) -> F32:
    """``x * sigmoid(x)``."""
    x = np.asarray(x, dtype=np.float32)
    return (x / (np.float32(1.0) + np.exp(-x))).astype(np.float32)


_GELU_C = np.float32(math.sqrt(2.0 / math.pi))


def gelu(x: F32) -> F32:
    """ggml's GELU, the tanh approximation: ``0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3)))``."""
    x = np.asarray(x, dtype=np.float32)
    inner = _GELU_C * (x + np.float32(0.044715) * x * x * x)
    return (np.float32(0.5) * x * (np.float32(1.0) + np.tanh(inner))).astype(np.float32)


def silu_mul(gate: F32, up: F32) -> F32:
    """SwiGLU's gating, fused: ``silu(gate) * up``."""
    return (silu(gate) * up).astype(np.float32)


# -- reductions over rows -------------------------------------------------------------------
def softmax(x: F32, factor: float = 1.0) -> F32:
    """Softmax over the last axis of ``x * factor``, max-subtracted."""
    z = np.asarray(x, dtype=np.float32) * np.float32(factor)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    result: Array = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    return result


def rmsnorm(x: F32, weight: F32 | None, eps: float) -> F32:
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last axis (``weight`` None: no scale)."""
    x = np.asarray(x, dtype=np.float32)
    ms = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
    y = x / np.sqrt(ms + np.float32(eps))
    return (y if weight is None else y * weight).astype(np.float32)


def layernorm(x: F32, weight: F32 | None, bias: F32 | None, eps: float) -> F32:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over the last axis."""
    x = np.asarray(x, dtype=np.float32)
    mean = np.mean(x, axis=-1, keepdims=True, dtype=np.float32)
    d = x - mean
    var = np.mean(d * d, axis=-1, keepdims=True, dtype=np.float32)
    y = d / np.sqrt(var + np.float32(eps))
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y.astype(np.float32)


# -- attention ------------------------------------------------------------------------------
def rope(
    x: F32, pos: Array, base: float, mode: RopeMode = "normal", n_dims: int | None = None
) -> F32:
    """Rotary embeddings as llama.cpp applies them to ``x[T, H, D]`` at positions ``pos[T]``.

    Pair ``i`` (``0 <= i < n_dims/2``) turns by ``pos * base^(-2i/n_dims)``. ``normal`` (llama)
    pairs elements ``2i, 2i+1``; ``neox`` (qwen2) pairs ``i, i + n_dims/2``. Elements from
    ``n_dims`` on are copied unchanged.
    """
    x = np.asarray(x, dtype=np.float32)
    d = x.shape[-1]
    n_dims = d if n_dims is None else n_dims
    half = n_dims // 2
    inv = np.float32(base) ** (-np.arange(half, dtype=np.float32) * np.float32(2.0 / n_dims))
    theta = np.asarray(pos, dtype=np.float32)[:, None] * inv[None, :]  # [T, half]
    cos = np.cos(theta)[:, None, :]
    sin = np.sin(theta)[:, None, :]
    out = x.copy()
    if mode == "normal":
        x0, x1 = x[..., 0:n_dims:2], x[..., 1:n_dims:2]
        out[..., 0:n_dims:2] = x0 * cos - x1 * sin
        out[..., 1:n_dims:2] = x0 * sin + x1 * cos
    elif mode == "neox":
        x0, x1 = x[..., :half], x[..., half:n_dims]
        out[..., :half] = x0 * cos - x1 * sin
        out[..., half:n_dims] = x0 * sin + x1 * cos
    else:
        raise ValueError(f"unknown rope mode {mode!r}")
    return out.astype(np.float32)


def kv_store(cache: F32, x: F32, slot: Array, pos: Array) -> None:
    """Write ``x[T, Hkv, D]`` into ``cache[S, L, Hkv, D]`` at ``(slot[t], pos[t])``, in place."""
    cache[np.asarray(slot, dtype=np.int64), np.asarray(pos, dtype=np.int64)] = x


def attention(q: F32, k_cache: F32, v_cache: F32, slot: Array, pos: Array, factor: float) -> F32:
    """Causal attention over a KV cache, grouped-query.

    ``q[T, Hq, D]``; caches ``[S, L, Hkv, D]`` (S sequence slots of L positions); query ``t``
    belongs to sequence ``slot[t]``, sits at position ``pos[t]`` and attends to that slot's
    positions ``0..pos[t]`` inclusive. Query head ``h`` reads KV head ``h // (Hq // Hkv)``.
    Scores are ``q.k * factor`` (usually ``1/sqrt(D)``). Returns ``out[T, Hq, D]``.
    """
    t_count, hq, d = q.shape
    hkv = k_cache.shape[2]
    group = hq // hkv
    out = np.zeros((t_count, hq, d), dtype=np.float32)
    for t in range(t_count):
        s, p = int(slot[t]), int(pos[t])
        keys = k_cache[s, : p + 1]  # [P, Hkv, D]
        values = v_cache[s, : p + 1]
        for h in range(hq):
            kv = h // group
            scores = keys[:, kv, :] @ q[t, h] * np.float32(factor)
            w = softmax(scores[None, :])[0]
            out[t, h] = w @ values[:, kv, :]
    return out


# -- sampling -------------------------------------------------------------------------------
def argmax(x: F32) -> Array:
    """``uint32[B]``: the index of each row's largest value (the first, on ties)."""
    result: Array = np.argmax(np.asarray(x, dtype=np.float32), axis=-1).astype(np.uint32)
    return result


def topk(x: F32, k: int) -> tuple[F32, Array]:
    """Each row's ``k`` largest values, descending, and their indices (``uint32``); ties go to
    the lower index."""
    x = np.asarray(x, dtype=np.float32)
    k = min(k, x.shape[-1])
    order = np.argsort(-x, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(x, order, axis=-1), order.astype(np.uint32)


def repeat_penalty(logits: F32, recent: Array, counts: Array, penalty: float) -> F32:
    """llama.cpp's repetition penalty, for each row ``b``: every distinct token among
    ``recent[b, :counts[b]]`` has its logit divided by ``penalty`` if positive, else
    multiplied by it. Returns a new array."""
    out = np.array(logits, dtype=np.float32, copy=True)
    p = np.float32(penalty)
    for b in range(out.shape[0]):
        ids = np.unique(np.asarray(recent[b, : int(counts[b])], dtype=np.int64))
        vals = out[b, ids]
        out[b, ids] = np.where(vals > 0, vals / p, vals * p)
    return out


def sample(logits: F32, temperature: float, top_k: int, top_p: float, uniform: Array) -> Array:
    """One token per row (``uint32[B]``), from one uniform draw ``uniform[b]`` in [0, 1).

    ``temperature <= 0`` is greedy (:func:`argmax`). Otherwise: the ``top_k`` best candidates
    (``top_k`` 0, or above :data:`SAMPLE_MAX_K`, means :data:`SAMPLE_MAX_K`), descending;
    probabilities ``softmax(values / temperature)``; top-p keeps the shortest prefix whose
    probability reaches ``top_p`` (at least one); the pick is the first kept candidate whose
    cumulative probability exceeds ``uniform[b]`` times the kept total.
    """
    if temperature <= 0:
        return argmax(logits)
    k = SAMPLE_MAX_K if top_k <= 0 else min(top_k, SAMPLE_MAX_K)
    values, indices = topk(logits, k)
    probs = softmax(values, 1.0 / temperature)
    out = np.empty(values.shape[0], dtype=np.uint32)
    for b in range(values.shape[0]):
        cum = np.cumsum(probs[b], dtype=np.float32)
        keep = int(np.searchsorted(cum, np.float32(top_p), side="left")) + 1
        keep = max(1, min(keep, len(cum)))
        target = np.float32(uniform[b]) * cum[keep - 1]
        j = int(np.searchsorted(cum[:keep], target, side="right"))
        out[b] = indices[b, min(j, keep - 1)]
    return out
