"""Every architecture's graph against an independent float64 reference written from llama.cpp's
graph builders (src/models/{llama,qwen2,qwen3,gemma2-iswa,gemma3,phi3}.cpp), on random models,
and against llama.cpp itself on random f32 models (references in data/llama_cpp_refs.json; all
but phi3, whose vocabulary from our writer llama.cpp does not load).

The reference is plain loops over heads and positions with its own rules for which layers are
local and which rope base they use, so that a wrong mask, norm, scale or split in the runner's
config or graph shows up as a logit difference.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from qhybrid.runtime.llm import ModelError, NumpyRunner, SeqInput, load_model
from qhybrid.runtime.llm._gguf import ModelFile

ModelFactory = Callable[..., Path]

F64 = np.ndarray


def _rms(x: F64, w: F64, eps: float) -> F64:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope_neox_or_normal(x: F64, pos: int, base: float, neox: bool) -> F64:
    d = x.shape[-1]
    half = d // 2
    out = x.copy()
    for i in range(half):
        theta = pos * base ** (-2.0 * i / d)
        c, s = math.cos(theta), math.sin(theta)
        a, b = (i, i + half) if neox else (2 * i, 2 * i + 1)
        out[..., a] = x[..., a] * c - x[..., b] * s
        out[..., b] = x[..., a] * s + x[..., b] * c
    return out


def _gelu(x: F64) -> F64:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def reference_logits(
    model: ModelFile, tokens: list[int], *, window: int = 0, softcaps: tuple[float, float] = (0, 0)
) -> F64:
    """Logits of the last position, in float64, from the file's tensors and llama.cpp's rules."""
    arch = model.config.arch
    meta = model.metadata
    n_layer = int(meta[f"{arch}.block_count"])
    n_embd = int(meta[f"{arch}.embedding_length"])
    n_head = int(meta[f"{arch}.attention.head_count"])
    n_kv = int(meta[f"{arch}.attention.head_count_kv"])
    n_ff = int(meta[f"{arch}.feed_forward_length"])
    eps = float(meta[f"{arch}.attention.layer_norm_rms_epsilon"])
    base = float(meta[f"{arch}.rope.freq_base"])
    d = n_embd // n_head
    gemma = arch in ("gemma2", "gemma3")

    def w(name: str) -> F64:
        return model.tensor(name).dense().astype(np.float64)

    def vec(name: str) -> F64:
        return w(name).reshape(-1)

    t = len(tokens)
    x = w("token_embd.weight")[tokens]
    if gemma:
        x = x * math.sqrt(n_embd)
    for il in range(n_layer):
        b = f"blk.{il}."
        local = gemma and il % (6 if arch == "gemma3" else 2) < (5 if arch == "gemma3" else 1)
        l_base = 10000.0 if (arch == "gemma3" and local) else base
        h = _rms(x, vec(b + "attn_norm.weight"), eps)
        if arch == "phi3":
            qkv = h @ w(b + "attn_qkv.weight").T
            q, k, v = np.split(qkv, [n_head * d, n_head * d + n_kv * d], axis=1)
        else:
            q, k, v = (h @ w(b + f"attn_{n}.weight").T for n in "qkv")
        if arch == "qwen2":
            q, k, v = (m + vec(b + f"attn_{n}.bias") for m, n in zip((q, k, v), "qkv", strict=True))
        q = q.reshape(t, n_head, d)
        k = k.reshape(t, n_kv, d)
        v = v.reshape(t, n_kv, d)
        if arch in ("qwen3", "gemma3"):
            q = _rms(q, vec(b + "attn_q_norm.weight"), eps)
            k = _rms(k, vec(b + "attn_k_norm.weight"), eps)
        neox = arch != "llama"
        q = np.stack([_rope_neox_or_normal(q[p], p, l_base, neox) for p in range(t)])
        k = np.stack([_rope_neox_or_normal(k[p], p, l_base, neox) for p in range(t)])
        att = np.zeros((t, n_head, d))
        for hh in range(n_head):
            kv = hh // (n_head // n_kv)
            for p in range(t):
                scores = np.array([q[p, hh] @ k[j, kv] / math.sqrt(d) for j in range(p + 1)])
                if softcaps[0]:
                    scores = softcaps[0] * np.tanh(scores / softcaps[0])
                if local and window:
                    scores[: max(0, p - window + 1)] = -np.inf
                e = np.exp(scores - scores.max())
                att[p, hh] = (e / e.sum()) @ v[: p + 1, kv]
        o = att.reshape(t, n_head * d) @ w(b + "attn_output.weight").T
        if gemma:
            o = _rms(o, vec(b + "post_attention_norm.weight"), eps)
        x = x + o
        h = _rms(x, vec(b + "ffn_norm.weight"), eps)
        if arch == "phi3":
            gu = h @ w(b + "ffn_up.weight").T
            gate, up = gu[:, :n_ff], gu[:, n_ff:]
        else:
            gate, up = h @ w(b + "ffn_gate.weight").T, h @ w(b + "ffn_up.weight").T
        act = _gelu(gate) if gemma else gate / (1.0 + np.exp(-gate))
        f = (act * up) @ w(b + "ffn_down.weight").T
        if gemma:
            f = _rms(f, vec(b + "post_ffw_norm.weight"), eps)
        x = x + f
    x = _rms(x[-1:], vec("output_norm.weight"), eps)
    out_name = "output.weight" if "output.weight" in model.tensors else "token_embd.weight"
    logits = (x @ w(out_name).T)[0]
    if softcaps[1]:
        logits = softcaps[1] * np.tanh(logits / softcaps[1])
    return logits


CASES = {
    "llama": {},
    "qwen2": {},
    "qwen3": {},
    "phi3": {},
    "gemma2": {"sliding_window": 3, "attn_softcap": 1.5, "final_softcap": 4.0},
    "gemma3": {"sliding_window": 3, "n_layer": 7, "tied": True},
}


def _runner_logits(path: Path, tokens: list[int]) -> tuple[ModelFile, np.ndarray]:
    model = load_model(path)
    runner = NumpyRunner(model, n_slots=1, n_ctx=32)
    out = runner.logits([SeqInput(0, np.array(tokens, dtype=np.int32), 0)])[0]
    return model, out


@pytest.mark.parametrize("arch", list(CASES))
def test_graph_matches_the_reference(random_model: ModelFactory, arch: str) -> None:
    fields = CASES[arch]
    path = random_model(arch=arch, n_embd=128, n_head=4, n_head_kv=2, n_ff=256, **fields)
    tokens = [256, 5, 77, 190, 3, 42, 9, 250, 101]
    model, got = _runner_logits(path, tokens)
    window = int(fields.get("sliding_window", 0))
    caps = (float(fields.get("attn_softcap", 0)), float(fields.get("final_softcap", 0)))
    want = reference_logits(model, tokens, window=window, softcaps=caps)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * float(np.abs(want).max()))
    if window:  # the window matters on these prompts: without it the reference differs
        wide = reference_logits(model, tokens, window=0, softcaps=caps)
        assert float(np.abs(wide - want).max()) > 1e-2
    if caps[1]:
        assert float(np.abs(got).max()) <= caps[1]


def test_gemma_config_from_metadata(random_model: ModelFactory) -> None:
    c = load_model(random_model(arch="gemma3", n_layer=7, sliding_window=3, tied=True)).config
    assert c.swa_layers == (True, True, True, True, True, False, True)
    assert c.layer_rope(0) == (10000.0, 1.0) and c.layer_rope(5)[0] == c.rope_freq_base
    assert c.embd_scale == pytest.approx(math.sqrt(c.n_embd))
    assert c.activation == "gelu" and c.post_norms and c.qk_norm
    c2 = load_model(random_model(arch="gemma2", n_layer=4, sliding_window=3)).config
    # llama.cpp's defaults when the file does not set them
    assert (c2.attn_softcap, c2.final_softcap) == (50.0, 30.0)
    assert c2.swa_layers[:4] == (True, False, True, False)


def test_unsupported_architectures_are_refused_by_name(tmp_path: Path) -> None:
    from gguf import GGUFWriter

    for arch, what in (("qwen3moe", "mixture-of-experts"), ("clip", "vision projector")):
        path = tmp_path / f"{arch}.gguf"
        w = GGUFWriter(path, arch)
        w.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with pytest.raises(ModelError, match=what):
            load_model(path)


def test_experts_in_a_llama_file_are_refused(tmp_path: Path) -> None:
    from gguf import GGUFWriter

    path = tmp_path / "mixtral.gguf"
    w = GGUFWriter(path, "llama")
    w.add_expert_count(8)
    w.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelError, match="mixture-of-experts model \\(8 experts\\)"):
        load_model(path)


def test_a_metadata_value_of_the_wrong_kind_is_a_model_error(tmp_path: Path) -> None:
    from gguf import GGUFWriter

    path = tmp_path / "bad.gguf"
    w = GGUFWriter(path, "gemma3")
    w.add_block_count(2)
    w.add_embedding_length(64)
    w.add_feed_forward_length(64)
    w.add_head_count(2)
    w.add_string("gemma3.attention.sliding_window", "wide")
    w.add_tensor("token_embd.weight", np.zeros((4, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelError, match="bad metadata value for gemma3"):
        load_model(path)


_REFS = json.loads((Path(__file__).parent / "data" / "llama_cpp_refs.json").read_text("utf-8"))


@pytest.mark.parametrize("arch", sorted(_REFS["architectures"]))
def test_graph_matches_llama_cpp_on_a_random_model(tmp_path: Path, arch: str) -> None:
    """The same random f32 model through llama.cpp (scripts/llm_references.py): every
    position's top token, and the last position's logits to llama.cpp's f16 KV-cache rounding."""
    from qhybrid.runtime.llm._random_model import RandomModelSpec, write_random_model

    ref = _REFS["architectures"][arch]
    path = write_random_model(tmp_path / "m.gguf", RandomModelSpec(arch=arch, **ref["spec"]))
    runner = NumpyRunner(load_model(path), n_slots=1, n_ctx=32)
    rows = [
        runner.logits([SeqInput(0, np.array([t], dtype=np.int32), i)])[0]
        for i, t in enumerate(ref["tokens"])
    ]
    assert [int(r.argmax()) for r in rows] == ref["argmax"]
    want = np.array(ref["last_logits"], dtype=np.float32)
    np.testing.assert_allclose(rows[-1], want, atol=1e-2, rtol=0)
