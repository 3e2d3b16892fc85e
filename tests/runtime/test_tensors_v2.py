"""Tensors v2 (issue 14) through the real runtime: release, jobs into an existing tensor, names
used again after a release, and jobs chained within a tick, with the same trace for 1, 2 and 4
workers; recorded and replayed by the run store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np

from qhybrid.runtime import AgentLog, RunResult, Runtime, RuntimeConfig, Scenario, parse_scenario
from tests.conftest import ROOT

ITERATE = ROOT / "resources" / "agents" / "iterate.wasm"


def scenario(tmp_path: Path, rounds: int = 3, extra: str = "") -> Scenario:
    text = f"""
name = "iterate"
seed = 3
[stop]
max_ticks = 40
[[agents]]
name = "iterate"
module = "{ITERATE.as_posix()}"
config = {{ rounds = {rounds} }}
[[messages]]
to = "iterate"
kind = 1
{extra}
"""
    return parse_scenario(text, source=str(tmp_path / "iterate.toml"), base_dir=tmp_path)


def run(sc: Scenario, workers: int = 2) -> tuple[RunResult, list[str], list[str], int]:
    """The result, the agent's log lines, the trace lines, and the tensors left at the end."""
    logs: list[str] = []
    left = -1

    async def main() -> RunResult:
        nonlocal left
        config = RuntimeConfig(workers=workers, device="cpu")
        async with Runtime(sc, config) as rt:
            rt.events.agent_log.connect(
                lambda e: logs.append(e.text) if isinstance(e, AgentLog) else None
            )
            result = await rt.run()
            trace = rt.recent_trace()
            left = rt.tensors.stats().tensors
        return result, trace

    result, trace = asyncio.run(main())
    return result, logs, trace, left


def expected_sums(rounds: int) -> list[float]:
    acc = np.array([(1 if i % 2 == 0 else -1) * (i + 1) for i in range(16)], np.float32)
    sums = []
    for _ in range(rounds):
        acc = acc + np.maximum(acc * np.float32(0.5), 0)
        sums.append(float(acc.sum()))
    return sums


def test_chained_jobs_in_place_and_release(tmp_path: Path) -> None:
    result, logs, trace, left = run(scenario(tmp_path))
    assert result.status == "completed", result.reason
    # Three chained jobs per round (scale -> relu -> add into acc), each reading the one before.
    rounds = [line for line in logs if line.startswith("round ")]
    assert rounds == [f"round {i}: sum {s:.3f}" for i, s in enumerate(expected_sums(3))]
    assert logs[-1] == f"done: sum {expected_sums(3)[-1]:.3f}"
    # "tmp" is released at the end of each round and made again under the same name.
    releases = [json.loads(line)[3] for line in trace if line.startswith('["release"')]
    assert releases == ["tmp", "tmp", "tmp", "act", "acc"]
    # What the agent released is freed; only "wide" (never released) is left.
    assert left == 1
    # The refusals: a tensor made by this message cannot be released yet (-3), and a job
    # into a tensor of another shape is refused (-6).
    assert "refused: release acc now: -3" in logs
    assert "refused: relu(acc) into wide: -6" in logs


def test_same_trace_for_1_2_and_4_workers(tmp_path: Path) -> None:
    hashes = set()
    for workers in (1, 2, 4):
        result, logs, _, _ = run(scenario(tmp_path, rounds=2), workers)
        assert result.status == "completed", result.reason
        assert logs[-1] == f"done: sum {expected_sums(2)[-1]:.3f}"
        hashes.add(result.trace_hash)
    assert len(hashes) == 1
