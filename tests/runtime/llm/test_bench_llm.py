"""``qhybrid bench llm --json``: the documented fields, on a small random model (CPU path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qhybrid.cli import main
from qhybrid.runtime.llm._random_model import RandomModelSpec, write_random_model


def test_bench_llm_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write_random_model(tmp_path / "r.gguf", RandomModelSpec(n_layer=1))
    argv = ["bench", "llm", str(model), "--prompt-tokens", "16", "--decode-tokens", "4"]
    argv += ["--streams", "2", "--repeat", "1", "--path", "cpu", "--no-llama-cpp", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    (run,) = data["runs"]
    assert run["engine"] == "qhybrid" and run["placement"] == "cpu"
    assert run["prefill_tok_s"] > 0 and run["decode_tok_s"] > 0
    assert run["prefill_tok_per_cpu_s"] > 0 and run["decode_tok_per_cpu_s"] > 0
    # Measured in a process of its own: the peak is that whole process's, over its life.
    assert run["peak_rss_mb"] >= run["rss_before_mb"] > 0
    goal = run["memory_goal"]
    assert goal["file_mb"] > 0 and goal["kv_cache_mb"] > 0
    assert goal["limit_mb"] == pytest.approx(1.5 * (goal["file_mb"] + goal["kv_cache_mb"]), abs=0.2)
    assert goal["met"] == (run["peak_rss_mb"] <= goal["limit_mb"])
    batching = data["batching"]["cpu"]
    assert batching["streams"] == 2 and batching["tok_s_n"] > 0
    assert data["model"]["arch"] == "llama"
    assert "vs_llama_cpp" in data


def test_bench_llm_missing_model_is_bad_input(tmp_path: Path) -> None:
    assert main(["bench", "llm", str(tmp_path / "none.gguf")]) == 2


def test_llama_cpp_is_measured_in_a_process_without_qhybrid(tmp_path: Path) -> None:
    # Its peak RSS must be llama.cpp's own: the peer script imports neither qhybrid nor numba.
    import subprocess
    import sys

    from qhybrid.bench import _llm_peer

    args = json.dumps(
        {"model": str(tmp_path / "none.gguf"), "prompt_tokens": 8, "decode_tokens": 2, "repeat": 1}
    )
    probe = (
        "import json, runpy, sys\n"
        f"sys.argv = [{_llm_peer.__file__!r}, {args!r}]\n"
        f"runpy.run_path({_llm_peer.__file__!r}, run_name='__main__')\n"
        "print(json.dumps(['modules', sorted({m.split('.')[0] for m in sys.modules})]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    events = [json.loads(line) for line in out.stdout.splitlines()]
    modules = events[-1][1]
    assert "qhybrid" not in modules and "numba" not in modules
    kind, payload = events[-2]
    assert kind == "done" and payload["runs"] == []
    # Installed: the missing file is a note; not installed: that is.
    want = "could not load the model" if "llama_cpp" in modules else "not installed"
    assert want in payload["notes"][0]


def _run(engine: str, place: str, decode: float, prefill: float, cpu_s: float) -> dict[str, Any]:
    return {
        "engine": engine,
        "placement": place,
        "decode_tok_s": decode,
        "prefill_tok_s": prefill,
        "decode_tok_per_cpu_s": decode / cpu_s,
        "prefill_tok_per_cpu_s": prefill / cpu_s,
    }


def test_the_goals_against_llama_cpp_are_the_issues_per_path() -> None:
    from qhybrid.bench._llm import GOALS_VS_LLAMA_CPP, LlmBenchReport

    assert GOALS_VS_LLAMA_CPP["cpu"] == {"decode": 0.7, "prefill": 0.5}
    theirs = _run("llama.cpp", "cpu", 100.0, 500.0, 1.0)
    # The CPU path is judged per CPU second: 0.75x in wall time but two threads' CPU -> missed.
    two_threads = LlmBenchReport({}, {}, runs=[_run("qhybrid", "cpu", 75.0, 400.0, 2.0), theirs])
    vs = two_threads.to_json()["vs_llama_cpp"]
    assert vs["decode_ratio"]["cpu"] == 0.75 and vs["decode_ratio_per_cpu_s"]["cpu"] == 0.375
    assert vs["met"] == {"cpu": False} and vs["goal"]["cpu"]["prefill"] == 0.5
    ok = LlmBenchReport({}, {}, runs=[_run("qhybrid", "cpu", 75.0, 260.0, 1.0), theirs])
    assert ok.to_json()["vs_llama_cpp"]["met"] == {"cpu": True}
    slow_prefill = LlmBenchReport({}, {}, runs=[_run("qhybrid", "cpu", 75.0, 240.0, 1.0), theirs])
    assert slow_prefill.to_json()["vs_llama_cpp"]["met"] == {"cpu": False}
