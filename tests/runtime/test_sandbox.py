"""Agents in the sandbox, through the real runtime: limits, capabilities, policies, faults,
tensors and GPU jobs from agents, and the C sample agents."""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from qhybrid.runtime import AgentLog, RunResult, Runtime, RuntimeConfig, parse_scenario
from tests.conftest import ROOT

AGENTS = (ROOT / "resources" / "agents").as_posix()
TEST_AGENTS = ROOT / "tests" / "agents"


@pytest.fixture(scope="session")
def test_agents() -> str:
    """The test-only C agents, built on demand (CI installs clang)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "sdk" / "build.py"), "--tests"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return TEST_AGENTS.as_posix()


def run(text: str, tmp_path: Path, workers: int = 2) -> tuple[RunResult, list[AgentLog]]:
    scenario = parse_scenario(text, source="sandbox.toml", base_dir=tmp_path)
    logs: list[AgentLog] = []

    async def main() -> RunResult:
        async with Runtime(scenario, RuntimeConfig(workers=workers, device="cpu")) as rt:
            rt.events.agent_log.connect(logs.append)
            return await rt.run()

    return asyncio.run(main()), logs


def agent(result: RunResult, name: str) -> tuple[str, str | None, int]:
    a = next(a for a in result.agents if a.name == name)
    return a.state, a.error, a.handled


ECHO_BYSTANDER = f"""
[[agents]]
name = "echo"
module = "{AGENTS}/echo.wasm"
[[messages]]
to = "echo"
kind = 9
payload = "still here"
at = 1
"""


def hog(limits: str, kind: int, policy: str = "skip") -> str:
    return (
        f"""
[[agents]]
name = "hog"
module = "@TEST@/hog.wasm"
on_error = "{policy}"
[agents.limits]
{limits}
[[messages]]
to = "hog"
kind = {kind}
payload = ""
"""
        + ECHO_BYSTANDER
    )


@pytest.mark.parametrize(
    ("limits", "kind", "reason"),
    [
        pytest.param("fuel = 1000000", 1, "out of fuel (limit 1000000 per message)", id="fuel"),
        pytest.param("timeout_ms = 100", 1, "timeout (limit 100 ms per message)", id="timeout"),
        pytest.param("memory_mb = 4", 2, "out of memory (limit 4 MiB, using", id="memory"),
        pytest.param("stack_kb = 64", 3, "stack overflow (limit 64 KiB)", id="stack"),
    ],
)
def test_every_limit_stops_only_its_agent(
    limits: str, kind: int, reason: str, test_agents: str, tmp_path: Path
) -> None:
    result, logs = run(hog(limits, kind).replace("@TEST@", test_agents), tmp_path)
    assert result.ok, result.reason
    state, error, _ = agent(result, "hog")
    assert state == "skipped"
    assert error is not None and error.startswith(reason), error
    # The other agent, on the other worker, went on.
    assert agent(result, "echo") == ("loaded", None, 1)
    assert any(e.agent == "echo" and "still here" in e.text for e in logs)


def test_fail_policy_ends_the_run_with_the_reason(test_agents: str, tmp_path: Path) -> None:
    text = hog("fuel = 1000000", 1, policy="fail").replace("@TEST@", test_agents)
    result, _ = run(text, tmp_path)
    assert not result.ok
    assert "hog failed at tick 0: out of fuel" in result.reason


def test_restart_policy_replaces_the_agent_and_it_goes_on(test_agents: str, tmp_path: Path) -> None:
    text = hog("fuel = 1000000", 1, policy="restart").replace("@TEST@", test_agents)
    text += '[[messages]]\nto = "hog"\nkind = 4\npayload = ""\nat = 2\n'
    text += '[[messages]]\nto = "hog"\nkind = 1\npayload = ""\nat = 3\n'
    text += '[[messages]]\nto = "hog"\nkind = 1\npayload = ""\nat = 4\n'
    text += '[[messages]]\nto = "hog"\nkind = 1\npayload = ""\nat = 5\n'
    text += '[[messages]]\nto = "hog"\nkind = 1\npayload = ""\nat = 6\n'
    result, logs = run(text, tmp_path)
    # Restarted after tick 0, handled the printf message at tick 2, then ran out of fuel three
    # more times: the third restart is the last allowed (max_restarts = 3), the fourth failure
    # fails it for good, and its policy then ends the run.
    assert any(e.agent == "hog" and e.text == "hog: hello from printf" for e in logs)
    hog_agent = next(a for a in result.agents if a.name == "hog")
    assert hog_agent.restarts == 3
    assert hog_agent.state == "failed"
    assert "after 3 restarts, the limit" in (hog_agent.error or "")
    assert not result.ok


def test_stdout_and_stderr_become_log_lines(test_agents: str, tmp_path: Path) -> None:
    text = hog("", 4).replace("@TEST@", test_agents)
    result, logs = run(text, tmp_path)
    assert result.ok
    lines = [(e.level, e.text) for e in logs if e.agent == "hog"]
    assert (20, "hog: hello from printf") in lines
    assert any(level == 30 for level, _ in lines)


def probe(grants: str, *messages: tuple[int, str]) -> str:
    text = f"""
[[agents]]
name = "probe"
module = "@TEST@/fs_probe.wasm"
{grants}
"""
    for at, (kind, payload) in enumerate(messages):
        text += f'[[messages]]\nto = "probe"\nkind = {kind}\npayload = "{payload}"\nat = {at}\n'
    return text


def probe_logs(text: str, test_agents: str, tmp_path: Path) -> list[str]:
    result, logs = run(text.replace("@TEST@", test_agents), tmp_path, workers=1)
    assert result.ok, result.reason
    return [e.text for e in logs if e.agent == "probe"]


def test_no_file_or_environment_without_a_grant(
    test_agents: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the host's secret\n", encoding="utf-8")
    monkeypatch.setenv("QHYBRID_SECRET", "host value")
    text = probe(
        "",
        (1, secret.as_posix()),
        (1, "/etc/passwd"),
        (3, (tmp_path / "new.txt").as_posix()),
        (2, "QHYBRID_SECRET"),
        (2, "HOME"),
    )
    lines = probe_logs(text, test_agents, tmp_path)
    assert len(lines) == 5, lines
    assert lines[0].startswith("read failed")
    assert lines[1].startswith("read failed")
    assert lines[2].startswith("write failed")
    assert lines[3] == "env QHYBRID_SECRET unset"
    assert lines[4] == "env HOME unset"
    assert not (tmp_path / "new.txt").exists()


def test_granted_directory_and_environment(test_agents: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "hello.txt").write_text("hello from the grant\n", encoding="utf-8")
    outside = tmp_path / "outside.txt"
    outside.write_text("not granted\n", encoding="utf-8")
    grants = """
[agents.grants]
dirs = [{ host = "data", guest = "/data", mode = "ro" }]
env = { GREETING = "bonjour" }
"""
    text = probe(
        grants,
        (1, "/data/hello.txt"),
        (3, "/data/new.txt"),
        (1, "/data/../outside.txt"),
        (2, "GREETING"),
    )
    lines = probe_logs(text, test_agents, tmp_path)
    assert lines[0] == "read ok: hello from the grant"
    assert lines[1].startswith("write failed")  # read-only grant
    assert lines[2].startswith("read failed")  # no escaping the granted directory
    assert lines[3] == "env GREETING=bonjour"
    assert not (data / "new.txt").exists()


def test_read_write_grant_lets_the_agent_write(test_agents: str, tmp_path: Path) -> None:
    data = tmp_path / "out"
    data.mkdir()
    grants = '[agents.grants]\ndirs = [{ host = "out", guest = "/out", mode = "rw" }]\n'
    lines = probe_logs(probe(grants, (3, "/out/new.txt")), test_agents, tmp_path)
    assert lines == ["write ok"]
    assert (data / "new.txt").read_text(encoding="utf-8") == "probe\n"


@pytest.mark.parametrize("kind", [1, 2, 3, 4, 5, 6, 7])
def test_bad_pointers_fault_the_guest_only(kind: int, test_agents: str, tmp_path: Path) -> None:
    text = f"""
[[agents]]
name = "bad"
module = "{test_agents}/bad_pointer.wasm"
on_error = "skip"
[[agents]]
name = "echo"
module = "{AGENTS}/echo.wasm"
[[tensors]]
name = "t"
shape = [4]
[[messages]]
to = "bad"
kind = {kind}
payload = "t"
at = 1
[[messages]]
to = "echo"
kind = 9
payload = "after"
at = 1
[[messages]]
to = "echo"
kind = 9
payload = "later"
at = 2
"""
    result, _ = run(text, tmp_path, workers=1)  # the same worker for both agents
    assert result.ok, result.reason
    state, error, _ = agent(result, "bad")
    assert state == "skipped"
    assert error is not None and error.startswith("fault: "), error
    assert agent(result, "echo") == ("loaded", None, 2)


def test_a_bad_handle_is_an_error_code_not_a_fault(test_agents: str, tmp_path: Path) -> None:
    text = f"""
[[agents]]
name = "bad"
module = "{test_agents}/bad_pointer.wasm"
on_error = "skip"
[[messages]]
to = "bad"
kind = 8
payload = ""
"""
    result, logs = run(text, tmp_path, workers=1)
    assert any("survived" in e.text and "-1" in e.text for e in logs)
    assert agent(result, "bad")[1] == "handler returned error code 1"


SAMPLES = f"""
seed = 5
[[agents]]
name = "planner"
module = "{AGENTS}/planner.wasm"
config = {{ workers = "worker", report_to = "counter" }}
[[agents]]
name = "worker"
module = "{AGENTS}/worker.wasm"
count = 3
[[agents]]
name = "counter"
module = "{AGENTS}/counter.wasm"
[[agents]]
name = "prep"
module = "{AGENTS}/prep.wasm"
config = {{ input = "x", output = "x_norm", weights = "w", result = "y" }}
[[agents]]
name = "ask"
module = "{AGENTS}/ask.wasm"
[[tensors]]
name = "x"
shape = [8, 16]
init = "random"
[[tensors]]
name = "w"
shape = [16, 4]
init = "random"
[[messages]]
to = "planner"
kind = 1
payload_i64 = [10]
[[messages]]
to = "prep"
kind = 1
payload = ""
[[messages]]
to = "ask"
kind = 1
payload = "What is a tensor?"
"""


def test_the_sample_agents_work_together(tmp_path: Path) -> None:
    result, logs = run(SAMPLES, tmp_path)
    assert result.ok, result.reason
    assert all(a.state == "loaded" for a in result.agents), result.agents
    texts = {(e.agent, e.text) for e in logs}
    # The planner fanned 10 items out to 3 workers and gathered every result.
    assert sum(agent(result, f"worker-{i}")[2] for i in range(3)) == 10
    assert any(a == "planner" and "total" in t for a, t in texts), texts
    # prep normalised x into a new tensor, multiplied it on the GPU thread, and heard back.
    assert result.gpu_tasks == 1
    assert ("prep", "prep: GPU job 0 done") in texts, texts
    # ask got an honest answer: there is no model in this scenario.
    assert any(a == "ask" and t.startswith("llm error") for a, t in texts), texts


def test_samples_trace_is_the_same_for_any_worker_count(tmp_path: Path) -> None:
    hashes = {run(SAMPLES, tmp_path, workers=w)[0].trace_hash for w in (1, 2, 3)}
    assert len(hashes) == 1


def test_recovery_restores_c_agents_exactly(tmp_path: Path) -> None:
    """Kill a worker mid-run in-process: counter (its own qh_snapshot) and the planner and
    workers (host snapshots of memory) come back as they were; the trace does not change."""
    text = SAMPLES
    for t in range(3, 120, 7):  # work keeps arriving, so the kill lands mid-run
        text += f'[[messages]]\nto = "planner"\nkind = 1\npayload_i64 = [12]\nat = {t}\n'
        text += f'[[messages]]\nto = "counter"\nkind = 1\npayload_i64 = [{t}]\nat = {t}\n'
    text += '[[messages]]\nto = "counter"\nkind = 2\npayload = ""\nat = 130\n'
    scenario = parse_scenario(text, source="recover.toml", base_dir=tmp_path)
    config = RuntimeConfig(workers=2, device="cpu", checkpoint_every=16)
    expected = asyncio.run(_run_with_kill(scenario, config, kill_at=None))
    got = asyncio.run(_run_with_kill(scenario, config, kill_at=50))
    assert got.worker_restarts == 1
    assert got.trace_hash == expected.trace_hash
    assert [a.handled for a in got.agents] == [a.handled for a in expected.agents]


async def _run_with_kill(scenario: object, config: RuntimeConfig, kill_at: int | None) -> RunResult:
    assert kill_at is None or kill_at > 0
    async with Runtime(scenario, config) as rt:  # type: ignore[arg-type]
        while await rt.step():
            if kill_at is not None and rt.tick >= kill_at:
                rt.pool.kill_worker(1)
                kill_at = None
        result = rt.result
        assert result is not None
        return result


CLOCK_PROBE = """
(module
  (import "wasi_snapshot_preview1" "clock_time_get"
    (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "qhybrid" "send" (func $send (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "qh_abi_version") (result i32) (i32.const 1))
  (func (export "qh_alloc") (param i32) (result i32) (i32.const 1024))
  ;; Reads the WASI clock (realtime and monotonic) and 8 random bytes, sends all 24 bytes
  ;; to itself (agent 0) so the test can see them.
  (func (export "qh_on_message") (param i32 i32 i32 i32) (result i32)
    (drop (call $clock (i32.const 0) (i64.const 1) (i32.const 64)))
    (drop (call $clock (i32.const 1) (i64.const 1) (i32.const 72)))
    (drop (call $random (i32.const 80) (i32.const 8)))
    (drop (call $send (i32.const 0) (i32.const 1) (i32.const 64) (i32.const 24)))
    (i32.const 0)))
"""


def test_wasi_clock_and_randomness_are_the_runs_own(tmp_path: Path) -> None:
    from qhybrid.runtime.wasm_pool import AgentLoad, compile_module, make_engine
    from qhybrid.runtime.wasm_pool._agent import AgentHost, SplitMix64, WorkerContext

    path = tmp_path / "clock.wat"
    path.write_text(CLOCK_PROBE, encoding="utf-8")
    module = compile_module(make_engine(), path)

    def answer(seed: int, tick: int) -> tuple[int, int, bytes]:
        ctx = WorkerContext()
        ctx.add_module("clock", bytes(module.serialize()), path.read_bytes())
        host = AgentHost(ctx, AgentLoad(0, "clock", "clock", (0,), 1, seed, b"{}"))
        outcome = host.deliver(tick, -1, 1, b"")
        ctx.close()
        assert outcome.ok, outcome.error
        ((_, _, payload),) = outcome.sent
        realtime, monotonic = struct.unpack("<QQ", payload[:16])
        assert realtime == monotonic
        return realtime, tick, payload[16:]

    realtime, tick, random_bytes = answer(seed=7, tick=42)
    assert realtime == 42 * 1_000_000  # the logical clock in ns, not the host's time
    assert random_bytes == SplitMix64(7).next().to_bytes(8, "little")
    assert answer(seed=7, tick=42) == (realtime, tick, random_bytes)  # deterministic
    assert answer(seed=8, tick=42)[2] != random_bytes


def test_fast_host_functions_behave_like_wasmtime_func() -> None:
    """The raw host-function path (the per-message hot path) returns values and raises
    exceptions exactly as wasmtime.Func does."""
    import wasmtime

    from qhybrid.runtime.wasm_pool._fastcall import host_func, i32_caller

    engine = wasmtime.Engine()
    wat = """(module
      (import "h" "add" (func $add (param i32 i64 f32) (result i64)))
      (import "h" "boom" (func $boom (param i32)))
      (func (export "sum") (param i32) (result i32)
        (i32.wrap_i64 (call $add (local.get 0) (i64.const 5000000000) (f32.const 1.5))))
      (func (export "fail") (param i32) (result i32) (call $boom (local.get 0)) (i32.const 0)))"""
    module = wasmtime.Module(engine, wat)

    class Boom(Exception):
        pass

    def boom(x: int) -> None:
        raise Boom(f"boom {x}")

    seen: list[tuple[int, int, float]] = []

    def add(a: int, b: int, c: float) -> int:
        seen.append((a, b, c))
        return a + b

    store = wasmtime.Store(engine)
    imports = [host_func(store, ("i32", "i64", "f32"), ("i64",), add)]
    imports.append(host_func(store, ("i32",), (), boom))
    instance = wasmtime.Instance(store, module, imports)
    exports = instance.exports(store)

    def wrap32(x: int) -> int:
        x &= 0xFFFFFFFF
        return x - (1 << 32) if x >= 1 << 31 else x

    total = i32_caller(store, exports["sum"], 1)  # type: ignore[arg-type]
    assert total(-7) == wrap32(5_000_000_000 - 7)
    assert seen == [(-7, 5_000_000_000, 1.5)]
    fail = i32_caller(store, exports["fail"], 1)  # type: ignore[arg-type]
    with pytest.raises(Boom, match="boom 3"):
        fail(3)
    assert total(1) == wrap32(5_000_000_001)  # the store still works after the exception
