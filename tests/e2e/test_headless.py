"""The headless CLI end to end, as a user runs it: real subprocesses of `qhybrid --headless`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, shm_segments

AGENTS = ROOT / "resources" / "agents"
WORKER_MODULE = "qhybrid.runtime.wasm_pool"


def run_cli(
    cmd: list[str], env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def run_json(cmd: list[str], env: dict[str, str], *args: str) -> dict[str, object]:
    proc = run_cli(cmd, env, "--headless", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one JSON line on stdout, got {proc.stdout!r}"
    data = json.loads(lines[0])
    assert isinstance(data, dict)
    return data


def write_scenario(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text.replace("@AGENTS@", AGENTS.as_posix()), encoding="utf-8")
    return path


@pytest.mark.slow
def test_demo_runs_end_to_end(qhybrid_cmd: list[str], cli_env: dict[str, str]) -> None:
    data = run_json(qhybrid_cmd, cli_env)
    for key in ("trace_hash", "tasks_completed", "agents", "wall_s", "device"):
        assert key in data
    assert data["status"] == "completed"
    assert isinstance(data["trace_hash"], str) and len(data["trace_hash"]) == 64
    assert data["gpu_tasks"] == 2 and data["cpu_tasks"] == 1
    assert isinstance(data["tasks_completed"], int) and data["tasks_completed"] > 1000
    agents = data["agents"]
    assert isinstance(agents, list) and len(agents) == 19
    assert all(a["state"] == "loaded" and a["handled"] > 0 for a in agents)
    # The storytellers asked the shipped model and got their answers.
    llm = data["llm"]
    assert llm["requests"] == 2 and llm["tokens"] > 10
    assert llm["arch"] == "llama"
    device = data["device"]
    assert isinstance(device, dict)
    assert device["kind"] in ("hardware", "software", "cpu")
    assert isinstance(device["name"], str) and device["name"]


@pytest.mark.slow
def test_trace_hash_is_the_same_across_runs_and_worker_counts(
    qhybrid_cmd: list[str], cli_env: dict[str, str]
) -> None:
    hashes = {
        f"workers={w} run={r}": run_json(qhybrid_cmd, cli_env, "--workers", str(w))["trace_hash"]
        for w, r in ((1, 0), (2, 0), (2, 1), (4, 0))
    }
    assert len(set(hashes.values())) == 1, hashes


@pytest.mark.slow
def test_a_different_seed_gives_a_different_trace(
    qhybrid_cmd: list[str], cli_env: dict[str, str]
) -> None:
    a = run_json(qhybrid_cmd, cli_env, "--seed", "1")
    b = run_json(qhybrid_cmd, cli_env, "--seed", "2")
    assert a["seed"] == 1 and b["seed"] == 2
    assert a["trace_hash"] != b["trace_hash"]


def test_normal_run_leaves_no_shared_memory(
    qhybrid_cmd: list[str], cli_env: dict[str, str], tmp_path: Path
) -> None:
    before = shm_segments()
    path = write_scenario(
        tmp_path,
        """
        seed = 3
        [[agents]]
        name = "sink"
        module = "@AGENTS@/sink.wat"
        [[tensors]]
        name = "a"
        shape = [64, 32]
        init = "random"
        [[tensors]]
        name = "b"
        shape = [32, 16]
        init = "ones"
        [[tasks]]
        name = "mm"
        kind = "cpu"
        op = "matmul"
        inputs = ["a", "b"]
        output = "c"
        notify = "sink"
        """,
    )
    data = run_json(qhybrid_cmd, cli_env, str(path), "--device", "cpu")
    assert data["cpu_tasks"] == 1
    assert shm_segments() - before == set()


LONG_SCENARIO = """
name = "long"
seed = 11
[stop]
max_ticks = 1000000
timeout_s = 120
[[agents]]
name = "relay"
module = "@AGENTS@/relay.wat"
count = 8
[[agents]]
name = "sink"
module = "@AGENTS@/sink.wat"
[[messages]]
to = "relay"
kind = 1
payload_i64 = [1000000, 0]
[[tensors]]
name = "a"
shape = [128, 128]
init = "random"
[[tasks]]
name = "late"
kind = "cpu"
op = "relu"
inputs = ["a"]
output = "b"
at = 999999
"""


def _wait_for_workers(
    proc: subprocess.Popen[str], count: int, timeout: float = 60
) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        workers = []
        for p in psutil.Process(proc.pid).children(recursive=True):
            try:
                if WORKER_MODULE in " ".join(p.cmdline()):
                    workers.append(p)
            except psutil.NoSuchProcess:  # a short-lived child (e.g. a compiler probe)
                continue
        if len(workers) == count and any(s.startswith(f"qh_{proc.pid}_") for s in shm_segments()):
            return workers
        time.sleep(0.1)
    raise AssertionError("the workers did not start")


RECOVER_SCENARIO = """
name = "recover"
seed = 11
[stop]
max_ticks = 1000000
timeout_s = 120
[[agents]]
name = "relay"
module = "@AGENTS@/relay.wat"
count = 8
[[agents]]
name = "sink"
module = "@AGENTS@/sink.wat"
[[messages]]
to = "relay"
kind = 1
payload_i64 = [3000, 0]
[[tensors]]
name = "a"
shape = [64, 64]
init = "random"
[[tasks]]
name = "late"
kind = "cpu"
op = "relu"
inputs = ["a"]
output = "b"
at = 1400
notify = "sink"
"""


def _kill_a_worker_mid_run(
    cmd: list[str], env: dict[str, str], path: Path, *extra: str
) -> tuple[subprocess.Popen[str], str, str, list[psutil.Process]]:
    trace = path.with_suffix(".trace.jsonl")
    proc = subprocess.Popen(
        [*cmd, "--headless", "--json", "--workers", "2", "--trace", str(trace), *extra, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        workers = _wait_for_workers(proc, 2)
        # Mid-run by the run's own progress, not by the clock: once the trace holds a few
        # hundred records (a few dozen of its 3000 ticks), whatever the machine's speed.
        deadline = time.monotonic() + 60
        while not (trace.exists() and trace.stat().st_size > 16_000):
            assert proc.poll() is None, "the run ended before the worker could be killed"
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.005)
        workers[1].send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc, out, err, workers


@pytest.mark.slow
def test_worker_killed_mid_run_is_replaced_and_the_trace_is_unchanged(
    qhybrid_cmd: list[str], cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = write_scenario(tmp_path, RECOVER_SCENARIO)
    undisturbed = run_json(qhybrid_cmd, cli_env, "--workers", "2", str(path))
    proc, out, err, workers = _kill_a_worker_mid_run(qhybrid_cmd, cli_env, path)
    assert proc.returncode == 0, err
    assert "died: killed by SIGKILL" in err and "replac" in err
    result = json.loads(out)
    assert result["worker_restarts"] == 1
    # No message lost, none applied twice: the same trace, message for message.
    assert result["trace_hash"] == undisturbed["trace_hash"]
    assert result["messages_delivered"] == undisturbed["messages_delivered"]
    assert [a["handled"] for a in result["agents"]] == [a["handled"] for a in undisturbed["agents"]]
    assert not [s for s in shm_segments() if s.startswith(f"qh_{proc.pid}_")]
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers)


@pytest.mark.slow
def test_worker_deaths_beyond_the_limit_fail_cleanly(
    qhybrid_cmd: list[str], cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = write_scenario(tmp_path, RECOVER_SCENARIO)
    proc, out, err, _ = _kill_a_worker_mid_run(
        qhybrid_cmd, cli_env, path, "--max-worker-restarts", "0"
    )
    assert proc.returncode == 1, err
    assert "died: killed by SIGKILL" in err and "the limit" in err
    assert "Traceback" not in err
    result = json.loads(out)
    assert result["status"] == "failed"
    assert result["messages_delivered"] > 0
    assert not [s for s in shm_segments() if s.startswith(f"qh_{proc.pid}_")]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="process groups and SIGINT are POSIX")
def test_ctrl_c_stops_cleanly(
    qhybrid_cmd: list[str], cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = write_scenario(tmp_path, LONG_SCENARIO)
    proc = subprocess.Popen(
        [*qhybrid_cmd, "--headless", "--workers", "2", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env,
        start_new_session=True,  # its own process group, like a shell job
    )
    try:
        workers = _wait_for_workers(proc, 2)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert "Traceback" not in err
    assert not [s for s in shm_segments() if s.startswith(f"qh_{proc.pid}_")]
    time.sleep(0.2)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers)


BAD_SCENARIOS = {
    "syntax": ("[[agents]\nname = 'x'\n", ":1"),
    "unknown-field": (
        'seed = 1\n[[agents]]\nname = "sink"\nmodule = "@AGENTS@/sink.wat"\ncuont = 2\n',
        ":5",
    ),
    "missing-module": ('[[agents]]\nname = "a"\nmodule = "nowhere/agent.wasm"\n', ":3"),
}


@pytest.mark.parametrize("case", sorted(BAD_SCENARIOS))
def test_malformed_scenario_exits_2_with_a_clear_message(
    case: str, qhybrid_cmd: list[str], cli_env: dict[str, str], tmp_path: Path
) -> None:
    text, where = BAD_SCENARIOS[case]
    path = write_scenario(tmp_path, text, f"{case}.toml")
    proc = run_cli(qhybrid_cmd, cli_env, "--headless", str(path))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{case}.toml{where}" in proc.stderr.replace("\n", "")
    assert proc.stdout == ""


def test_broken_module_exits_2_naming_the_module(
    qhybrid_cmd: list[str], cli_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "broken.wasm").write_bytes(b"this is not wasm")
    path = write_scenario(tmp_path, '[[agents]]\nname = "a"\nmodule = "broken.wasm"\n')
    proc = run_cli(qhybrid_cmd, cli_env, "--headless", str(path))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    flat = proc.stderr.replace("\n", "")
    assert "s.toml:3" in flat and "not a WebAssembly module" in flat


def test_missing_scenario_file_and_bad_flags_exit_2(
    qhybrid_cmd: list[str], cli_env: dict[str, str], tmp_path: Path
) -> None:
    proc = run_cli(qhybrid_cmd, cli_env, "--headless", str(tmp_path / "nope.toml"))
    assert proc.returncode == 2
    assert "nope.toml" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(qhybrid_cmd, cli_env, "--headless", "--workers", "zero")
    assert proc.returncode == 2
    assert "--workers" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(qhybrid_cmd, cli_env, "--headless", "--frobnicate")
    assert proc.returncode == 2 and "--frobnicate" in proc.stderr


def test_failing_agent_exits_1(
    qhybrid_cmd: list[str], cli_env: dict[str, str], tmp_path: Path
) -> None:
    # The relay expects a 16-byte payload; a short one makes its handler report an error.
    path = write_scenario(
        tmp_path,
        '[[agents]]\nname = "relay"\nmodule = "@AGENTS@/relay.wat"\n'
        '[[messages]]\nto = "relay"\nkind = 1\npayload = "short"\n',
    )
    proc = run_cli(qhybrid_cmd, cli_env, "--headless", "--json", str(path))
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "failed"
    assert "relay failed" in result["reason"] and "error code 1" in result["reason"]


BLOCKED_QT = """
import sys
for name in ("PySide6", "shiboken6", "pyqtgraph", "qasync"):
    sys.modules[name] = None  # any import of these now raises ImportError
from qhybrid.cli import main
code = main(["--headless", "--json", "--workers", "1"])
qt = ("PySide6", "shiboken6", "pyqtgraph", "qasync")
assert not [m for m, mod in sys.modules.items() if m.startswith(qt) and mod is not None]
raise SystemExit(code)
"""


@pytest.mark.slow
def test_headless_runs_with_qt_blocked(cli_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED_QT],
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "completed"


def test_messages_keep_their_brackets(
    qhybrid_cmd: list[str], cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Errors print through rich; a table name like [agents.limits] is text, not markup."""
    path = write_scenario(
        tmp_path,
        '[[agents]]\nname = "a"\nmodule = "@AGENTS@/sink.wat"\n[agents.limits]\nfule = 3\n',
    )
    proc = run_cli(qhybrid_cmd, cli_env, "--headless", str(path))
    assert proc.returncode == 2
    flat = proc.stderr.replace("\n", "")
    assert 's.toml:5: agents[0].limits.fule: unknown field "fule" in [agents.limits]' in flat
    assert 'did you mean "fuel"' in flat
