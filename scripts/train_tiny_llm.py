"""Train the tiny Llama-architecture model that qhybrid ships, and export it as GGUF.

The model is what ``resources/models/tiny-stories.gguf`` holds: a decoder of the Llama family
(RMSNorm, rotary embeddings as llama.cpp's ``llama`` architecture applies them, grouped-query
attention, SwiGLU feed-forward, untied output) trained on the simple stories and Q/A exchanges
that ``scripts/make_corpus.py`` generates, with a byte-level BPE tokenizer trained here with the
``tokenizers`` library. Everything is seeded; on a CPU it takes about ten minutes.

Needs PyTorch, a development tool only (qhybrid itself never imports it)::

    .venv/bin/pip install torch            # a CPU build is enough
    .venv/bin/python scripts/train_tiny_llm.py            # train, export, verify
    .venv/bin/python scripts/train_tiny_llm.py --verify   # check the shipped file only

The export follows llama.cpp's conventions (the keys ``llama.*``, tensor names ``blk.N.*``,
``tokenizer.ggml.*`` with model ``gpt2`` and pre-tokenizer ``gpt-2``): 2-D weights in Q8_0,
norms in F32. Rotary embeddings are llama.cpp's "normal" mode (elements ``2i, 2i+1`` turn
together), both in training and in the file, so no permutation of the q/k weights is needed.

The verification reloads the file with ``gguf.GGUFReader``, runs a numpy forward pass built
from ``qhybrid.runtime.wgpu_thread._reference`` (the contract of the GPU kernels), compares its
logits with the torch model's and greedy-generates from a few prompts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

import make_corpus  # noqa: E402

from qhybrid.runtime.wgpu_thread import _reference as ref  # noqa: E402

DEFAULT_OUT = REPO / "resources" / "models" / "tiny-stories.gguf"
BOS, EOS = "<s>", "</s>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}Q: {{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}A: {{ message['content'] }}\n"
    "{% else %}{{ message['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}A:{% endif %}"
)
PROMPTS = [
    "Once upon a time",
    "One day, a little dog named Spot",
    "Q: What color is the sky?\nA:",
    "Q: Tell me a story about a cat.\nA:",
    "Q: What is two plus three?\nA:",
]


def say(message: str) -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


@dataclass(frozen=True)
class Config:
    vocab_size: int = 1024
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_dim: int = 384
    context: int = 256
    rope_base: float = 10000.0
    norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


# -- the tokenizer ---------------------------------------------------------------------------
def train_tokenizer(docs: Iterable[str], vocab_size: int) -> Any:
    """Byte-level BPE with GPT-2's pre-tokenizer regex, ``<s>`` = 0 and ``</s>`` = 1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer)
    return tok


def tokenizer_tables(tok: Any) -> tuple[list[str], list[str]]:
    """The vocabulary in id order and the merges as ``"left right"``, as GGUF stores them."""
    state = json.loads(tok.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    tokens = [""] * len(vocab)
    for text, i in vocab.items():
        tokens[i] = text
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    return tokens, merges


def tokenizer_from_tables(tokens: Sequence[str], merges: Sequence[str]) -> Any:
    """A ``tokenizers`` tokenizer from GGUF's ``tokens`` and ``merges`` (no special handling
    of BOS: callers prepend it)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(BOS, special=True), AddedToken(EOS, special=True)])
    return tok


# -- the torch model -------------------------------------------------------------------------
def build_model(cfg: Config) -> Any:
    import torch
    from torch import nn
    from torch.nn import functional as F

    def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x[B, H, T, D]; llama.cpp's "normal" mode: elements 2i and 2i+1 turn together.
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)

    class RMSNorm(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * self.weight

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            hd = cfg.head_dim
            self.attn_norm = RMSNorm(cfg.dim)
            self.wq = nn.Linear(cfg.dim, cfg.n_heads * hd, bias=False)
            self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
            self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
            self.wo = nn.Linear(cfg.n_heads * hd, cfg.dim, bias=False)
            self.ffn_norm = RMSNorm(cfg.dim)
            self.w_gate = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
            self.w_up = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
            self.w_down = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

        def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            hd = cfg.head_dim
            h = self.attn_norm(x)
            q = self.wq(h).view(b, t, cfg.n_heads, hd).transpose(1, 2)
            k = self.wk(h).view(b, t, cfg.n_kv_heads, hd).transpose(1, 2)
            v = self.wv(h).view(b, t, cfg.n_kv_heads, hd).transpose(1, 2)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            # Query head h reads KV head h // group, as llama.cpp does.
            group = cfg.n_heads // cfg.n_kv_heads
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.wo(a.transpose(1, 2).reshape(b, t, cfg.n_heads * hd))
            h = self.ffn_norm(x)
            return x + self.w_down(F.silu(self.w_gate(h)) * self.w_up(h))

    class TinyLlama(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cfg = cfg
            self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.n_layers))
            self.norm = RMSNorm(cfg.dim)
            self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
            half = cfg.head_dim // 2
            inv = cfg.rope_base ** (-torch.arange(half, dtype=torch.float32) * 2.0 / cfg.head_dim)
            theta = torch.arange(cfg.context, dtype=torch.float32)[:, None] * inv[None, :]
            self.register_buffer("cos", torch.cos(theta), persistent=False)
            self.register_buffer("sin", torch.sin(theta), persistent=False)
            for name, p in self.named_parameters():
                if p.dim() == 2:
                    std = 0.02
                    if name.endswith(("wo.weight", "w_down.weight")):
                        std = 0.02 / math.sqrt(2 * cfg.n_layers)
                    nn.init.normal_(p, mean=0.0, std=std)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            t = ids.shape[1]
            x = self.embed(ids)
            cos, sin = self.cos[:t], self.sin[:t]
            for block in self.blocks:
                x = block(x, cos, sin)
            return self.output(self.norm(x))

    return TinyLlama()


def gguf_tensors(model: Any) -> dict[str, np.ndarray]:
    """The model's weights under llama.cpp's tensor names, float32, [out, in] row-major."""
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["embed.weight"]}
    names = {
        "attn_norm.weight": "attn_norm.weight",
        "attn_q.weight": "wq.weight",
        "attn_k.weight": "wk.weight",
        "attn_v.weight": "wv.weight",
        "attn_output.weight": "wo.weight",
        "ffn_norm.weight": "ffn_norm.weight",
        "ffn_gate.weight": "w_gate.weight",
        "ffn_up.weight": "w_up.weight",
        "ffn_down.weight": "w_down.weight",
    }
    for i in range(model.cfg.n_layers):
        for gguf_name, torch_name in names.items():
            out[f"blk.{i}.{gguf_name}"] = sd[f"blocks.{i}.{torch_name}"]
    out["output_norm.weight"] = sd["norm.weight"]
    out["output.weight"] = sd["output.weight"]
    return out


def load_gguf_into(model: Any, weights: dict[str, np.ndarray]) -> None:
    """Put (dequantized) GGUF weights back into a torch model of the same shape."""
    import torch

    inverse = {v: k for k, v in gguf_tensors_names(model.cfg).items()}
    state = {inverse[name]: torch.from_numpy(np.array(w)) for name, w in weights.items()}
    model.load_state_dict(state)


def gguf_tensors_names(cfg: Config) -> dict[str, str]:
    """torch state-dict name -> GGUF tensor name."""
    names = {"embed.weight": "token_embd.weight", "norm.weight": "output_norm.weight"}
    names["output.weight"] = "output.weight"
    per_block = {
        "attn_norm.weight": "attn_norm.weight",
        "wq.weight": "attn_q.weight",
        "wk.weight": "attn_k.weight",
        "wv.weight": "attn_v.weight",
        "wo.weight": "attn_output.weight",
        "ffn_norm.weight": "ffn_norm.weight",
        "w_gate.weight": "ffn_gate.weight",
        "w_up.weight": "ffn_up.weight",
        "w_down.weight": "ffn_down.weight",
    }
    for i in range(cfg.n_layers):
        for t, g in per_block.items():
            names[f"blocks.{i}.{t}"] = f"blk.{i}.{g}"
    return names


# -- export ----------------------------------------------------------------------------------
def export_gguf(
    path: Path, model: Any, cfg: Config, tokens: list[str], merges: list[str], name: str
) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_description(
        "A tiny Llama-architecture model trained by qhybrid's scripts/train_tiny_llm.py on"
        " generated children's stories and Q/A exchanges; for demos and tests."
    )
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_context_length(cfg.context)
    writer.add_embedding_length(cfg.dim)
    writer.add_block_count(cfg.n_layers)
    writer.add_feed_forward_length(cfg.ffn_dim)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_kv_heads)
    writer.add_rope_freq_base(cfg.rope_base)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # llama.cpp's name for the GPT-2 regex
    writer.add_token_list(tokens)
    control = gguf.TokenType.CONTROL
    writer.add_token_types([control if t in (BOS, EOS) else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index(BOS))
    writer.add_eos_token_id(tokens.index(EOS))
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    q8_0 = gguf.GGMLQuantizationType.Q8_0
    for tname, w in gguf_tensors(model).items():
        if w.ndim == 2:
            q = gguf.quants.quantize(np.ascontiguousarray(w, dtype=np.float32), q8_0)
            writer.add_tensor(tname, q, raw_dtype=q8_0)
        else:
            writer.add_tensor(tname, np.ascontiguousarray(w, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# -- the numpy reference forward pass over the GGUF file ------------------------------------
class NumpyModel:
    """The file's graph, step by step, with the kernels' numpy reference and a KV cache."""

    def __init__(self, path: Path) -> None:
        import gguf

        reader = gguf.GGUFReader(str(path))
        self.meta = {f.name: f.contents() for f in reader.fields.values()}
        if self.meta["general.architecture"] != "llama":
            raise ValueError(f"{path}: not a llama model")
        m = self.meta
        self.n_layers = int(m["llama.block_count"])
        self.dim = int(m["llama.embedding_length"])
        self.n_heads = int(m["llama.attention.head_count"])
        self.n_kv = int(m["llama.attention.head_count_kv"])
        self.ffn = int(m["llama.feed_forward_length"])
        self.context = int(m["llama.context_length"])
        self.eps = float(m["llama.attention.layer_norm_rms_epsilon"])
        self.base = float(m["llama.rope.freq_base"])
        self.hd = self.dim // self.n_heads
        self.tensors: dict[str, tuple[np.ndarray, str, int, int]] = {}
        for t in reader.tensors:
            qtype = t.tensor_type.name.lower()
            cols = int(t.shape[0])
            rows = int(t.shape[1]) if len(t.shape) > 1 else 1
            self.tensors[t.name] = (np.asarray(t.data), qtype, rows, cols)
        self.vocab = self.tensors["token_embd.weight"][2]
        self.tokenizer = tokenizer_from_tables(
            m["tokenizer.ggml.tokens"], m["tokenizer.ggml.merges"]
        )
        self.bos = int(m["tokenizer.ggml.bos_token_id"])
        self.eos = int(m["tokenizer.ggml.eos_token_id"])
        self.reset()

    def weights(self) -> dict[str, np.ndarray]:
        """Every tensor dequantized to float32, in its logical shape."""
        out = {}
        for name, (raw, qtype, rows, cols) in self.tensors.items():
            w = ref.dequantize(raw, qtype, rows, cols)
            out[name] = w if rows > 1 else w.reshape(cols)
        return out

    def reset(self) -> None:
        shape = (1, self.context, self.n_kv, self.hd)
        self.k_cache = [np.zeros(shape, np.float32) for _ in range(self.n_layers)]
        self.v_cache = [np.zeros(shape, np.float32) for _ in range(self.n_layers)]
        self.pos = 0

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        raw, qtype, rows, cols = self.tensors[name]
        return ref.linear(x, raw, qtype, rows, cols)

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        raw, qtype, rows, cols = self.tensors[name]
        return ref.rmsnorm(x, ref.dequantize(raw, qtype, rows, cols).reshape(-1), self.eps)

    def forward(self, ids: Sequence[int]) -> np.ndarray:
        """Logits ``[T, vocab]`` for ``ids`` appended at the cache's current position."""
        t = len(ids)
        pos = np.arange(self.pos, self.pos + t)
        slot = np.zeros(t, dtype=np.int64)
        raw, qtype, rows, cols = self.tensors["token_embd.weight"]
        x = ref.get_rows(raw, qtype, rows, cols, np.asarray(ids))
        for i in range(self.n_layers):
            p = f"blk.{i}."
            h = self._norm(x, p + "attn_norm.weight")
            q = self._linear(h, p + "attn_q.weight").reshape(t, self.n_heads, self.hd)
            k = self._linear(h, p + "attn_k.weight").reshape(t, self.n_kv, self.hd)
            v = self._linear(h, p + "attn_v.weight").reshape(t, self.n_kv, self.hd)
            q = ref.rope(q, pos, self.base, "normal")
            k = ref.rope(k, pos, self.base, "normal")
            ref.kv_store(self.k_cache[i], k, slot, pos)
            ref.kv_store(self.v_cache[i], v, slot, pos)
            a = ref.attention(
                q, self.k_cache[i], self.v_cache[i], slot, pos, 1.0 / math.sqrt(self.hd)
            )
            x = ref.add(x, self._linear(a.reshape(t, self.dim), p + "attn_output.weight"))
            h = self._norm(x, p + "ffn_norm.weight")
            g = ref.silu_mul(
                self._linear(h, p + "ffn_gate.weight"), self._linear(h, p + "ffn_up.weight")
            )
            x = ref.add(x, self._linear(g, p + "ffn_down.weight"))
        self.pos += t
        return self._linear(self._norm(x, "output_norm.weight"), "output.weight")

    def encode(self, text: str) -> list[int]:
        return [self.bos, *self.tokenizer.encode(text).ids]

    def generate(self, prompt: str, max_tokens: int = 80) -> tuple[list[int], str]:
        """Greedy continuation of ``prompt`` (BOS prepended); stops at EOS."""
        self.reset()
        ids = self.encode(prompt)
        logits = self.forward(ids)[-1]
        out: list[int] = []
        while len(out) < max_tokens and self.pos < self.context:
            nxt = int(ref.argmax(logits[None, :])[0])
            if nxt == self.eos:
                break
            out.append(nxt)
            logits = self.forward([nxt])[-1]
        return out, self.tokenizer.decode(out)


# -- training --------------------------------------------------------------------------------
def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def encode_docs(tok: Any, docs: list[str], bos: int, eos: int) -> np.ndarray:
    stream: list[int] = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        stream.append(bos)
        stream.extend(enc.ids)
        stream.append(eos)
    return np.asarray(stream, dtype=np.int64)


def train(args: argparse.Namespace) -> None:
    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    cfg = Config(
        vocab_size=args.vocab,
        dim=args.dim,
        n_layers=args.layers,
        n_heads=args.heads,
        n_kv_heads=args.kv_heads,
        ffn_dim=args.ffn,
        context=args.context,
    )
    t0 = time.perf_counter()
    docs = list(make_corpus.documents(args.docs, seed=args.seed))
    held_out = list(make_corpus.documents(500, seed=args.seed + 1_000_003))
    chars = sum(len(d) for d in docs)
    tok = train_tokenizer(docs, cfg.vocab_size)
    tokens, merges = tokenizer_tables(tok)
    if len(tokens) != cfg.vocab_size:
        raise SystemExit(f"tokenizer has {len(tokens)} tokens, expected {cfg.vocab_size}")
    bos, eos = tokens.index(BOS), tokens.index(EOS)
    data = torch.from_numpy(encode_docs(tok, docs, bos, eos))
    val = torch.from_numpy(encode_docs(tok, held_out, bos, eos))
    say(
        f"corpus: {len(docs)} documents, {chars / 1e6:.1f} M characters, {len(data)} tokens "
        f"({chars / len(data):.2f} chars/token); prepared in {time.perf_counter() - t0:.1f} s"
    )

    model = build_model(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"model: {n_params} parameters, {asdict(cfg)}")
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(args.seed)
    span = cfg.context + 1

    def batch(source: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
        starts = torch.randint(0, len(source) - span, (size,), generator=g)
        return torch.stack([source[s : s + span] for s in starts.tolist()])

    def evaluate() -> float:
        model.eval()
        g = torch.Generator().manual_seed(12345)
        losses = []
        with torch.no_grad():
            for _ in range(8):
                b = batch(val, args.batch, g)
                logits = model(b[:, :-1])
                losses.append(
                    torch.nn.functional.cross_entropy(
                        logits.reshape(-1, cfg.vocab_size), b[:, 1:].reshape(-1)
                    ).item()
                )
        model.train()
        return float(np.mean(losses))

    history: list[dict[str, float]] = []
    t_train = time.perf_counter()
    smooth = None
    steps_done = 0
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        b = batch(data, args.batch, gen)
        logits = model(b[:, :-1])
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, cfg.vocab_size), b[:, 1:].reshape(-1)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps_done = step + 1
        smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
        elapsed = time.perf_counter() - t_train
        if step % args.log_every == 0 or step == args.steps - 1:
            say(f"step {step:5d}  loss {loss.item():.3f}  (smoothed {smooth:.3f})  {elapsed:.0f} s")
            history.append({"step": step, "loss": round(loss.item(), 4), "seconds": elapsed})
        if args.max_minutes and elapsed > args.max_minutes * 60:
            say(f"stopping early at step {step}: over --max-minutes {args.max_minutes}")
            break
    train_seconds = time.perf_counter() - t_train
    val_loss = evaluate()
    say(f"trained {steps_done} steps in {train_seconds:.0f} s; held-out loss {val_loss:.3f}")

    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    export_gguf(out, model, cfg, tokens, merges, "qhybrid tiny-stories")
    size = out.stat().st_size
    say(f"wrote {out} ({size} bytes)")
    log = {
        "command": "python scripts/train_tiny_llm.py " + " ".join(sys.argv[1:]),
        "config": asdict(cfg),
        "parameters": n_params,
        "file_bytes": size,
        "documents": len(docs),
        "corpus_characters": chars,
        "corpus_tokens": len(data),
        "steps": steps_done,
        "batch": args.batch,
        "lr": args.lr,
        "seed": args.seed,
        "threads": args.threads,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "final_train_loss_smoothed": round(smooth or 0.0, 4),
        "held_out_loss": round(val_loss, 4),
        "torch": torch.__version__,
        "history": history,
    }
    out.with_suffix(".train.json").write_text(json.dumps(log, indent=1) + "\n", encoding="utf-8")
    verify(out, model)


# -- verification ----------------------------------------------------------------------------
def verify(path: Path, trained: Any | None = None) -> None:
    """Check the file against torch and generate from a few prompts; exits non-zero on a
    mismatch."""
    import torch

    npm = NumpyModel(path)
    m = npm.meta
    cfg = Config(
        vocab_size=npm.vocab,
        dim=npm.dim,
        n_layers=npm.n_layers,
        n_heads=npm.n_heads,
        n_kv_heads=npm.n_kv,
        ffn_dim=npm.ffn,
        context=npm.context,
        rope_base=npm.base,
        norm_eps=npm.eps,
    )
    say(f"verify {path}: {m['general.name']!r}, {cfg}")
    text = "Once upon a time, there was a little girl named Lily. She loved to"
    ids = npm.encode(text)
    assert npm.tokenizer.decode(ids[1:]) == text, "tokenizer does not round-trip"
    npm.reset()
    ref_logits = npm.forward(ids)

    # The same weights (dequantized) in the torch graph: any difference is the graph's.
    dq = build_model(cfg)
    load_gguf_into(dq, npm.weights())
    with torch.no_grad():
        t_logits = dq(torch.tensor([ids])).numpy()[0]
    diff = float(np.abs(t_logits - ref_logits).max())
    scale = float(np.abs(t_logits).max())
    say(f"  numpy reference vs torch (same Q8_0 weights): max |diff| {diff:.2e} of {scale:.1f}")
    ok = diff <= 1e-3 * max(1.0, scale)
    if trained is not None:
        with torch.no_grad():
            f_logits = trained(torch.tensor([ids])).numpy()[0]
        qdiff = float(np.abs(f_logits - ref_logits).max())
        agree = float(np.mean(f_logits.argmax(-1) == ref_logits.argmax(-1)))
        say(
            f"  numpy reference (Q8_0) vs trained torch (f32): max |diff| {qdiff:.3f}, "
            f"next-token argmax agrees at {agree:.0%} of {len(ids)} positions"
        )
        ok = ok and agree >= 0.9 and qdiff <= 0.05 * max(1.0, scale)
    # Decode step by step through the cache must equal the one-shot prefill.
    npm.reset()
    stepwise = np.concatenate([npm.forward(ids[:5]), *(npm.forward([i]) for i in ids[5:])])
    sdiff = float(np.abs(stepwise - ref_logits).max())
    say(f"  prefill vs token-by-token decode: max |diff| {sdiff:.2e}")
    ok = ok and sdiff <= 1e-3 * max(1.0, scale)
    for prompt in PROMPTS:
        t0 = time.perf_counter()
        out, completion = npm.generate(prompt, max_tokens=args_max_tokens)
        dt = time.perf_counter() - t0
        say(f"\n--- {prompt!r} -> {len(out)} tokens, {len(out) / dt:.0f} tok/s (numpy)")
        say(prompt + completion)
    ok = verify_with_llama_cpp(path, npm, ids, ref_logits) and ok
    if not ok:
        raise SystemExit("verification FAILED")
    say("\nverification passed")


args_max_tokens = 100


def verify_with_llama_cpp(
    path: Path, npm: NumpyModel, ids: list[int], ref_logits: np.ndarray
) -> bool:
    """llama.cpp itself (``llama-cpp-python``, the ``bench`` extra) on the same file, when
    installed: same tokens, same logits up to its Q8_0 activations, same greedy text."""
    try:
        import llama_cpp
    except ImportError:
        say("\nllama-cpp-python is not installed: no check against llama.cpp")
        return True
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=npm.context, n_threads=1, logits_all=True, verbose=False
    )
    text = npm.tokenizer.decode(ids[1:]) + " don't 12345 café ☕\n\n  x"
    same_tokens = llm.tokenize(text.encode(), add_bos=True, special=False) == npm.encode(text)
    llm.reset()
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)])
    diff = float(np.abs(logits - ref_logits).max())
    agree = float(np.mean(logits.argmax(-1) == ref_logits.argmax(-1)))
    prompt = PROMPTS[0]
    theirs = llm(prompt, max_tokens=40, temperature=0.0, top_k=1)["choices"][0]["text"]
    _, mine = npm.generate(prompt, max_tokens=40)
    say(
        f"\nllama.cpp {llama_cpp.__version__}: tokenization {'same' if same_tokens else 'DIFFERS'};"
        f" logits max |diff| {diff:.3f}, argmax agrees at {agree:.0%};"
        f" greedy text {'same' if theirs == mine else 'DIFFERS: ' + repr(theirs)}"
    )
    return same_tokens and agree >= 0.9 and theirs == mine


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--verify", action="store_true", help="only verify the existing --out file")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--docs", type=int, default=30000, help="generated documents to train on")
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--ffn", type=int, default=384)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop training after this")
    args = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    if args.verify:
        import torch

        torch.set_num_threads(args.threads)
        verify(args.out)
    else:
        train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
