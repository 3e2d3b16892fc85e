"""ABI v2 lifecycle: agents spawned at run time, and an agent that ends the run (issue 14).

What users rely on: an agent granted ``spawn`` starts instances of a group the scenario
declares (``max_spawned``), each with its own name, config and worker, and learns the new id
from a ``SPAWNED`` message; the group's quota holds; the trace is the same for any number of
workers, and a worker killed under a spawned agent gives it back as it was. ``stop_run`` ends
the run with the agent's reason where granted, and is refused, in the trace, where not.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from qhybrid.runtime import (
    AgentLog,
    RunResult,
    Runtime,
    RuntimeConfig,
    ScenarioError,
    parse_scenario,
)
from tests.conftest import ROOT

AGENTS = (ROOT / "resources" / "agents").as_posix()

SCENARIO = """
name = "spawn-test"
seed = 5
[stop]
max_ticks = 400
[[agents]]
name = "boss"
module = "{agents}/spawner.wasm"
config = {{ helpers = {helpers}, rounds = {rounds}, group = "crew" }}
grants = {{ spawn = ["crew"], stop_run = {stop_run} }}
[[agents]]
name = "crew"
module = "{agents}/crew.wasm"
count = {count}
max_spawned = 3
[[messages]]
to = "boss"
kind = 1
"""


def scenario(helpers: int = 3, rounds: int = 2, stop_run: bool = True, count: int = 0) -> str:
    return SCENARIO.format(
        agents=AGENTS,
        helpers=helpers,
        rounds=rounds,
        stop_run="true" if stop_run else "false",
        count=count,
    )


def run(
    text: str, workers: int = 2, kill: tuple[int, int] | None = None, checkpoint_every: int = 4
) -> tuple[RunResult, list[str], list[str]]:
    """The result, the agents' log lines and the trace; ``kill``: (tick, worker) to SIGKILL."""

    async def main() -> tuple[RunResult, list[str], list[str]]:
        pending = kill
        sc = parse_scenario(text, source="spawn.toml")
        logs: list[str] = []
        trace: list[str] = []
        config = RuntimeConfig(workers=workers, device="cpu", checkpoint_every=checkpoint_every)
        async with Runtime(sc, config) as rt:
            rt.events.agent_log.connect(
                lambda e: logs.append(e.text) if isinstance(e, AgentLog) else None
            )
            rt.add_tick_hook(lambda _t, records: trace.extend(repr(r) for r in records))
            while await rt.step():
                if pending is not None and rt.tick >= pending[0]:
                    rt.pool.kill_worker(pending[1])
                    pending = None
            assert rt.result is not None
            return rt.result, logs, trace

    return asyncio.run(main())


def test_spawned_agents_get_ids_names_configs_and_work_and_the_boss_stops_the_run() -> None:
    result, logs, trace = run(scenario())
    assert result.status == "completed", result.reason
    assert result.reason == "stopped by agent boss: 3 helpers answered 2 jobs each, 0 refused"
    agents = {a.name: a for a in result.agents}
    assert list(agents) == ["boss", "crew-0", "crew-1", "crew-2"]
    # Ids in spawn order, placed by id: agent i on worker i % 2.
    assert [agents[f"crew-{i}"].worker for i in range(3)] == [1, 0, 1]
    assert all(agents[f"crew-{i}"].handled == 2 for i in range(3))
    assert "spawned crew-0 as agent 1" in logs and "spawned crew-2 as agent 3" in logs
    spawns = [line for line in trace if line.startswith("('spawn',")]
    assert len(spawns) == 3 and spawns[0].endswith("'crew', 'crew-0', 1)")
    assert any(line.startswith("('stop_run',") for line in trace)


def test_the_trace_is_the_same_for_one_two_and_four_workers() -> None:
    hashes = {w: run(scenario(), workers=w)[0].trace_hash for w in (1, 2, 4)}
    assert len(set(hashes.values())) == 1, hashes


def test_the_group_quota_refuses_a_spawn_with_the_reason() -> None:
    result, logs, trace = run(scenario(helpers=4, rounds=1))
    assert result.reason == "stopped by agent boss: 3 helpers answered 1 jobs each, 1 refused"
    refused = [line for line in logs if line.startswith("spawn 3 refused:")]
    assert len(refused) == 1
    answer = json.loads(refused[0].split("refused: ", 1)[1])
    assert answer["status"] == 1 and answer["agent"] == -1
    assert "max_spawned = 3" in answer["error"]
    assert sum(line.startswith("('spawn_refused',") for line in trace) == 1


def test_stop_run_without_the_grant_is_refused_and_traced() -> None:
    result, logs, trace = run(scenario(rounds=1, stop_run=False))
    assert result.status == "completed"
    assert "stopped by agent" not in (result.reason or "")
    assert "stop_run -9" in logs
    refused = [line for line in trace if line.startswith("('stop_run_refused',")]
    assert len(refused) == 1 and "3 helpers answered" in refused[0]


def test_a_killed_worker_gives_back_its_spawned_agents() -> None:
    plain = run(scenario(rounds=20))[0]
    # crew-0 (agent 1) and crew-2 (agent 3) live on worker 1; kill it mid-run.
    killed, _, _ = run(scenario(rounds=20), kill=(12, 1))
    assert plain.status == killed.status == "completed", killed.reason
    assert killed.worker_restarts == 1
    assert killed.trace_hash == plain.trace_hash


def test_spawned_names_do_not_clash_with_the_groups_own_instances() -> None:
    result, _, _ = run(scenario(helpers=2, rounds=1, count=2))
    names = [a.name for a in result.agents]
    assert names == ["boss", "crew-0", "crew-1", "crew-2", "crew-3"]


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (("max_spawned = 3", "max_spawned = 0"), "agents[1].count", "count = 0 needs max_spawned"),
        (('spawn = ["crew"]', 'spawn = ["ghost"]'), "agents[0].grants.spawn[0]", "'ghost'"),
    ],
)
def test_bad_spawn_declarations_are_named(change: tuple[str, str], field: str, words: str) -> None:
    text = scenario().replace(*change)
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text, source="spawn.toml")
    assert err.value.field == field and words in str(err.value)


def test_a_python_agent_spawns_and_stops_the_run_with_the_sdk_helpers() -> None:
    text = scenario(helpers=4).replace("spawner.wasm", "py_spawner.py")
    result, logs, _ = run(text, checkpoint_every=256)
    assert result.reason == "stopped by agent boss: 3 helpers answered, 1 refused", result.reason
    assert "spawned crew-0 as agent 1" in logs
    assert any("max_spawned = 3" in line for line in logs)


@pytest.mark.parametrize("module", ["as_spawner.wasm", "rs_spawner.wasm"])
def test_assemblyscript_and_rust_agents_spawn_and_stop_the_run_with_the_sdk_helpers(
    module: str,
) -> None:
    text = scenario(helpers=4).replace("spawner.wasm", module)
    result, logs, _ = run(text)
    assert result.reason == "stopped by agent boss: 3 helpers answered, 1 refused", result.reason
    assert "spawned agent 1" in logs and "stop_run 0" in logs


def test_a_worker_that_dies_while_a_spawned_agent_loads_is_replaced_with_it() -> None:
    plain = run(scenario(rounds=3))[0]

    async def main() -> RunResult:
        sc = parse_scenario(scenario(rounds=3), source="spawn.toml")
        config = RuntimeConfig(workers=2, device="cpu", checkpoint_every=4)
        async with Runtime(sc, config) as rt:
            load_agents = rt.pool.load_agents
            killed: list[int] = []

            async def dying(index: int, loads: Any) -> None:
                if not killed and any(load.name == "crew-0" for load in loads):
                    killed.append(index)
                    rt.pool.kill_worker(index)  # dies with crew-0's load in flight
                await load_agents(index, loads)

            setattr(rt.pool, "load_agents", dying)  # noqa: B010
            result = await rt.run()
            assert killed == [1]
            return result

    result = asyncio.run(main())
    assert result.status == "completed" and result.worker_restarts == 1, result.reason
    assert {a.name: a.handled for a in result.agents}["crew-0"] == 3
    assert result.trace_hash == plain.trace_hash
