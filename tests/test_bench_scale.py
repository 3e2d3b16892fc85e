"""``qhybrid bench scale`` as a user runs it, at its smallest size (1,000 agents).

It checks the report's shape and that the figures are the run's own (the agent counts, the
steps the scenario must deliver, positive times and memory), never a speed.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from qhybrid.bench._cli import main as bench_main
from qhybrid.bench._scale import MODULES, scale_scenario


def test_scale_json_through_the_cli(qhybrid_cmd: list[str], cli_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [*qhybrid_cmd, "bench", "scale", "--agents", "1000", "--json"],
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=150,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout
    data = json.loads(lines[0])
    assert data["benchmark"] == "scale" and data["workers"] == 2 and data["hops"] == 3
    runs = data["runs"]
    assert [(r["agents"], r["module"]) for r in runs] == [(1000, "wat"), (1000, "c")]
    for run in runs:
        assert {"agents", "module", "startup_s", "rss_per_agent_kib", "steps_per_s"} <= set(run)
        assert run["startup_s"] > 0 and run["steps_per_s"] > 0
        # The orchestrator and two workers hold at least their interpreters: tens of MiB.
        assert run["rss_per_agent_kib"] * 1000 > 20 * 1024
        assert run["steps"] == 1000 * (3 + 2)  # 4 hops per token, then the sink's report
    assert "KiB/agent" in proc.stderr
    assert isinstance(data["machine"]["load_avg_1m"], float | int)


def test_the_c_and_wat_relays_are_the_same_agent() -> None:
    """Both modules run the same scenario: same agents, same messages."""
    wat, c = (scale_scenario(10, module, 2) for module in ("wat", "c"))
    assert [a.instances for a in wat.agents] == [a.instances for a in c.agents]
    assert [a.module.name for a in c.agents] == [MODULES["c"], "sink.wat"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--agents", "0"], "--agents"),
        (["--module", "rust"], "--module"),
        (["--workers", "x"], "--workers"),
    ],
)
def test_bad_flags_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench_main(["scale", *args]) == 2
    assert message in capsys.readouterr().err
