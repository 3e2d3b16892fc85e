"""The Ray backend (``--backend ray``): the same demo, the same trace hash, on Ray actors.

What this proves and what not: a local ``ray.cluster_utils.Cluster`` runs several raylets on
this one machine, so its "nodes" are real Ray nodes (own raylet, own object store, own worker
processes, placement by node) but they share this machine's /dev/shm: a tensor handle opens on
every node here. A tensor's bytes crossing a real network is not tested.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from qhybrid.runtime import Runtime, RuntimeConfig, load_scenario, run_scenario

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "resources" / "scenarios" / "demo.toml"

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install '.[ray]')")
cluster_utils = pytest.importorskip("ray.cluster_utils")

BLOCKED_RAY = """
import sys
sys.modules["ray"] = None  # any import of ray now raises ImportError
from qhybrid.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_backend_ray_without_ray_says_how_to_install_it_and_exits_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED_RAY, "--headless", "--backend", "ray", str(DEMO)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "--backend ray" in proc.stderr and "pip install 'qhybrid[ray]'" in proc.stderr


def test_ray_address_without_the_ray_backend_is_bad_input() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "qhybrid", "--headless", "--ray-address", "auto", str(DEMO)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "--ray-address needs --backend ray" in proc.stderr


def test_an_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="backend must be one of local, ray"):
        Runtime(load_scenario(DEMO), RuntimeConfig(backend="dask"))


def _demo(**config: Any) -> str:
    result = asyncio.run(run_scenario(load_scenario(DEMO), RuntimeConfig(device="cpu", **config)))
    assert result.ok, result.reason
    return result.trace_hash


@pytest.fixture(scope="module")
def local_hash() -> str:
    """The demo's hash with the local worker processes: what every Ray run must give."""
    return _demo(workers=3)


@pytest.mark.slow
def test_ray_on_one_node_gives_the_local_pools_hash_and_is_shut_down(
    local_hash: str,
) -> None:
    # One node: no address, so the pool starts Ray here (raylet, GCS: children of this process) and
    # shuts it down; the autouse fixture fails the test if any of them is left.
    assert _demo(workers=3, backend="ray") == local_hash
    assert not ray.is_initialized()


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if p.is_running()}


async def _run_on(address: str, remove: Any = None) -> tuple[str, list[str], int]:
    config = RuntimeConfig(workers=3, device="cpu", backend="ray", ray_address=address)
    async with Runtime(load_scenario(DEMO), config) as rt:
        nodes = list(rt.pool.node_ids)  # type: ignore[attr-defined]
        while await rt.step():
            if remove is not None and rt.tick >= 5:
                remove(nodes, rt.pool.pids)
                remove = None
        assert rt.result is not None and rt.result.ok, rt.result
        return rt.result.trace_hash, nodes, rt.worker_restarts


@pytest.mark.slow
def test_three_nodes_spread_the_workers_and_give_the_same_hash(
    ray_cluster: Any, local_hash: str
) -> None:
    assert len(ray_cluster.list_all_nodes()) == 3
    trace_hash, nodes, restarts = asyncio.run(_run_on(ray_cluster.address))
    assert len(set(nodes)) == 3  # SPREAD: one worker actor per node
    assert (trace_hash, restarts) == (local_hash, 0)


@pytest.mark.slow
def test_a_node_removed_mid_run_is_survived_with_the_same_hash(
    ray_cluster: Any, local_hash: str, owned_process_trees: set[int]
) -> None:
    removed: list[str] = []

    def remove_a_worker_node(nodes: list[str], pids: list[int]) -> None:
        # A node that is not the head and hosts a worker actor (the head holds the GCS), and
        # not the GPU node (other tests place work there).
        victim = next(
            n
            for n in ray_cluster.worker_nodes
            if n.node_id in nodes and n.node_id != ray_cluster.qh_gpu_node_id
        )
        removed.append(victim.node_id)
        ray_cluster.remove_node(victim, allow_graceful=False)
        # Its actor processes end when they notice their raylet is gone (Ray's fate
        # sharing); until then they would still answer. Wait for that, so the next tick
        # meets a dead actor for certain.
        actor = psutil.Process(pids[nodes.index(victim.node_id)])
        actor.wait(timeout=30)

    try:
        trace_hash, nodes, restarts = asyncio.run(
            _run_on(ray_cluster.address, remove_a_worker_node)
        )
    finally:
        if removed:  # the session's cluster has three nodes again for the tests after this
            before = _children()
            ray_cluster.add_node(num_cpus=2)
            ray_cluster.wait_for_nodes()
            owned_process_trees.update(_children() - before)  # the fixture ends them
    assert removed and removed[0] in nodes
    assert restarts >= 1
    assert trace_hash == local_hash


BLOCKED_RAY_BENCH = BLOCKED_RAY.replace(
    "from qhybrid.cli import main", "from qhybrid.bench._cli import main"
)


def test_bench_dispatch_backend_ray_without_ray_exits_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED_RAY_BENCH, "dispatch", "--backend", "ray"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "pip install 'qhybrid[ray]'" in proc.stderr


TINY = ("--workers", "2", "--agents", "8", "--steps", "400")


@pytest.mark.slow
def test_bench_dispatch_backend_ray_measures_the_runtime_on_ray(
    qhybrid_cmd: list[str],
) -> None:
    proc = subprocess.run(
        [*qhybrid_cmd, "bench", "dispatch", "--backend", "ray", "--no-ray", "--json", *TINY],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["backend"] == "ray"
    assert data["ray_backend_steps_per_s"] > 0 and data["ray_backend_p50_us"] > 0
    assert data["ray_backend_vs_local"] == pytest.approx(
        data["ray_backend_steps_per_s"] / data["steps_per_s"], rel=0.01
    )
