"""The CPU path's speed and memory against llama.cpp, each in its own process, on one file.

    .venv/bin/python scripts/bench_cpu_path.py [MODEL.gguf ...] [--threads 1] [--repeat 3]

With no model: a random-weight Q8_0 model of SmolLM-135M's shape (made once under
~/.cache/qhybrid/bench/). For each engine: prefill tokens/s (a 128-token prompt in one step),
decode tokens/s (64 greedy tokens, one step each), the best of ``--repeat`` runs, in wall-clock
time and per CPU second of the process (less sensitive to a loaded machine), and the process's
peak resident memory (VmHWM) after loading and running. llama.cpp through
llama-cpp-python (the ``bench`` extra). Prints one JSON object per model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PROMPT, DECODE = 128, 64


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _prompt(n_vocab: int) -> list[int]:
    import numpy as np

    return [int(t) for t in np.random.default_rng(0).integers(3, min(n_vocab, 30000), PROMPT)]


def run_qhybrid(path: str, threads: int, repeat: int) -> dict[str, float]:
    import numpy as np
    from threadpoolctl import threadpool_limits

    from qhybrid.runtime.llm import NumpyRunner, SeqInput, load_model

    model = load_model(path)
    runner = NumpyRunner(model, 1, PROMPT + DECODE + 8, exact=False)  # as the engine runs it
    prompt = np.array(_prompt(model.config.n_vocab), dtype=np.int32)
    prefill = decode = prefill_cpu = decode_cpu = 0.0
    tokens: list[int] = []
    with threadpool_limits(threads):
        runner.step([SeqInput(0, prompt[:8], 0)])  # compile / warm
        for _ in range(repeat):
            started, cpu = time.perf_counter(), time.process_time()
            tok = int(runner.step([SeqInput(0, prompt, 0)])[0])
            prefill = max(prefill, PROMPT / (time.perf_counter() - started))
            prefill_cpu = max(prefill_cpu, PROMPT / (time.process_time() - cpu))
            run = [tok]
            started, cpu = time.perf_counter(), time.process_time()
            for i in range(DECODE):
                tok = int(runner.step([SeqInput(0, np.array([tok], np.int32), PROMPT + i)])[0])
                run.append(tok)
            decode = max(decode, DECODE / (time.perf_counter() - started))
            decode_cpu = max(decode_cpu, DECODE / (time.process_time() - cpu))
            if tokens and run != tokens:
                raise SystemExit("the CPU path gave different tokens for the same input")
            tokens = run
    return {
        "prefill_tok_s": prefill,
        "decode_tok_s": decode,
        "prefill_tok_per_cpu_s": prefill_cpu,
        "decode_tok_per_cpu_s": decode_cpu,
        "peak_rss_mb": _peak_rss_mb(),
    }


def run_llama_cpp(path: str, threads: int, repeat: int) -> dict[str, float]:
    from llama_cpp import Llama

    llm = Llama(
        model_path=path,
        n_ctx=PROMPT + DECODE + 8,
        n_threads=threads,
        n_threads_batch=threads,
        n_batch=512,
        verbose=False,
    )
    prompt = _prompt(llm.n_vocab())
    prefill = decode = prefill_cpu = decode_cpu = 0.0
    llm.eval(prompt[:8])
    for _ in range(repeat):
        llm.reset()
        started, cpu = time.perf_counter(), time.process_time()
        llm.eval(prompt)
        prefill = max(prefill, PROMPT / (time.perf_counter() - started))
        prefill_cpu = max(prefill_cpu, PROMPT / (time.process_time() - cpu))
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(DECODE):
            tok = llm.sample(temp=0.0)
            llm.eval([tok])
        decode = max(decode, DECODE / (time.perf_counter() - started))
        decode_cpu = max(decode_cpu, DECODE / (time.process_time() - cpu))
    return {
        "prefill_tok_s": prefill,
        "decode_tok_s": decode,
        "prefill_tok_per_cpu_s": prefill_cpu,
        "decode_tok_per_cpu_s": decode_cpu,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _random_model() -> Path:
    from qhybrid.runtime.llm._random_model import RandomModelSpec, write_random_model

    path = Path.home() / ".cache/qhybrid/bench/random-smollm-135m-q8_0.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        spec = RandomModelSpec(
            qtype="q8_0", n_layer=30, n_embd=576, n_head=9, n_head_kv=3, n_ff=1536,
            n_vocab=49152, n_ctx_train=2048, tied=True,
        )  # fmt: skip
        write_random_model(path, spec)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--engine", choices=["qhybrid", "llama.cpp"])
    args = ap.parse_args()
    if args.engine:  # the child: one engine, one model
        fn = run_qhybrid if args.engine == "qhybrid" else run_llama_cpp
        sys.stdout.write(json.dumps(fn(args.models[0], args.threads, args.repeat)) + "\n")
        return
    for model in args.models or [str(_random_model())]:
        row: dict[str, object] = {
            "model": Path(model).name,
            "file_mb": round(os.path.getsize(model) / 2**20, 1),
            "threads": args.threads,
            "load_avg": os.getloadavg()[0],
        }
        for engine in ("qhybrid", "llama.cpp"):
            out = subprocess.run(
                [sys.executable, __file__, model, "--engine", engine, "--threads",
                 str(args.threads), "--repeat", str(args.repeat)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if out.returncode:
                row[engine] = {"error": out.stderr.strip().splitlines()[-1:]}
                continue
            row[engine] = {k: round(v, 1) for k, v in json.loads(out.stdout).items()}
        ours, theirs = row.get("qhybrid"), row.get("llama.cpp")
        if isinstance(ours, dict) and isinstance(theirs, dict) and "error" not in ours | theirs:
            row["decode_vs_llama_cpp"] = round(ours["decode_tok_s"] / theirs["decode_tok_s"], 2)
            row["prefill_vs_llama_cpp"] = round(ours["prefill_tok_s"] / theirs["prefill_tok_s"], 2)
            for k in ("decode", "prefill"):
                row[f"{k}_per_cpu_s_vs_llama_cpp"] = round(
                    ours[f"{k}_tok_per_cpu_s"] / theirs[f"{k}_tok_per_cpu_s"], 2
                )
        row["load_avg_after"] = os.getloadavg()[0]
        sys.stdout.write(json.dumps(row) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
