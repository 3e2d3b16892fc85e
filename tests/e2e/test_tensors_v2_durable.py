"""Tensors v2 (issue 14) in the run store, as a user drives it: a run with released tensors,
jobs into existing tensors and jobs chained within a tick (GPU behind GPU, CPU behind GPU, GPU
behind CPU) is recorded; `replay` takes every job's output from the store and gives the same
trace; `fork` from a checkpoint with the same seed gives the same trace hash again."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

AGENTS = ROOT / "resources" / "agents"

SCENARIO = """
name = "tensors-v2"
seed = 5
[stop]
max_ticks = 60
[[agents]]
name = "iterate"
module = "@AGENTS@/iterate.wasm"
count = 2
config = { rounds = 5 }
overrides = { iterate-0 = { prefix = "a." }, iterate-1 = { prefix = "b." } }
[[messages]]
to = "iterate"
kind = 1
[[tensors]]
name = "x"
shape = [8, 8]
init = "random"
# All at tick 2, each reading the one before it: the dispatcher chains them in queue order.
[[tasks]]
name = "g"
kind = "gpu"
op = "relu"
inputs = ["x"]
output = "gx"
at = 2
[[tasks]]
name = "c"
kind = "cpu"
op = "scale"
inputs = ["gx"]
output = "cx"
params = { factor = 3.0 }
at = 2
[[tasks]]
name = "e"
kind = "gpu"
op = "add"
inputs = ["cx", "gx"]
output = "ex"
at = 2
notify = "iterate-0"
"""


@pytest.fixture
def env(cli_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {**cli_env, "QHYBRID_STORE": str(tmp_path / "store" / "runs.sqlite")}


def cli_json(cmd: list[str], env: dict[str, str], *args: str, code: int = 0) -> Any:
    proc = subprocess.run(
        [*cmd, *args, "--json"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert proc.returncode == code, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


def test_record_replay_and_fork_with_tensors_v2(
    qhybrid_cmd: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "tensors.toml"
    path.write_text(SCENARIO.replace("@AGENTS@", AGENTS.as_posix()), encoding="utf-8")
    run = cli_json(
        qhybrid_cmd, env, "--headless", "--device", "cpu", str(path), "--checkpoint-every", "4"
    )
    assert run["status"] == "completed", run
    # 2 agents x 5 rounds x 3 jobs, and the scenario's three chained tasks (two on the GPU).
    assert (run["gpu_tasks"], run["cpu_tasks"]) == (32, 1)
    replay = cli_json(qhybrid_cmd, env, "replay", run["run_id"])
    assert replay["identical"] is True and replay["trace_hash"] == run["trace_hash"]
    assert replay["gpu_jobs_from_store"] == 32 and replay["cpu_tasks_from_store"] == 1
    # From a checkpoint taken between rounds (tensors released and made again since the start).
    fork = cli_json(qhybrid_cmd, env, "fork", run["run_id"], "--at", "9")
    assert fork["trace_hash"] == run["trace_hash"]
