"""llama.cpp's side of ``qhybrid bench llm``, run as a script in a process of its own.

    python qhybrid/bench/_llm_peer.py '{"model": ..., "prompt_tokens": ..., ...}'

It imports the standard library and ``llama_cpp`` only (no qhybrid, numpy or numba), so that
the process's peak resident set is llama.cpp's own: the interpreter, llama-cpp-python and the
model. It writes one JSON line per event on stdout: ``["progress", text]``, then ``["done",
{"runs": [...], "notes": [...]}]`` or ``["error", text]``. :mod:`._llm` also imports the
measuring helpers from here (:class:`Memory`, :func:`prompt_ids`), so both engines are measured
alike.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Progress = Callable[[str], None]


def status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class Memory:
    """The resident set of this process before an engine opens its model, and the peak over
    the whole life of the process (an engine runs in a process of its own)."""

    def __enter__(self) -> Memory:
        self.before = status_kb("VmRSS")
        self.peak: int | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = status_kb("VmHWM")

    def to_json(self) -> dict[str, float | None]:
        def mb(kb: int | None) -> float | None:
            return None if kb is None else round(kb / 1024, 1)

        grown = None if self.peak is None or self.before is None else self.peak - self.before
        return {
            "rss_before_mb": mb(self.before),
            "peak_rss_mb": mb(self.peak),
            "grown_mb": mb(grown),
        }


def prompt_ids(tokenizer: Any, n_vocab: int, count: int) -> list[int]:
    """``count`` ids of ordinary text (the same for every engine), BOS first if the model adds
    one."""
    text = (
        "The little robot walked through the quiet garden and looked at the red flowers. "
        "It wanted to find a friend, so it asked the old cat for help. "
    )
    ids = tokenizer.encode(text * (count // 8 + 4))[:count]
    if len(ids) < count:
        raise ValueError(f"the tokenizer gave only {len(ids)} tokens for the prompt")
    return [min(int(t), n_vocab - 1) for t in ids]


def measure(config: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """llama.cpp's prefill and decode rates and peak memory on ``config["model"]``."""
    runs: list[dict[str, Any]] = []
    notes: list[str] = []
    try:
        import llama_cpp  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        notes.append(
            "llama-cpp-python is not installed (pip install 'qhybrid[bench]'): no llama.cpp peer"
        )
        return {"runs": runs, "notes": notes}
    n_ctx = config["prompt_tokens"] + config["decode_tokens"] + 8
    offload = [("cpu", 0)]
    if bool(getattr(llama_cpp, "llama_supports_gpu_offload", lambda: False)()):
        offload.append(("gpu", -1))
    for placement, layers in offload:
        progress(f"llama.cpp {placement}: loading")
        memory = Memory().__enter__()
        try:
            model = llama_cpp.Llama(
                model_path=str(config["model"]),
                n_ctx=n_ctx,
                n_gpu_layers=layers,
                # The threads qhybrid's CPU path uses for large products: half the cores
                # (more threads than idle cores make both engines spin, not compute).
                n_threads=max(1, (os.cpu_count() or 1) // 2),
                # Its prompt batches default to every core, which spin against each other on a
                # loaded machine (prefill 19 tok/s instead of 120 here): the same count.
                n_threads_batch=max(1, (os.cpu_count() or 1) // 2),
                seed=0,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            # llama.cpp says why on its own stderr; its exception only says that it failed.
            notes.append(f"llama.cpp could not load the model ({placement}): {exc}")
            continue
        try:
            prompt = prompt_ids(_LlamaCppTokenizer(model), model.n_vocab(), config["prompt_tokens"])
            prefill = decode = prefill_cpu = decode_cpu = 0.0
            for _ in range(config["repeat"]):
                model.reset()
                started, cpu = time.perf_counter(), time.process_time()
                model.eval(prompt)
                prefill = max(prefill, len(prompt) / (time.perf_counter() - started))
                prefill_cpu = max(prefill_cpu, len(prompt) / (time.process_time() - cpu))
                model.reset()
                model.eval(prompt[:8])
                started, cpu = time.perf_counter(), time.process_time()
                for _ in range(config["decode_tokens"] - 1):
                    token = model.sample(temp=0.0)
                    model.eval([token])
                steps = config["decode_tokens"] - 1
                decode = max(decode, steps / (time.perf_counter() - started))
                decode_cpu = max(decode_cpu, steps / (time.process_time() - cpu))
            memory.__exit__()
        finally:
            model.close()
        progress(f"llama.cpp {placement}: prefill {prefill:,.1f} tok/s, decode {decode:,.1f} tok/s")
        runs.append(
            {
                "engine": "llama.cpp",
                "placement": placement,
                "device": "cpu" if placement == "cpu" else "llama.cpp GPU backend",
                "version": getattr(llama_cpp, "__version__", "?"),
                "prompt_tokens": len(prompt),
                "decode_tokens": config["decode_tokens"],
                "prefill_tok_s": round(prefill, 3),
                "decode_tok_s": round(decode, 3),
                "prefill_tok_per_cpu_s": round(prefill_cpu, 3),
                "decode_tok_per_cpu_s": round(decode_cpu, 3),
                "threads": max(1, (os.cpu_count() or 1) // 2),
                **memory.to_json(),
            }
        )
    return {"runs": runs, "notes": notes}


class _LlamaCppTokenizer:
    """llama.cpp's own tokenizer, so its prompt is tokenized the way it expects."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def encode(self, text: str) -> list[int]:
        return list(self._model.tokenize(text.encode("utf-8"), add_bos=True))


def main() -> None:
    def emit(kind: str, payload: Any) -> None:
        sys.stdout.write(json.dumps([kind, payload]) + "\n")
        sys.stdout.flush()

    try:
        emit("done", measure(json.loads(sys.argv[1]), lambda text: emit("progress", text)))
    except (ValueError, RuntimeError, OSError) as exc:
        emit("error", f"llama.cpp: {exc}")


if __name__ == "__main__":
    main()
