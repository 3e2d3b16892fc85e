"""The LLM engine on the Ray node that has a GPU (``num_gpus``), the same trace hash.

The session's local cluster declares one GPU on one of its nodes. With the Ray backend, the
scenario's model must be opened and stepped in the LLM actor on that node (the requests are
answered from there: its engine steps are counted) and the run must give the local pool's
hash. An LLM actor that dies mid-run hands its engine to the driver (replayed there), with
the same hash.
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


async def _run(scenario: str, **config: Any) -> tuple[str, str, int, int]:
    cfg = RuntimeConfig(device="cpu", workers=3, **config)
    async with Runtime(load_scenario(SCENARIOS[scenario]), cfg) as rt:
        result = await rt.run()
        assert result.ok, result.reason
        llm = result.llm or {}
        engine: Any = getattr(rt.device, "llm_engine", None)
        node, steps = (engine.node, engine.steps) if engine is not None else ("", 0)
        return result.trace_hash, node, steps, int(str(llm.get("tokens", 0)))


@pytest.mark.slow
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_llm_runs_on_the_gpu_node_with_the_same_hash(ray_cluster: Any, scenario: str) -> None:
    local_hash, _, _, local_tokens = asyncio.run(_run(scenario))
    trace_hash, node, steps, tokens = asyncio.run(
        _run(scenario, backend="ray", ray_address=ray_cluster.address)
    )
    assert node == ray_cluster.qh_gpu_node_id  # the model was opened there
    assert steps >= 2 and tokens == local_tokens > 0  # and every request was answered there
    assert trace_hash == local_hash


async def _run_killing_the_llm_actor_mid_run(address: str) -> tuple[str, str, int]:
    cfg = RuntimeConfig(device="cpu", workers=3, backend="ray", ray_address=address)
    async with Runtime(load_scenario(SCENARIOS["tensors_llm"]), cfg) as rt:
        engine: Any = getattr(rt.device, "llm_engine", None)
        assert engine is not None

        def kill(_event: object) -> None:  # at the first tokens: requests are in flight
            if engine.local is None and engine.steps:
                engine.kill()

        rt.events.llm_tokens.connect(kill)
        result = await rt.run()
        assert result.ok, result.reason
        llm = result.llm or {}
        return (
            result.trace_hash,
            "local" if engine.local is not None else "",
            int(str(llm.get("tokens", 0))),
        )


@pytest.mark.slow
def test_a_dead_llm_actor_hands_its_engine_to_the_driver_with_the_same_hash(
    ray_cluster: Any,
) -> None:
    local_hash, _, _, local_tokens = asyncio.run(_run("tensors_llm"))
    trace_hash, on_driver, tokens = asyncio.run(
        _run_killing_the_llm_actor_mid_run(ray_cluster.address)
    )
    assert on_driver == "local"  # the actor died with requests in flight, the driver took over
    assert tokens == local_tokens
    assert trace_hash == local_hash


async def _run_killing_the_llm_actor_without_fallback(address: str) -> tuple[bool, str]:
    cfg = RuntimeConfig(device="cpu", workers=3, backend="ray", ray_address=address)
    async with Runtime(load_scenario(SCENARIOS["demo"]), cfg) as rt:
        engine: Any = getattr(rt.device, "llm_engine", None)
        assert engine is not None
        engine._fallback = None  # as if the driver could not open the model
        engine.kill()  # before the demo's first request
        result = await rt.run()
        return result.ok, result.reason or ""


@pytest.mark.slow
def test_a_dead_llm_actor_without_a_fallback_fails_the_run_naming_it(ray_cluster: Any) -> None:
    ok, reason = asyncio.run(_run_killing_the_llm_actor_without_fallback(ray_cluster.address))
    assert not ok
    assert "LlmActor on Ray node" in reason and "died" in reason, reason
