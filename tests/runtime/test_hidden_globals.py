"""Crash recovery never diverges silently (#13 item 11): a module whose state lives in a
non-exported mutable global cannot be restored from a host snapshot, so after its worker is
killed its on_error policy applies instead of a reset counter going unnoticed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from qhybrid.runtime import RunResult, Runtime, RuntimeConfig, parse_scenario
from qhybrid.runtime.wasm_pool._globals import global_names, host_snapshot_exact
from tests.conftest import ROOT

HIDDEN = ROOT / "tests" / "agents" / "hidden_counter.wat"
AGENTS = ROOT / "resources" / "agents"

SCENARIO = """
name = "hidden"
[[agents]]
name = "hidden"
module = "{hidden}"
on_error = "{policy}"
[[agents]]
name = "ping"
module = "{ping}"
[[messages]]
to = "hidden"
kind = 1
payload_i64 = [60]
[[messages]]
to = "ping"
kind = 1
payload_i64 = [60]
"""


def test_only_the_shadow_stack_pointer_may_hide_from_a_host_snapshot() -> None:
    assert not host_snapshot_exact(HIDDEN.read_bytes())
    assert global_names(HIDDEN.read_bytes()) == {0: "count"}
    # C agents: LLVM's __stack_pointer is their one non-exported mutable global.
    c_agent = (AGENTS / "worker.wasm").read_bytes()
    assert "__stack_pointer" in global_names(c_agent).values()
    assert host_snapshot_exact(c_agent)
    assert host_snapshot_exact((AGENTS / "relay.wat").read_bytes())


async def _run(text: str, kill_at: int | None) -> RunResult:
    scenario = parse_scenario(text, source="hidden.toml", base_dir=Path.cwd())
    config = RuntimeConfig(workers=2, device="cpu", checkpoint_every=8)
    async with Runtime(scenario, config) as rt:
        while await rt.step():
            if kill_at is not None and rt.tick >= kill_at:
                rt.pool.kill_worker(0)  # the hidden counter (agent 0) lives on worker 0
                kill_at = None
        assert rt.result is not None
        return rt.result


@pytest.mark.parametrize("policy", ["fail", "skip", "restart"])
def test_a_module_with_a_hidden_global_gets_its_policy_after_a_worker_kill(policy: str) -> None:
    text = SCENARIO.format(hidden=HIDDEN, ping=AGENTS / "ping.wat", policy=policy)
    undisturbed = asyncio.run(_run(text, None))
    assert undisturbed.ok and undisturbed.agents[0].handled == 61
    got = asyncio.run(_run(text, 20))
    assert got.worker_restarts == 1
    hidden = got.agents[0]
    assert hidden.error is not None and "non-exported mutable globals" in hidden.error
    if policy == "fail":
        assert got.status == "failed" and "hidden" in got.reason
    elif policy == "skip":
        assert got.ok and hidden.state == "skipped" and hidden.handled < 61
    else:
        assert got.ok and hidden.restarts == 1
    # Never the silent kind of wrong: a run that says "completed" with the same agents
    # handling the same messages would have to have the same trace.
    assert got.trace_hash != undisturbed.trace_hash
