"""The watchdog (issue 12, item 3): a worker that stops answering is killed and replaced.

What users rely on: a worker stopped with SIGSTOP (or otherwise silent past its request's
deadline) is noticed within seconds, killed, and replaced through the usual crash recovery:
the run completes with the same trace hash as an undisturbed run, instead of ending in a
generic timeout.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from qhybrid.runtime import RunResult, Runtime, RuntimeConfig, parse_scenario
from qhybrid.runtime.wasm_pool._watchdog import WorkerUnresponsive, batch_deadline, watched
from tests.conftest import ROOT

AGENTS = (ROOT / "resources" / "agents").as_posix()

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGSTOP is POSIX")

SCENARIO = f"""
name = "watched"
seed = 4
[stop]
max_ticks = 100000
timeout_s = 60
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
payload_i64 = [4000, 0]
"""


def _run(stop_a_worker: bool) -> tuple[RunResult, float]:
    scenario = parse_scenario(SCENARIO, source="watched.toml")

    async def main() -> RunResult:
        async with Runtime(scenario, RuntimeConfig(workers=2, device="cpu")) as rt:
            if stop_a_worker:

                def on_tick(event: object) -> None:
                    if getattr(event, "tick", 0) == 200:
                        os.kill(rt.pool.pids[1], signal.SIGSTOP)

                rt.events.tick_finished.connect(on_tick)
            return await rt.run()

    start = time.monotonic()
    result = asyncio.run(main())
    return result, time.monotonic() - start


def test_a_stopped_worker_is_killed_and_replaced_and_the_trace_is_unchanged() -> None:
    calm, _ = _run(stop_a_worker=False)
    stopped, elapsed = _run(stop_a_worker=True)
    assert calm.ok, calm.reason
    assert stopped.ok, stopped.reason
    assert stopped.worker_restarts == 1
    assert stopped.trace_hash == calm.trace_hash
    assert stopped.messages_delivered == calm.messages_delivered
    assert elapsed < 40


def test_a_silent_reply_past_its_deadline_is_unresponsive() -> None:
    async def never() -> None:
        await asyncio.sleep(3600)

    async def main() -> None:
        with pytest.raises(WorkerUnresponsive, match="deadline"):
            await watched(never(), os.getpid(), 0.3, "a test request")

    asyncio.run(main())
    # A batch may take what its messages may: never less than the base deadline.
    assert batch_deadline(0, 0) >= 60
    assert batch_deadline(10 * 5000, 1) == batch_deadline(0, 0) + 50 + 120
