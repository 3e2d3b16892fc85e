"""A worker that dies during a checkpoint is replaced like any other (issue 12, item 5).

What users rely on: with ``--max-worker-restarts`` allowing it, a worker crash while agents are
being snapshotted does not fail the run: the worker is replaced, its agents restored and
replayed, the checkpoint taken again, and the trace is the one of an undisturbed run.
"""

from __future__ import annotations

import asyncio
from typing import Any

from qhybrid.runtime import RunResult, Runtime, RuntimeConfig, parse_scenario
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


def _run(kill_at: tuple[int, ...] = ()) -> RunResult:
    scenario = parse_scenario(SCENARIO, source="checkpointed.toml")
    config = RuntimeConfig(workers=2, device="cpu", checkpoint_every=1, max_worker_restarts=10)

    async def main() -> RunResult:
        async with Runtime(scenario, config) as rt:
            pool = rt.pool
            real = pool.snapshot
            calls = [0]

            async def snapshot(index: int, agent_ids: Any) -> Any:
                calls[0] += 1
                if calls[0] in kill_at:
                    pool.kill_worker(index)  # dies with the snapshot request in flight
                return await real(index, agent_ids)

            pool.snapshot = snapshot  # type: ignore[method-assign]
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
