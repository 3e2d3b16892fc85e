"""``qhybrid bench serve`` runs, reports what it promises and leaves no process behind (the
figures themselves live in docs/benchmarks.md)."""

from __future__ import annotations

import pytest

from qhybrid.bench._cli import main as bench_main
from qhybrid.bench._serve import ServeBenchConfig, run_serve_bench


def test_a_short_run_against_qhybrid_serve() -> None:
    config = ServeBenchConfig(
        clients=4, seconds=0.5, max_tokens=8, slots=4, llama_cpp=False, device="cpu"
    )
    report = run_serve_bench(config, lambda _text: None).to_json()
    q = report["qhybrid"]
    assert q["errors"] == 0 and q["error_samples"] == []
    assert q["requests"] >= 4 and q["tokens"] == 8 * q["requests"]
    assert q["tokens_per_s"] > 0 and 0 < q["ttft_p50_ms"] <= q["ttft_p99_ms"]
    assert "ratios" not in report and len(report["load_average"]) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--clients", "0"], "positive integer"), (["--seconds", "-1"], "--seconds must be positive")],
)
def test_bad_flags_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert bench_main(["serve", *args]) == 2
    assert message in capsys.readouterr().err
