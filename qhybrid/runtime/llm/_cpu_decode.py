"""The CPU path's decode step with fused operations: one token per sequence, int8 activations.

:class:`FusedDecode` runs the graph of :class:`._numpy_model.NumpyRunner` for a decode step
(every sequence one token, up to 16 sequences) when the runner is not ``exact``: between
two weight products, one numba call of :mod:`._cpu_ops`; the products go straight to their
format's kernel, chosen once per tensor (:func:`._cpu_i8.bind_i8`), on activations quantized by
the op before them. Buffers are kept per batch size. The numpy graph remains for prefill,
larger batches and ``exact=True`` (the GPU path's reference).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from qhybrid.runtime.llm import _cpu_kernels as cpu
from qhybrid.runtime.llm import _cpu_ops as ops
from qhybrid.runtime.llm._cpu_act import Act
from qhybrid.runtime.llm._cpu_i8 import I8_FORMATS, bind_i8
from qhybrid.runtime.llm._gguf import TensorData
from qhybrid.runtime.llm._runner import SeqInput

if TYPE_CHECKING:
    from qhybrid.runtime.llm._numpy_model import NumpyRunner

F32 = npt.NDArray[np.float32]
Product = Callable[[Act, F32], None]
_NONE = np.zeros(1, dtype=np.float32)  # an absent bias or norm weight (its flag is False)


def _act(rows: int, cols: int) -> Act:
    blocks = (rows, cols // 32)
    return Act(
        np.empty((rows, cols), np.float32),
        np.empty((rows, cols), np.int8),
        np.empty(blocks, np.float32),
        np.empty(blocks, np.int64),
        np.empty(blocks, np.float32),
    )


class _Buffers:
    """What one step of ``b`` sequences writes, reused step after step."""

    def __init__(self, runner: NumpyRunner, b: int) -> None:
        c = runner.config
        self.embd = _act(b, c.n_embd)
        self.attn = _act(b, c.n_embd_q)
        self.ff = _act(b, c.n_ff)
        if c.fused_qkv:
            qkv = np.empty((b, c.n_embd_q + 2 * c.n_embd_kv), np.float32)
            k_end = c.n_embd_q + c.n_embd_kv
            self.qkv = qkv
            self.q, self.k, self.v = (
                qkv[:, : c.n_embd_q],
                qkv[:, c.n_embd_q : k_end],
                qkv[:, k_end:],
            )
        else:
            self.q = np.empty((b, c.n_embd_q), np.float32)
            self.k = np.empty((b, c.n_embd_kv), np.float32)
            self.v = np.empty((b, c.n_embd_kv), np.float32)
        self.o = np.empty((b, c.n_embd), np.float32)
        if c.fused_up:
            self.gu = np.empty((b, 2 * c.n_ff), np.float32)
            self.gate, self.up = self.gu[:, : c.n_ff], self.gu[:, c.n_ff :]
        else:
            self.gate = np.empty((b, c.n_ff), np.float32)
            self.up = np.empty((b, c.n_ff), np.float32)
        self.scores = np.empty(runner.n_ctx, np.float32)
        self.cos = np.empty(max(1, c.rope_dims // 2), np.float32)
        self.sin = np.empty_like(self.cos)


class FusedDecode:
    """The fused decode step of one :class:`NumpyRunner` (see the module docstring)."""

    #: Sequences per step up to which it runs. Its products decode the weights once per row of
    #: x, which beats dequantized tiles times BLAS for decode batches (measured: 4 sequences
    #: of SmolLM2 in 26 ms a step against 68 ms with tiles, 8 in 51 against 80); where tiles
    #: win again (prefill-sized batches) is not measured, 16 is a cautious bound.
    MAX_ROWS = 16

    def __init__(self, runner: NumpyRunner) -> None:
        self.runner = runner
        c = runner.config
        self._products: dict[str, Product] = {}
        self._buffers: dict[int, _Buffers] = {}
        half = c.rope_dims // 2
        self._inv: list[F32] = []
        for layer in runner._layers:
            inv = np.float32(layer.rope_base) ** (
                -np.arange(half, dtype=np.float32) * np.float32(2.0 / c.rope_dims)
            )
            if runner._freq_factors is not None:
                inv = inv / runner._freq_factors
            self._inv.append(np.ascontiguousarray(inv, dtype=np.float32))

    @staticmethod
    def supports(runner: NumpyRunner) -> bool:
        """Whether the model's shapes allow it (activations in blocks of 32)."""
        c = runner.config
        return all(n % 32 == 0 for n in (c.n_embd, c.n_embd_q, c.n_ff))

    def applies(self, items: Sequence[SeqInput]) -> bool:
        return len(items) <= self.MAX_ROWS and all(len(it.tokens) == 1 for it in items)

    def _product(self, t: TensorData) -> Product:
        got = self._products.get(t.name)
        if got is not None:
            return got
        weights = self.runner._weights
        dense = weights.transposed(t)
        product: Product
        if dense is not None:
            kept = dense

            def product(a: Act, out: F32) -> None:
                np.matmul(a.x, kept, out=out)

        elif t.qtype in I8_FORMATS:
            product = bind_i8(t.data, t.qtype)
        else:
            raw, qtype = t.data, t.qtype

            def product(a: Act, out: F32) -> None:
                cpu.matvec(a.x, raw, qtype, out, exact=False)

        self._products[t.name] = product
        return product

    def logits(self, items: Sequence[SeqInput]) -> F32:
        r = self.runner
        c = r.config
        b = len(items)
        buf = self._buffers.get(b)
        if buf is None:
            buf = self._buffers[b] = _Buffers(r, b)
        tokens = np.array([int(it.tokens[0]) for it in items], dtype=np.int64)
        slots = np.array([it.slot for it in items], dtype=np.int64)
        pos = np.array([it.start_pos for it in items], dtype=np.int64)
        x = r._weights.rows(r._embd, tokens)
        if c.embd_scale != 1.0:
            x *= np.float32(c.embd_scale)
        eps = c.rms_eps
        e, at, ff = buf.embd, buf.attn, buf.ff
        ops.norm_act(x, r._layers[0].attn_norm, eps, *e)
        neox = c.rope_mode == "neox"
        last = len(r._layers) - 1
        for li, layer in enumerate(r._layers):
            if layer.wqkv is not None:
                self._product(layer.wqkv)(e, buf.qkv)
            else:
                assert layer.wq is not None and layer.wk is not None and layer.wv is not None
                self._product(layer.wq)(e, buf.q)
                self._product(layer.wk)(e, buf.k)
                self._product(layer.wv)(e, buf.v)
            bias = layer.bq is not None
            qk_norm = layer.q_norm is not None
            ops.attend(
                buf.q, buf.k, buf.v,
                layer.bq if bias else _NONE, layer.bk if bias else _NONE,
                layer.bv if bias else _NONE, bias,
                layer.q_norm if qk_norm else _NONE, layer.k_norm if qk_norm else _NONE,
                qk_norm, eps,
                self._inv[li], layer.rope_scale, neox, c.rope_dims,
                r.k_cache[li], r.v_cache[li], slots, pos,
                r._factor, layer.window, c.attn_softcap, buf.scores, buf.cos, buf.sin,
                *at,
            )  # fmt: skip
            self._product(layer.wo)(at, buf.o)
            post = layer.post_attn_norm
            ops.residual_norm_act(
                x, buf.o, _NONE if post is None else post, post is not None,
                layer.ffn_norm, eps, *e,
            )  # fmt: skip
            if layer.w_gate is None:
                self._product(layer.w_up)(e, buf.gu)
            else:
                self._product(layer.w_gate)(e, buf.gate)
                self._product(layer.w_up)(e, buf.up)
            ops.glu_act(buf.gate, buf.up, c.activation == "gelu", *ff)
            self._product(layer.w_down)(ff, buf.o)
            post = layer.post_ffn_norm
            norm = r._output_norm if li == last else r._layers[li + 1].attn_norm
            ops.residual_norm_act(
                x, buf.o, _NONE if post is None else post, post is not None, norm, eps, *e
            )
        logits = np.empty((b, c.n_vocab), dtype=np.float32)
        self._product(r._output)(e, logits)
        if c.final_softcap > 0:
            cap = np.float32(c.final_softcap)
            logits *= np.float32(1.0) / cap
            np.tanh(logits, out=logits)
            logits *= cap
        return logits
