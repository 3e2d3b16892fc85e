"""Determinism under ``--device auto`` (issue 12, item 8).

What users rely on: the same scenario and seed on the same machine give the same trace hash
every time. Timings measured or cached on this machine (the placement cache) never decide
where a run's GPU jobs go; the rule that does is in the run's recorded configuration.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from qhybrid.runtime import RunResult, Runtime, RuntimeConfig, parse_scenario
from qhybrid.runtime.wgpu_thread import GpuDevice
from tests.conftest import ROOT

AGENTS = ROOT / "resources" / "agents"
SCENARIO = f"""
name = "placed"
seed = 9
[stop]
max_ticks = 20
[[agents]]
name = "sink"
module = "{AGENTS.as_posix()}/sink.wat"
[[tensors]]
name = "a"
shape = [96, 80]
init = "random"
[[tensors]]
name = "b"
shape = [80, 72]
init = "random"
[[tasks]]
name = "mm"
kind = "gpu"
op = "matmul"
inputs = ["a", "b"]
output = "c"
at = 1
notify = "sink"
[[tasks]]
name = "relu"
kind = "gpu"
op = "relu"
inputs = ["c"]
output = "d"
at = 3
notify = "sink"
"""

#: Rates that make every job faster on the GPU, and rates that make every job faster in numpy.
GPU_WINS = {"gpu_overhead_s": 1e-12, "gpu_transfer_bps": 1e18, "gpu_flops": 1e18,
            "gpu_stream_bps": 1e18, "cpu_flops": 1.0, "cpu_stream_bps": 1.0}  # fmt: skip
CPU_WINS = {"gpu_overhead_s": 10.0, "gpu_transfer_bps": 1.0, "gpu_flops": 1.0,
            "gpu_stream_bps": 1.0, "cpu_flops": 1e18, "cpu_stream_bps": 1e18}  # fmt: skip


def _run() -> tuple[RunResult, list[str]]:
    scenario = parse_scenario(SCENARIO, source="placed.toml")
    placements: list[str] = []

    async def main() -> RunResult:
        async with Runtime(scenario, RuntimeConfig(workers=1, device="auto")) as rt:
            rt.events.task_finished.connect(
                lambda e: placements.append(e.placement) if e.kind == "gpu" else None
            )
            return await rt.run()

    return asyncio.run(main()), placements


def _cache_with(tmp_path: Path, rates: dict[str, float]) -> None:
    """A placement cache for this machine's adapter holding ``rates``."""
    folder = tmp_path / "gpu"
    files = list(folder.glob("placement-*.json"))
    if not files:
        with GpuDevice(prefer="auto") as device:  # calibrates and writes this adapter's entry
            device.start()
        files = list(folder.glob("placement-*.json"))
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["model"] = rates
        path.write_text(json.dumps(data), encoding="utf-8")


def test_cached_timings_do_not_change_the_trace_under_auto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QHYBRID_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("QHYBRID_DEVICE", raising=False)
    _cache_with(tmp_path, GPU_WINS)
    first, placed_first = _run()
    _cache_with(tmp_path, CPU_WINS)
    second, placed_second = _run()
    for path in (tmp_path / "gpu").glob("placement-*.json"):
        os.unlink(path)  # and with no cache at all (a fresh machine, a cleared cache)
    third, placed_third = _run()
    assert first.ok and second.ok and third.ok
    assert placed_first == placed_second == placed_third
    assert first.trace_hash == second.trace_hash == third.trace_hash
    # The rule that placed the jobs is in the recorded configuration.
    assert "placement" in first.device
    assert first.device["placement"] == second.device["placement"]
    assert first.to_json()["device"]["placement"] == first.device["placement"]
