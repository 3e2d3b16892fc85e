"""Small random GGUF models written with gguf's own writer: for tests and benchmarks.

:func:`write_random_model` writes a model of any supported architecture (llama, qwen2, qwen3,
gemma2, gemma3, phi3, with each one's extra tensors) whose 2-D weights are in one
quant type (valid random blocks from :func:`~._reference.random_quantized`, since gguf cannot
quantize the k-quants), norms and biases in f32, and a byte-level tokenizer (the 256 GPT-2 byte
symbols, then ``<s>``, ``</s>`` and unused fillers), so that an engine can run it end to end.
Norm weights are scaled so that activations stay near unit size whatever the width.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType, GGUFWriter, RopeScalingType, TokenType

from qhybrid.runtime.wgpu_thread import _reference as ref

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class RandomModelSpec:
    """The shape of a random model. Widths must be multiples of 256 for the k-quants."""

    arch: str = "llama"
    qtype: str = "q8_0"
    n_layer: int = 2
    n_embd: int = 256
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 512
    n_vocab: int = 320
    n_ctx_train: int = 512
    tied: bool = False
    rope_freq_base: float = 10000.0
    rms_eps: float = 1e-5
    #: Quant type of the token embeddings (default: ``qtype``).
    embd_qtype: str | None = None
    seed: int = 0
    #: gemma2/gemma3: the local layers' window (written as ``attention.sliding_window``).
    sliding_window: int = 0
    #: gemma2: attention and final logit soft-capping (0: not written, llama.cpp's defaults).
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    #: Linear rope scaling factor written as ``rope.scaling.*`` (0: none).
    rope_linear_factor: float = 0.0
    #: Write ``rope_freqs.weight`` (Llama 3.1+'s per-pair divisors, here from 1 to 8).
    rope_freqs: bool = False
    #: Give the tokenizer one merge ("ĠĠ"): llama.cpp refuses a BPE vocabulary without any.
    one_merge: bool = False

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def byte_tokens() -> list[str]:
    """The 256 GPT-2 byte symbols, in byte order."""
    from gguf.vocab import bytes_to_unicode

    table = bytes_to_unicode()
    return [table[b] for b in range(256)]


def write_random_model(path: str | os.PathLike[str], spec: RandomModelSpec) -> Path:
    """Write the model to ``path`` and return it."""
    if spec.n_vocab < 258:
        raise ValueError("n_vocab must be at least 258 (256 bytes, <s>, </s>)")
    rng = np.random.default_rng(spec.seed)
    p = Path(path)
    w = GGUFWriter(p, spec.arch)
    w.add_name(f"random-{spec.arch}-{spec.qtype}")
    w.add_block_count(spec.n_layer)
    w.add_context_length(spec.n_ctx_train)
    w.add_embedding_length(spec.n_embd)
    w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_head)
    w.add_head_count_kv(spec.n_head_kv)
    w.add_rope_freq_base(spec.rope_freq_base)
    w.add_layer_norm_rms_eps(spec.rms_eps)
    if spec.arch in ("gemma2", "gemma3"):
        w.add_sliding_window(spec.sliding_window)
    if spec.rope_linear_factor:
        w.add_rope_scaling_type(RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(spec.rope_linear_factor)
    if spec.attn_softcap:
        w.add_attn_logit_softcapping(spec.attn_softcap)
    if spec.final_softcap:
        w.add_final_logit_softcapping(spec.final_softcap)
    tokens = [*byte_tokens(), "<s>", "</s>"]
    types = [int(TokenType.NORMAL)] * 256 + [int(TokenType.CONTROL)] * 2
    tokens += [f"<unused{i}>" for i in range(spec.n_vocab - len(tokens))]
    types += [int(TokenType.UNUSED)] * (spec.n_vocab - len(types))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    if spec.one_merge:
        tokens[258] = "ĠĠ"
        types[258] = int(TokenType.NORMAL)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["Ġ Ġ"] if spec.one_merge else [])
    w.add_bos_token_id(256)
    w.add_eos_token_id(257)
    w.add_add_bos_token(True)
    w.add_chat_template(CHAT_TEMPLATE)

    def matrix(name: str, rows: int, cols: int, qtype: str | None = None) -> None:
        q = qtype or spec.qtype
        raw = ref.random_quantized(rng, q, rows, cols)
        if q in ("f32", "f16"):
            w.add_tensor(name, np.ascontiguousarray(raw))
        else:
            w.add_tensor(name, raw, raw_dtype=GGMLQuantizationType[q.upper()])

    def vector(name: str, n: int, scale: float, spread: float = 0.5) -> None:
        values = rng.uniform(1.0 - spread, 1.0 + spread, n) * scale
        w.add_tensor(name, values.astype(np.float32))

    e, q_dim, kv_dim = spec.n_embd, spec.n_head * spec.head_dim, spec.n_head_kv * spec.head_dim
    # rmsnorm output has unit rms; dividing by sqrt(cols) keeps x @ W.T near unit size.
    norm = 1.0 / float(np.sqrt(e))
    matrix("token_embd.weight", spec.n_vocab, e, spec.embd_qtype)
    if spec.rope_freqs:
        w.add_tensor(
            "rope_freqs.weight", np.linspace(1.0, 8.0, spec.head_dim // 2, dtype=np.float32)
        )
    vector("output_norm.weight", e, norm)
    if not spec.tied:
        matrix("output.weight", spec.n_vocab, e)
    gemma = spec.arch in ("gemma2", "gemma3")
    for i in range(spec.n_layer):
        b = f"blk.{i}."
        vector(b + "attn_norm.weight", e, norm)
        if spec.arch == "phi3":
            matrix(b + "attn_qkv.weight", q_dim + 2 * kv_dim, e)
        else:
            matrix(b + "attn_q.weight", q_dim, e)
            matrix(b + "attn_k.weight", kv_dim, e)
            matrix(b + "attn_v.weight", kv_dim, e)
        if spec.arch == "qwen2":
            vector(b + "attn_q.bias", q_dim, 0.5, spread=1.0)
            vector(b + "attn_k.bias", kv_dim, 0.5, spread=1.0)
            vector(b + "attn_v.bias", kv_dim, 0.5, spread=1.0)
        if spec.arch in ("qwen3", "gemma3"):
            vector(b + "attn_q_norm.weight", spec.head_dim, 1.0)
            vector(b + "attn_k_norm.weight", spec.head_dim, 1.0)
        matrix(b + "attn_output.weight", e, q_dim)
        if gemma:
            vector(b + "post_attention_norm.weight", e, 1.0)
            vector(b + "post_ffw_norm.weight", e, 1.0)
        vector(b + "ffn_norm.weight", e, norm)
        if spec.arch == "phi3":
            matrix(b + "ffn_up.weight", 2 * spec.n_ff, e)
        else:
            matrix(b + "ffn_gate.weight", spec.n_ff, e)
            matrix(b + "ffn_up.weight", spec.n_ff, e)
        matrix(b + "ffn_down.weight", e, spec.n_ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return p


def random_tokens(rng: np.random.Generator, n: int, n_vocab: int) -> npt.NDArray[np.int32]:
    return rng.integers(0, n_vocab, size=n, dtype=np.int32)


#: Texts that tell pre-tokenizers apart: digits, contractions, case, spaces and newlines,
#: punctuation runs, CJK, accents and emoji.
PRE_TOKENIZER_TEXTS: tuple[str, ...] = (
    "Hello world! I'm here, we'LL see: 12345 apples cost $3.14 (or 1,000,000?).",
    "  leading spaces\n\n\ttabs\r\nand  double  spaces   end ",
    "Café naïve façade — 日本語のテキスト 한국어 中文 🎉🎉 ok!!! ... ??? <tag>",
    "def f(x):\n    return x**2 + 0x1F // 7;  # comment\n",
    "CamelCaseWords ALLCAPS lowercase MiXeD don't DON'T they've 'tis",
    "(word) [list] {map} $$$cash x<=y a+b=c ~tilde^ |pipe| `tick` @at #hash",
    "3,141,592 and 1234567890 then 0.5e-10; 42nd 7th 2024-01-01 12:30",
    "line one\n\n\nline two\r\n\r\n  indented\n\t\ttabbed \n",
    "中文字符和日本語ひらがなカタカナ한국어 mixed with English words",
    "cafe\u0301 nai\u0308ve (combining marks); end.\n\nnext!\n?\r\nok",
)


def train_merges(texts: tuple[str, ...], n_merges: int) -> list[tuple[str, str]]:
    """Byte-level BPE merges learnt from ``texts`` taken whole (pairs across spaces and
    punctuation included), so that a pre-tokenizer's splits show in the ids it gives."""
    from gguf.vocab import bytes_to_unicode

    table = bytes_to_unicode()
    seqs = [[table[b] for b in t.encode("utf-8")] for t in texts]
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        counts: dict[tuple[str, str], int] = {}
        for seq in seqs:
            for pair in itertools.pairwise(seq):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        best = max(counts, key=lambda p: (counts[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        for k, seq in enumerate(seqs):
            out: list[str] = []
            i = 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[k] = out
    return merges


def write_vocab_model(path: str | os.PathLike[str], pre: str, n_merges: int = 3000) -> Path:
    """A tokenizer-only ``llama`` GGUF (no tensors: llama.cpp opens it with ``vocab_only``):
    byte-level BPE with merges learnt from :data:`PRE_TOKENIZER_TEXTS`, pre-tokenizer ``pre``."""
    merges = train_merges(PRE_TOKENIZER_TEXTS, n_merges)
    tokens = [*byte_tokens(), *(a + b for a, b in merges), "<s>", "</s>"]
    unique = list(dict.fromkeys(tokens))  # a merge can rebuild a token already there
    types = [int(TokenType.NORMAL)] * (len(unique) - 2) + [int(TokenType.CONTROL)] * 2
    p = Path(path)
    w = GGUFWriter(p, "llama")
    w.add_name(f"vocab-{pre}")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(64)
    w.add_feed_forward_length(64)
    w.add_head_count(1)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(unique)
    w.add_token_types(types)
    w.add_token_merges([f"{a} {b}" for a, b in merges])
    w.add_bos_token_id(len(unique) - 2)
    w.add_eos_token_id(len(unique) - 1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return p
