"""``resume`` of a run made with ``--backend ray``: the run store records the backend (and
the address), and the resumed run uses it again."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
AGENTS = ROOT / "resources" / "agents"

pytest.importorskip("ray", reason="the ray extra is not installed (pip install '.[ray]')")

RELAYS = f"""
name = "relays"
seed = 7
[stop]
max_ticks = 200
[[agents]]
name = "relay"
module = "{AGENTS.as_posix()}/relay.wat"
count = 4
[[agents]]
name = "sink"
module = "{AGENTS.as_posix()}/sink.wat"
[[messages]]
to = "relay"
kind = 1
payload_i64 = [60, 0]
"""

BLOCKED_RAY = """
import sys
sys.modules["ray"] = None  # any import of ray now raises ImportError
from qhybrid.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def _cli(env: dict[str, str], *args: str, blocked: bool = False) -> Any:
    head = [sys.executable, "-c", BLOCKED_RAY] if blocked else [sys.executable, "-m", "qhybrid"]
    return subprocess.run(
        [*head, *args], capture_output=True, text=True, env=env, timeout=170, check=False
    )


def _json(proc: Any) -> Any:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_resume_runs_on_the_backend_the_run_was_recorded_with(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    scenario = tmp_path / "relays.toml"
    scenario.write_text(RELAYS, encoding="utf-8")
    store = tmp_path / "runs.sqlite"
    env = {**cli_env, "QHYBRID_STORE": str(store)}
    run = _json(
        _cli(env, "--headless", "--device", "cpu", "--backend", "ray", "--workers", "2",
             "--checkpoint-every", "10", str(scenario), "--json")
    )  # fmt: skip
    show = _json(_cli(env, "show", run["run_id"], "--json"))
    assert show["config"]["backend"] == "ray" and show["config"]["ray_address"] is None
    # As if its process had been killed after the last checkpoint.
    with sqlite3.connect(store) as conn:
        conn.execute("UPDATE runs SET status = 'interrupted' WHERE run_id = ?", (run["run_id"],))
    # Without Ray, the resume says the run needs it: it asked for the recorded backend.
    proc = _cli(env, "resume", run["run_id"], blocked=True)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "ran with --backend ray" in proc.stderr and "pip install 'qhybrid[ray]'" in proc.stderr
    resumed = _json(_cli(env, "resume", run["run_id"], "--json"))
    assert resumed["resumed_from"] > 0
    assert resumed["trace_hash"] == run["trace_hash"]
