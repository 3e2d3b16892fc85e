"""A worker that dies during a checkpoint is replaced like any other (issue 12, item 5).

What users rely on: with ``--max-worker-restarts`` allowing it, a worker crash while agents are
being snapshotted does not fail the run: the worker is replaced, its agents restored and
replayed, the checkpoint taken again, and the trace is the one of an undisturbed run.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from qhybrid.runtime import RunResult, Runtime, RuntimeConfig, parse_scenario
from qhybrid.runtime.store import DurableRuntime, RunRecorder, RunStore
from tests.conftest import ROOT

AGENTS = (ROOT / "resources" / "agents").as_posix()

SCENARIO = f"""
name = "checkpointed"
seed = 8
[stop]
max_ticks = 100000
timeout_s = 90
[[agents]]
name = "relay"
module = "{AGENTS}/relay.wat"
count = 6
[[agents]]
name = "sink"
module = "{AGENTS}/sink.wat"
[[messages]]
to = "relay"
kind = 1
payload_i64 = [300, 0]
"""


def _kill_during_snapshots(rt: Runtime, kill_at: tuple[int, ...]) -> None:
    """Kill the worker asked for its snapshots at the ``kill_at``-th snapshot requests (1 on),
    with the request in flight."""
    pool = rt.pool
    real = pool.snapshot
    calls = [0]

    async def snapshot(index: int, agent_ids: Any) -> Any:
        calls[0] += 1
        if calls[0] in kill_at:
            pool.kill_worker(index)  # type: ignore[attr-defined]
        return await real(index, agent_ids)

    pool.snapshot = snapshot  # type: ignore[method-assign]


def _run(kill_at: tuple[int, ...] = ()) -> RunResult:
    scenario = parse_scenario(SCENARIO, source="checkpointed.toml")
    config = RuntimeConfig(workers=2, device="cpu", checkpoint_every=1, max_worker_restarts=10)

    async def main() -> RunResult:
        async with Runtime(scenario, config) as rt:
            _kill_during_snapshots(rt, kill_at)
            return await rt.run()

    return asyncio.run(main())


def test_a_worker_killed_during_a_checkpoint_is_replaced_and_the_run_completes() -> None:
    calm = _run()
    hit = _run(kill_at=(5, 40, 41))
    assert calm.ok, calm.reason
    assert hit.ok, hit.reason
    assert hit.worker_restarts == 3
    assert hit.trace_hash == calm.trace_hash
    assert hit.messages_delivered == calm.messages_delivered


def _record(store: Path, kill_at: tuple[int, ...], restarts: int) -> tuple[RunResult, str | None]:
    """The same run recorded in a store (``qhybrid --headless`` does this), whose checkpoints
    are taken by the recorder (``store._checkpoint.capture``), not by the recovery part."""
    scenario = parse_scenario(SCENARIO, source="checkpointed.toml")
    with RunStore(store) as s:
        run_id = s.new_run(
            scenario_name=scenario.name,
            scenario_path="checkpointed.toml",
            scenario_text=SCENARIO,
            seed=scenario.seed,
            config={"workers": 2, "checkpoint_every": 3},
            version="test",
        )
    recorder = RunRecorder(store, run_id, checkpoint_every=3)
    config = RuntimeConfig(workers=2, device="cpu", max_worker_restarts=restarts)
    runtime = DurableRuntime(scenario, config, recorder=recorder)

    async def main() -> tuple[RunResult, str | None]:
        async with runtime as rt:
            _kill_during_snapshots(rt, kill_at)
            result = await rt.run()
        problem = recorder.checkpoint_problem
        recorder.finish(runtime, result.status, result.reason, trace_hash=result.trace_hash)
        return result, problem

    return asyncio.run(main())


def test_a_worker_killed_during_a_recorded_checkpoint_is_replaced(tmp_path: Path) -> None:
    calm, _ = _record(tmp_path / "calm.sqlite", (), restarts=3)
    hit, problem = _record(tmp_path / "hit.sqlite", (4, 9), restarts=3)
    assert calm.ok, calm.reason
    assert hit.ok, hit.reason
    assert problem is None  # the checkpoints went on: the death is not a checkpoint's fault
    assert hit.worker_restarts == 2
    assert hit.trace_hash == calm.trace_hash
    with RunStore(tmp_path / "hit.sqlite", readonly=True) as s:
        (run,) = s.runs()
        assert len(s.checkpoint_ticks(run["run_id"])) > 2


def test_a_worker_killed_during_a_recorded_checkpoint_past_the_limit_fails_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hit, problem = _record(tmp_path / "hit.sqlite", (4,), restarts=0)
    assert hit.status == "failed"
    assert "the limit" in (hit.reason or "") and "died" in (hit.reason or "")
    assert problem is None
    assert not [r for r in caplog.records if r.exc_info]  # reported, no traceback logged
