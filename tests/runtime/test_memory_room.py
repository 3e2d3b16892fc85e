"""Room to grow in place, given to a worker's first agents only (issue 11, item 3).

A memory with room behind it grows in place; one without moves at each growth. The room costs
a memory mapping per instance, and Linux stops a process at ``vm.max_map_count`` mappings
(65,530 by default): with room for every agent, a worker stopped at about 32,700 agents
("Cannot allocate memory (os error 12)"). So a worker gives room to its first
``roomy_instances()`` agents, and the others' memories grow by moving. What users rely on:
either kind computes the same, within the same limits, and the agents without room cost no
mapping of their own.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import wasmtime

from qhybrid.runtime.wasm_pool import Limits
from qhybrid.runtime.wasm_pool._abi import (
    compile_module,
    engine_config_key,
    make_engine,
    out_of_mappings_hint,
    roomy_instances,
)
from qhybrid.runtime.wasm_pool._agent import AgentHost, WorkerContext
from qhybrid.runtime.wasm_pool._protocol import AgentLoad
from tests.conftest import ROOT

GROW = ROOT / "tests" / "agents" / "grow.wat"
MAPS = Path("/proc/self/maps")


def _context(roomy_limit: int) -> WorkerContext:
    ctx = WorkerContext(roomy_limit=roomy_limit)
    module = compile_module(make_engine(), GROW)
    ctx.add_module("grow", bytes(module.serialize()), GROW.read_bytes())
    return ctx


def _grow_host(ctx: WorkerContext, agent_id: int, memory_bytes: int | None = None) -> AgentHost:
    limits = Limits(memory_bytes=memory_bytes)
    return AgentHost(ctx, AgentLoad(agent_id, f"grow-{agent_id}", "grow", (), 1, 1, b"{}", limits))


def _pages(n: int) -> bytes:
    return struct.pack("<q", n)


def test_room_to_grow_does_not_change_compiled_code() -> None:
    # One compiled module serves both kinds of engine: the orchestrator compiles (and caches)
    # once, and each worker picks the kind per agent.
    module = wasmtime.Module(make_engine(), GROW.read_text())
    for room in (True, False):
        engine = make_engine(room_to_grow=room)
        again = wasmtime.Module.deserialize(engine, module.serialize())
        assert [e.name for e in again.exports] == [e.name for e in module.exports]
    assert "grow" not in engine_config_key()


def test_a_worker_gives_room_to_its_first_agents_only() -> None:
    ctx = WorkerContext(roomy_limit=2)
    assert ctx.engine_kind(5, None) == (None, True)
    assert ctx.engine_kind(3, 1 << 20) == (1 << 20, True)
    assert ctx.engine_kind(4, None) == (None, False)  # the room is given out
    # An agent made again (restored, restarted) keeps its kind.
    assert ctx.engine_kind(5, None) == (None, True)
    assert ctx.engine_kind(4, None) == (None, False)
    assert roomy_instances(65_530) == 16_382
    assert roomy_instances(3) == 0
    assert roomy_instances(10_000_000) == 65_536  # address space: 16 TiB at most


def test_the_room_goes_first_to_agents_of_modules_few_share() -> None:
    # 6 relays and, declared last, one sink: with room for 3, the sink gets it first (it is
    # the one likely to grow), then the relays in id order.
    loads = [AgentLoad(i, f"relay-{i}", "relay", (), 7, 1, b"{}") for i in range(6)]
    loads.append(AgentLoad(6, "sink", "sink", (), 7, 1, b"{}"))
    ctx = WorkerContext(roomy_limit=3)
    ctx.plan_room(loads)
    assert [i for i in range(7) if ctx.engine_kind(i, None)[1]] == [0, 1, 6]
    # Planned again (a worker told the same loads), nobody changes kind.
    ctx.plan_room(loads)
    assert [i for i in range(7) if ctx.engine_kind(i, None)[1]] == [0, 1, 6]
    # With room for all, planning changes nothing: they get it as they come.
    roomy = WorkerContext(roomy_limit=10)
    roomy.plan_room(loads)
    assert all(roomy.engine_kind(i, None)[1] for i in range(7))


def test_agents_with_and_without_room_compute_the_same() -> None:
    # The worker's first agent has room, its second has none (limit 1).
    ctx = _context(roomy_limit=1)
    roomy, moving = _grow_host(ctx, 0), _grow_host(ctx, 1)
    assert ctx.engine_kind(0, None)[1] and not ctx.engine_kind(1, None)[1]
    for pages in (1, 15, 48):  # to 4 MiB, page by page
        a, b = roomy.deliver(1, 0, 1, _pages(pages)), moving.deliver(1, 0, 1, _pages(pages))
        assert a.ok and b.ok, (a.error, b.error)
        assert roomy.memory_size == moving.memory_size
    assert moving.memory_size == 65 * 65536


def test_the_memory_limit_holds_without_room() -> None:
    errors = []
    for roomy_limit in (1, 0):
        ctx = _context(roomy_limit)
        host = _grow_host(ctx, 0, memory_bytes=2 << 20)
        outcome = host.deliver(1, 0, 1, _pages(40))  # 41 pages > 32
        assert not outcome.ok
        errors.append(outcome.error)
        assert host.memory_size == 2 << 20
    assert errors[0] == errors[1]


@pytest.mark.skipif(not MAPS.exists(), reason="no /proc/self/maps: not Linux")
def test_agents_without_room_cost_no_mapping_of_their_own() -> None:
    def mappings() -> int:
        return len(MAPS.read_bytes().splitlines())

    ctx = _context(roomy_limit=200)
    hosts = [_grow_host(ctx, 0)]  # the engines and the module, made once
    start = mappings()
    hosts += [_grow_host(ctx, i) for i in range(1, 200)]
    roomy = mappings() - start
    hosts += [_grow_host(ctx, i) for i in range(200, 1200)]
    without = mappings() - start - roomy
    # Each with room: its memory and the room behind it. Without: merged with neighbours.
    assert 190 * 2 <= roomy <= 199 * 2 + 40, roomy
    assert without <= 60, without
    assert len(hosts) == 1200


def test_running_out_of_mappings_says_so() -> None:
    error = "Cannot allocate memory (os error 12)"
    hint = out_of_mappings_hint(error, mappings=65_000, limit=65_530)
    assert "65,000 memory mappings" in hint and "vm.max_map_count = 65,530" in hint
    assert "more workers" in hint
    assert out_of_mappings_hint(error, mappings=1_000, limit=65_530) == ""
    assert out_of_mappings_hint("out of fuel", mappings=65_000, limit=65_530) == ""


_HOST_SIZE = """
import json, struct, sys
from qhybrid.runtime.wasm_pool._abi import compile_module, make_engine
from qhybrid.runtime.wasm_pool._agent import AgentHost, WorkerContext
from qhybrid.runtime.wasm_pool._protocol import AgentLoad
relay = sys.argv[1]
ctx = WorkerContext()
ctx.add_module("relay", bytes(compile_module(make_engine(), __import__("pathlib").Path(relay))
                              .serialize()), b"")
hosts = [AgentHost(ctx, AgentLoad(i, f"r{i}", "relay", (0, 1), 2, 1, b"{}")) for i in (0, 1)]
assert hosts[1].deliver(1, 0, 1, struct.pack("<qq", 1, 0)).ok
print(json.dumps([sorted(vars(hosts[1])), sys.getsizeof(vars(hosts[1]))]))
"""


def test_an_agent_host_stays_small() -> None:
    # CPython (3.11) shares one key table among the dicts of a class's instances while the
    # keys they use together stay under 30; past that each of 100,000 agents has a dict of
    # its own (1.3 KiB more per agent). The table is per process and fills with every key
    # any instance sets, so this looks at a fresh interpreter, as a worker is: a relay's host,
    # started and after a message, keeps few enough attributes to leave room for the few
    # that other kinds of agent add (``_next_job``, ``_next_request``, ``_mem``).
    relay = ROOT / "resources" / "agents" / "relay.wat"
    found = subprocess.run(
        [sys.executable, "-c", _HOST_SIZE, str(relay)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert found.returncode == 0, found.stderr
    attributes, size = json.loads(found.stdout)
    assert len(attributes) <= 27, attributes
    assert size < 1000, (size, attributes)
