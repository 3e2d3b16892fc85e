"""Architectures: what each one reads from the GGUF metadata and which tensors it needs.

As llama.cpp's ``llama_model::load_hparams`` and ``load_tensors`` (src/llama-model.cpp,
src/models/*.cpp) do for the dense decoder-only families qhybrid runs:

- ``llama`` (Llama 1-3.x, SmolLM, Mistral): RMSNorm, SwiGLU, rope on adjacent pairs, the
  optional ``rope_freqs`` tensor (Llama 3.1+'s llama3 scaling, per-pair divisors);
- ``qwen2``: q/k/v biases, neox rope;
- ``qwen3``: per-head RMSNorm of q and k (``attn_q_norm``/``attn_k_norm``) before rope;
- ``gemma2``/``gemma3``: embeddings scaled by sqrt(n_embd), GeGLU (tanh GELU), RMSNorm after
  attention and after the FFN, sliding-window attention on the layers llama.cpp's pattern names
  (every layer but each 2nd / 6th, or ``attention.sliding_window_pattern`` when the file has
  it), gemma3's local layers with their own rope base (10000), gemma2's attention and final
  logit soft-capping, and the query scale (1/sqrt(head_dim); 1/sqrt(n_embd/n_head) for the
  27B sizes, as llama.cpp's ``f_attention_scale``). GGUF already stores Gemma's norm weights
  as ``1 + w`` (the converter adds the 1), so the graph multiplies by them as they are;
- ``phi3``: fused ``attn_qkv`` and ``ffn_up`` (gate and up halves, SwiGLU), neox rope.

Anything else that a file asks for (experts, a vision projector, longrope factors, yarn) is
refused by name with :class:`~._gguf.ModelError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from qhybrid.runtime.llm._gguf import ModelConfig, TensorData, _Meta

Activation = Literal["silu", "gelu"]

#: Architectures qhybrid runs (``general.architecture``).
SUPPORTED_ARCHS: tuple[str, ...] = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")
# llama_model_rope_type: llama rotates adjacent pairs, the others the two halves of a head.
ROPE_MODE: dict[str, Literal["normal", "neox"]] = {
    "llama": "normal",
    "qwen2": "neox",
    "qwen3": "neox",
    "gemma2": "neox",
    "gemma3": "neox",
    "phi3": "neox",
}
#: Known architectures qhybrid does not run, and what they are (for the message).
_KNOWN_OTHERS: dict[str, str] = {
    "qwen2moe": "a mixture-of-experts model",
    "qwen3moe": "a mixture-of-experts model",
    "mixtral": "a mixture-of-experts model",
    "deepseek2": "a mixture-of-experts model",
    "phimoe": "a mixture-of-experts model",
    "clip": "a vision projector (mmproj), not a language model",
    "gemma3n": "Gemma 3n (per-layer embeddings, AltUp)",
    "bert": "an embedding model",
    "nomic-bert": "an embedding model",
    "mamba": "a state-space model",
    "rwkv6": "a recurrent model",
}
# llama.cpp's defaults: set_swa_pattern(2) for gemma2, (6) for gemma3.
_SWA_PATTERN = {"gemma2": 2, "gemma3": 6}


def unsupported_arch_message(arch: str) -> str:
    what = _KNOWN_OTHERS.get(arch)
    kind = f" ({what})" if what else ""
    return f"architecture {arch!r}{kind} is not supported (supported: {', '.join(SUPPORTED_ARCHS)})"


def _swa_layers(p: Path, meta: _Meta, arch: str, n_layer: int) -> tuple[bool, ...]:
    """Which layers attend through the sliding window."""
    from qhybrid.runtime.llm._gguf import ModelError

    raw = meta.get("{arch}.attention.sliding_window_pattern")
    if raw is not None and not isinstance(raw, (int, float)):
        flags = [bool(v) for v in list(raw)]
        if len(flags) != n_layer:
            raise ModelError(
                f"{p}: attention.sliding_window_pattern has {len(flags)} entries for "
                f"{n_layer} layers"
            )
        return tuple(flags)
    pattern = int(raw) if raw is not None else _SWA_PATTERN.get(arch, 0)
    if pattern <= 0:
        return (False,) * n_layer
    # llama_hparams::set_swa_pattern: each pattern-th layer is global, the others local.
    return tuple(il % pattern < pattern - 1 for il in range(n_layer))


def arch_config(
    p: Path,
    meta: _Meta,
    raw: Mapping[str, Any],
    need: Callable[[str], TensorData],
) -> ModelConfig:
    """The :class:`ModelConfig` of a supported architecture, every needed tensor checked."""
    from qhybrid.runtime.llm._gguf import ModelError

    try:
        return _arch_config(p, meta, raw, need)
    except (TypeError, ValueError, OverflowError) as exc:  # a metadata value of the wrong kind
        if isinstance(exc, ModelError):
            raise
        raise ModelError(f"{p}: bad metadata value for {meta.arch}: {exc}") from None


def _arch_config(
    p: Path,
    meta: _Meta,
    raw: Mapping[str, Any],
    need: Callable[[str], TensorData],
) -> ModelConfig:
    from qhybrid.runtime.llm._gguf import ModelConfig, ModelError

    arch = meta.arch
    n_expert = meta.get("{arch}.expert_count")
    if n_expert:
        raise ModelError(f"{p}: a mixture-of-experts model ({n_expert} experts) is not supported")
    if str(meta.get("general.type", "model")) not in ("model", ""):
        raise ModelError(f"{p}: a {meta.get('general.type')!r} file, not a language model")
    n_layer = meta.need("{arch}.block_count")
    n_embd = meta.need("{arch}.embedding_length")
    n_head = meta.need("{arch}.attention.head_count")
    n_head_kv = int(meta.get("{arch}.attention.head_count_kv", n_head))
    n_ff = meta.need("{arch}.feed_forward_length")
    if min(n_layer, n_embd, n_head, n_head_kv, n_ff) <= 0:
        raise ModelError(f"{p}: a layer count, width or head count in the metadata is 0")
    if n_head % n_head_kv:
        raise ModelError(f"{p}: head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")
    head_dim = int(meta.get("{arch}.attention.key_length", n_embd // n_head))
    v_dim = int(meta.get("{arch}.attention.value_length", head_dim))
    if v_dim != head_dim:
        raise ModelError(f"{p}: key_length {head_dim} != value_length {v_dim} is not supported")
    rope_dims = int(meta.get("{arch}.rope.dimension_count", head_dim))
    if rope_dims > head_dim or rope_dims % 2 or rope_dims <= 0:
        raise ModelError(f"{p}: rope.dimension_count {rope_dims} does not fit head size {head_dim}")
    scaling = str(meta.get("{arch}.rope.scaling.type", "none") or "none")
    freq_scale = 1.0
    if scaling == "linear":
        factor = float(meta.get("{arch}.rope.scaling.factor", 1.0) or 1.0)
        freq_scale = 1.0 / factor
    elif scaling != "none":
        raise ModelError(f"{p}: rope scaling {scaling!r} is not supported (none, linear)")
    for name in ("rope_factors_long.weight", "rope_factors_short.weight"):
        if name in raw or f"blk.0.{name}" in raw:
            raise ModelError(f"{p}: longrope frequency factors ({name}) are not supported")
    if any(k.startswith("v.") or k.startswith("mm.") for k in raw):
        raise ModelError(f"{p}: vision tensors (a multimodal projector) are not supported")
    eps = float(meta.get("{arch}.attention.layer_norm_rms_epsilon", 1e-5))
    freq_base = float(meta.get("{arch}.rope.freq_base", 10000.0))

    gemma = arch in ("gemma2", "gemma3")
    swa = _swa_layers(p, meta, arch, n_layer) if gemma else (False,) * n_layer
    window = 0
    if any(swa):
        default_window = 4096 if arch == "gemma2" else None
        value = meta.get("{arch}.attention.sliding_window", default_window)
        if value is None:
            raise ModelError(f"{p}: missing metadata key '{arch}.attention.sliding_window'")
        window = int(value)
        if window <= 0:
            swa = (False,) * n_layer
    # gemma3's local layers: base 10000, no scaling (llama.cpp sets them after reading).
    base_swa = float(
        meta.get("{arch}.rope.freq_base_swa", 10000.0 if arch == "gemma3" else freq_base)
    )
    scale_swa = 1.0 if arch == "gemma3" else freq_scale
    attn_scale = 1.0 / math.sqrt(head_dim)
    if gemma and ((arch == "gemma2" and n_layer == 46) or (arch == "gemma3" and n_layer == 62)):
        attn_scale = 1.0 / math.sqrt(n_embd / n_head)  # the 27B sizes: query_pre_attn_scalar
    attn_softcap = final_softcap = 0.0
    if arch == "gemma2":
        attn_softcap = float(meta.get("{arch}.attn_logit_softcapping", 50.0) or 0.0)
        final_softcap = float(meta.get("{arch}.final_logit_softcapping", 30.0) or 0.0)

    embd = need("token_embd.weight")
    n_vocab = embd.rows
    tokens = meta.get("tokenizer.ggml.tokens")
    if tokens is not None and len(tokens) != n_vocab:
        raise ModelError(
            f"{p}: token_embd.weight has {n_vocab} rows but the vocabulary has {len(tokens)} tokens"
        )
    fused_qkv = "blk.0.attn_qkv.weight" in raw
    fused_up = arch == "phi3"
    config = ModelConfig(
        arch=arch,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_ff=n_ff,
        n_vocab=n_vocab,
        n_ctx_train=int(meta.get("{arch}.context_length", 2048)),
        rope_freq_base=freq_base,
        rope_mode=ROPE_MODE[arch],
        rope_dims=rope_dims,
        rope_freq_scale=freq_scale,
        rms_eps=eps,
        tied_embeddings="output.weight" not in raw,
        attn_bias=arch == "qwen2" or "blk.0.attn_q.bias" in raw,
        rope_freq_factors="rope_freqs.weight" in raw,
        qk_norm=arch in ("qwen3", "gemma3"),
        post_norms=gemma,
        activation="gelu" if gemma else "silu",
        embd_scale=math.sqrt(n_embd) if gemma else 1.0,
        attn_scale=attn_scale,
        attn_softcap=attn_softcap,
        final_softcap=final_softcap,
        swa_window=window,
        swa_layers=swa if window > 0 else (False,) * n_layer,
        rope_freq_base_swa=base_swa,
        rope_freq_scale_swa=scale_swa,
        fused_qkv=fused_qkv,
        fused_up=fused_up,
    )
    _check_tensors(p, config, need)
    return config


def _check_tensors(p: Path, c: ModelConfig, need: Callable[[str], TensorData]) -> None:
    from qhybrid.runtime.llm._gguf import ModelError

    def check(name: str, rows: int, cols: int) -> None:
        t = need(name)
        if (t.rows, t.cols) != (rows, cols):
            raise ModelError(
                f"{p}: tensor {name!r} is {t.rows}x{t.cols} (rows x cols), expected "
                f"{rows}x{cols} for this model's metadata"
            )

    e = c.n_embd
    check("token_embd.weight", c.n_vocab, e)
    check("output_norm.weight", 1, e)
    if not c.tied_embeddings:
        check("output.weight", c.n_vocab, e)
    if c.rope_freq_factors:
        check("rope_freqs.weight", 1, c.rope_dims // 2)
    q, kv = c.n_embd_q, c.n_embd_kv
    for i in range(c.n_layer):
        b = f"blk.{i}."
        check(b + "attn_norm.weight", 1, e)
        if c.fused_qkv:
            check(b + "attn_qkv.weight", q + 2 * kv, e)
        else:
            check(b + "attn_q.weight", q, e)
            check(b + "attn_k.weight", kv, e)
            check(b + "attn_v.weight", kv, e)
        check(b + "attn_output.weight", e, q)
        if c.attn_bias:
            check(b + "attn_q.bias", 1, q)
            check(b + "attn_k.bias", 1, kv)
            check(b + "attn_v.bias", 1, kv)
        if c.qk_norm:
            check(b + "attn_q_norm.weight", 1, c.head_dim)
            check(b + "attn_k_norm.weight", 1, c.head_dim)
        if c.post_norms:
            check(b + "post_attention_norm.weight", 1, e)
            check(b + "post_ffw_norm.weight", 1, e)
        check(b + "ffn_norm.weight", 1, e)
        if c.fused_up:
            check(b + "ffn_up.weight", 2 * c.n_ff, e)
        else:
            check(b + "ffn_gate.weight", c.n_ff, e)
            check(b + "ffn_up.weight", c.n_ff, e)
        check(b + "ffn_down.weight", e, c.n_ff)
