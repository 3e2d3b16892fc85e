"""The GPU path: every supported architecture's graph as WGSL kernels on the device thread.

:class:`GpuRunner` implements :class:`~qhybrid.runtime.llm._runner.ModelRunner` on a
:class:`~qhybrid.runtime.wgpu_thread.ComputeContext`. Weights are uploaded once, as the GGUF
blocks they are (the kernels dequantize while they read), the KV cache lives on the GPU, and a
step is one recording submitted once: embeddings, every layer, the final norm on each
sequence's last position, the output projection, the repetition penalty and sampling. Only the
sampled token ids are read back (:meth:`GpuRunner.logits` reads the logits, for tests).

It runs on the device thread only (everything here is called through ``GpuDevice.call``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from qhybrid.runtime.llm._gguf import ModelConfig, ModelError, ModelFile, TensorData
from qhybrid.runtime.llm._runner import SeqInput, check_items
from qhybrid.runtime.wgpu_thread import ComputeContext, GpuTensor, GpuWeight, Recorder

logger = logging.getLogger(__name__)


def gpu_too_large(ctx: ComputeContext, model: ModelFile) -> str | None:
    """Why the device cannot hold one of the model's tensors, or None. A matrix larger than the
    largest binding is split by rows across buffers (``upload_weight``); only a single row
    larger than a binding cannot be."""
    limit = ctx.max_buffer_bytes
    for t in model.tensors.values():
        row = t.data.nbytes // max(t.rows, 1)
        if row > limit:
            return (
                f"tensor {t.name} (rows of {row / 2**20:.0f} MiB) has rows larger than the "
                f"GPU's largest binding ({limit / 2**20:.0f} MiB)"
            )
    return None


def gpu_unsupported(config: ModelConfig) -> str | None:
    """Why the GPU graph cannot run this model (the CPU path then does), or None."""
    if config.head_dim > 256:
        return f"a head size of {config.head_dim} (the attention kernel takes up to 256)"
    return None


class _Layer:
    __slots__ = (
        "attn_norm",
        "bk",
        "bq",
        "bv",
        "ffn_norm",
        "k_cache",
        "k_norm",
        "post_attn_norm",
        "post_ffn_norm",
        "q_norm",
        "rope_base",
        "rope_scale",
        "v_cache",
        "w_down",
        "w_gate",
        "w_up",
        "window",
        "wk",
        "wo",
        "wq",
        "wv",
    )

    attn_norm: GpuTensor
    ffn_norm: GpuTensor
    wq: GpuWeight
    wk: GpuWeight
    wv: GpuWeight
    wo: GpuWeight
    w_gate: GpuWeight
    w_up: GpuWeight
    w_down: GpuWeight
    bq: GpuTensor | None
    bk: GpuTensor | None
    bv: GpuTensor | None
    q_norm: GpuTensor | None
    k_norm: GpuTensor | None
    post_attn_norm: GpuTensor | None
    post_ffn_norm: GpuTensor | None
    k_cache: GpuTensor
    v_cache: GpuTensor
    rope_base: float
    rope_scale: float
    window: int


def _rows(t: TensorData, begin: int, end: int, part: str) -> TensorData:
    """Rows ``begin:end`` of a fused weight (phi3's qkv, gate/up) as a tensor of its own."""
    return TensorData(f"{t.name}[{part}]", t.qtype, end - begin, t.cols, t.data[begin:end])


class GpuRunner:
    """The model on the GPU, with a KV cache of ``n_slots`` sequences of ``n_ctx`` positions."""

    def __init__(self, ctx: ComputeContext, model: ModelFile, n_slots: int, n_ctx: int) -> None:
        config = model.config
        why = gpu_unsupported(config) or gpu_too_large(ctx, model)
        if why is not None:
            raise ModelError(f"{model.path}: the GPU path does not support {why}")
        if n_slots < 1 or n_ctx < 2:
            raise ValueError(f"need n_slots >= 1 and n_ctx >= 2, got {n_slots} and {n_ctx}")
        self.config = config
        self.n_slots = n_slots
        self.n_ctx = n_ctx
        self._ctx = ctx
        self._generation = ctx.generation
        self._owned: list[GpuTensor] = []
        try:
            self._load(model)
        except BaseException:
            self.close()
            raise

    # -- loading ------------------------------------------------------------------------------
    def _weight(self, t: TensorData) -> GpuWeight:
        w = self._ctx.upload_weight(t.data, t.qtype, t.rows, t.cols, label=t.name)
        self._owned.append(w)
        return w

    def _vector(self, t: TensorData, shape: tuple[int, ...] | None = None) -> GpuTensor:
        data = np.ascontiguousarray(t.vector(), dtype=np.float32)
        v = self._ctx.upload(data if shape is None else data.reshape(shape), label=t.name)
        self._owned.append(v)
        return v

    def _load(self, model: ModelFile) -> None:
        c = self.config
        self.token_embd = self._weight(model.tensor("token_embd.weight"))
        out = model.output_weight()
        self.output = self.token_embd if out.name == "token_embd.weight" else self._weight(out)
        self.output_norm = self._vector(model.tensor("output_norm.weight"))
        self.rope_factors: GpuTensor | None = None
        if c.rope_freq_factors:
            self.rope_factors = self._vector(model.tensor("rope_freqs.weight"))
        cache_shape = (self.n_slots, self.n_ctx, c.n_head_kv, c.head_dim)
        q, kv, ff = c.n_embd_q, c.n_embd_kv, c.n_ff
        self.layers: list[_Layer] = []
        for i in range(c.n_layer):
            t = model.layer_tensor
            layer = _Layer()
            layer.attn_norm = self._vector(t(i, "attn_norm.weight"))
            layer.ffn_norm = self._vector(t(i, "ffn_norm.weight"))
            if c.fused_qkv:
                # Split by rows at upload: each part is a whole number of GGUF rows.
                qkv = t(i, "attn_qkv.weight")
                layer.wq = self._weight(_rows(qkv, 0, q, "q"))
                layer.wk = self._weight(_rows(qkv, q, q + kv, "k"))
                layer.wv = self._weight(_rows(qkv, q + kv, q + 2 * kv, "v"))
            else:
                layer.wq = self._weight(t(i, "attn_q.weight"))
                layer.wk = self._weight(t(i, "attn_k.weight"))
                layer.wv = self._weight(t(i, "attn_v.weight"))
            layer.wo = self._weight(t(i, "attn_output.weight"))
            if c.fused_up:
                gate_up = t(i, "ffn_up.weight")
                layer.w_gate = self._weight(_rows(gate_up, 0, ff, "gate"))
                layer.w_up = self._weight(_rows(gate_up, ff, 2 * ff, "up"))
            else:
                layer.w_gate = self._weight(t(i, "ffn_gate.weight"))
                layer.w_up = self._weight(t(i, "ffn_up.weight"))
            layer.w_down = self._weight(t(i, "ffn_down.weight"))
            layer.bq = layer.bk = layer.bv = None
            if c.attn_bias:
                # Shaped [H, D] so that they broadcast over q[T, H, D] and k, v[T, Hkv, D].
                layer.bq = self._vector(t(i, "attn_q.bias"), (c.n_head, c.head_dim))
                layer.bk = self._vector(t(i, "attn_k.bias"), (c.n_head_kv, c.head_dim))
                layer.bv = self._vector(t(i, "attn_v.bias"), (c.n_head_kv, c.head_dim))
            layer.q_norm = layer.k_norm = None
            if c.qk_norm:
                layer.q_norm = self._vector(t(i, "attn_q_norm.weight"))
                layer.k_norm = self._vector(t(i, "attn_k_norm.weight"))
            layer.post_attn_norm = layer.post_ffn_norm = None
            if c.post_norms:
                layer.post_attn_norm = self._vector(t(i, "post_attention_norm.weight"))
                layer.post_ffn_norm = self._vector(t(i, "post_ffw_norm.weight"))
            layer.rope_base, layer.rope_scale = c.layer_rope(i)
            layer.window = c.swa_window if c.is_swa(i) else 0
            for name in ("k_cache", "v_cache"):
                cache = self._ctx.empty(cache_shape, np.float32, label=f"blk.{i}.{name}")
                self._owned.append(cache)
                setattr(layer, name, cache)
            self.layers.append(layer)

    @property
    def gpu_bytes(self) -> int:
        """Bytes of weights and KV cache held on the GPU."""
        return sum(t.nbytes for t in self._owned)

    def close(self) -> None:
        """Give every GPU buffer back (device thread)."""
        for tensor in self._owned:
            self._ctx.release(tensor)
        self._owned.clear()

    # -- ModelRunner ----------------------------------------------------------------------------
    def reset_slot(self, slot: int) -> None:
        # Attention reads positions 0..pos of a slot, all written by this sequence first.
        if not 0 <= slot < self.n_slots:
            raise ValueError(f"slot {slot} out of range 0..{self.n_slots - 1}")

    def step(self, items: Sequence[SeqInput]) -> npt.NDArray[np.uint32]:
        check_items(items, self.n_slots, self.n_ctx, self.config.n_vocab)
        temps = np.array([i.sampling.temperature for i in items], dtype=np.float32)
        greedy = bool(np.all(temps <= 0))
        scratch: list[GpuTensor] = []
        try:
            rec, logits = self._forward(items, scratch)
            self._penalize(rec, logits, items, scratch)
            tokens = self._tensor((len(items),), np.uint32, scratch)
            if greedy:
                rec.argmax(logits, tokens)
            else:
                s = [i.sampling for i in items]
                rec.sample(
                    logits,
                    tokens,
                    self._upload(temps, scratch),
                    self._upload(np.array([x.top_k for x in s], dtype=np.int32), scratch),
                    self._upload(np.array([x.top_p for x in s], dtype=np.float32), scratch),
                    self._upload(np.array([i.uniform for i in items], dtype=np.float32), scratch),
                )
            (out,) = rec.submit(read=[tokens])
            return np.asarray(out, dtype=np.uint32).reshape(len(items))
        finally:
            self._release(scratch)

    def logits(self, items: Sequence[SeqInput]) -> npt.NDArray[np.float32]:
        check_items(items, self.n_slots, self.n_ctx, self.config.n_vocab)
        scratch: list[GpuTensor] = []
        try:
            rec, logits = self._forward(items, scratch)
            (out,) = rec.submit(read=[logits])
            return np.asarray(out, dtype=np.float32).reshape(len(items), self.config.n_vocab)
        finally:
            self._release(scratch)

    # -- the graph ------------------------------------------------------------------------------
    def _tensor(
        self, shape: tuple[int, ...], dtype: npt.DTypeLike, scratch: list[GpuTensor]
    ) -> GpuTensor:
        t = self._ctx.empty(shape, dtype)
        scratch.append(t)
        return t

    def _upload(self, array: npt.NDArray[np.generic], scratch: list[GpuTensor]) -> GpuTensor:
        t = self._ctx.upload(array)
        scratch.append(t)
        return t

    def _release(self, scratch: list[GpuTensor]) -> None:
        for t in scratch:
            self._ctx.release(t)
        scratch.clear()

    def _forward(
        self, items: Sequence[SeqInput], scratch: list[GpuTensor]
    ) -> tuple[Recorder, GpuTensor]:
        c = self.config
        ids = np.concatenate([np.asarray(i.tokens, dtype=np.int32) for i in items])
        pos = np.concatenate(
            [np.arange(i.start_pos, i.start_pos + len(i.tokens), dtype=np.int32) for i in items]
        )
        slot = np.concatenate([np.full(len(i.tokens), i.slot, dtype=np.int32) for i in items])
        last_rows = np.cumsum([len(i.tokens) for i in items]) - 1
        t_count, e, d = len(ids), c.n_embd, c.head_dim
        hq, hkv = c.n_head, c.n_head_kv
        g_ids = self._upload(ids, scratch)
        g_pos = self._upload(pos, scratch)
        g_slot = self._upload(slot, scratch)

        x = self._tensor((t_count, e), np.float32, scratch)
        x_next = self._tensor((t_count, e), np.float32, scratch)
        hn = self._tensor((t_count, e), np.float32, scratch)
        q = self._tensor((t_count, hq, d), np.float32, scratch)
        k = self._tensor((t_count, hkv, d), np.float32, scratch)
        v = self._tensor((t_count, hkv, d), np.float32, scratch)
        att = self._tensor((t_count, hq, d), np.float32, scratch)
        proj = self._tensor((t_count, e), np.float32, scratch)
        gate = self._tensor((t_count, c.n_ff), np.float32, scratch)
        up = self._tensor((t_count, c.n_ff), np.float32, scratch)
        act = self._tensor((t_count, c.n_ff), np.float32, scratch)
        factor = c.query_scale
        rope_dims = c.rope_dims

        rec = self._ctx.record()
        rec.get_rows(self.token_embd, g_ids, x)
        if c.embd_scale != 1.0:
            rec.scale(x, c.embd_scale, x)
        normed_qk: tuple[GpuTensor, GpuTensor] | None = None
        if c.qk_norm:
            normed_qk = (
                self._tensor((t_count, hq, d), np.float32, scratch),
                self._tensor((t_count, hkv, d), np.float32, scratch),
            )
        post = self._tensor((t_count, e), np.float32, scratch) if c.post_norms else None
        for layer in self.layers:
            rec.rmsnorm(x, layer.attn_norm, hn, c.rms_eps)
            rec.linear(hn, layer.wq, q)
            rec.linear(hn, layer.wk, k)
            rec.linear(hn, layer.wv, v)
            if layer.bq is not None and layer.bk is not None and layer.bv is not None:
                # Broadcast adds write a fresh tensor: a binding cannot be read and written.
                q2 = self._tensor(q.shape, np.float32, scratch)
                k2 = self._tensor(k.shape, np.float32, scratch)
                v2 = self._tensor(v.shape, np.float32, scratch)
                rec.add(q, layer.bq, q2)
                rec.add(k, layer.bk, k2)
                rec.add(v, layer.bv, v2)
                q_in, k_in, v_in = q2, k2, v2
            else:
                q_in, k_in, v_in = q, k, v
            if normed_qk is not None and layer.q_norm is not None and layer.k_norm is not None:
                rec.rmsnorm(q_in, layer.q_norm, normed_qk[0], c.rms_eps)
                rec.rmsnorm(k_in, layer.k_norm, normed_qk[1], c.rms_eps)
                q_in, k_in = normed_qk
            for t_in in (q_in, k_in):
                rec.rope(
                    t_in,
                    g_pos,
                    t_in,
                    layer.rope_base,
                    c.rope_mode,
                    rope_dims,
                    layer.rope_scale,
                    self.rope_factors,
                )
            rec.kv_store(layer.k_cache, k_in, g_slot, g_pos)
            rec.kv_store(layer.v_cache, v_in, g_slot, g_pos)
            rec.attention(
                q_in,
                layer.k_cache,
                layer.v_cache,
                g_slot,
                g_pos,
                att,
                factor,
                window=layer.window,
                softcap=c.attn_softcap,
            )
            rec.linear(att, layer.wo, proj)
            if post is not None and layer.post_attn_norm is not None:
                rec.rmsnorm(proj, layer.post_attn_norm, post, c.rms_eps)
                rec.add(x, post, x_next)
            else:
                rec.add(x, proj, x_next)
            x, x_next = x_next, x
            rec.rmsnorm(x, layer.ffn_norm, hn, c.rms_eps)
            rec.linear(hn, layer.w_gate, gate)
            rec.linear(hn, layer.w_up, up)
            if c.activation == "gelu":
                rec.gelu_mul(gate, up, act)
            else:
                rec.silu_mul(gate, up, act)
            rec.linear(act, layer.w_down, proj)
            if post is not None and layer.post_ffn_norm is not None:
                rec.rmsnorm(proj, layer.post_ffn_norm, post, c.rms_eps)
                rec.add(x, post, x_next)
            else:
                rec.add(x, proj, x_next)
            x, x_next = x_next, x

        # Only each sequence's last position goes through the output projection.
        b = len(items)
        if t_count == b:
            last = x
        else:
            last = self._tensor((b, e), np.float32, scratch)
            for row, src in enumerate(last_rows.tolist()):
                rec.copy(x, last, src_offset=src * e, dst_offset=row * e, count=e)
        normed = self._tensor((b, e), np.float32, scratch)
        rec.rmsnorm(last, self.output_norm, normed, c.rms_eps)
        logits = self._tensor((b, c.n_vocab), np.float32, scratch)
        rec.linear(normed, self.output, logits)
        if c.final_softcap > 0:
            rec.softcap(logits, c.final_softcap, logits)
        return rec, logits

    def _penalize(
        self, rec: Recorder, logits: GpuTensor, items: Sequence[SeqInput], scratch: list[GpuTensor]
    ) -> None:
        """The repetition penalty, one dispatch per distinct penalty in the batch."""
        penalties = {i.sampling.repeat_penalty for i in items if len(i.recent)}
        penalties.discard(1.0)
        if not penalties:
            return
        width = max(len(i.recent) for i in items)
        for penalty in sorted(penalties):
            recent = np.zeros((len(items), width), dtype=np.int32)
            counts = np.zeros(len(items), dtype=np.int32)
            for row, item in enumerate(items):
                if item.sampling.repeat_penalty == penalty and len(item.recent):
                    recent[row, : len(item.recent)] = item.recent
                    counts[row] = len(item.recent)
            rec.repeat_penalty(
                logits, self._upload(recent, scratch), self._upload(counts, scratch), penalty
            )
