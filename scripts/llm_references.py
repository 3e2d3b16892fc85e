#!/usr/bin/env python3
"""Write llama.cpp's reference token ids and greedy continuations for the real models.

    .venv/bin/python scripts/llm_references.py [--out tests/runtime/llm/data/llama_cpp_refs.json]

Needs llama-cpp-python (the ``bench`` extra) and the real models (fetched into
~/.cache/qhybrid/models by qhybrid.runtime.llm._fetch). For each model and prompt of
:data:`PROMPTS` it records, from llama.cpp on the CPU:

- the prompt's token ids (``llama_tokenize`` with BOS as the model adds it, special tokens
  parsed); chat prompts are rendered by llama.cpp's own ``llama_chat_apply_template`` with the
  model's template (its built-in ``gemma`` one for a file that has none) and the text recorded;
- the greedy continuation and, per step, llama.cpp's top-2 logit margin;
- the activation-rounding noise: llama.cpp's CPU matmuls quantize activations to 8 bits (and
  its KV cache is f16), so its logits differ from a float32 evaluation of the same weights by
  d = llama.cpp - qhybrid's float32 CPU path. A top-2 margin moves by d[top1] - d[top2], whose
  spread is about sqrt(2) std(d); the noise is 4 sqrt(2) std(d) over the vocabulary at the
  first step (a 4-sigma bound);
- ``checked``: the number of continuation tokens before the first step whose margin is within
  that noise. Tests compare only those: past it, either answer is right.

CI reads the JSON and never needs llama.cpp.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "tests" / "runtime" / "llm" / "data" / "llama_cpp_refs.json"
#: (name, text, chat, greedy steps): tokenization of all; greedy continuations of a few.
PROMPTS: list[tuple[str, str, bool, int]] = [
    ("capital", "The capital of France is", False, 12),
    ("count", "1, 2, 3, 4, 5, 6,", False, 12),
    ("days", "Monday, Tuesday, Wednesday, Thursday,", False, 12),
    ("code", "def fibonacci(n):\n    ", False, 12),
    ("question", "What is the tallest mountain in the world?", True, 12),
    ("unicode", "Café crème, naïve façade — 日本語, emoji 🎉, Ünïcödé!", False, 0),
    ("spaces", "  multiple   spaces\n\n\ttabs 12345 and 3.14159 numbers\n", False, 0),
    ("special", "<|im_start|>user\nhi<|im_end|> <start_of_turn>x<end_of_turn>", False, 0),
]
MODELS = ("smollm2", "gemma3-270m")
#: One ``tokenizer.ggml.pre`` name of each pre-tokenizer type llama.cpp has a regex for.
PRE_NAMES = (
    "default",
    "llama-bpe",
    "dbrx",
    "qwen2",
    "gpt-2",
    "smollm",
    "falcon",
    "deepseek-llm",
    "deepseek-coder",
    "deepseek-v3",
    "bloom",
    "viking",
    "tekken",
    "gpt-4o",
    "chameleon",
    "seed-coder",
    "bailingmoe",
    "chatglm-bpe",
)


def _chat_text(llama_cpp: Any, llm: Any, model_path: Path, text: str) -> str:
    """One user message rendered as llama-cpp-python renders it: the model's own jinja
    template (its Jinja2ChatFormatter), or llama.cpp's built-in ``gemma`` template for a Gemma
    file that carries none."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from qhybrid.runtime.llm import read_metadata

    meta = read_metadata(model_path)
    tmpl = meta.get("tokenizer.chat_template")
    if tmpl:
        tokens = meta["tokenizer.ggml.tokens"]
        formatter = Jinja2ChatFormatter(
            template=str(tmpl),
            eos_token=tokens[int(meta["tokenizer.ggml.eos_token_id"])],
            bos_token=tokens[int(meta["tokenizer.ggml.bos_token_id"])],
        )
        return str(formatter(messages=[{"role": "user", "content": text}]).prompt)
    msgs = (llama_cpp.llama_chat_message * 1)()
    msgs[0].role = b"user"
    msgs[0].content = text.encode()
    buf = ctypes.create_string_buffer(16384)
    n = llama_cpp.llama_chat_apply_template(b"gemma", msgs, 1, True, buf, len(buf))
    if n < 0:
        raise SystemExit(f"llama_chat_apply_template failed for {model_path.name}")
    return buf.raw[:n].decode("utf-8")


def _qhybrid_logits(model_path: Path, ids: list[int]) -> np.ndarray:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    from qhybrid.runtime.llm import NumpyRunner, SeqInput, load_model
    from qhybrid.runtime.wgpu_thread import _reference as ref

    # Weight formats the runtime may not read yet: gguf's own dequantization (the reference
    # the runtime's formats are tested against), for this float32 evaluation only.
    for q in ("q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q5_k", "bf16"):
        ref.BLOCK.setdefault(q, GGML_QUANT_SIZES[GGMLQuantizationType[q.upper()]])

    runner = NumpyRunner(load_model(model_path), 1, max(64, len(ids) + 1))
    return runner.logits([SeqInput(0, np.array(ids, dtype=np.int32), 0)])[0]


def reference(name: str, threads: int) -> dict[str, Any]:
    import llama_cpp

    from qhybrid.runtime.llm._fetch import fetch_model

    path = fetch_model(name)
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=512,
        n_threads=threads,
        n_batch=512,
        logits_all=True,
        verbose=False,
    )
    cases = []
    for case, text, chat, steps in PROMPTS:
        prompt = _chat_text(llama_cpp, llm, path, text) if chat else text
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        # A template that writes BOS itself: llama.cpp's chat path does not add a second one.
        if chat and len(ids) > 1 and ids[0] == ids[1] == llm.token_bos():
            ids = ids[1:]
        entry: dict[str, Any] = {"name": case, "text": text, "chat": chat, "prompt": prompt}
        entry["prompt_ids"] = [int(i) for i in ids]
        if steps:
            llm.reset()
            llm.eval(ids)
            first = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            ours = _qhybrid_logits(path, ids)
            noise = 4.0 * float(np.sqrt(2.0) * np.std(first - ours))
            greedy: list[int] = []
            margins: list[float] = []
            checked = None
            for step in range(steps):
                logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
                top2 = np.sort(logits)[-2:]
                margin = float(top2[1] - top2[0])
                token = int(np.argmax(logits))
                if checked is None and margin <= noise:
                    checked = step
                greedy.append(token)
                margins.append(round(margin, 4))
                if token == llm.token_eos():
                    break
                llm.eval([token])
            entry.update(
                greedy=greedy,
                margins=margins,
                noise=round(noise, 4),
                checked=len(greedy) if checked is None else checked,
                greedy_text=llm.detokenize(greedy).decode("utf-8", errors="replace"),
            )
        cases.append(entry)
        sys.stderr.write(f"{name} {case}: {len(ids)} ids, checked {entry.get('checked')}\n")
    stamp = path.with_name(path.name + ".sha256").read_text().split()[0]
    return {"file": path.name, "sha256": stamp, "cases": cases}


#: Random f32 models of each architecture llama.cpp loads from our writer (phi3's vocabulary it
#: does not: "unordered_map::at"), and the tokens fed to both engines.
ARCH_SPECS: dict[str, dict[str, Any]] = {
    "llama": {},
    "qwen2": {},
    "qwen3": {},
    "gemma2": {"sliding_window": 3, "attn_softcap": 1.5, "final_softcap": 4.0, "tied": True},
    "gemma3": {"sliding_window": 3, "n_layer": 7, "tied": True},
}
ARCH_COMMON: dict[str, Any] = {"qtype": "f32", "n_embd": 128, "n_ff": 256, "one_merge": True}
ARCH_TOKENS = [256, 5, 77, 190, 3, 42, 9, 250, 101]


def architectures() -> dict[str, Any]:
    """llama.cpp's logits on random models of each architecture: every position's argmax and
    the last position's logits (f32 weights: llama.cpp's only rounding is its f16 KV cache)."""
    import tempfile

    import llama_cpp

    from qhybrid.runtime.llm._random_model import RandomModelSpec, write_random_model

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch, fields in ARCH_SPECS.items():
            spec = RandomModelSpec(arch=arch, **ARCH_COMMON, **fields)
            path = write_random_model(Path(tmp) / f"{arch}.gguf", spec)
            llm = llama_cpp.Llama(
                model_path=str(path), n_ctx=64, n_threads=1, logits_all=True, verbose=False
            )
            llm.eval(ARCH_TOKENS)
            logits = np.array(llm.scores[: len(ARCH_TOKENS)], dtype=np.float32)
            out[arch] = {
                "spec": {**ARCH_COMMON, **fields},
                "tokens": ARCH_TOKENS,
                "argmax": [int(i) for i in logits.argmax(axis=1)],
                "last_logits": [round(float(v), 5) for v in logits[-1]],
            }
            del llm
    return out


def pre_tokenizers() -> dict[str, Any]:
    """llama.cpp's ids for :data:`PRE_TOKENIZER_TEXTS` under each pre-tokenizer, on the
    tokenizer-only GGUF that ``write_vocab_model`` writes (merges learnt from those texts)."""
    import tempfile

    import llama_cpp

    from qhybrid.runtime.llm._random_model import PRE_TOKENIZER_TEXTS, write_vocab_model

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for pre in PRE_NAMES:
            path = write_vocab_model(Path(tmp) / f"{pre}.gguf", pre)
            llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
            out[pre] = [
                [int(i) for i in llm.tokenize(t.encode("utf-8"), add_bos=True, special=True)]
                for t in PRE_TOKENIZER_TEXTS
            ]
            del llm
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", action="append", choices=MODELS, help="default: all")
    parser.add_argument(
        "--no-models", action="store_true", help="only the pre-tokenizers and architectures"
    )
    args = parser.parse_args()
    import llama_cpp

    data: dict[str, Any] = {
        "generator": "scripts/llm_references.py",
        "llama_cpp_python": llama_cpp.__version__,
        "models": {},
    }
    if args.out.is_file():
        data["models"] = json.loads(args.out.read_text())["models"]
    data["pre_tokenizers"] = pre_tokenizers()
    data["architectures"] = architectures()
    for name in [] if args.no_models else args.model or MODELS:
        data["models"][name] = reference(name, args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    sys.stderr.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
