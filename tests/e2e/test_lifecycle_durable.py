"""Spawned agents in the run store (issue 14): a run whose agents spawned others is
checkpointed with them, resumes after a SIGKILL with the undisturbed trace hash, and replays
identically; its result says why an agent ended it."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.conftest import ROOT
from tests.e2e.test_durable import cli_json, env, run_and_kill

__all__ = ["env"]  # the fixture, shared with test_durable

AGENTS = (ROOT / "resources" / "agents").as_posix()

SPAWNING = f"""
name = "spawning"
seed = 11
[stop]
max_ticks = 5000
[[agents]]
name = "boss"
module = "{AGENTS}/spawner.wasm"
config = {{ helpers = 3, rounds = 150, group = "crew" }}
grants = {{ spawn = ["crew"], stop_run = true }}
[[agents]]
name = "crew"
module = "{AGENTS}/crew.wasm"
count = 0
max_spawned = 3
[[messages]]
to = "boss"
kind = 1
"""


def test_a_run_with_spawned_agents_resumes_and_replays(
    qhybrid_cmd: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    scenario = tmp_path / "spawning.toml"
    scenario.write_text(SPAWNING, encoding="utf-8")
    plain = cli_json(qhybrid_cmd, env, "--headless", "--device", "cpu", str(scenario), "--no-store")
    assert plain["status"] == "completed"
    assert plain["reason"] == "stopped by agent boss: 3 helpers answered 150 jobs each, 0 refused"
    assert [a["name"] for a in plain["agents"]] == ["boss", "crew-0", "crew-1", "crew-2"]
    code, seen = run_and_kill(
        qhybrid_cmd, env, scenario, 60, signal.SIGKILL, "--checkpoint-every", "10"
    )
    assert code == -signal.SIGKILL and seen >= 60, seen
    resumed = cli_json(qhybrid_cmd, env, "resume", "last")
    assert resumed["resumed_from"] >= 10  # after the spawns (tick 1): they are in the checkpoint
    assert resumed["trace_hash"] == plain["trace_hash"]
    assert resumed["reason"] == plain["reason"]
    replay = cli_json(qhybrid_cmd, env, "replay", resumed["run_id"])
    assert replay["identical"] is True and replay["trace_hash"] == plain["trace_hash"]
