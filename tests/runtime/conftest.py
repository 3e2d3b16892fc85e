"""Fixtures for the runtime tests: the local Ray cluster the Ray tests share."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

# Node death is noticed after health_check_period_ms * failure_threshold (defaults: 3 s x 5).
FAST_HEALTH = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_failure_threshold": 2,
}


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if p.is_running()}


@pytest.fixture(scope="session")
def ray_cluster(owned_process_trees: set[int]) -> Iterator[Any]:
    """One local Ray cluster of three nodes for the Ray tests (each raylet costs seconds to
    start): the head (3 CPUs), one node of 2 CPUs, one of 2 CPUs and 1 GPU (a declared
    resource: Ray schedules by it; the work on it still falls back as on any machine here).
    A test that removes a node adds one like it back.

    Its daemons (GCS, raylets, ...) start and reap Ray's worker processes on their own, so
    they and their children are exempt from the per-test leftovers check while the cluster
    lives; this fixture shuts them down and checks that none is left."""
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    before = _children()
    c = cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 3, "_system_config": FAST_HEALTH},
    )
    daemons: set[int] = set()
    try:
        c.add_node(num_cpus=2)
        # Which node has the GPU, for tests that must leave it (or find work on it).
        c.qh_gpu_node_id = c.add_node(num_cpus=2, num_gpus=1).node_id
        c.wait_for_nodes()
        daemons = _children() - before
        owned_process_trees.update(daemons)
        yield c
    finally:
        c.shutdown()
        owned_process_trees.difference_update(daemons)
        deadline = time.monotonic() + 10
        while (left := _children() - before) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in left:
            psutil.Process(pid).kill()
        assert not left, f"the Ray cluster left processes running: {sorted(left)}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the Ray tests that start a Ray instance of their own before those on the shared
    cluster: a driver that connected to the cluster, then ran a local instance beside it,
    then connected to the cluster again, had an actor cancelled at start ("all references
    to the actor were removed") now and then (Ray 2.60)."""
    on_cluster = [i for i in items if "ray_cluster" in getattr(i, "fixturenames", ())]
    if on_cluster:
        rest = [i for i in items if "ray_cluster" not in getattr(i, "fixturenames", ())]
        items[:] = rest + on_cluster
