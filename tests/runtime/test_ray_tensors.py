"""Tensors across Ray nodes: shared memory on the driver's node, Ray's object store elsewhere.

The scenario (ray_data/tensors_llm.toml) has agents that read scenario tensors, create tensors
that agents on other workers read, read-modify-write one writable tensor in turn (what each
writes depends on what it read, and the write's digest is in the trace), CPU tasks on GPU and
CPU outputs, and two LLM agents. It must give one trace hash with the local pool, with Ray on
one node and on the three nodes of a local ``Cluster``, whichever path the tensors take.

A local ``Cluster``'s raylets share this machine's /dev/shm, so the path is chosen by Ray node
id, and the object-store path is also forced on every actor (``QHYBRID_RAY_TENSORS``).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qhybrid.runtime import Runtime, RuntimeConfig, load_scenario

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = Path(__file__).parent / "ray_data" / "tensors_llm.toml"

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install '.[ray]')")


@dataclass
class Ran:
    trace_hash: str
    object_store: list[bool]
    on_driver_node: list[bool]
    puts: tuple[int, int]
    fetches: list[tuple[int, int]]


async def _run(**config: Any) -> Ran:
    cfg = RuntimeConfig(device="cpu", **config)
    async with Runtime(load_scenario(SCENARIO), cfg) as rt:
        result = await rt.run()
        assert result.ok, result.reason
        if cfg.backend != "ray":
            return Ran(result.trace_hash, [], [], (0, 0), [])
        pool: Any = rt.pool
        return Ran(
            result.trace_hash,
            pool.object_store,
            [n == pool.driver_node for n in pool.node_ids],
            pool.tensor_puts(),
            await pool.tensor_fetches(),
        )


@pytest.fixture(scope="module")
def local_hash() -> str:
    """The scenario's hash with local worker processes (the same for 1 and 3 workers)."""
    one = asyncio.run(_run(workers=1)).trace_hash
    assert asyncio.run(_run(workers=3)).trace_hash == one
    return one


def _check_store_path(ran: Ran) -> None:
    put_count, put_bytes = ran.puts
    assert put_count > 0
    # Only what an actor's agents and tasks read reaches its node: no actor got every tensor.
    for count, nbytes in (
        f for f, remote in zip(ran.fetches, ran.object_store, strict=True) if remote
    ):
        assert 0 < count < put_count and 0 < nbytes < put_bytes, (ran.fetches, ran.puts)


@pytest.mark.slow
def test_one_node_maps_shared_memory_and_gives_the_local_hash(local_hash: str) -> None:
    ran = asyncio.run(_run(workers=3, backend="ray"))
    assert ran.trace_hash == local_hash
    assert ran.on_driver_node == [True] * 3 and ran.object_store == [False] * 3
    assert ran.puts == (0, 0)  # nothing went through the object store


@pytest.mark.slow
def test_one_node_through_the_object_store_gives_the_local_hash(
    local_hash: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QHYBRID_RAY_TENSORS", "object-store")
    ran = asyncio.run(_run(workers=3, backend="ray"))
    assert ran.object_store == [True] * 3
    assert ran.trace_hash == local_hash
    _check_store_path(ran)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["auto", "object-store"])
def test_three_nodes_give_the_local_hash(
    ray_cluster: Any, local_hash: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QHYBRID_RAY_TENSORS", path)
    ran = asyncio.run(_run(workers=3, backend="ray", ray_address=ray_cluster.address))
    assert ran.trace_hash == local_hash
    assert ran.on_driver_node.count(True) == 1  # SPREAD: one actor per node
    if path == "auto":
        # By node id: the actors on the other two raylets take the object store, though
        # they could open this machine's segments.
        assert ran.object_store == [not here for here in ran.on_driver_node]
    else:
        assert ran.object_store == [True] * 3
    _check_store_path(ran)


def test_a_bad_tensor_path_is_refused_with_a_message() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "qhybrid", "--headless", "--backend", "ray", str(SCENARIO)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**__import__("os").environ, "QHYBRID_RAY_TENSORS": "telepathy"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "QHYBRID_RAY_TENSORS" in proc.stderr and "object-store" in proc.stderr
