"""Scenario files: a valid file gives the right specs; each mistake gives file, line and field."""

from __future__ import annotations

import json
import os
import pickle
import resource
import struct
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qhybrid.runtime._scenario import (
    MAX_SCENARIO_BYTES,
    AgentGrants,
    AgentLimits,
    AgentSpec,
    DirGrant,
    LlmSpec,
    MemorySpec,
    MessageSpec,
    Scenario,
    ScenarioError,
    StopSpec,
    TaskSpec,
    TensorSpec,
    ToolSpec,
    load_scenario,
    parse_scenario,
)

FULL = """\
name = "demo"
description = "a relay ring"
seed = 42

[stop]
max_ticks = 1000
max_messages = 50000
timeout_s = 120

[[agents]]
name = "relay"
module = "../agents/relay.wat"
count = 3
on_error = "skip"
config = { hops = 5, tags = ["a", "b"], ratio = 0.5, loud = true }

[[agents]]
name = "sink"
module = "../agents/sink.wasm"

[agents.config]
"odd key" = "x"

[[messages]]
to = "relay-0"
kind = 1
payload = "héllo"

[[messages]]
to = "relay"
payload_i64 = [
  5,
  -7,
]
at = 3
priority = -2

[[messages]]
to = "sink"
payload_hex = "00ff 10"
priority = 1000

[[tensors]]
name = "a"
shape = [128, 64]
init = "random"

[[tensors]]
name = "b"
shape = [64, 32]
dtype = "float32"
init = "ones"

[[tasks]]
name = "proj"
kind = "gpu"
op = "matmul"
inputs = ["a", "b"]
output = "c"
at = 2
notify = "sink"

[[tasks]]
name = "double"
kind = "cpu"
op = "scale"
inputs = ["c"]
output = "d"
params = { factor = 2 }
at = 3
priority = 5
notify = "relay"
"""

# The line of each field in FULL, as an editor shows it.
LINE = {text.split(" =")[0]: n for n, text in enumerate(FULL.splitlines(), start=1)}

MINIMAL = """\
[[agents]]
name = "relay"
module = "../agents/relay.wat"
"""


@pytest.fixture
def scenario_dir(tmp_path: Path) -> Path:
    """``<tmp>/scenarios`` for scenario files, beside ``<tmp>/agents`` with two module files."""
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "relay.wat").write_text("(module)")
    (agents / "sink.wasm").write_bytes(b"\0asm\1\0\0\0")
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    return scenarios


def write(directory: Path, text: str, name: str = "demo.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(directory: Path, text: str) -> ScenarioError:
    path = write(directory, text)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    return caught.value


def replaced(old: str, new: str) -> str:
    """FULL with one line changed (the line numbers of the others stay put)."""
    assert FULL.count(old) == 1, old
    return FULL.replace(old, new)


# --- a valid file ---------------------------------------------------------------------------------


def test_full_example_parses_into_specs(scenario_dir: Path) -> None:
    path = write(scenario_dir, FULL)
    scenario = load_scenario(path)
    agents_dir = (scenario_dir.parent / "agents").resolve()

    assert scenario.name == "demo"
    assert scenario.description == "a relay ring"
    assert scenario.seed == 42
    assert scenario.source == path
    assert scenario.stop == StopSpec(max_ticks=1000, max_messages=50000, timeout_s=120.0)
    assert isinstance(scenario.stop.timeout_s, float)

    relay, sink = scenario.agents
    assert relay.name == "relay"
    assert relay.module == agents_dir / "relay.wat"
    assert relay.module.is_absolute()
    assert relay.count == 3
    assert relay.on_error == "skip"
    assert dict(relay.config) == {"hops": 5, "tags": ("a", "b"), "ratio": 0.5, "loud": True}
    assert relay.instances == ("relay-0", "relay-1", "relay-2")
    assert sink == AgentSpec("sink", agents_dir / "sink.wasm", 1, "fail", {"odd key": "x"})
    assert sink.instances == ("sink",)
    assert scenario.agent_names == ("relay-0", "relay-1", "relay-2", "sink")

    assert scenario.messages == (
        MessageSpec(to=("relay-0",), kind=1, payload="héllo".encode(), at=0, priority=0),
        MessageSpec(
            to=("relay-0", "relay-1", "relay-2"),
            kind=0,
            payload=struct.pack("<qq", 5, -7),
            at=3,
            priority=-2,
        ),
        MessageSpec(to=("sink",), kind=0, payload=b"\x00\xff\x10", at=0, priority=1000),
    )

    assert scenario.tensors == (
        TensorSpec("a", (128, 64), "<f4", "random"),
        TensorSpec("b", (64, 32), "<f4", "ones"),
    )
    assert not any(tensor.writable for tensor in scenario.tensors)  # read-only to agents

    proj, double = scenario.tasks
    assert proj == TaskSpec(
        name="proj",
        kind="gpu",
        op="matmul",
        inputs=("a", "b"),
        output="c",
        output_shape=(128, 32),
        output_dtype="<f4",
        params={},
        at=2,
        priority=0,
        notify=("sink",),
    )
    assert double.output_shape == (128, 32)
    assert dict(double.params) == {"factor": 2.0}
    assert isinstance(double.params["factor"], float)
    assert (double.at, double.priority) == (3, 5)
    assert double.notify == ("relay-0", "relay-1", "relay-2")


def test_defaults_of_a_minimal_file(scenario_dir: Path) -> None:
    scenario = load_scenario(write(scenario_dir, MINIMAL, name="ring.toml"))
    assert scenario.name == "ring"  # the file's stem
    assert scenario.description == ""
    assert scenario.seed == 0
    assert scenario.stop == StopSpec(max_ticks=10000, max_messages=None, timeout_s=300.0)
    (agent,) = scenario.agents
    assert (agent.count, agent.on_error, dict(agent.config)) == (1, "fail", {})
    assert agent.limits == AgentLimits(None, None, None, None)
    assert agent.grants == AgentGrants(dirs=(), env=())
    assert agent.max_restarts == 3
    assert scenario.agent_names == ("relay",)
    assert (scenario.messages, scenario.tensors, scenario.tasks) == ((), (), ())


def test_parse_scenario_from_text(scenario_dir: Path) -> None:
    scenario = parse_scenario(MINIMAL, base_dir=scenario_dir)
    assert scenario.name == "scenario"
    assert scenario.source is None
    assert scenario.agents[0].module == (scenario_dir.parent / "agents/relay.wat").resolve()
    # source gives the name and, without base_dir, the folder modules are relative to.
    named = parse_scenario(MINIMAL, source=scenario_dir / "x.toml")
    assert named.name == "x"
    assert named.agents[0].module == scenario.agents[0].module


def test_modules_are_relative_to_the_scenario_not_the_working_directory(
    scenario_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(scenario_dir, MINIMAL)
    monkeypatch.chdir(scenario_dir.parent)  # from here "../agents/relay.wat" does not exist
    assert load_scenario(path).agents[0].module.exists()


def test_field_lines_follow_the_file(scenario_dir: Path) -> None:
    lines = load_scenario(write(scenario_dir, FULL)).field_lines
    assert lines["seed"] == LINE["seed"]
    assert lines["stop"] == LINE["[stop]"]
    assert lines["stop.timeout_s"] == LINE["timeout_s"]
    assert lines["agents[0]"] == 10
    assert lines["agents[0].count"] == 13
    assert lines["agents[0].config.hops"] == 15  # inside an inline table
    assert lines["agents[1].config"] == 21  # [agents.config] belongs to the latest [[agents]]
    assert lines['agents[1].config."odd key"'] == 22
    assert lines["messages[1].payload_i64"] == 31
    assert lines["messages[1].payload_i64[1]"] == 33  # an array over several lines
    assert lines["tasks[1].params.factor"] == 69


def test_line_scanner_skips_strings_and_comments(scenario_dir: Path) -> None:
    text = textwrap.dedent(
        '''\
        description = """
        [[agents]]
        seed = "not a key" # still inside the string
        """
        name = 'its' # comment with = sign

        [[agents]]  # a comment
        name = "relay"
        module = "../agents/relay.wat"
        count = 0
        '''
    )
    error = load_error(scenario_dir, text)
    assert error.field == "agents[0].count"
    assert error.line == 10


def test_inline_array_of_tables(scenario_dir: Path) -> None:
    text = textwrap.dedent(
        """\
        agents = [
          { name = "relay", module = "../agents/relay.wat" },
          { name = "sink", module = "../agents/sink.wasm", count = -1 },
        ]
        """
    )
    error = load_error(scenario_dir, text)
    assert str(error).endswith(
        "demo.toml:3: agents[1].count: expected an integer from 0 to 100000, got -1"
    )


def test_with_seed(scenario_dir: Path) -> None:
    scenario = load_scenario(write(scenario_dir, FULL))
    other = scenario.with_seed(7)
    assert other.seed == 7
    assert scenario.seed == 42
    assert other.agents == scenario.agents
    assert other.tasks == scenario.tasks
    with pytest.raises(ScenarioError, match="seed: expected an integer"):
        scenario.with_seed(-1)
    with pytest.raises(ScenarioError, match="seed"):
        scenario.with_seed(2**63)


def test_specs_are_frozen(scenario_dir: Path) -> None:
    scenario = load_scenario(write(scenario_dir, FULL))
    with pytest.raises(AttributeError):
        scenario.seed = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        scenario.agents[0].config["hops"] = 6  # type: ignore[index]
    # Still hashable (the mappings are left out of the hash) and equal to a fresh load.
    assert hash(scenario) == hash(load_scenario(scenario.source or Path()))
    assert scenario == load_scenario(scenario.source or Path())


# --- bad input: file, line, field and a useful message --------------------------------------------


def test_syntax_error_names_the_line(scenario_dir: Path) -> None:
    error = load_error(scenario_dir, replaced("count = 3", "count = = 3"))
    assert error.line == 13
    assert str(error).startswith(f"{scenario_dir / 'demo.toml'}:13: invalid TOML:")
    assert "column" in error.message


def test_duplicate_toml_key_is_a_syntax_error(scenario_dir: Path) -> None:
    error = load_error(scenario_dir, replaced("seed = 42", "seed = 42\nseed = 43"))
    assert error.line == 4
    assert "invalid TOML" in str(error)


def test_unknown_field_suggests_the_right_one(scenario_dir: Path) -> None:
    error = load_error(scenario_dir, replaced("count = 3", "cuont = 3"))
    assert str(error).startswith(f"{scenario_dir / 'demo.toml'}:13: agents[0].cuont: ")
    assert 'unknown field "cuont" in [[agents]] (did you mean "count"?)' in error.message
    assert "allowed: name, module, count, on_error, config" in error.message


@pytest.mark.parametrize(
    ("old", "new", "field", "line", "expected"),
    [
        ("seed = 42", "sed = 42", "sed", 3, 'did you mean "seed"?'),
        ("max_ticks = 1000", "max_tick = 1000", "stop.max_tick", 6, 'did you mean "max_ticks"?'),
        ("priority = -2", "prio = -2", "messages[1].prio", 36, "allowed: to, kind, payload"),
        ('init = "ones"', 'intt = "ones"', "tensors[1].intt", 52, 'did you mean "init"?'),
        ('notify = "sink"', 'notfy = "sink"', "tasks[0].notfy", 61, 'did you mean "notify"?'),
    ],
)
def test_unknown_fields_everywhere(
    scenario_dir: Path, old: str, new: str, field: str, line: int, expected: str
) -> None:
    error = load_error(scenario_dir, replaced(old, new))
    assert (error.field, error.line) == (field, line)
    assert expected in str(error)


@pytest.mark.parametrize(
    ("old", "new", "field", "expected"),
    [
        (
            "count = 3",
            'count = "x"',
            "agents[0].count",
            'expected an integer from 0 to 100000, got "x"',
        ),
        ("count = 3", "count = true", "agents[0].count", "got true (a boolean)"),
        ("count = 3", "count = 3.0", "agents[0].count", "write 3 without a decimal point"),
        ("count = 3", "count = 100001", "agents[0].count", "got 100001"),
        ("seed = 42", "seed = -1", "seed", "expected an integer >= 0, got -1"),
        ("seed = 42", "seed = 9223372036854775808", "seed", "fits in 64 bits"),
        ("timeout_s = 120", "timeout_s = 0", "stop.timeout_s", "expected a finite number > 0"),
        ("timeout_s = 120", "timeout_s = inf", "stop.timeout_s", "finite"),
        ("max_ticks = 1000", "max_ticks = 0", "stop.max_ticks", "expected an integer >= 1"),
        ('on_error = "skip"', 'on_error = "skp"', "agents[0].on_error", 'did you mean "skip"?'),
        ('name = "relay"', 'name = "re-lay"', "agents[0].name", "letters, digits and '_'"),
        ('name = "demo"', "name = 3", "name", "expected a string, got 3"),
        ("kind = 1", "kind = 2130706432", "messages[0].kind", "reserved for the runtime"),
        ("kind = 1", "kind = -1", "messages[0].kind", "expected an integer from 0 to"),
        ("priority = -2", "priority = 1001", "messages[1].priority", "from -1000 to 1000"),
        (
            "  -7,",
            '  "7",',
            "messages[1].payload_i64[1]",
            'expected a 64-bit signed integer, got "7"',
        ),
        ('payload_hex = "00ff 10"', 'payload_hex = "0g"', "messages[2].payload_hex", "hex digits"),
        ('to = "relay-0"', "to = 1", "messages[0].to", "expected a string, got 1"),
        ("shape = [128, 64]", "shape = [128, 0]", "tensors[0].shape[1]", "got 0"),
        ("shape = [128, 64]", "shape = []", "tensors[0].shape", "1 to 4 positive integers"),
        ("shape = [128, 64]", "shape = [1, 1, 1, 1, 1]", "tensors[0].shape", "of length 5"),
        ("shape = [128, 64]", "shape = [65536, 65536]", "tensors[0].shape", "at most 268435456"),
        ('dtype = "float32"', 'dtype = "float64"', "tensors[1].dtype", 'expected one of "float32"'),
        ('init = "random"', 'init = "randn"', "tensors[0].init", 'did you mean "random"?'),
        ('kind = "gpu"', 'kind = "tpu"', "tasks[0].kind", 'expected one of "gpu", "cpu"'),
        ('op = "matmul"', 'op = "matmull"', "tasks[0].op", 'did you mean "matmul"?'),
        ('inputs = ["a", "b"]', 'inputs = "a"', "tasks[0].inputs", "expected an array of names"),
        (
            "params = { factor = 2 }",
            "params = { fctor = 2 }",
            "tasks[1].params.fctor",
            'no parameter "fctor" (did you mean "factor"?)',
        ),
        (
            "params = { factor = 2 }",
            'params = { factor = "2" }',
            "tasks[1].params.factor",
            'expected a number, got "2"',
        ),
        (
            "config = { hops = 5,",
            "config = { hops = [{ a = 1 }],",
            "agents[0].config.hops[0]",
            "got a table",
        ),
    ],
)
def test_wrong_types_and_ranges(
    scenario_dir: Path, old: str, new: str, field: str, expected: str
) -> None:
    error = load_error(scenario_dir, replaced(old, new))
    assert error.field == field
    text = replaced(old, new)
    assert error.line == text[: text.index(new)].count("\n") + 1  # the line that was edited
    assert f":{error.line}: {field}: " in str(error)
    assert expected in error.message


def test_missing_required_field_points_at_the_entry(scenario_dir: Path) -> None:
    error = load_error(scenario_dir, replaced('module = "../agents/sink.wasm"', ""))
    assert (error.field, error.line) == ("agents[1].module", 17)  # the [[agents]] line
    assert 'required field "module" is missing' in error.message


def test_missing_module_file_gives_the_resolved_path(scenario_dir: Path) -> None:
    error = load_error(scenario_dir, replaced("../agents/relay.wat", "../agents/nope.wat"))
    expected = (scenario_dir.parent / "agents" / "nope.wat").resolve()
    assert str(error) == (
        f"{scenario_dir / 'demo.toml'}:12: agents[0].module: module file not found: {expected}"
    )


def test_module_suffix_and_directory(scenario_dir: Path) -> None:
    error = load_error(scenario_dir, replaced("../agents/relay.wat", "../agents/relay.txt"))
    assert "expected a .wasm, .wat or .py file" in str(error)
    (scenario_dir / "dir.wasm").mkdir()
    error = load_error(scenario_dir, replaced("../agents/relay.wat", "dir.wasm"))
    assert "not a file" in str(error)


def test_unknown_message_target_lists_known_ones(scenario_dir: Path) -> None:
    error = load_error(scenario_dir, replaced('to = "relay-0"', 'to = "relya-0"'))
    assert (error.field, error.line) == ("messages[0].to", 25)
    assert 'unknown target "relya-0" (did you mean "relay-0"?)' in error.message
    assert "known: relay (or one of relay-0 ... relay-2), sink" in error.message


def test_unknown_notify_target(scenario_dir: Path) -> None:
    error = load_error(scenario_dir, replaced('notify = "sink"', 'notify = "relay-3"'))
    assert (error.field, error.line) == ("tasks[0].notify", 61)
    assert 'unknown target "relay-3"' in error.message


def test_task_input_produced_at_the_same_tick(scenario_dir: Path) -> None:
    error = load_error(scenario_dir, replaced("at = 3\npriority = 5", "at = 2\npriority = 5"))
    assert (error.field, error.line) == ("tasks[1].inputs[0]", 67)
    assert str(error).startswith(f"{scenario_dir / 'demo.toml'}:67: tasks[1].inputs[0]: ")
    assert '"c" is the output of task "proj" at tick 2' in error.message
    assert "not before this task's tick 2" in error.message


def test_task_input_order_is_by_tick_not_by_declaration(scenario_dir: Path) -> None:
    # "double" (tick 3) is declared before "proj" (tick 2), whose output it reads: fine.
    head, proj, double = FULL.split("[[tasks]]")
    scenario = load_scenario(write(scenario_dir, f"{head}[[tasks]]{double}[[tasks]]{proj}"))
    assert [t.name for t in scenario.tasks] == ["double", "proj"]
    assert scenario.tasks[0].output_shape == (128, 32)


def test_task_cannot_use_its_own_output(scenario_dir: Path) -> None:
    error = load_error(scenario_dir, replaced('inputs = ["c"]', 'inputs = ["d"]'))
    assert error.field == "tasks[1].inputs[0]"
    assert "cannot take its own output" in error.message


def test_unknown_task_input(scenario_dir: Path) -> None:
    error = load_error(scenario_dir, replaced('inputs = ["a", "b"]', 'inputs = ["a", "bb"]'))
    assert (error.field, error.line) == ("tasks[0].inputs[1]", 58)
    assert 'unknown input "bb" (did you mean "b"?)' in error.message
    assert "a, b, c, d" in error.message


def test_op_shape_mismatch(scenario_dir: Path) -> None:
    error = load_error(scenario_dir, replaced("shape = [64, 32]", "shape = [32, 16]"))
    assert (error.field, error.line) == ("tasks[0].inputs", 58)
    assert "matmul inner dimensions differ" in error.message
    assert "inputs: a [128, 64], b [32, 16]" in error.message


def test_op_arity(scenario_dir: Path) -> None:
    error = load_error(scenario_dir, replaced('inputs = ["c"]', 'inputs = ["c", "a"]'))
    assert error.field == "tasks[1].inputs"
    assert "scale takes 1 inputs, got 2" in error.message


@pytest.mark.parametrize(
    ("old", "new", "field", "line", "expected"),
    [
        (
            'name = "sink"',
            'name = "relay"',
            "agents[1].name",
            18,
            'duplicate agent name "relay": already used by agents[0] (line 10)',
        ),
        ('name = "b"', 'name = "a"', "tensors[1].name", 49, 'duplicate tensor name "a"'),
        (
            'output = "d"',
            'output = "c"',
            "tasks[1].output",
            68,
            'duplicate name (task output) "c": already used by tasks[0]',
        ),
        (
            'output = "d"',
            'output = "b"',
            "tasks[1].output",
            68,
            'duplicate name (tensor) "b": already used by tensors[1]',
        ),
        ('name = "double"', 'name = "proj"', "tasks[1].name", 64, 'duplicate task name "proj"'),
    ],
)
def test_duplicate_names(
    scenario_dir: Path, old: str, new: str, field: str, line: int, expected: str
) -> None:
    error = load_error(scenario_dir, replaced(old, new))
    assert (error.field, error.line) == (field, line)
    assert expected in error.message


def test_tick_not_before_max_ticks(scenario_dir: Path) -> None:
    error = load_error(scenario_dir, replaced("at = 3\npriority = -2", "at = 1000\npriority = -2"))
    assert (error.field, error.line) == ("messages[1].at", 35)
    assert "tick 1000 is not before stop.max_ticks = 1000" in error.message


def test_at_most_one_payload(scenario_dir: Path) -> None:
    error = load_error(
        scenario_dir, replaced('payload = "héllo"', 'payload = "a"\npayload_hex = "00"')
    )
    assert (error.field, error.line) == ("messages[0].payload_hex", 28)
    assert "at most one of payload, payload_i64 and payload_hex" in error.message


def test_no_agents(scenario_dir: Path) -> None:
    error = load_error(scenario_dir, 'name = "empty"\n')
    assert (
        str(error)
        == f"{scenario_dir / 'demo.toml'}: agents: at least one [[agents]] entry is required"
    )
    error = load_error(scenario_dir, "agents = []\n")
    assert (error.field, error.line) == ("agents", 1)
    assert "at least one [[agents]] entry is required" in error.message


def test_single_table_instead_of_array_of_tables(scenario_dir: Path) -> None:
    error = load_error(scenario_dir, '[agents]\nname = "relay"\nmodule = "x.wat"\n')
    assert (error.field, error.line) == ("agents", 1)
    assert "write [[agents]] for each entry, not [agents]" in error.message


# --- limits, grants, restarts and writable tensors ------------------------------------------------

SANDBOX = """\
[[agents]]
name = "worker"
module = "../agents/relay.wat"
count = 2
on_error = "restart"
max_restarts = 5

[agents.limits]
fuel = 1000000
memory_mb = 1.5
timeout_ms = 250
stack_kb = 512

[agents.grants]
dirs = [
  { host = "data", guest = "/data/", mode = "rw" },
  { host = "../agents", guest = "/mods" },
]
env = { ZED = "last", ALPHA = "first" }

[[agents]]
name = "sink"
module = "../agents/sink.wasm"
on_error = "skip"
limits = { fuel = 5, memory_mb = 0.01 }
grants = { env = { B = "b" }, dirs = [{ host = "data", guest = "/in" }] }

[[agents]]
name = "probe"
module = "../agents/relay.wat"

[[agents.grants.dirs]]
host = "data"
guest = "/in"

[[agents.grants.dirs]]
host = "."
guest = "/here/./x"
mode = "ro"

[agents.grants.env]
HOME = "/in"

[[tensors]]
name = "w"
shape = [4]
writable = true

[[tensors]]
name = "r"
shape = [4]
writable = false
"""

SANDBOX_LINE = {text.split(" =")[0]: n for n, text in enumerate(SANDBOX.splitlines(), start=1)}


@pytest.fixture
def sandbox_dir(scenario_dir: Path) -> Path:
    """``scenario_dir`` with the ``data`` folder that SANDBOX grants."""
    (scenario_dir / "data").mkdir()
    return scenario_dir


def sandbox_replaced(old: str, new: str) -> str:
    """SANDBOX with one piece changed."""
    assert SANDBOX.count(old) == 1, old
    return SANDBOX.replace(old, new)


def test_limits_grants_and_restarts_parse(sandbox_dir: Path) -> None:
    scenario = load_scenario(write(sandbox_dir, SANDBOX))
    data = (sandbox_dir / "data").resolve()
    worker, sink, probe = scenario.agents

    assert (worker.on_error, worker.max_restarts) == ("restart", 5)
    assert worker.limits == AgentLimits(
        fuel=1_000_000,
        memory_bytes=24 * 65536,  # 1.5 MiB is exactly 24 pages
        timeout_ms=250,
        stack_bytes=512 * 1024,
    )
    assert worker.grants == AgentGrants(
        dirs=(
            DirGrant(host=data, guest="/data", mode="rw"),  # trailing "/" dropped
            DirGrant(host=(sandbox_dir.parent / "agents").resolve(), guest="/mods", mode="ro"),
        ),
        env=(("ALPHA", "first"), ("ZED", "last")),  # sorted by name
    )
    assert all(grant.host.is_absolute() and grant.host.is_dir() for grant in worker.grants.dirs)

    # Inline tables; 0.01 MiB is less than a page, so it is one page.
    assert (sink.on_error, sink.max_restarts) == ("skip", 3)
    assert sink.limits == AgentLimits(fuel=5, memory_bytes=65536)
    assert sink.grants == AgentGrants(dirs=(DirGrant(data, "/in", "ro"),), env=(("B", "b"),))

    # [[agents.grants.dirs]] and [agents.grants.env] after an [[agents]] header.
    assert probe.limits == AgentLimits()
    assert probe.grants.dirs == (
        DirGrant(data, "/in", "ro"),
        DirGrant(sandbox_dir.resolve(), "/here/x", "ro"),
    )
    assert probe.grants.env == (("HOME", "/in"),)

    assert [(t.name, t.writable) for t in scenario.tensors] == [("w", True), ("r", False)]
    # New fields take part in == and hash() like the others.
    assert scenario == load_scenario(scenario.source or Path())
    assert hash(scenario) == hash(load_scenario(scenario.source or Path()))


@pytest.mark.parametrize(
    ("memory_mb", "pages"),
    [("1", 16), ("0.5", 8), ("0.1", 1), ("0.0001", 1), ("0.2", 3), ("4096", 65536)],
)
def test_memory_rounds_down_to_whole_pages(sandbox_dir: Path, memory_mb: str, pages: int) -> None:
    text = sandbox_replaced("memory_mb = 1.5", f"memory_mb = {memory_mb}")
    scenario = load_scenario(write(sandbox_dir, text))
    assert scenario.agents[0].limits.memory_bytes == pages * 65536


def test_agent_spec_built_in_code_keeps_its_positional_fields(tmp_path: Path) -> None:
    spec = AgentSpec("a", tmp_path / "a.wat", 2, "restart", {}, AgentLimits(fuel=9))
    assert (spec.count, spec.on_error, spec.limits.fuel) == (2, "restart", 9)
    assert (spec.grants, spec.max_restarts) == (AgentGrants(), 3)
    assert TensorSpec("t", (2,)).writable is False


def test_sandbox_field_lines(sandbox_dir: Path) -> None:
    lines = load_scenario(write(sandbox_dir, SANDBOX)).field_lines
    assert lines["agents[0].max_restarts"] == SANDBOX_LINE["max_restarts"]
    assert lines["agents[0].limits"] == SANDBOX_LINE["[agents.limits]"]
    assert lines["agents[0].limits.fuel"] == SANDBOX_LINE["fuel"]
    assert lines["agents[0].limits.stack_kb"] == SANDBOX_LINE["stack_kb"]
    assert lines["agents[0].grants"] == SANDBOX_LINE["[agents.grants]"]
    assert lines["agents[0].grants.dirs[1]"] == 17  # an inline table in a multi-line array
    assert lines["agents[0].grants.dirs[1].host"] == 17
    assert lines["agents[0].grants.env.ALPHA"] == 19
    assert lines["agents[1].limits.memory_mb"] == 25  # inside an inline table
    assert lines["agents[1].grants.dirs[0].guest"] == 26  # an inline table in an inline table
    assert lines["agents[2].grants.dirs[0]"] == 32  # [[agents.grants.dirs]] of the latest group
    assert lines["agents[2].grants.dirs[1]"] == 36
    assert lines["agents[2].grants.dirs[1].mode"] == 39
    assert lines["agents[2].grants.env"] == 41
    assert lines["agents[2].grants.env.HOME"] == 42
    assert lines["tensors[0].writable"] == 47
    assert lines["tensors[1].writable"] == SANDBOX_LINE["writable"] == 52


@pytest.mark.parametrize(
    ("old", "new", "field", "expected"),
    [
        (
            "fuel = 1000000",
            "fule = 1000000",
            "agents[0].limits.fule",
            'unknown field "fule" in [agents.limits] (did you mean "fuel"?); '
            "allowed: fuel, memory_mb, timeout_ms, stack_kb",
        ),
        ("fuel = 1000000", "fuel = 0", "agents[0].limits.fuel", "expected an integer >= 1, got 0"),
        ("fuel = 1000000", "fuel = 1e6", "agents[0].limits.fuel", "without a decimal point"),
        (
            "fuel = 5,",
            "fuel = 0,",
            "agents[1].limits.fuel",
            "expected an integer >= 1, got 0",
        ),
        (
            "memory_mb = 1.5",
            "memory_mb = -1",
            "agents[0].limits.memory_mb",
            "expected a number of MiB, > 0 and at most 4096, got -1",
        ),
        ("memory_mb = 1.5", "memory_mb = 0", "agents[0].limits.memory_mb", "> 0"),
        ("memory_mb = 1.5", "memory_mb = 4097", "agents[0].limits.memory_mb", "got 4097"),
        ("memory_mb = 1.5", "memory_mb = nan", "agents[0].limits.memory_mb", "got nan"),
        ("memory_mb = 1.5", 'memory_mb = "1"', "agents[0].limits.memory_mb", 'got "1"'),
        ("memory_mb = 1.5", "memory_mb = true", "agents[0].limits.memory_mb", "(a boolean)"),
        (
            "timeout_ms = 250",
            "timeout_ms = 0.5",
            "agents[0].limits.timeout_ms",
            "expected an integer >= 1, got 0.5",
        ),
        (
            "stack_kb = 512",
            "stack_kb = 8",
            "agents[0].limits.stack_kb",
            "expected an integer from 16 to 65536, got 8",
        ),
        ("stack_kb = 512", "stack_kb = 65537", "agents[0].limits.stack_kb", "got 65537"),
        (
            'mode = "rw"',
            'mode = "rx"',
            "agents[0].grants.dirs[0].mode",
            'expected one of "ro", "rw", got "rx"',
        ),
        (
            'guest = "/mods"',
            'guest = "mods"',
            "agents[0].grants.dirs[1].guest",
            'expected an absolute POSIX path (starting with "/"), got "mods"',
        ),
        (
            'guest = "/mods"',
            'guest = "C:\\\\mods"',
            "agents[0].grants.dirs[1].guest",
            "expected an absolute POSIX path",
        ),
        (
            'guest = "/mods"',
            'guest = "/mods/../etc"',
            "agents[0].grants.dirs[1].guest",
            "cannot contain '..'",
        ),
        (
            'guest = "/mods"',
            'guest = "/data"',
            "agents[0].grants.dirs[1].guest",
            'duplicate guest path "/data": already used by agents[0].grants.dirs[0] (line 16)',
        ),
        ('guest = "/mods"', "guest = 1", "agents[0].grants.dirs[1].guest", "expected a string"),
        (
            'guest = "/mods"',
            'guets = "/mods"',
            "agents[0].grants.dirs[1].guets",
            'unknown field "guets" in a directory grant (did you mean "guest"?)',
        ),
        (
            'guest = "/here/./x"',
            'guest = "/in/"',
            "agents[2].grants.dirs[1].guest",
            'duplicate guest path "/in"',
        ),
        (
            'ZED = "last"',
            '1ZED = "last"',
            "agents[0].grants.env.1ZED",
            "expected a variable name made of letters, digits and '_'",
        ),
        (
            'ZED = "last"',
            '"Z D" = "last"',
            'agents[0].grants.env."Z D"',
            'does not start with a digit, got "Z D"',
        ),
        ('ZED = "last"', "ZED = 1", "agents[0].grants.env.ZED", "expected a string, got 1"),
        ('HOME = "/in"', "HOME = true", "agents[2].grants.env.HOME", "got true (a boolean)"),
        ('B = "b"', 'B = "a\\u0000b"', "agents[1].grants.env.B", "cannot contain a NUL"),
        (
            'env = { ZED = "last", ALPHA = "first" }',
            'env = ["ZED=last"]',
            "agents[0].grants.env",
            "expected a table of NAME = ",
        ),
        (
            "dirs = [\n",
            "dris = [\n",
            "agents[0].grants.dris",
            'unknown field "dris" in [agents.grants] (did you mean "dirs"?); allowed: dirs, env',
        ),
        (
            "limits = { fuel = 5, memory_mb = 0.01 }",
            "limits = 5",
            "agents[1].limits",
            "expected a table ([agents.limits]), got 5",
        ),
        (
            'on_error = "restart"',
            'on_error = "retry"',
            "agents[0].on_error",
            'expected one of "fail", "skip", "restart", got "retry" (did you mean "restart"?)',
        ),
        (
            "max_restarts = 5",
            "max_restarts = 1001",
            "agents[0].max_restarts",
            "expected an integer from 0 to 1000, got 1001",
        ),
        ("max_restarts = 5", "max_restarts = -1", "agents[0].max_restarts", "got -1"),
        (
            'on_error = "skip"',
            'on_error = "skip"\nmax_restarts = 2',
            "agents[1].max_restarts",
            'max_restarts is used only with on_error = "restart"; this group has on_error = "skip"',
        ),
        (
            "writable = true",
            'writable = "yes"',
            "tensors[0].writable",
            'expected true or false, got "yes"',
        ),
        (
            "writable = false",
            "writable = 0",
            "tensors[1].writable",
            "expected true or false, got 0",
        ),
    ],
)
def test_bad_limits_grants_and_restarts(
    sandbox_dir: Path, old: str, new: str, field: str, expected: str
) -> None:
    text = sandbox_replaced(old, new)
    error = load_error(sandbox_dir, text)
    assert error.field == field
    # The edited line (the last one, when the edit adds a line).
    line = text[: text.index(new)].count("\n") + 1 + new.rstrip("\n").count("\n")
    assert error.line == line
    assert str(error).startswith(f"{sandbox_dir / 'demo.toml'}:{line}: {field}: ")
    assert expected in error.message


def test_missing_grant_dir_gives_the_resolved_path(sandbox_dir: Path) -> None:
    error = load_error(sandbox_dir, sandbox_replaced('host = "../agents"', 'host = "../nope"'))
    expected = (sandbox_dir.parent / "nope").resolve()
    assert str(error) == (
        f"{sandbox_dir / 'demo.toml'}:17: agents[0].grants.dirs[1].host: "
        f"granted directory not found: {expected}"
    )


def test_grant_dir_that_is_a_file(sandbox_dir: Path) -> None:
    error = load_error(sandbox_dir, sandbox_replaced('host = "."', 'host = "../agents/relay.wat"'))
    assert (error.field, error.line) == ("agents[2].grants.dirs[1].host", 37)
    expected = (sandbox_dir.parent / "agents" / "relay.wat").resolve()
    assert error.message == f"granted path is not a directory: {expected}"


def test_grant_dir_missing_field_points_at_the_entry(sandbox_dir: Path) -> None:
    error = load_error(sandbox_dir, sandbox_replaced('guest = "/here/./x"\n', ""))
    assert (error.field, error.line) == (
        "agents[2].grants.dirs[1].guest",
        36,
    )  # [[agents.grants.dirs]]
    assert 'required field "guest" is missing from this directory grant' in error.message


def test_grant_dirs_written_as_a_single_table(sandbox_dir: Path) -> None:
    text = MINIMAL + '\n[agents.grants.dirs]\nhost = "data"\nguest = "/data"\n'
    error = load_error(sandbox_dir, text)
    assert (error.field, error.line) == ("agents[0].grants.dirs", 5)
    assert "write [[agents.grants.dirs]] for each entry, not [agents.grants.dirs]" in error.message


def test_dotted_keys_reach_limits_and_grants(sandbox_dir: Path) -> None:
    text = MINIMAL + 'limits.fuel = 7\ngrants.env.A = "1"\ngrants.env.B = 2\n'
    error = load_error(sandbox_dir, text)
    assert (error.field, error.line) == ("agents[0].grants.env.B", 6)
    scenario = load_scenario(write(sandbox_dir, text.replace("B = 2", 'B = "2"')))
    assert scenario.agents[0].limits.fuel == 7
    assert scenario.agents[0].grants.env == (("A", "1"), ("B", "2"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL.replace("relay.wat", "re\\u0000lay.wat"), "cannot contain a NUL character"),
        (MINIMAL + "[stop]\ntimeout_s = 1" + "0" * 400 + "\n", "expected a finite number > 0"),
        ("seed = " + "1" * 5000 + "\n" + MINIMAL, "invalid TOML: Exceeds the limit"),
    ],
)
def test_odd_values_give_errors_not_tracebacks(
    scenario_dir: Path, text: str, expected: str
) -> None:
    assert expected in str(load_error(scenario_dir, text))


# --- the file itself ------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as caught:
        load_scenario(tmp_path / "nope.toml")
    assert str(caught.value).startswith(f"{tmp_path / 'nope.toml'}: scenario file not found")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="is a directory"):
        load_scenario(tmp_path)


def test_not_utf8(scenario_dir: Path) -> None:
    path = scenario_dir / "bad.toml"
    path.write_bytes(b'seed = 1\nname = "caf\xe9"\n')
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert caught.value.line == 2
    assert "not UTF-8 text (byte 0xe9" in str(caught.value)


def test_utf8_byte_order_mark_is_accepted(scenario_dir: Path) -> None:
    path = scenario_dir / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_scenario(path).agent_names == ("relay",)


# --- errors after loading -------------------------------------------------------------------------


def test_scenario_error_locates_a_field_or_its_parent(scenario_dir: Path) -> None:
    path = write(scenario_dir, FULL)
    scenario = load_scenario(path)
    assert str(scenario.error("agents[0].module", "cannot compile")) == (
        f"{path}:12: agents[0].module: cannot compile"
    )
    # A field that has no line of its own falls back to the nearest parent that has one.
    error = scenario.error("agents[1].on_error", "x")
    assert error.line == 17
    assert scenario.error("nowhere", "x").line is None


def test_scenario_error_format_and_pickle() -> None:
    full = ScenarioError("bad", path="a.toml", line=3, field="seed")
    assert str(full) == "a.toml:3: seed: bad"
    assert str(ScenarioError("bad", path="a.toml")) == "a.toml: bad"
    assert str(ScenarioError("bad", line=3)) == "line 3: bad"
    assert str(ScenarioError("bad", field="seed")) == "seed: bad"
    assert str(ScenarioError("bad")) == "bad"
    copy = pickle.loads(pickle.dumps(full))
    assert (copy.message, copy.path, copy.line, copy.field) == ("bad", "a.toml", 3, "seed")


def test_scenario_built_in_code_has_defaults(tmp_path: Path) -> None:
    scenario = Scenario(
        name="x",
        description="",
        seed=0,
        source=None,
        agents=(AgentSpec("a", tmp_path / "a.wat"),),
    )
    assert scenario.stop == StopSpec()
    assert scenario.agent_names == ("a",)
    assert scenario.error("agents[0]", "x").line is None


# --- the file is bounded and regular (issue 12: `qhybrid --headless /dev/zero` read forever) ------


def _limit_memory_to_2_gib() -> None:
    # Before the fix the whole of /dev/zero was read: without a limit that takes the machine's
    # memory, with it the child ends in a MemoryError traceback, and this test fails cleanly.
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def test_headless_on_a_character_device_exits_2_without_reading_it() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "qhybrid", "--headless", "/dev/zero"],
        preexec_fn=_limit_memory_to_2_gib,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "/dev/zero: not a regular file (a character device), so not a scenario file" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr


@pytest.mark.timeout(20)
def test_a_named_pipe_is_refused_without_opening_it(tmp_path: Path) -> None:
    fifo = tmp_path / "scenario.toml"
    os.mkfifo(fifo)  # opening it to read would wait for a writer forever
    with pytest.raises(ScenarioError, match="not a regular file \\(a named pipe\\)"):
        load_scenario(fifo)


def test_a_file_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.toml"
    with path.open("wb") as stream:
        stream.truncate(MAX_SCENARIO_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert f"at most {MAX_SCENARIO_BYTES} bytes" in str(caught.value)
    assert str(caught.value).startswith(f"{path}: the file is too large for a scenario")


# --- every error has a line (issue 12: mutated files exited 2 with no line number) ----------------


def test_an_unknown_table_created_by_a_dotted_header_has_a_line(scenario_dir: Path) -> None:
    # [ages.grants] creates the top-level key "ages", which no line used to be recorded for.
    error = load_error(scenario_dir, replaced("[agents.config]", "[ages.config]"))
    assert (error.field, error.line) == ("ages", 21)
    assert 'unknown field "ages" in the top level (did you mean "agents"?)' in error.message


@pytest.mark.parametrize(
    ("old", "new", "field", "expected"),
    [
        (
            "params = { factor = 2 }",
            "params = { factor = 1" + "0" * 400 + " }",
            "tasks[1].params.factor",
            "expected a finite number, got 1000",
        ),
        (
            "timeout_s = 120",
            "timeout_s = -1" + "0" * 400,
            "stop.timeout_s",
            "expected a finite number > 0",
        ),
        (
            '[[tensors]]\nname = "a"',
            '[llm]\nmodel = "../agents/sink.wasm"\ntemperature = 1'
            + "0" * 400
            + '\n\n[[tensors]]\nname = "a"',
            "llm.temperature",
            "expected a finite number >= 0 (0 is greedy), got 1000",
        ),
    ],
)
def test_integers_too_large_for_a_float_are_errors_not_tracebacks(
    scenario_dir: Path, old: str, new: str, field: str, expected: str
) -> None:
    text = replaced(old, new)
    error = load_error(scenario_dir, text)
    assert error.field == field
    edited = new.split("\n")[2] if "\n" in new else new  # the line with the big number
    assert error.line == text[: text.index(edited)].count("\n") + 1
    assert expected in error.message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("seed = " + "[" * 3000 + "]" * 3000 + "\n", 1),
        ('name = "x"\n\nseed = ' + "1" * 5000 + "\n", 3),
    ],
)
def test_toml_that_python_cannot_hold_names_its_line(
    scenario_dir: Path, text: str, line: int
) -> None:
    error = load_error(scenario_dir, text)
    assert error.line == line
    assert "invalid TOML" in error.message


# --- the JSON Schema (docs/scenario.schema.json) --------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILE = REPO / "docs" / "scenario.schema.json"


def test_the_published_json_schema_is_generated_from_the_models() -> None:
    from qhybrid.runtime._scenario_schema import scenario_json_schema_text

    assert SCHEMA_FILE.read_text(encoding="utf-8") == scenario_json_schema_text(), (
        "docs/scenario.schema.json is out of date: run "
        "`qhybrid scenario schema --write docs/scenario.schema.json`"
    )


class _BothDrafts:
    """The schema under JSON Schema 2020-12 (its dialect) and draft 7 (what older editors use)."""

    def __init__(self) -> None:
        import jsonschema  # the test extra

        schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
        self.validators = []
        for draft in (jsonschema.Draft202012Validator, jsonschema.Draft7Validator):
            draft.check_schema(schema)
            self.validators.append(draft(schema))

    def iter_errors(self, data: object) -> list[object]:
        return [error for v in self.validators for error in v.iter_errors(data)]

    def is_valid(self, data: object) -> bool:
        results = {v.is_valid(data) for v in self.validators}
        assert len(results) == 1, "the two drafts disagree"
        return results.pop()


def _schema_validator() -> _BothDrafts:
    return _BothDrafts()


SHIPPED = sorted((REPO / "resources" / "scenarios").glob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_scenario_validates_against_the_json_schema(path: Path) -> None:
    errors = _schema_validator().iter_errors(tomllib.loads(path.read_text("utf-8")))
    assert errors == []
    load_scenario(path)  # and the loader agrees


def test_the_json_schema_accepts_what_the_loader_accepts_and_catches_mistakes() -> None:
    validator = _schema_validator()
    assert SHIPPED, "no shipped scenario found"
    for text in (FULL, SANDBOX):
        assert validator.iter_errors(tomllib.loads(text)) == []
    for old, new in [
        ("count = 3", "count = 0"),
        ("count = 3", "cuont = 3"),
        ('on_error = "skip"', 'on_error = "skp"'),
        ("shape = [128, 64]", "shape = [1, 1, 1, 1, 1]"),
        ('module = "../agents/relay.wat"', 'module = "../agents/relay.txt"'),
        ('op = "matmul"', 'op = "matmull"'),
    ]:
        assert not validator.is_valid(tomllib.loads(replaced(old, new))), new
    assert not validator.is_valid(tomllib.loads('name = "no agents"\n'))


def test_qhybrid_scenario_schema_and_check(
    scenario_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qhybrid.cli import main
    from qhybrid.runtime._scenario_schema import scenario_json_schema_text

    assert main(["scenario", "schema"]) == 0
    assert capsys.readouterr().out == scenario_json_schema_text()
    out = scenario_dir / "schema.json"
    assert main(["scenario", "schema", "--write", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == scenario_json_schema_text()

    good = write(scenario_dir, FULL, name="good.toml")
    bad = write(scenario_dir, replaced("count = 3", "count = 0"), name="bad.toml")
    assert main(["scenario", "check", str(good)]) == 0
    assert "good.toml: ok (demo: 4 agents)" in capsys.readouterr().out
    assert main(["scenario", "check", str(good), str(bad)]) == 2
    assert f"{bad}:13: agents[0].count: count = 0 needs max_spawned > 0" in (
        capsys.readouterr().err
    )


# --- mutated files: a clean error with its line, or a clean load; never a traceback ---------------

DEMO = REPO / "resources" / "scenarios" / "demo.toml"
_ODD_VALUES = [
    "0",
    "-1",
    "1.5",
    "true",
    '"x"',
    '""',
    '"\\u0000"',
    "[]",
    '[1, "a"]',
    "[[1]]",
    "{}",
    "{ a = 1 }",
    '{ name = "x" }',
    "1979-05-27",
    "07:32:00",
    "nan",
    "-inf",
    "1e400",
    "9223372036854775808",
    "-1" + "0" * 400,
    '"../agents/relay.wat"',
    '"/"',
    '"relay-0"',
]
_ODD_LINES = [
    "[agents]",
    "[[agents]]",
    "[stop]",
    "[llm]",
    "[[tasks]]",
    "[[messages]]",
    "[tensors]",
    "[agents.limits]",
    "[[agents.grants.dirs]]",
    "[agents.config]",
    "[ages.grants]",
    "[stop.x]",
    "agents = 1",
    "x.y.z = 1",
]


@st.composite
def _mutated_scenarios(draw: st.DrawFn) -> tuple[str, str]:
    """One of the example scenarios with one to three lines or characters changed."""
    which = draw(st.sampled_from(["full", "sandbox", "demo"]))
    text = {"full": FULL, "sandbox": SANDBOX, "demo": DEMO.read_text(encoding="utf-8")}[which]
    for _ in range(draw(st.integers(1, 3))):
        lines = text.splitlines()
        i = draw(st.integers(0, len(lines) - 1))
        how = draw(st.sampled_from(["delete", "copy", "value", "rename", "insert", "char"]))
        if how == "delete":
            del lines[i]
        elif how == "copy":
            lines.insert(i, lines[draw(st.integers(0, len(lines) - 1))])
        elif how == "value" and "=" in lines[i]:
            lines[i] = lines[i].split("=", 1)[0] + "= " + draw(st.sampled_from(_ODD_VALUES))
        elif how == "rename" and "=" in lines[i]:
            key, value = lines[i].split("=", 1)
            lines[i] = f"{key.strip()[:-1] or 'k'} ={value}"
        elif how == "insert":
            lines.insert(i, draw(st.sampled_from(_ODD_LINES)))
        elif lines[i]:
            at = draw(st.integers(0, len(lines[i]) - 1))
            char = draw(st.sampled_from([*"x[]{}\"'=,.#0_ ", "", "\t"]))
            lines[i] = lines[i][:at] + char + lines[i][at + 1 :]
        text = "\n".join(lines) + "\n"
    return which, text


@pytest.fixture(scope="module")
def fuzz_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz")
    agents = root / "agents"
    agents.mkdir()
    (agents / "relay.wat").write_text("(module)")
    (agents / "sink.wasm").write_bytes(b"\0asm\1\0\0\0")
    (root / "scenarios" / "data").mkdir(parents=True)
    return {"full": root / "scenarios", "sandbox": root / "scenarios", "demo": DEMO.parent}


@settings(
    max_examples=250,
    deadline=None,
    derandomize=True,  # the same cases on every CI run: a failure is a bug, never a flake
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=_mutated_scenarios())
def test_mutated_scenarios_give_a_located_error_or_load(
    fuzz_dirs: dict[str, Path], case: tuple[str, str]
) -> None:
    which, text = case
    source = fuzz_dirs[which] / "mutated.toml"
    error: ScenarioError | None = None
    try:
        parse_scenario(text, source=source)
    except ScenarioError as exc:  # anything else fails the test with its traceback
        error = exc
    # With no [[agents]] at all there is no line to point at (see test_no_agents).
    if error is not None and error.message != "at least one [[agents]] entry is required":
        assert error.line is not None, str(error)
        assert str(error).startswith(f"{source}:{error.line}: "), str(error)


# --- one declaration per key: every key of the file reaches what the runtime reads ---------------


def test_every_key_of_every_table_reaches_its_spec() -> None:
    """A key declared on a model but forgotten on its spec would be checked, then dropped."""
    import dataclasses

    from qhybrid.runtime import _scenario_models as models

    # Each table's spec, and the keys the builder converts into differently named fields.
    specs: dict[type, tuple[type, set[str]]] = {
        models.ScenarioFile: (Scenario, set()),
        models.StopTable: (StopSpec, set()),
        models.LlmTable: (LlmSpec, set()),
        models.MemoryTable: (MemorySpec, set()),
        models.AgentTable: (AgentSpec, set()),
        models.LimitsTable: (AgentLimits, {"memory_mb", "stack_kb"}),
        models.GrantsTable: (AgentGrants, set()),
        models.DirGrantTable: (DirGrant, set()),
        models.MessageTable: (MessageSpec, {"payload_i64", "payload_hex"}),
        models.TensorTable: (TensorSpec, set()),
        models.TaskTable: (TaskSpec, set()),
        models.ToolTable: (ToolSpec, set()),
    }
    # Tables that are their own spec (frozen models): every key reaches the runtime as is.
    own_specs = {models.QuotasTable, models.WorkersTable}
    tables = {
        cls
        for cls in vars(models).values()
        if isinstance(cls, type) and issubclass(cls, models.Table) and cls is not models.Table
    }
    assert tables == set(specs) | own_specs, "a new table: add it and its spec here"
    for table, (spec, converted) in specs.items():
        fields = {field.name for field in dataclasses.fields(spec)}
        missing = set(table.model_fields) - fields - converted
        assert not missing, f"{table.__name__} keys {missing} have no field on {spec.__name__}"
