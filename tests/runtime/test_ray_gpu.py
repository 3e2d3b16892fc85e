"""GPU jobs on the Ray node that has a GPU (``num_gpus``), the same trace hash.

The session's local cluster declares one GPU on one of its nodes (a resource Ray schedules
by; this machine has no GPU, so the device there falls back as it does here). The run's GPU
jobs, the scenario's tasks and the agents' ``gpu_submit``, must run in the GPU actor on that
node and give the local pool's hash; without GPUs in the cluster they run on the driver.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from qhybrid.runtime import Runtime, RuntimeConfig, load_scenario

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = {
    "demo": ROOT / "resources" / "scenarios" / "demo.toml",
    "tensors_llm": Path(__file__).parent / "ray_data" / "tensors_llm.toml",
}

pytest.importorskip("ray", reason="the ray extra is not installed (pip install '.[ray]')")


async def _run(scenario: str, **config: Any) -> tuple[str, str, int]:
    cfg = RuntimeConfig(device="cpu", workers=3, **config)
    async with Runtime(load_scenario(SCENARIOS[scenario]), cfg) as rt:
        result = await rt.run()
        assert result.ok, result.reason
        device: Any = rt.device
        if not getattr(device, "gpu_node", ""):  # no GPU in the cluster: the LLM stays here
            assert getattr(device, "llm_engine", None) is None
        return result.trace_hash, getattr(device, "gpu_node", ""), getattr(device, "remote_jobs", 0)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_gpu_jobs_run_on_the_gpu_node_with_the_same_hash(ray_cluster: Any, scenario: str) -> None:
    local_hash, _, _ = asyncio.run(_run(scenario))
    trace_hash, gpu_node, remote_jobs = asyncio.run(
        _run(scenario, backend="ray", ray_address=ray_cluster.address)
    )
    assert gpu_node == ray_cluster.qh_gpu_node_id
    assert remote_jobs >= 2  # every GPU job of the run (the demo has two, the other four)
    assert trace_hash == local_hash


@pytest.mark.slow
def test_without_a_gpu_in_the_cluster_gpu_jobs_stay_on_the_driver() -> None:
    local_hash, _, _ = asyncio.run(_run("demo"))
    trace_hash, gpu_node, remote_jobs = asyncio.run(_run("demo", backend="ray"))
    assert (gpu_node, remote_jobs) == ("", 0)
    assert trace_hash == local_hash


async def _run_killing_the_gpu_actor(address: str) -> tuple[str, int, bool]:
    cfg = RuntimeConfig(device="cpu", workers=3, backend="ray", ray_address=address)
    async with Runtime(load_scenario(SCENARIOS["demo"]), cfg) as rt:
        device: Any = rt.device
        on_gpu_node = bool(device.gpu_node)
        device.kill_gpu_actor()  # before the demo's first GPU task (tick 1)
        result = await rt.run()
        assert result.ok, result.reason
        return result.trace_hash, device.remote_jobs, on_gpu_node


@pytest.mark.slow
def test_a_dead_gpu_actor_hands_its_jobs_to_the_driver_with_the_same_hash(
    ray_cluster: Any,
) -> None:
    local_hash, _, _ = asyncio.run(_run("demo"))
    trace_hash, remote_jobs, on_gpu_node = asyncio.run(
        _run_killing_the_gpu_actor(ray_cluster.address)
    )
    assert on_gpu_node and remote_jobs == 0
    assert trace_hash == local_hash
