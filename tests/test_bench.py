"""``qhybrid bench dispatch`` as a user runs it, with tiny sizes.

These tests check that the benchmark runs, reports what it promises and leaves nothing behind;
they never assert a speed (the figures live in docs/benchmarks.md, measured as ratios).
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from qhybrid.bench import DispatchConfig, weighted_percentile
from qhybrid.bench._cli import main as bench_main
from qhybrid.bench._dispatch import PING_KIND, AgentHosts, ping_module_path
from qhybrid.runtime.wasm_pool import RUNTIME_SENDER, AgentLoad

TINY = ("--workers", "2", "--agents", "4", "--steps", "80")

FIGURES: dict[str, type | tuple[type, ...]] = {
    "workers": int,
    "agents": int,
    "steps": int,
    "steps_per_s": float,
    "p50_us": float,
    "p99_us": float,
    "startup_s": float,
    "inprocess_steps_per_s": float,
    "vs_inprocess_per_worker": float,
    "runtime_us_per_msg": float,
    "orchestrator_us_per_msg": float,
    "worker_ipc_us_per_msg": float,
    "ray_calls_per_s": (float, type(None)),
    "vs_ray": (float, type(None)),
    "machine": dict,
}


def run_bench(
    cmd: list[str], env: dict[str, str], *args: str, timeout: float = 150
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def one_json_object(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one JSON line on stdout, got {stdout!r}"
    data = json.loads(lines[0])
    assert isinstance(data, dict)
    return data


def check_figures(data: dict[str, Any], *, workers: int, agents: int, steps: int) -> None:
    for key, types in FIGURES.items():
        assert key in data, f"missing {key!r} in {sorted(data)}"
        assert isinstance(data[key], types), f"{key} = {data[key]!r}"
    assert (data["workers"], data["agents"], data["steps"]) == (workers, agents, steps)
    assert data["steps_per_s"] > 0
    assert data["inprocess_steps_per_s"] > 0
    assert data["p50_us"] > 0
    assert data["p99_us"] >= data["p50_us"]
    assert data["startup_s"] > 0
    ratio = data["steps_per_s"] / (data["inprocess_steps_per_s"] * workers)
    assert data["vs_inprocess_per_worker"] == pytest.approx(ratio, rel=0.01, abs=0.001)
    machine = data["machine"]
    assert isinstance(machine["cpu_count"], int) and machine["cpu_count"] >= 1
    assert isinstance(machine["cpu_model"], str) and machine["cpu_model"]
    assert machine["python"].count(".") == 2
    assert isinstance(machine["wasmtime"], str)


def test_dispatch_json_through_the_cli(qhybrid_cmd: list[str], cli_env: dict[str, str]) -> None:
    proc = run_bench(qhybrid_cmd, cli_env, "bench", "dispatch", "--json", "--no-ray", *TINY)
    assert proc.returncode == 0, proc.stderr
    data = one_json_object(proc.stdout)
    check_figures(data, workers=2, agents=4, steps=80)
    assert data["ray_calls_per_s"] is None and data["vs_ray"] is None
    # The human-readable table goes to stderr.
    assert "steps/s" in proc.stderr and "vs in-process per worker" in proc.stderr


def test_steps_round_down_to_a_multiple_of_agents_and_repeat(
    qhybrid_cmd: list[str], cli_env: dict[str, str]
) -> None:
    proc = run_bench(
        qhybrid_cmd,
        cli_env,
        "bench",
        "dispatch",
        "--json",
        "--no-ray",
        "--workers",
        "1",
        "--agents",
        "3",
        "--steps",
        "20",
        "--repeat",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    data = one_json_object(proc.stdout)
    check_figures(data, workers=1, agents=3, steps=18)
    assert data["repeat"] == 2
    assert data["ticks"] == 6


BLOCKED_QT = """
import sys
for name in ("PySide6", "shiboken6", "pyqtgraph", "qasync"):
    sys.modules[name] = None  # any import of these now raises ImportError
from qhybrid.bench._cli import main
code = main(sys.argv[1:])
qt = ("PySide6", "shiboken6", "pyqtgraph", "qasync")
assert not [m for m, mod in sys.modules.items() if m.startswith(qt) and mod is not None]
raise SystemExit(code)
"""


def test_bench_never_imports_qt(cli_env: dict[str, str]) -> None:
    proc = run_bench(
        [sys.executable, "-c", BLOCKED_QT], cli_env, "dispatch", "--json", "--no-ray", *TINY
    )
    assert proc.returncode == 0, proc.stderr
    check_figures(one_json_object(proc.stdout), workers=2, agents=4, steps=80)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["dispatch", "--workers", "0"], "--workers: expected a positive integer, got 0"),
        (["dispatch", "--agents", "many"], "--agents: expected a positive integer, got 'many'"),
        (["dispatch", "--agents", "8", "--steps", "4"], "--steps (4) must be at least --agents"),
        (["dispatch", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["warp-drive"], "invalid choice: 'warp-drive'"),
        ([], "the following arguments are required: BENCHMARK"),
    ],
)
def test_bad_flags_exit_2_with_a_clear_message(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench_main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "qhybrid bench" in err and expected in err
    assert "Traceback" not in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["dispatch", "--help"]) == 0
    assert "--no-ray" in capsys.readouterr().out


def test_config_refuses_what_cannot_run() -> None:
    with pytest.raises(ValueError, match="workers must be at least 1"):
        DispatchConfig(workers=0)
    with pytest.raises(ValueError, match="every agent takes at least one step"):
        DispatchConfig(agents=10, steps=9)
    assert DispatchConfig(agents=4, steps=10).total_steps == 8


def test_ping_agent_counts_down_by_messaging_itself() -> None:
    assert ping_module_path().is_file()
    load = AgentLoad(
        agent_id=3,
        name="ping-3",
        module_key="ping",
        peers=(3,),
        agent_count=5,
        rng_seed=0,
        config_json=b"{}",
    )
    hosts = AgentHosts([load])
    try:
        host = hosts.hosts[3]
        outcome = host.deliver(0, RUNTIME_SENDER, 7, struct.pack("<q", 2))
        assert outcome.ok, outcome.error
        assert outcome.sent == ((3, 7, struct.pack("<q", 1)),)
        outcome = host.deliver(1, 3, PING_KIND, struct.pack("<q", 0))
        assert outcome.ok and outcome.sent == ()
        outcome = host.deliver(2, 3, PING_KIND, b"\x01\x02")
        assert not outcome.ok and "error code 1" in (outcome.error or "")
    finally:
        hosts.close()


def test_weighted_percentile_counts_each_value_by_its_weight() -> None:
    samples = [(0.003, 1), (0.001, 98), (0.002, 1)]
    assert weighted_percentile(samples, 0.5) == 0.001
    assert weighted_percentile(samples, 0.98) == 0.001
    assert weighted_percentile(samples, 0.99) == 0.002
    assert weighted_percentile(samples, 1.0) == 0.003
    assert weighted_percentile([], 0.5) == 0.0
    assert weighted_percentile([(5.0, 0)], 0.5) == 0.0


def _ray_processes() -> set[int]:
    found = set()
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            text = " ".join([proc.info["name"] or "", *(proc.info["cmdline"] or [])])
        except psutil.Error:
            continue
        if any(mark in text for mark in ("raylet", "gcs_server", "ray::", "ray/_private")):
            found.add(proc.pid)
    return found


@pytest.mark.slow
def test_dispatch_against_ray_leaves_no_ray_process(
    qhybrid_cmd: list[str], cli_env: dict[str, str]
) -> None:
    pytest.importorskip("ray", reason="the Ray peer needs the optional extra: qhybrid[bench]")
    before = _ray_processes()
    temp_before = set(Path(tempfile.gettempdir()).glob("qh-ray-*"))
    proc = run_bench(qhybrid_cmd, cli_env, "bench", "dispatch", "--json", *TINY, timeout=170)
    assert proc.returncode == 0, proc.stderr
    data = one_json_object(proc.stdout)
    check_figures(data, workers=2, agents=4, steps=80)
    assert data["ray_calls_per_s"] > 0
    assert data["vs_ray"] == pytest.approx(
        data["steps_per_s"] / data["ray_calls_per_s"], rel=0.01, abs=0.001
    )
    assert isinstance(data["ray_version"], str)
    deadline = time.monotonic() + 10
    while (left := _ray_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"Ray processes left running: {sorted(left)}"
    assert set(Path(tempfile.gettempdir()).glob("qh-ray-*")) == temp_before


def test_store_bench_json_through_the_cli(qhybrid_cmd: list[str], cli_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [
            *qhybrid_cmd,
            "bench",
            "store",
            "--agents",
            "8",
            "--steps",
            "800",
            "--repeat",
            "1",
            "--checkpoint-every",
            "20",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["records"] == 801 and data["checkpoints"] >= 3 and data["store_bytes"] > 0
    assert data["off_msgs_per_s"] > 0 and data["on_msgs_per_s"] > 0
    assert abs(data["overhead"] - (1 - data["on_msgs_per_s"] / data["off_msgs_per_s"])) < 1e-3
