"""``qhybrid bench ui`` on a tiny configuration: it runs the real window offscreen over a real
runtime and reports the figures the issue asks for (the figures themselves are not judged
here: performance claims live in the benchmark, not in timed tests)."""

from __future__ import annotations

import json

import pytest

from qhybrid.bench._cli import main

TINY = [
    "ui",
    "--agents",
    "8",
    "--seconds",
    "0.3",
    "--fps-seconds",
    "0.3",
    "--warmup",
    "0.1",
    "--repeat",
    "1",
    "--json",
]


def test_bench_ui_prints_one_json_object_with_the_figures(
    qapp: object, capfd: pytest.CaptureFixture[str]
) -> None:
    assert main(TINY) == 0
    out = capfd.readouterr().out.strip()
    data = json.loads(out)  # one object, nothing else on stdout
    for key in (
        "fps",
        "max_stall_ms",
        "overhead_pct",
        "headless_msgs_per_s",
        "watched_msgs_per_s",
        "max_stall_ms_headless",
        "floor_stall_ms",
        "fps_capacity",
        "gui_cpu_pct_watched",
        "gui_cpu_pct_headless",
        "frame_ms_p50",
        "slice_cpu_ms_max",
        "goals",
        "met",
        "runs",
        "machine",
    ):
        assert key in data, key
    assert (
        set(data["goals"])
        == set(data["met"])
        == {
            "fps",
            "max_stall_ms",
            "stall_over_floor_ms",
            "overhead_pct",
        }
    )
    # The stall is judged against the no-window floor; fps is the frames the window made.
    over = data["max_stall_ms"] - data["floor_stall_ms"]
    assert abs(data["stall_over_floor_ms"] - over) <= 0.11
    assert data["fps"] > 0 and data["fps_capacity"] > 0 and data["view"] == "charts"
    assert all(run["fps"] > 0 for run in data["runs"] if run["watched"])
    assert data["agents"] == 8 and data["platform"] == "offscreen"
    assert data["fps"] > 0 and data["frames"] >= 3
    assert data["headless_msgs_per_s"] > 0 and data["watched_msgs_per_s"] > 0
    assert [run["watched"] for run in data["runs"]] == [False, True]
    assert all(run["messages"] > 0 for run in data["runs"])


def test_bench_ui_watches_the_agent_graph_when_asked(
    qapp: object, capfd: pytest.CaptureFixture[str]
) -> None:
    assert main([*TINY, "--view", "graph"]) == 0
    data = json.loads(capfd.readouterr().out.strip())
    assert data["view"] == "graph" and data["fps"] > 0


def test_bench_ui_rejects_bad_flags(capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["ui", "--seconds", "0"]) == 2
    assert "positive" in capfd.readouterr().err
