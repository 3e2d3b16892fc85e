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


CHAINED_TASKS = """
[[tensors]]
name = "x"
shape = [8, 8]
init = "random"
[[tasks]]
name = "g"
kind = "gpu"
op = "relu"
inputs = ["x"]
output = "gx"
at = 1
[[tasks]]
name = "c"
kind = "cpu"
op = "scale"
inputs = ["gx"]
output = "cx"
params = { factor = 3.0 }
at = 1
[[tasks]]
name = "c2"
kind = "cpu"
op = "add"
inputs = ["cx", "x"]
output = "c2x"
at = 1
[[tasks]]
name = "e"
kind = "gpu"
op = "add"
inputs = ["c2x", "gx"]
output = "ex"
at = 1
notify = "iterate"
"""


def test_same_trace_for_1_2_and_4_workers(tmp_path: Path) -> None:
    # The agent's chained GPU jobs, and the scenario's tasks chained at tick 1: a CPU task
    # behind a GPU one, a CPU task behind that, and a GPU task behind both.
    hashes = set()
    for workers in (1, 2, 4):
        result, logs, _, _ = run(scenario(tmp_path, rounds=2, extra=CHAINED_TASKS), workers)
        assert result.status == "completed", result.reason
        assert logs[-1] == f"done: sum {expected_sums(2)[-1]:.3f}"
        assert (result.gpu_tasks, result.cpu_tasks) == (2 * 3 + 2, 2)
        hashes.add(result.trace_hash)
    assert len(hashes) == 1


def test_chained_tasks_read_what_the_ones_before_made(tmp_path: Path) -> None:
    from qhybrid.runtime._seeding import derive_seed

    rng = np.random.Generator(np.random.PCG64(derive_seed(3, "tensor", "x")))
    x = rng.uniform(-1.0, 1.0, size=(8, 8)).astype(np.float32)
    gx = np.maximum(x, 0)
    expected = (gx * np.float32(3.0) + x) + gx
    result, _, trace, _ = run(scenario(tmp_path, rounds=1, extra=CHAINED_TASKS), 2)
    assert result.status == "completed", result.reason
    from qhybrid.runtime._trace import digest

    tasks = {r[3]: r[5] for r in map(json.loads, trace) if r[0] == "task"}
    assert tasks["e"] == digest(expected.astype(np.float32).tobytes())


PY_AGENT = """
import struct
import qhybrid


def on_message(msg):
    if msg.kind == 1:
        w, r = qhybrid.tensor_open("w"), qhybrid.tensor_open("r")
        qhybrid.info("release r: %d" % qhybrid.tensor_release(r))
        qhybrid.info("release w: %d" % qhybrid.tensor_release(w))
        qhybrid.info("into r: %d" % qhybrid.gpu_submit_into("relu", [w], 1, r, 0.0))
        qhybrid.info("into w: %d" % qhybrid.gpu_submit_into("scale", [w], 1, w, 3.0))
        h = qhybrid.tensor_create("mine", qhybrid.DTYPE_F32, 1, [4])
        qhybrid.info("release mine now: %d" % qhybrid.tensor_release(h))
    elif msg.kind == 2:
        qhybrid.info("release mine: %d" % qhybrid.tensor_release(qhybrid.tensor_open("mine")))
    elif msg.kind == qhybrid.KIND_GPU_DONE:
        job, status = struct.unpack("<ii", msg.payload[:8])
        qhybrid.info("done %d: %d" % (job, status))
    elif msg.kind == 3:
        n, data = qhybrid.tensor_read(qhybrid.tensor_open("w"), 0, 16)
        qhybrid.info("w: %s" % list(struct.unpack("<4f", data)))
        qhybrid.info("open mine: %d" % qhybrid.tensor_open("mine"))
        h = qhybrid.tensor_create("mine", qhybrid.DTYPE_F32, 1, [8])
        qhybrid.info("mine again: %s" % (h >= 0))
    elif msg.kind == 4:
        w = qhybrid.tensor_open("w")
        for _ in range(5):
            qhybrid.gpu_submit_into("relu", [w], 1, w, 0.0)
    elif msg.kind == 5:
        # Into the output of a job queued just before: w * -2, then relu of that in place.
        qhybrid.gpu_submit("scale", [qhybrid.tensor_open("w")], 1, "neg", -2.0)
        neg = qhybrid.tensor_open("neg")
        qhybrid.gpu_submit_into("relu", [neg], 1, neg, 0.0)
    elif msg.kind == 6:
        n, data = qhybrid.tensor_read(qhybrid.tensor_open("neg"), 0, 16)
        qhybrid.info("neg: %s" % list(struct.unpack("<4f", data)))
"""


def test_a_python_agent_releases_and_writes_in_place(tmp_path: Path) -> None:
    (tmp_path / "tp.py").write_text(PY_AGENT)
    text = """
name = "py-tensors"
seed = 1
[stop]
max_ticks = 20
[[agents]]
name = "tp"
module = "tp.py"
on_error = "skip"
quotas = { tensor_bytes = 64 }
[[tensors]]
name = "w"
shape = [2, 2]
init = "ones"
writable = true
[[tensors]]
name = "r"
shape = [2, 2]
init = "ones"
[[messages]]
to = "tp"
kind = 1
[[messages]]
to = "tp"
kind = 2
at = 1
[[messages]]
to = "tp"
kind = 3
at = 3
[[messages]]
to = "tp"
kind = 5
at = 4
[[messages]]
to = "tp"
kind = 6
at = 7
[[messages]]
to = "tp"
kind = 4
at = 8
"""
    sc = parse_scenario(text, source=str(tmp_path / "s.toml"), base_dir=tmp_path)
    result, logs, _, _ = run(sc, workers=1)
    assert logs[:5] == [
        "release r: -4",  # a scenario tensor is nobody's to release
        "release w: -4",  # writable or not
        "into r: -4",  # read-only
        "into w: 0",  # in place into a writable scenario tensor: job 0
        "release mine now: -3",  # made by this very message
    ]
    assert "release mine: 0" in logs and "done 0: 0" in logs
    assert "w: [3.0, 3.0, 3.0, 3.0]" in logs
    assert "open mine: -1" in logs  # released: gone from the next tick ...
    assert "mine again: True" in logs  # ... and its name free for a new tensor
    # The in-place relu ran on the first job's result: -6 everywhere, then 0.
    assert "neg: [0.0, 0.0, 0.0, 0.0]" in logs
    # Five jobs of 16 bytes each pass the agent's tensor quota of 64 bytes.
    (tp,) = result.agents
    assert tp.error is not None and "quota exceeded: gpu_submit_into" in tp.error
