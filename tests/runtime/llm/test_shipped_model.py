"""The model that ships in resources/models: a llama.cpp-style GGUF that works out of the box.

Read with gguf's own GGUFReader (not qhybrid's loader): its metadata and tensors follow
llama.cpp's conventions, its tokenizer (rebuilt from the metadata with ``tokenizers``)
round-trips text, and a plain forward pass over the kernels' numpy reference writes readable
text. ``scripts/train_tiny_llm.py`` made the file; these checks need no torch.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, TokenType
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from qhybrid._resources import resource_path
from qhybrid.runtime.wgpu_thread import _reference as ref

MODEL = resource_path("models", "tiny-stories.gguf")
PER_BLOCK = (
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
)


@pytest.fixture(scope="module")
def reader() -> GGUFReader:
    assert MODEL.is_file(), f"{MODEL} is missing: run scripts/train_tiny_llm.py"
    return GGUFReader(MODEL)


@pytest.fixture(scope="module")
def meta(reader: GGUFReader) -> dict[str, Any]:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


@pytest.fixture(scope="module")
def tokenizer(meta: dict[str, Any]) -> Tokenizer:
    """Byte-level BPE from the GGUF tables alone, as a loader of ``gpt2`` vocabularies does."""
    vocab = {t: i for i, t in enumerate(meta["tokenizer.ggml.tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def test_file_is_small_enough_to_ship() -> None:
    assert MODEL.stat().st_size < 4 * 1024 * 1024


def test_metadata_follows_llama_cpp(meta: dict[str, Any]) -> None:
    assert meta["general.architecture"] == "llama"
    assert meta["general.name"]
    assert meta["general.file_type"] == 7  # LLAMA_FTYPE_MOSTLY_Q8_0
    dim = meta["llama.embedding_length"]
    heads = meta["llama.attention.head_count"]
    assert meta["llama.context_length"] >= 256
    assert meta["llama.block_count"] >= 1
    assert meta["llama.feed_forward_length"] > dim
    assert 0 < meta["llama.attention.head_count_kv"] < heads  # grouped-query attention
    assert heads % meta["llama.attention.head_count_kv"] == 0
    assert meta["llama.rope.dimension_count"] == dim // heads
    assert meta["llama.rope.freq_base"] > 0
    assert 0 < meta["llama.attention.layer_norm_rms_epsilon"] < 1e-3


def test_tensors_are_named_shaped_and_typed(reader: GGUFReader, meta: dict[str, Any]) -> None:
    dim = meta["llama.embedding_length"]
    ffn = meta["llama.feed_forward_length"]
    hd = dim // meta["llama.attention.head_count"]
    kv = meta["llama.attention.head_count_kv"] * hd
    n_vocab = len(meta["tokenizer.ggml.tokens"])
    expected = {  # GGUF shapes are (ne0 = in_features, ne1 = out_features)
        "token_embd.weight": (dim, n_vocab),
        "output_norm.weight": (dim,),
        "output.weight": (dim, n_vocab),
    }
    shapes = {
        "attn_norm": (dim,),
        "attn_q": (dim, dim),
        "attn_k": (dim, kv),
        "attn_v": (dim, kv),
        "attn_output": (dim, dim),
        "ffn_norm": (dim,),
        "ffn_gate": (dim, ffn),
        "ffn_up": (dim, ffn),
        "ffn_down": (ffn, dim),
    }
    for i in range(meta["llama.block_count"]):
        for name in PER_BLOCK:
            expected[f"blk.{i}.{name}.weight"] = shapes[name]
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == set(expected)
    for name, shape in expected.items():
        t = tensors[name]
        assert tuple(int(n) for n in t.shape) == shape, name
        want = GGMLQuantizationType.F32 if len(shape) == 1 else GGMLQuantizationType.Q8_0
        assert t.tensor_type == want, name


def test_tokenizer_metadata(meta: dict[str, Any]) -> None:
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta["tokenizer.ggml.token_type"]
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "gpt-2"  # llama.cpp's name for GPT-2's regex
    assert len(tokens) == len(types) == meta["llama.vocab_size"]
    bos, eos = meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]
    assert (tokens[bos], tokens[eos]) == ("<s>", "</s>")
    assert types[bos] == types[eos] == TokenType.CONTROL
    assert meta["tokenizer.ggml.add_bos_token"] is True
    assert all(len(m.split(" ")) == 2 for m in meta["tokenizer.ggml.merges"])


@pytest.mark.parametrize(
    "text",
    [
        "Once upon a time, there was a little girl named Lily.",
        "Q: What color is the sky?\nA: The sky is blue.",
        "  two  spaces, a tab\there, digits 12345 and émigré café ☕!\n\n",
        "",
    ],
)
def test_tokenizer_round_trips(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text).ids
    assert tokenizer.decode(ids) == text


def test_story_words_are_whole_tokens(tokenizer: Tokenizer) -> None:
    assert len(tokenizer.encode("Once upon a time, there was a little girl").ids) <= 10


def test_chat_template_renders_the_q_a_format(meta: dict[str, Any]) -> None:
    template = jinja2.Environment().from_string(meta["tokenizer.chat_template"])
    text = template.render(
        messages=[
            {"role": "user", "content": "Hello!"},
            {"role": "assistant", "content": "Hello! How are you today?"},
            {"role": "user", "content": "What color is the sky?"},
        ],
        add_generation_prompt=True,
    )
    assert text == "Q: Hello!\nA: Hello! How are you today?\nQ: What color is the sky?\nA:"


def _greedy(reader: GGUFReader, meta: dict[str, Any], ids: list[int], count: int) -> list[int]:
    """A plain forward pass (no cache, whole sequence each step) over the numpy reference."""
    w: dict[str, tuple[Any, str, int, int]] = {}
    for t in reader.tensors:
        cols, rows = int(t.shape[0]), int(t.shape[1]) if len(t.shape) > 1 else 1
        w[t.name] = (t.data, t.tensor_type.name.lower(), rows, cols)

    def lin(x: np.ndarray, name: str) -> np.ndarray:
        return ref.linear(x, *w[name])

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        return ref.rmsnorm(x, ref.dequantize(*w[name]).reshape(-1), eps)

    eps = meta["llama.attention.layer_norm_rms_epsilon"]
    base = meta["llama.rope.freq_base"]
    heads, kv = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    dim = meta["llama.embedding_length"]
    hd = dim // heads
    ids = list(ids)
    for _ in range(count):
        t = len(ids)
        pos, slot = np.arange(t), np.zeros(t, dtype=np.int64)
        x = ref.get_rows(*w["token_embd.weight"], np.asarray(ids))
        for i in range(meta["llama.block_count"]):
            p = f"blk.{i}."
            h = norm(x, p + "attn_norm.weight")
            q = ref.rope(lin(h, p + "attn_q.weight").reshape(t, heads, hd), pos, base, "normal")
            k = ref.rope(lin(h, p + "attn_k.weight").reshape(t, kv, hd), pos, base, "normal")
            v = lin(h, p + "attn_v.weight").reshape(t, kv, hd)
            a = ref.attention(q, k[None], v[None], slot, pos, 1 / math.sqrt(hd))
            x = x + lin(a.reshape(t, dim), p + "attn_output.weight")
            h = norm(x, p + "ffn_norm.weight")
            g = ref.silu_mul(lin(h, p + "ffn_gate.weight"), lin(h, p + "ffn_up.weight"))
            x = x + lin(g, p + "ffn_down.weight")
        logits = lin(norm(x[-1:], "output_norm.weight"), "output.weight")
        nxt = int(ref.argmax(logits)[0])
        if nxt == meta["tokenizer.ggml.eos_token_id"]:
            break
        ids.append(nxt)
    return ids


def test_greedy_story_is_readable_english(
    reader: GGUFReader, meta: dict[str, Any], tokenizer: Tokenizer
) -> None:
    bos = meta["tokenizer.ggml.bos_token_id"]
    prompt = [bos, *tokenizer.encode("Once upon a time").ids]
    out = tokenizer.decode(_greedy(reader, meta, prompt, 24)[len(prompt) :])
    # Words and sentence punctuation only (no stray bytes or symbols), whole sentences.
    assert re.fullmatch(r"[A-Za-z'\".,!?\s]+", out), out
    assert len(re.findall(r"[A-Za-z]+", out)) >= 15, out
    assert re.search(r"[a-z][.!?]", out), out


def test_answers_a_simple_question(
    reader: GGUFReader, meta: dict[str, Any], tokenizer: Tokenizer
) -> None:
    bos = meta["tokenizer.ggml.bos_token_id"]
    prompt = [bos, *tokenizer.encode("Q: What color is the grass?\nA:").ids]
    out = tokenizer.decode(_greedy(reader, meta, prompt, 8)[len(prompt) :])
    assert "green" in out, out


def test_shipped_readme_describes_the_file() -> None:
    readme = Path(MODEL).with_name("README.md").read_text(encoding="utf-8")
    assert "scripts/train_tiny_llm.py" in readme
