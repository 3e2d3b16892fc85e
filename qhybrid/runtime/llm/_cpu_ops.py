"""The CPU path's fused decode operations (numba): what lies between the weight products.

A decode step of the numpy graph made about 15 numpy calls a layer around its products
(rmsnorm, rope, the one-query attention, the gated FFN activation, the residual adds, the
activations' quantization), each a few microseconds of dispatch on vectors of a few hundred
floats: 2.5-4 ms of an 11-20 ms step. Here each run between two products is one call:

- :func:`norm_act` ``h = rmsnorm(x) * w``, quantized for the next products;
- :func:`residual_norm_act` the residual add (after gemma's post-norm of the branch), then the
  next norm and its quantization;
- :func:`attend` biases, per-head q/k norms, rope, the KV cache store, grouped-query attention
  of one query per sequence (sliding window, soft-capping) and the output's quantization;
- :func:`glu_act` SwiGLU or GeGLU, quantized for ``ffn_down``.

Quantization is :func:`._cpu_act._quantize` (llama.cpp's Q8_0 activation blocks). Norm sums run
in float64, like ggml's. One thread, a fixed order: the same floats every run. Only the engine's
default path (``exact=False``) uses these; ``exact=True`` keeps the numpy reference graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qhybrid.runtime.llm._cpu_act import _quantize
from qhybrid.runtime.llm._cpu_blocks import inline, jit
from qhybrid.runtime.llm._jit import intrinsic, ir, types

_GELU_C = np.float32(np.sqrt(2.0 / np.pi))


@intrinsic
def _f32_from_bits(typingctx: Any, bits: Any) -> Any:
    """The float32 whose bit pattern is the int32 ``bits`` (one instruction: loops of it
    vectorize)."""
    sig = types.float32(types.int32)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


_bits: Any = _f32_from_bits


@inline
def exp32(x: Any) -> Any:
    """``exp(x)`` in float32 without a libm call (Cephes' expf: a degree-6 polynomial times
    ``2^n``; within 2 ulp), so that loops of it vectorize; 0 below -87.3."""
    lo = np.float32(-87.33654)
    x = x if x < np.float32(88.37626) else np.float32(88.37626)
    small = x < lo
    x = x if x > lo else lo
    fx = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
    r = x - fx * np.float32(0.693359375) + fx * np.float32(2.12194440e-4)
    y = np.float32(1.9875691500e-4)
    y = y * r + np.float32(1.3981999507e-3)
    y = y * r + np.float32(8.3334519073e-3)
    y = y * r + np.float32(4.1665795894e-2)
    y = y * r + np.float32(1.6666665459e-1)
    y = y * r + np.float32(5.0000001201e-1)
    y = y * r * r + r + np.float32(1.0)
    out = y * _bits((np.int32(fx) + np.int32(127)) << np.int32(23))
    return np.float32(0.0) if small else out


@inline
def tanh32(x: Any) -> Any:
    """``tanh(x) = 1 - 2 / (exp(2x) + 1)`` on :func:`exp32` (absolute error ~1e-7)."""
    return np.float32(1.0) - np.float32(2.0) / (exp32(np.float32(2.0) * x) + np.float32(1.0))


@jit
def _rms_row(x: Any, w: Any, has_w: bool, eps: float, out: Any) -> None:
    s = 0.0
    for j in range(x.shape[0]):
        s += np.float64(x[j]) * np.float64(x[j])
    inv = np.float32(1.0 / np.sqrt(s / x.shape[0] + eps))
    if has_w:
        for j in range(x.shape[0]):
            out[j] = x[j] * inv * w[j]
    else:
        for j in range(x.shape[0]):
            out[j] = x[j] * inv


@jit
def norm_act(
    x: Any, w: Any, eps: float, h: Any, q: Any, d: Any, qsum: Any, xsum: Any
) -> None:  # pragma: no cover (jit)
    """``h[m] = rmsnorm(x[m]) * w``, and ``h`` as int8 blocks (``q, d, qsum, xsum``)."""
    for m in range(x.shape[0]):
        _rms_row(x[m], w, True, eps, h[m])
    _quantize(h, q, d, qsum, xsum)


@jit
def residual_norm_act(
    x: Any, f: Any, post: Any, has_post: bool, w: Any, eps: float,
    h: Any, q: Any, d: Any, qsum: Any, xsum: Any,
) -> None:  # fmt: skip
    """``x += rmsnorm(f) * post`` (``has_post``; else ``x += f``), then :func:`norm_act`."""
    for m in range(x.shape[0]):
        if has_post:
            _rms_row(f[m], post, True, eps, f[m])
        for j in range(x.shape[1]):
            x[m, j] += f[m, j]
        _rms_row(x[m], w, True, eps, h[m])
    _quantize(h, q, d, qsum, xsum)


@inline
def _rope_head(v: Any, o: int, cos: Any, sin: Any, neox: bool, n_dims: int) -> None:
    half = n_dims // 2
    for i in range(half):
        c = cos[i]
        s = sin[i]
        if neox:
            a, b = o + i, o + i + half
        else:
            a, b = o + 2 * i, o + 2 * i + 1
        x0 = v[a]
        x1 = v[b]
        v[a] = x0 * c - x1 * s
        v[b] = x0 * s + x1 * c


@jit
def attend(
    q: Any, k: Any, v: Any, bq: Any, bk: Any, bv: Any, has_bias: bool,
    qn: Any, kn: Any, has_qk_norm: bool, eps: float,
    inv: Any, pos_scale: float, neox: bool, n_dims: int,
    kc: Any, vc: Any, slots: Any, pos: Any,
    factor: float, window: int, softcap: float, scores: Any, cos: Any, sin: Any,
    out: Any, aq: Any, ad: Any, aqsum: Any, axsum: Any,
) -> None:  # fmt: skip
    """One query per sequence: ``q[B, Hq*D]``, ``k, v[B, Hkv*D]`` (the products' rows) at
    ``pos[b]`` of ``slots[b]``; caches ``[S, L, Hkv, D]``. ``out[B, Hq*D]``, and as int8
    blocks for ``attn_output``. ``inv``: rope's per-pair frequencies (factors applied)."""
    n_kv, dim = kc.shape[2], kc.shape[3]
    n_q = q.shape[1] // dim
    group = n_q // n_kv
    row = np.empty(dim, np.float32)
    for b in range(q.shape[0]):
        qb, kb, vb = q[b], k[b], v[b]
        if has_bias:
            for j in range(qb.shape[0]):
                qb[j] += bq[j]
            for j in range(kb.shape[0]):
                kb[j] += bk[j]
                vb[j] += bv[j]
        theta_pos = np.float32(pos[b]) * np.float32(pos_scale)
        for i in range(n_dims // 2):
            theta = theta_pos * inv[i]
            cos[i] = np.cos(theta)
            sin[i] = np.sin(theta)
        for hd in range(n_q):
            o = hd * dim
            if has_qk_norm:
                _rms_row(qb[o : o + dim], qn, True, eps, qb[o : o + dim])
            _rope_head(qb, o, cos, sin, neox, n_dims)
        slot, p_now = slots[b], pos[b]
        for hd in range(n_kv):
            o = hd * dim
            if has_qk_norm:
                _rms_row(kb[o : o + dim], kn, True, eps, kb[o : o + dim])
            _rope_head(kb, o, cos, sin, neox, n_dims)
            for j in range(dim):
                kc[slot, p_now, hd, j] = kb[o + j]
                vc[slot, p_now, hd, j] = vb[o + j]
        first = 0
        if window > 0 and p_now - window + 1 > 0:
            first = p_now - window + 1
        for hd in range(n_q):
            g = hd // group
            o = hd * dim
            best = np.float32(-np.inf)
            for p in range(first, p_now + 1):
                s = np.float32(0.0)
                for j in range(dim):
                    s += qb[o + j] * kc[slot, p, g, j]
                s *= np.float32(factor)
                if softcap > 0:
                    s = np.float32(softcap) * tanh32(s / np.float32(softcap))
                scores[p] = s
                if s > best:
                    best = s
            total = np.float32(0.0)
            for p in range(first, p_now + 1):
                e = exp32(scores[p] - best)
                scores[p] = e
                total += e
            # Into a scratch row of its own: LLVM keeps it apart from the caches (4x faster
            # than accumulating into out, which might alias them).
            row[:] = 0.0
            for p in range(first, p_now + 1):
                wgt = scores[p]
                for j in range(dim):
                    row[j] += wgt * vc[slot, p, g, j]
            inv_total = np.float32(1.0) / total
            for j in range(dim):
                out[b, o + j] = row[j] * inv_total
    _quantize(out, aq, ad, aqsum, axsum)


@jit
def glu_act(
    gate: Any, up: Any, gelu: bool, ff: Any, q: Any, d: Any, qsum: Any, xsum: Any
) -> None:  # pragma: no cover (jit)
    """``ff = silu(gate) * up`` (SwiGLU) or ``gelu(gate) * up`` (GeGLU, tanh approximation),
    and ``ff`` as int8 blocks for ``ffn_down``."""
    for m in range(gate.shape[0]):
        for j in range(gate.shape[1]):
            g = gate[m, j]
            if gelu:
                inner = _GELU_C * (g + np.float32(0.044715) * g * g * g)
                a = np.float32(0.5) * g * (np.float32(1.0) + tanh32(inner))
            else:
                a = g / (np.float32(1.0) + exp32(-g))
            ff[m, j] = a * up[m, j]
    _quantize(ff, q, d, qsum, xsum)
