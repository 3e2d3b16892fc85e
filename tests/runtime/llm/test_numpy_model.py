"""The CPU runner against a straightforward dense forward written here from scratch.

The dense forward dequantizes every tensor with gguf (read through gguf's own GGUFReader, not
our loader), and runs full causal attention over the whole sequence with no cache: if the
runner's cache, batching, GQA, rope mode, biases or tied embeddings were wrong, the logits
would differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from gguf import quants as gguf_quants

from qhybrid.runtime.llm import (
    GREEDY,
    NumpyRunner,
    SamplingParams,
    SeqInput,
    load_model,
)
from qhybrid.runtime.llm._numpy_model import causal_attention
from qhybrid.runtime.wgpu_thread import _reference as ref

QTYPES = ("f32", "f16", "q8_0", "q4_0", "q4_k", "q6_k")


def dense_forward(path: Path, tokens: list[int]) -> np.ndarray:
    """All positions' logits, float64, from the file alone."""
    reader = GGUFReader(path)
    f = {k: v.contents() for k, v in reader.fields.items() if not k.startswith("GGUF.")}
    arch = f["general.architecture"]
    w = {
        t.name: np.asarray(gguf_quants.dequantize(t.data, t.tensor_type), dtype=np.float64)
        for t in reader.tensors
    }
    n_layer = f[f"{arch}.block_count"]
    n_head = f[f"{arch}.attention.head_count"]
    n_kv = f[f"{arch}.attention.head_count_kv"]
    n_embd = f[f"{arch}.embedding_length"]
    base = f[f"{arch}.rope.freq_base"]
    eps = f[f"{arch}.attention.layer_norm_rms_epsilon"]
    hd = n_embd // n_head
    t = len(tokens)

    def norm(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight

    def rotate(x: np.ndarray) -> np.ndarray:  # x[T, H, D]
        freqs = base ** (-np.arange(0, hd, 2) / hd)  # [D/2]
        angle = np.exp(1j * np.arange(t)[:, None] * freqs[None, :])[:, None, :]
        if arch == "llama":  # adjacent pairs are (re, im)
            z = (x[..., 0::2] + 1j * x[..., 1::2]) * angle
            out = np.empty_like(x)
            out[..., 0::2], out[..., 1::2] = z.real, z.imag
            return out
        z = (x[..., : hd // 2] + 1j * x[..., hd // 2 :]) * angle  # neox: the two halves
        return np.concatenate([z.real, z.imag], axis=-1)

    x = w["token_embd.weight"][tokens]
    for i in range(n_layer):
        b = f"blk.{i}."
        h = norm(x, w[b + "attn_norm.weight"])
        q, k, v = (h @ w[b + f"attn_{n}.weight"].T for n in "qkv")
        if b + "attn_q.bias" in w:
            q, k, v = (m + w[b + f"attn_{n}.bias"] for m, n in zip((q, k, v), "qkv", strict=True))
        q = rotate(q.reshape(t, n_head, hd))
        k = rotate(k.reshape(t, n_kv, hd))
        v = v.reshape(t, n_kv, hd)
        k = np.repeat(k, n_head // n_kv, axis=1)
        v = np.repeat(v, n_head // n_kv, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)
        scores[:, np.triu(np.ones((t, t), dtype=bool), 1)] = -np.inf
        p = np.exp(scores - scores.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        a = np.einsum("hts,shd->thd", p, v).reshape(t, n_head * hd)
        x = x + a @ w[b + "attn_output.weight"].T
        h = norm(x, w[b + "ffn_norm.weight"])
        g = h @ w[b + "ffn_gate.weight"].T
        x = x + (g / (1 + np.exp(-g)) * (h @ w[b + "ffn_up.weight"].T)) @ w[b + "ffn_down.weight"].T
    out = w.get("output.weight", w["token_embd.weight"])
    return norm(x, w["output_norm.weight"]) @ out.T


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * scale + 1e-5)


def item(slot: int, tokens: list[int], start: int = 0) -> SeqInput:
    return SeqInput(slot, np.array(tokens, dtype=np.int32), start, GREEDY)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("qtype", QTYPES)
def test_logits_match_dense_forward(random_model, arch: str, qtype: str) -> None:
    path = random_model(arch=arch, qtype=qtype, tied=qtype in ("q4_0", "f16"))
    model = load_model(path)
    assert model.config.tied_embeddings == (qtype in ("q4_0", "f16"))
    assert model.config.attn_bias == (arch == "qwen2")
    tokens = [256, 5, 77, 300, 12, 12, 199]
    runner = NumpyRunner(model, n_slots=1, n_ctx=32)
    got = runner.logits([item(0, tokens)])[0]
    assert_close(got, dense_forward(path, tokens)[-1])


def test_quantized_weights_without_dense_cache_give_the_same_logits(random_model) -> None:
    model = load_model(random_model(arch="qwen2", qtype="q4_k"))
    tokens = [1, 2, 3, 4]
    cached = NumpyRunner(model, 1, 16).logits([item(0, tokens)])
    per_call = NumpyRunner(model, 1, 16, dense_budget=0)
    assert_close(per_call.logits([item(0, tokens)]), cached)
    assert per_call.dense_bytes == 0


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_prefill_then_decode_equals_full_recompute(random_model, arch: str) -> None:
    path = random_model(arch=arch, qtype="q8_0")
    tokens = [256, 40, 41, 42, 43, 44, 45, 46]
    want = dense_forward(path, tokens)
    runner = NumpyRunner(load_model(path), n_slots=2, n_ctx=16)
    assert_close(runner.logits([item(1, tokens[:5])])[0], want[4])
    for p in range(5, len(tokens)):
        assert_close(runner.logits([item(1, [tokens[p]], p)])[0], want[p])


def test_batch_of_three_sequences_equals_each_alone(random_model) -> None:
    path = random_model(arch="llama", qtype="q4_k")
    model = load_model(path)
    a, b, c = [256, 1, 2, 3, 4, 5], [256, 9, 8], [256, 100, 101, 102]
    batched = NumpyRunner(model, n_slots=3, n_ctx=16)
    # Step 1: two prompts of different lengths together.
    first = batched.logits([item(0, a), item(1, b)])
    # Step 2: decode for slots 0 and 1 while slot 2's prompt is prefilled.
    second = batched.logits([item(1, [7], len(b)), item(2, c), item(0, [33], len(a))])
    for tokens, got in ((a, first[0]), (b, first[1])):
        alone = NumpyRunner(model, 1, 16).logits([item(0, tokens)])[0]
        assert_close(got, alone)
    for tokens, got in (([*b, 7], second[0]), (c, second[1]), ([*a, 33], second[2])):
        assert_close(got, dense_forward(path, tokens)[-1])


def test_reset_slot_starts_a_new_sequence(random_model) -> None:
    model = load_model(random_model(arch="llama", qtype="f16"))
    runner = NumpyRunner(model, 1, 16)
    fresh = runner.logits([item(0, [3, 4, 5])])
    runner.logits([item(0, [9, 9], 3)])
    runner.reset_slot(0)
    assert_close(runner.logits([item(0, [3, 4, 5])]), fresh)


def test_vectorized_attention_equals_reference() -> None:
    rng = np.random.default_rng(1)
    s, length, hkv, hq, d = 2, 12, 2, 6, 8
    k_cache = rng.standard_normal((s, length, hkv, d), dtype=np.float32)
    v_cache = rng.standard_normal((s, length, hkv, d), dtype=np.float32)
    q = rng.standard_normal((5, hq, d), dtype=np.float32)
    got = causal_attention(q, k_cache, v_cache, slot=1, start=4, factor=0.3)
    want = ref.attention(q, k_cache, v_cache, np.full(5, 1), np.arange(4, 9), 0.3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_step_samples_with_each_items_own_parameters(random_model) -> None:
    model = load_model(random_model(arch="qwen2", qtype="q8_0"))
    prompts = [[256, 1, 2], [256, 3], [256, 4, 5, 6]]
    logits = NumpyRunner(model, 3, 16).logits([item(i, p) for i, p in enumerate(prompts)])
    hot = SamplingParams(temperature=1.5, top_k=0, top_p=1.0)
    penalised = SamplingParams(temperature=0.0, repeat_penalty=50.0)
    greedy_top = int(np.argmax(logits[2]))
    items = [
        SeqInput(0, np.array(prompts[0], np.int32), 0, GREEDY),
        SeqInput(1, np.array(prompts[1], np.int32), 0, hot, uniform=0.7),
        SeqInput(
            2, np.array(prompts[2], np.int32), 0, penalised, recent=np.array([greedy_top], np.int32)
        ),
    ]
    got = NumpyRunner(model, 3, 16).step(items)
    assert got.dtype == np.uint32
    assert got[0] == np.argmax(logits[0])
    assert got[1] == ref.sample(logits[1:2], 1.5, 0, 1.0, np.array([0.7]))[0]
    want2 = ref.sample(
        ref.repeat_penalty(logits[2:3], np.array([[greedy_top]]), np.array([1]), 50.0),
        0.0,
        40,
        0.95,
        np.array([0.0]),
    )[0]
    assert got[2] == want2
    assert got[2] != greedy_top or logits[2, greedy_top] == 0


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([item(5, [1])], "slot 5 out of range"),
        ([item(0, [1]), item(0, [2])], "appears twice"),
        ([item(0, [1] * 17)], "do not fit the context of 16"),
        ([item(0, [10_000])], "token id out of range"),
        ([item(0, [])], "non-empty"),
        ([], "at least one item"),
    ],
)
def test_bad_steps_are_refused_with_a_message(random_model, bad, message: str) -> None:
    runner = NumpyRunner(load_model(random_model()), 2, 16)
    with pytest.raises(ValueError, match=message):
        runner.step(bad)


def test_decode_attention_matches_the_reference() -> None:
    from qhybrid.runtime.llm._numpy_model import decode_attention

    rng = np.random.default_rng(7)
    k_cache = rng.standard_normal((4, 16, 2, 8), dtype=np.float32)
    v_cache = rng.standard_normal((4, 16, 2, 8), dtype=np.float32)
    q = rng.standard_normal((3, 6, 8), dtype=np.float32)
    slots = np.array([2, 0, 3])
    pos = np.array([5, 0, 15])
    want = ref.attention(q, k_cache, v_cache, slots, pos, 0.4)
    got = decode_attention(q, k_cache, v_cache, slots, pos, 0.4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
