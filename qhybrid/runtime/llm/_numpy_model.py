"""The CPU path: every supported architecture's graph in numpy, from the kernels' references.

This is both the engine's ``--device cpu`` runner and the reference the GPU runner is tested
against, so it computes with :mod:`qhybrid.runtime.wgpu_thread._reference` (the kernels'
contract): ``get_rows`` for the embeddings, ``rmsnorm``, ``linear`` on GGUF blocks, ``rope``
as llama.cpp applies it (normal for llama, neox for qwen2), ``kv_store``, ``silu_mul``,
``repeat_penalty`` and ``sample``. Attention is the same computation as ``ref.attention``
vectorized per sequence (its per-query, per-head Python loop costs seconds on a prompt of a
few hundred tokens); a test checks the two agree.

Weights stay as the GGUF blocks in the mapped file (:class:`_Weights`, with the numba kernels
of :mod:`._cpu_kernels`): a decode step multiplies straight from the blocks; a prefill
dequantizes a few rows at a time into a small float32 tile that BLAS multiplies. No float32
copy of a quantized matrix is kept unless ``dense_budget`` asks for one.
"""

from __future__ import annotations

import functools
import logging
import mmap
import os
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from threadpoolctl import ThreadpoolController

from qhybrid.runtime.llm import _cpu_kernels as cpu
from qhybrid.runtime.llm._cpu_act import Act, quantize_act
from qhybrid.runtime.llm._cpu_decode import FusedDecode
from qhybrid.runtime.llm._gguf import ModelConfig, ModelFile, TensorData
from qhybrid.runtime.llm._runner import SeqInput, check_items
from qhybrid.runtime.wgpu_thread import _reference as ref

logger = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
#: Bytes of float32 weight copies kept by default: none (weights are read from their blocks).
DEFAULT_DENSE_BUDGET = 0
#: Steps whose largest matrix product (tokens x n_embd x n_ff) is below this many floating
#: point operations run on one BLAS thread.
_SMALL_PRODUCT_FLOPS = 64e6


@functools.cache
def _blas_controller() -> ThreadpoolController:
    # Made once: finding the loaded BLAS libraries scans the process's shared objects.
    return ThreadpoolController()


class _Weights:
    """The model's matrices, read from their GGUF blocks (the mapped file) on every call.

    ``x @ W.T`` for a few rows of ``x`` (decode) runs the numba kernel that decodes the blocks
    in registers (:func:`._cpu_kernels.matvec`); for more rows (prefill) ``TILE_BYTES`` of
    ``W`` at a time are dequantized into a reused float32 tile that BLAS multiplies. Memory:
    the file's pages plus one tile. ``budget`` bytes of float32 ``W.T`` copies may be kept
    (the old speed-for-memory trade; default 0, none).
    """

    #: Rows of x up to which the kernel decodes W once per row of x; above, tile + BLAS.
    MATVEC_MAX_ROWS = 3
    #: Bytes of the float32 tile a prefill product dequantizes into.
    TILE_BYTES = 1 << 20

    def __init__(self, model: ModelFile, budget: int, exact: bool = True) -> None:
        self.model = model
        self.budget = budget
        #: False: Q8_0 decode products take int8 activations (llama.cpp's way, ~2x faster).
        self.exact = exact
        self.used = 0
        self._dense_t: dict[str, F32] = {}
        self._tile = np.empty(0, dtype=np.float32)

    def transposed(self, t: TensorData) -> F32 | None:
        """``t`` as float32 ``W.T`` (``[cols, rows]``) if kept (or now kept, within the
        budget); None: read from the blocks."""
        got = self._dense_t.get(t.name)
        if got is not None or not self.budget:
            return got
        size = t.rows * t.cols * 4
        if self.used + size > self.budget:
            return None
        dense = np.ascontiguousarray(cpu.dequantize_rows(t.data, t.qtype, t.cols).T)
        self._dense_t[t.name] = dense
        self.used += size
        return dense

    def activations(self, x: F32) -> Act | None:
        """``x`` quantized once for the decode products that share it (q, k, v; gate, up),
        or None where the products take float32 (``exact``, or a prefill)."""
        if self.exact or x.shape[0] > self.MATVEC_MAX_ROWS or x.shape[1] % 32:
            return None
        return quantize_act(x)

    def linear(self, x: F32, t: TensorData, act: Act | None = None) -> F32:
        """``x @ W.T`` on the GGUF blocks (the kernels' ``linear``); ``act``: ``x`` from
        :meth:`activations`."""
        wt = self.transposed(t)
        if wt is not None:
            kept: F32 = np.matmul(x, wt)
            return kept
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty((x.shape[0], t.rows), dtype=np.float32)
        if x.shape[0] <= self.MATVEC_MAX_ROWS or t.qtype == "f32":
            cpu.matvec(x, t.data, t.qtype, out, exact=self.exact, act=act)
            return out
        step = max(1, self.TILE_BYTES // (4 * t.cols))
        if self._tile.size < step * t.cols:
            self._tile = np.empty(step * t.cols, dtype=np.float32)
        for r0 in range(0, t.rows, step):
            r1 = min(r0 + step, t.rows)
            tile = self._tile[: (r1 - r0) * t.cols].reshape(r1 - r0, t.cols)
            cpu.dequantize_rows(t.data[r0:r1], t.qtype, t.cols, tile)
            np.matmul(x, tile.T, out=out[:, r0:r1])
        return out

    def rows(self, t: TensorData, ids: I64) -> F32:
        """Rows ``ids`` of ``t`` as float32 (embedding lookup), dequantized from the blocks."""
        return cpu.dequantize_rows(t.data[ids], t.qtype, t.cols)


class _Layer:
    """One block's tensors: weights as GGUF views, norms and biases as float32 vectors."""

    def __init__(self, model: ModelFile, i: int) -> None:
        c = model.config
        t = model.layer_tensor
        self.attn_norm = t(i, "attn_norm.weight").vector()
        self.ffn_norm = t(i, "ffn_norm.weight").vector()
        self.wqkv: TensorData | None = None
        self.wq = self.wk = self.wv = None
        if c.fused_qkv:
            self.wqkv = t(i, "attn_qkv.weight")
        else:
            self.wq, self.wk, self.wv = (t(i, f"attn_{n}.weight") for n in "qkv")
        self.wo = t(i, "attn_output.weight")
        self.w_gate = None if c.fused_up else t(i, "ffn_gate.weight")
        self.w_up = t(i, "ffn_up.weight")
        self.w_down = t(i, "ffn_down.weight")
        self.bq = self.bk = self.bv = None
        if c.attn_bias:
            self.bq, self.bk, self.bv = (t(i, f"attn_{n}.bias").vector() for n in "qkv")
        self.q_norm = self.k_norm = None
        if c.qk_norm:
            self.q_norm = t(i, "attn_q_norm.weight").vector()
            self.k_norm = t(i, "attn_k_norm.weight").vector()
        self.post_attn_norm = self.post_ffn_norm = None
        if c.post_norms:
            self.post_attn_norm = t(i, "post_attention_norm.weight").vector()
            self.post_ffn_norm = t(i, "post_ffw_norm.weight").vector()
        base, scale = c.layer_rope(i)
        self.rope_base = base
        self.rope_scale = scale
        self.window = c.swa_window if c.is_swa(i) else 0


def rope_with_factors(
    x: F32, pos: npt.NDArray[np.float32], base: float, mode: str, n_dims: int, factors: F32
) -> F32:
    """:func:`ref.rope` with llama.cpp's per-pair frequency factors (``rope_freqs.weight``):
    pair ``i`` turns by ``pos * base^(-2i/n_dims) / factors[i]``."""
    half = n_dims // 2
    inv = np.float32(base) ** (-np.arange(half, dtype=np.float32) * np.float32(2.0 / n_dims))
    theta = pos.astype(np.float32)[:, None] * (inv / factors)[None, :]
    cos = np.cos(theta)[:, None, :]
    sin = np.sin(theta)[:, None, :]
    out = x.copy()
    if mode == "normal":
        x0, x1 = x[..., 0:n_dims:2], x[..., 1:n_dims:2]
        out[..., 0:n_dims:2] = x0 * cos - x1 * sin
        out[..., 1:n_dims:2] = x0 * sin + x1 * cos
    else:
        x0, x1 = x[..., :half], x[..., half:n_dims]
        out[..., :half] = x0 * cos - x1 * sin
        out[..., half:n_dims] = x0 * sin + x1 * cos
    return out.astype(np.float32)


def _softcap(scores: F32, cap: float) -> None:
    """``cap * tanh(scores / cap)`` in place (gemma2's attention and logit soft-capping)."""
    scores *= np.float32(1.0 / cap)
    np.tanh(scores, out=scores)
    scores *= np.float32(cap)


def causal_attention(
    q: F32,
    k_cache: F32,
    v_cache: F32,
    slot: int,
    start: int,
    factor: float,
    *,
    window: int = 0,
    softcap: float = 0.0,
) -> F32:
    """``ref.attention`` for one sequence's consecutive queries, vectorized.

    ``q[n, Hq, D]`` at positions ``start .. start+n-1`` of ``slot``; caches ``[S, L, Hkv, D]``
    already hold those positions. Query at position ``p`` sees positions ``0..p``, and with a
    sliding ``window`` only those with ``p - k < window`` (llama.cpp's standard SWA mask).
    """
    n, hq, d = q.shape
    hkv = k_cache.shape[2]
    group = hq // hkv
    total = start + n
    keys = k_cache[slot, :total]  # [P, Hkv, D]
    values = v_cache[slot, :total]
    qh = q.reshape(n, hkv, group, d).transpose(1, 2, 0, 3)  # [Hkv, G, n, D]
    scores = np.matmul(qh, keys.transpose(1, 2, 0)[:, None], dtype=np.float32)  # [Hkv,G,n,P]
    scores *= np.float32(factor)
    if softcap > 0:
        _softcap(scores, softcap)
    qpos = start + np.arange(n)
    masked = np.arange(total)[None, :] > qpos[:, None]  # [n, P]
    if window > 0:
        masked |= qpos[:, None] - np.arange(total)[None, :] >= window
    if masked.any():
        scores[..., masked] = -np.inf
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    out = np.matmul(scores, values.transpose(1, 0, 2)[:, None], dtype=np.float32)  # [Hkv,G,n,D]
    result: F32 = np.ascontiguousarray(out.transpose(2, 0, 1, 3).reshape(n, hq, d))
    return result


def decode_attention(
    q: F32,
    k_cache: F32,
    v_cache: F32,
    slots: I64,
    pos: I64,
    factor: float,
    *,
    window: int = 0,
    softcap: float = 0.0,
) -> F32:
    """``ref.attention`` for one query per sequence (a decode step of several sequences), in
    one batched product: ``q[B, Hq, D]``, query ``b`` at ``pos[b]`` of ``slots[b]``."""
    b, hq, d = q.shape
    hkv = k_cache.shape[2]
    group = hq // hkv
    total = int(pos.max()) + 1
    keys = k_cache[slots, :total].transpose(0, 2, 3, 1)  # [B, Hkv, D, P]
    values = v_cache[slots, :total].transpose(0, 2, 1, 3)  # [B, Hkv, P, D]
    qh = q.reshape(b, hkv, group, d)
    scores = np.matmul(qh, keys, dtype=np.float32)  # [B, Hkv, G, P]
    scores *= np.float32(factor)
    if softcap > 0:
        _softcap(scores, softcap)
    masked = np.arange(total)[None, :] > pos[:, None]  # [B, P]: past each query's position
    if window > 0:
        masked |= pos[:, None] - np.arange(total)[None, :] >= window
    scores[np.broadcast_to(masked[:, None, None, :], scores.shape)] = -np.inf
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    out = np.matmul(scores, values, dtype=np.float32)  # [B, Hkv, G, D]
    result: F32 = out.reshape(b, hq, d)
    return result


def _fresh_zeros(shape: tuple[int, ...]) -> F32:
    """float32 zeros in an anonymous mapping of their own: a page of the KV cache becomes
    resident when a position in it is first written. (``np.zeros`` may take memory the heap
    held before and clear it, making the whole cache resident at once, whatever the
    sequences' lengths.)"""
    count = int(np.prod(shape))
    size = max(1, count * 4)
    private = getattr(mmap, "MAP_PRIVATE", None)
    # Private (copy-on-write in a forked child, as heap memory); Windows has no flags.
    pages = (
        mmap.mmap(-1, size, flags=private | mmap.MAP_ANONYMOUS)
        if private is not None
        else mmap.mmap(-1, size)
    )
    return np.frombuffer(pages, dtype=np.float32, count=count).reshape(shape)


class NumpyRunner:
    """The :class:`~._runner.ModelRunner` on the CPU, for every architecture of :mod:`._arch`.

    KV cache: per layer ``[n_slots, n_ctx, n_head_kv, head_dim]`` float32, keys and values.
    Not thread-safe: one thread (the engine's) calls it.
    """

    def __init__(
        self,
        model: ModelFile,
        n_slots: int = 1,
        n_ctx: int = 2048,
        *,
        dense_budget: int = DEFAULT_DENSE_BUDGET,
        exact: bool = True,
    ) -> None:
        if n_slots < 1 or n_ctx < 1:
            raise ValueError(f"n_slots and n_ctx must be >= 1, got {n_slots}, {n_ctx}")
        self.model = model
        self.config: ModelConfig = model.config
        self.n_slots = n_slots
        self.n_ctx = n_ctx
        c = self.config
        # exact: every product in float32 (the reference the GPU path is tested against);
        # False: Q8_0 decode products on int8 activations, as llama.cpp (the engine's default).
        self._weights = _Weights(model, dense_budget, exact)
        self._embd = model.tensor("token_embd.weight")
        self._output = model.output_weight()
        self._output_norm = model.tensor("output_norm.weight").vector()
        self._freq_factors = (
            model.tensor("rope_freqs.weight").vector() if c.rope_freq_factors else None
        )
        self._layers = [_Layer(model, i) for i in range(c.n_layer)]
        shape = (n_slots, n_ctx, c.n_head_kv, c.head_dim)
        self.k_cache = [_fresh_zeros(shape) for _ in range(c.n_layer)]
        self.v_cache = [_fresh_zeros(shape) for _ in range(c.n_layer)]
        self._factor = c.query_scale
        # Not exact: decode steps run the fused numba graph (one call between two products).
        self._fused = FusedDecode(self) if not exact and FusedDecode.supports(self) else None

    @property
    def dense_bytes(self) -> int:
        """Bytes of dequantized weights held now."""
        return self._weights.used

    def reset_slot(self, slot: int) -> None:
        # Attention reads positions 0..pos of a slot, all written by this sequence first: no
        # need to clear the slot (which made all its n_ctx positions resident, every request).
        if not 0 <= slot < self.n_slots:
            raise ValueError(f"slot {slot} out of range 0..{self.n_slots - 1}")

    def logits(self, items: Sequence[SeqInput]) -> F32:
        check_items(items, self.n_slots, self.n_ctx, self.config.n_vocab)
        if self._fused is not None and self._fused.applies(items) and not self._weights.budget:
            return self._fused.logits(items)  # no BLAS: its thread limits do not matter
        c = self.config
        tokens = sum(len(item.tokens) for item in items)
        small = 2 * tokens * c.n_embd * c.n_ff <= _SMALL_PRODUCT_FLOPS
        # OpenBLAS's threads spin while they wait: with more threads than idle cores (the
        # worker processes and the GPU thread share them) a product gets many times slower,
        # not faster. Measured on the 2-core dev VM under load: a 128-token prefill of a
        # 34M-parameter model took 2,957 ms with its default threads, 116 ms with one; 8
        # decodes of the shipped model 8.2 ms vs 1.6 ms. So small products (decode) run on one
        # thread and large ones on half the cores.
        threads = 1 if small else max(1, (os.cpu_count() or 1) // 2)
        with _blas_controller().limit(limits=threads, user_api="blas"):
            return self._forward(items)

    def step(self, items: Sequence[SeqInput]) -> npt.NDArray[np.uint32]:
        logits = self.logits(items)
        out = np.empty(len(items), dtype=np.uint32)
        for b, item in enumerate(items):
            row = logits[b : b + 1]
            s = item.sampling
            recent = np.asarray(item.recent, dtype=np.int64)
            recent = recent[-s.repeat_last_n :] if s.repeat_last_n else recent[:0]
            if s.repeat_penalty != 1.0 and recent.size:
                row = ref.repeat_penalty(
                    row, recent[None, :], np.array([recent.size]), s.repeat_penalty
                )
            out[b] = ref.sample(
                row, s.temperature, s.top_k, s.top_p, np.array([item.uniform], np.float32)
            )[0]
        return out

    # -- the graph --------------------------------------------------------------------------
    def _rope(self, x: F32, pos: npt.NDArray[np.float32], base: float) -> F32:
        c = self.config
        if self._freq_factors is not None:
            return rope_with_factors(x, pos, base, c.rope_mode, c.rope_dims, self._freq_factors)
        return ref.rope(x, pos, base, c.rope_mode, c.rope_dims)

    def _attention(
        self,
        q: F32,
        kc: F32,
        vc: F32,
        items: Sequence[SeqInput],
        lens: list[int],
        slots: I64,
        pos: I64,
        window: int,
    ) -> F32:
        cap = self.config.attn_softcap
        if len(q) == len(items) > 1:  # decode: one query per sequence, all in one product
            return decode_attention(q, kc, vc, slots, pos, self._factor, window=window, softcap=cap)
        attn = np.empty_like(q)
        begin = 0
        for it, n in zip(items, lens, strict=True):
            attn[begin : begin + n] = causal_attention(
                q[begin : begin + n],
                kc,
                vc,
                it.slot,
                it.start_pos,
                self._factor,
                window=window,
                softcap=cap,
            )
            begin += n
        return attn

    def _qkv(self, h: F32, layer: _Layer) -> tuple[F32, F32, F32]:
        c = self.config
        w = self._weights
        if layer.wqkv is not None:
            qkv = w.linear(h, layer.wqkv)
            q_end, k_end = c.n_embd_q, c.n_embd_q + c.n_embd_kv
            return qkv[:, :q_end], qkv[:, q_end:k_end], qkv[:, k_end:]
        assert layer.wq is not None and layer.wk is not None and layer.wv is not None
        act = w.activations(h)
        return w.linear(h, layer.wq, act), w.linear(h, layer.wk, act), w.linear(h, layer.wv, act)

    def _ffn(self, h: F32, layer: _Layer) -> F32:
        c = self.config
        w = self._weights
        if layer.w_gate is None:  # fused: the gate rows, then the up rows
            gu = w.linear(h, layer.w_up)
            gate, up = gu[:, : c.n_ff], gu[:, c.n_ff :]
        else:
            act = w.activations(h)
            gate, up = w.linear(h, layer.w_gate, act), w.linear(h, layer.w_up, act)
        if c.activation == "gelu":
            ff = (ref.gelu(gate) * up).astype(np.float32)
        else:
            ff = ref.silu_mul(gate, up)
        return w.linear(ff, layer.w_down)

    def _forward(self, items: Sequence[SeqInput]) -> F32:
        c = self.config
        w = self._weights
        tokens = np.concatenate([np.asarray(it.tokens, dtype=np.int64) for it in items])
        lens = [len(it.tokens) for it in items]
        slots = np.repeat(np.array([it.slot for it in items], dtype=np.int64), lens)
        pos = np.concatenate(
            [
                np.arange(it.start_pos, it.start_pos + n, dtype=np.int64)
                for it, n in zip(items, lens, strict=True)
            ]
        )
        last = np.cumsum(lens) - 1
        t_count = len(tokens)
        e = self._embd
        x = w.rows(e, tokens)
        if c.embd_scale != 1.0:
            x = ref.scale(x, c.embd_scale)
        for li, layer in enumerate(self._layers):
            rope_pos = pos.astype(np.float32) * np.float32(layer.rope_scale)
            h = ref.rmsnorm(x, layer.attn_norm, c.rms_eps)
            q, k, v = self._qkv(h, layer)
            if layer.bq is not None and layer.bk is not None and layer.bv is not None:
                q = ref.add(q, layer.bq)
                k = ref.add(k, layer.bk)
                v = ref.add(v, layer.bv)
            q = q.reshape(t_count, c.n_head, c.head_dim)
            k = k.reshape(t_count, c.n_head_kv, c.head_dim)
            v = v.reshape(t_count, c.n_head_kv, c.head_dim)
            if layer.q_norm is not None and layer.k_norm is not None:
                q = ref.rmsnorm(q, layer.q_norm, c.rms_eps)
                k = ref.rmsnorm(k, layer.k_norm, c.rms_eps)
            q = self._rope(q, rope_pos, layer.rope_base)
            k = self._rope(k, rope_pos, layer.rope_base)
            kc, vc = self.k_cache[li], self.v_cache[li]
            ref.kv_store(kc, k, slots, pos)
            ref.kv_store(vc, v, slots, pos)
            attn = self._attention(q, kc, vc, items, lens, slots, pos, layer.window)
            o = w.linear(attn.reshape(t_count, c.n_embd_q), layer.wo)
            if layer.post_attn_norm is not None:
                o = ref.rmsnorm(o, layer.post_attn_norm, c.rms_eps)
            x = ref.add(x, o)
            f = self._ffn(ref.rmsnorm(x, layer.ffn_norm, c.rms_eps), layer)
            if layer.post_ffn_norm is not None:
                f = ref.rmsnorm(f, layer.post_ffn_norm, c.rms_eps)
            x = ref.add(x, f)
        x = ref.rmsnorm(x[last], self._output_norm, c.rms_eps)
        logits = w.linear(x, self._output)
        if c.final_softcap > 0:
            _softcap(logits, c.final_softcap)
        return logits
