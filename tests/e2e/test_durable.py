"""Durable runs end to end, as a user drives them: `qhybrid --headless` records into the run
store; `runs`, `show`, `resume`, `replay`, `fork`, `diff` and `export` work on what it kept."""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

AGENTS = ROOT / "resources" / "agents"

RELAYS = """
name = "relays"
seed = 7
[stop]
max_ticks = 400
[[agents]]
name = "relay"
module = "@AGENTS@/relay.wat"
count = 6
[[agents]]
name = "sink"
module = "@AGENTS@/sink.wat"
[[agents]]
name = "counter"
module = "@AGENTS@/counter.wasm"
[[messages]]
to = "relay"
kind = 1
payload_i64 = [120, 0]
[[messages]]
to = "counter"
kind = 1
payload_i64 = [3]
[[tensors]]
name = "x"
shape = [32, 32]
init = "random"
[[tensors]]
name = "w"
shape = [32, 32]
init = "random"
[[tasks]]
name = "project"
kind = "gpu"
op = "matmul"
inputs = ["x", "w"]
output = "y"
at = 5
notify = "sink"
[[tasks]]
name = "act"
kind = "cpu"
op = "relu"
inputs = ["y"]
output = "h"
at = 40
notify = "sink"
"""

STORIES = """
name = "stories"
seed = 3
[[agents]]
name = "storyteller"
module = "agents/ask.wasm"
count = 2
config = { max_tokens = 12 }
[[messages]]
to = "storyteller-0"
kind = 1
payload = "Once upon a time"
[[messages]]
to = "storyteller-1"
kind = 1
payload = "One day"
at = 3
[llm]
model = "models/tiny-stories.gguf"
slots = 2
temperature = 0.7
"""


@pytest.fixture
def env(cli_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {**cli_env, "QHYBRID_STORE": str(tmp_path / "store" / "runs.sqlite")}


def cli(cmd: list[str], env: dict[str, str], *args: str, timeout: float = 120) -> Any:
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def cli_json(cmd: list[str], env: dict[str, str], *args: str, code: int = 0) -> Any:
    proc = cli(cmd, env, *args, "--json")
    assert proc.returncode == code, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


def relays(tmp_path: Path) -> Path:
    path = tmp_path / "relays.toml"
    path.write_text(RELAYS.replace("@AGENTS@", AGENTS.as_posix()), encoding="utf-8")
    return path


def stories(tmp_path: Path) -> Path:
    (tmp_path / "agents").mkdir()
    (tmp_path / "models").mkdir()
    shutil.copy(AGENTS / "ask.wasm", tmp_path / "agents")
    shutil.copy(ROOT / "resources" / "models" / "tiny-stories.gguf", tmp_path / "models")
    path = tmp_path / "stories.toml"
    path.write_text(STORIES, encoding="utf-8")
    return path


def last_tick(store: Path) -> int:
    """What a second process sees of the run being written (WAL: readers never block it)."""
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute(
            "SELECT last_tick FROM runs WHERE status = 'running' ORDER BY created DESC LIMIT 1"
        ).fetchone()
        return int(row[0]) if row and row[0] is not None else -1
    finally:
        conn.close()


def run_and_kill(
    cmd: list[str], env: dict[str, str], scenario: Path, at: int, sig: int, *extra: str
) -> tuple[int, int]:
    store = Path(env["QHYBRID_STORE"])
    proc = subprocess.Popen(
        [*cmd, "--headless", "--device", "cpu", str(scenario), *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen = -1
    try:
        while proc.poll() is None:
            if store.exists():
                try:
                    seen = last_tick(store)
                except sqlite3.Error:
                    seen = -1
                if seen >= at:
                    proc.send_signal(sig)
                    break
            time.sleep(0.005)
        return proc.wait(timeout=60), seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- recording ------------------------------------------------------------------------------------
def test_runs_are_recorded_listed_and_shown(
    qhybrid_cmd: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    scenario = relays(tmp_path)
    plain = cli_json(qhybrid_cmd, env, "--headless", "--device", "cpu", str(scenario), "--no-store")
    assert "run_id" not in plain
    assert not Path(env["QHYBRID_STORE"]).exists()  # --no-store writes nothing
    run = cli_json(
        qhybrid_cmd, env, "--headless", "--device", "cpu", str(scenario), "--checkpoint-every", "20"
    )
    # Recording is observation: the same hash as with the store off.
    assert run["trace_hash"] == plain["trace_hash"]
    listed = cli_json(qhybrid_cmd, env, "runs")["runs"]
    assert [r["run_id"] for r in listed] == [run["run_id"]]
    shown = cli_json(qhybrid_cmd, env, "show", run["run_id"][:12])
    assert shown["run_id"] == run["run_id"]
    assert shown["status"] == "completed" and shown["trace_hash"] == run["trace_hash"]
    assert shown["seed"] == 7 and shown["scenario_name"] == "relays"
    assert shown["records"] > 500 and shown["last_tick"] == run["ticks"]
    assert shown["jobs"] == 2 and shown["checkpoints"] >= 5
    assert shown["config"]["checkpoint_every"] == 20
    assert shown["summary"]["messages_delivered"] == run["messages_delivered"]
    text = cli(qhybrid_cmd, env, "show", "last")
    assert text.returncode == 0 and run["run_id"] in text.stderr
    missing = cli(qhybrid_cmd, env, "show", "nope")
    assert missing.returncode == 2 and "no run 'nope'" in missing.stderr


def test_export_writes_the_trace_and_a_perfetto_file(
    qhybrid_cmd: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    trace = tmp_path / "trace.jsonl"
    run = cli_json(
        qhybrid_cmd,
        env,
        "--headless",
        "--device",
        "cpu",
        str(relays(tmp_path)),
        "--trace",
        str(trace),
    )
    out = tmp_path / "export.jsonl"
    proc = cli(qhybrid_cmd, env, "export", run["run_id"], "--jsonl", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == trace.read_text()
    perfetto = tmp_path / "run.json"
    proc = cli(qhybrid_cmd, env, "export", run["run_id"], "--perfetto", str(perfetto))
    assert proc.returncode == 0, proc.stderr
    events = json.loads(perfetto.read_text())["traceEvents"]
    names = {e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    assert {"orchestrator (ticks)", "gpu device", "worker 0", "worker 1"} <= names
    slices = [e for e in events if e["ph"] == "X"]
    assert sum(e["name"].startswith("tick ") for e in slices) == run["ticks"] + 1
    assert any(e["name"] == "project (matmul)" and e["tid"] == 2 for e in slices)
    both = cli(qhybrid_cmd, env, "export", run["run_id"])
    assert both.returncode == 2 and "exactly one of" in both.stderr


# -- resume ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_resume_after_sigkill_at_random_ticks_gives_the_undisturbed_hash(
    qhybrid_cmd: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    scenario = relays(tmp_path)
    undisturbed = cli_json(
        qhybrid_cmd, env, "--headless", "--device", "cpu", str(scenario), "--no-store"
    )
    rng = random.Random()
    for at in sorted(rng.sample(range(2, undisturbed["ticks"] * 2 // 3), 2)):
        code, seen = run_and_kill(
            qhybrid_cmd, env, scenario, at, signal.SIGKILL, "--checkpoint-every", "10"
        )
        assert code == -signal.SIGKILL and seen >= at
        show = cli_json(qhybrid_cmd, env, "show", "last")
        # The row still says running (nobody recorded the end), but its process is gone.
        assert show["status"] == "interrupted" and "is gone" in show["reason"]
        listed = cli_json(qhybrid_cmd, env, "runs")["runs"]
        assert [r["status"] for r in listed if r["run_id"] == show["run_id"]] == ["interrupted"]
        resumed = cli_json(qhybrid_cmd, env, "resume", "last")
        assert resumed["run_id"] == show["run_id"]
        assert resumed["resumed_from"] <= seen
        assert resumed["trace_hash"] == undisturbed["trace_hash"], f"killed at tick {seen}"
        after = cli_json(qhybrid_cmd, env, "show", show["run_id"])
        assert after["status"] == "completed" and after["trace_hash"] == undisturbed["trace_hash"]
        # The store holds the whole trace once: a replay of the resumed run is identical.
        replay = cli_json(qhybrid_cmd, env, "replay", show["run_id"])
        assert replay["identical"] is True
    again = cli(qhybrid_cmd, env, "resume", "last")
    assert again.returncode == 2 and "nothing to resume" in again.stderr


def test_ctrl_c_marks_the_run_interrupted_and_resume_finishes_it(
    qhybrid_cmd: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    scenario = relays(tmp_path)
    code, _ = run_and_kill(
        qhybrid_cmd, env, scenario, 30, signal.SIGINT, "--checkpoint-every", "10"
    )
    assert code == 130
    show = cli_json(qhybrid_cmd, env, "show", "last")
    assert show["status"] == "interrupted"
    resumed = cli_json(qhybrid_cmd, env, "resume", show["run_id"])
    plain = cli_json(qhybrid_cmd, env, "--headless", "--device", "cpu", str(scenario), "--no-store")
    assert resumed["trace_hash"] == plain["trace_hash"]


class _Evil:
    """A pickle that would run a shell command when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_hostile_checkpoint_is_refused_and_runs_nothing(
    qhybrid_cmd: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    import pickle

    scenario = relays(tmp_path)
    run = cli_json(
        qhybrid_cmd, env, "--headless", "--device", "cpu", str(scenario), "--checkpoint-every", "50"
    )
    store, marker = Path(env["QHYBRID_STORE"]), tmp_path / "pwned"
    evil = pickle.dumps({"version": 1, "x": _Evil(marker)})
    conn = sqlite3.connect(store)
    tick, good = conn.execute(
        "SELECT tick, state FROM checkpoints WHERE run_id = ? ORDER BY tick DESC LIMIT 1",
        (run["run_id"],),
    ).fetchone()
    with conn:
        conn.execute("UPDATE runs SET status = 'interrupted' WHERE run_id = ?", (run["run_id"],))
        conn.execute("UPDATE checkpoints SET state = ? WHERE tick = ?", (evil, tick))
    for args in (("resume", "last"), ("fork", "last", "--at", str(tick))):
        proc = cli(qhybrid_cmd, env, *args)
        assert proc.returncode == 2, proc.stderr
        assert f"checkpoint at tick {tick}" in proc.stderr and "pickle" in proc.stderr
        assert "Traceback" not in proc.stderr
    # The state is good again, but an agent's snapshot blob is the hostile pickle.
    snap = json.loads(good[len(b"QHCK2\n") :])
    state = dict(snap["d"])  # (the codec's JSON: a dict is {"d": pairs}, a tuple {"t": [...]})
    key = next(a["t"][4] for a in state["agents"] if a["t"][4] is not None)
    with conn:
        conn.execute("UPDATE checkpoints SET state = ? WHERE tick = ?", (good, tick))
        conn.execute("UPDATE blobs SET data = ? WHERE digest = ?", (evil, key))
    conn.close()
    proc = cli(qhybrid_cmd, env, "resume", "last")
    assert proc.returncode == 2 and "snapshot is refused" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


def test_resume_refuses_a_run_whose_process_is_alive(
    qhybrid_cmd: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    from qhybrid.runtime.store import RunStore

    text = relays(tmp_path).read_text(encoding="utf-8")
    with RunStore(Path(env["QHYBRID_STORE"])) as store:  # owned by this (live) process
        run_id = store.new_run(
            scenario_name="relays",
            scenario_path=str(tmp_path / "relays.toml"),
            scenario_text=text,
            seed=7,
            config={"workers": 2},
            version="test",
        )
    proc = cli(qhybrid_cmd, env, "resume", run_id)
    assert proc.returncode == 2 and "still running" in proc.stderr
    assert f"pid {os.getpid()}" in proc.stderr and "Traceback" not in proc.stderr
    assert cli_json(qhybrid_cmd, env, "show", run_id)["status"] == "running"


# -- replay ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_replay_answers_from_the_store_with_the_model_moved_away(
    qhybrid_cmd: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    scenario = stories(tmp_path)
    run = cli_json(qhybrid_cmd, env, "--headless", "--device", "cpu", str(scenario))
    assert run["llm"]["requests"] == 2
    shown = cli_json(qhybrid_cmd, env, "show", run["run_id"])
    assert shown["llm_requests"] == 2
    (tmp_path / "models" / "tiny-stories.gguf").rename(tmp_path / "elsewhere.gguf")
    replay = cli_json(qhybrid_cmd, env, "replay", run["run_id"])
    assert replay["run_id"] == run["run_id"] and replay["status"] == "identical"
    assert replay["identical"] is True and replay["model_calls"] == 0
    assert replay["trace_hash"] == run["trace_hash"]
    # Resume and a plain run do need the model: a clear message, not a traceback.
    proc = cli(qhybrid_cmd, env, "--headless", "--device", "cpu", str(scenario))
    assert proc.returncode == 2 and "model file not found" in proc.stderr


def test_replay_with_another_module_stops_at_the_first_divergence(
    qhybrid_cmd: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    run = cli_json(qhybrid_cmd, env, "--headless", "--device", "cpu", str(relays(tmp_path)))
    part = cli_json(qhybrid_cmd, env, "replay", run["run_id"], "--to", "20")
    assert part["identical"] is True and part["ticks"] == 20
    assert part["gpu_jobs_from_store"] == 1  # the matmul at tick 5: its recorded output
    other = cli_json(
        qhybrid_cmd,
        env,
        "replay",
        run["run_id"],
        "--module",
        f"relay={AGENTS / 'ping.wat'}",
        code=1,
    )
    assert other["status"] == "diverged" and other["model_calls"] == 0
    div = other["identical"]
    assert div["tick"] == 1 and div["expected"] != div["got"]
    assert div["expected"].startswith("('ok', 1,")
    bad = cli(qhybrid_cmd, env, "replay", run["run_id"], "--module", "nobody=x.wasm")
    assert bad.returncode == 2 and "no agent group 'nobody'" in bad.stderr


def test_replay_takes_cpu_task_results_from_the_store(
    qhybrid_cmd: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    run = cli_json(qhybrid_cmd, env, "--headless", "--device", "cpu", str(relays(tmp_path)))
    replay = cli_json(qhybrid_cmd, env, "replay", run["run_id"])
    assert replay["identical"] is True and replay["trace_hash"] == run["trace_hash"]
    assert replay["cpu_tasks_from_store"] == 1 and replay["gpu_jobs_from_store"] == 1
    # Taken from the store, not computed again: a changed recorded output shows in the replay.
    conn = sqlite3.connect(Path(env["QHYBRID_STORE"]))
    tick, digest = conn.execute(
        "SELECT tick, digest FROM jobs WHERE run_id = ? AND name = 'act'", (run["run_id"],)
    ).fetchone()
    (data,) = conn.execute("SELECT data FROM blobs WHERE digest = ?", (digest,)).fetchone()
    with conn:
        conn.execute("UPDATE blobs SET data = ? WHERE digest = ?", (bytes(len(data)), digest))
    conn.close()
    changed = cli_json(qhybrid_cmd, env, "replay", run["run_id"], code=1)
    assert changed["cpu_tasks_from_store"] == 1
    div = changed["identical"]
    assert div["tick"] == tick and div["expected"].startswith("('task', ")


# -- fork and diff --------------------------------------------------------------------------------
def test_fork_with_another_seed_differs_only_from_its_tick_and_diff_shows_it(
    qhybrid_cmd: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    parent = cli_json(
        qhybrid_cmd,
        env,
        "--headless",
        "--device",
        "cpu",
        str(relays(tmp_path)),
        "--checkpoint-every",
        "25",
    )
    fork = cli_json(qhybrid_cmd, env, "fork", parent["run_id"], "--at", "60", "--seed", "9")
    assert fork["parent"] == parent["run_id"] and fork["fork_tick"] == 60
    assert fork["trace_hash"] != parent["trace_hash"]
    shown = cli_json(qhybrid_cmd, env, "show", fork["run_id"])
    assert shown["parent"] == parent["run_id"] and shown["fork_tick"] == 60
    assert shown["kind"] == "fork" and shown["seed"] == 9
    assert cli_json(qhybrid_cmd, env, "show", parent["run_id"])["children"] == [fork["run_id"]]
    diff = cli_json(qhybrid_cmd, env, "diff", parent["run_id"], fork["run_id"], code=1)
    assert diff["identical"] is False
    assert diff["first_tick"] > 60  # the same up to the fork's tick
    assert diff["agents"] and min(diff["agents"].values()) > 60
    assert diff["a"] != diff["b"]
    same = cli_json(qhybrid_cmd, env, "diff", parent["run_id"], parent["run_id"])
    assert same["identical"] is True
    # A fork replays from its own checkpoint at its fork tick, with its own seed (from the
    # start, its parent's records would diverge at the first random tensor).
    replayed = cli_json(qhybrid_cmd, env, "replay", fork["run_id"])
    assert replayed["status"] == "identical" and replayed["from_tick"] == 60
    assert replayed["trace_hash"] == fork["trace_hash"] and replayed["records_checked"] > 0
    before = cli(qhybrid_cmd, env, "replay", fork["run_id"], "--to", "30")
    assert before.returncode == 2 and parent["run_id"] in before.stderr
    assert "Traceback" not in before.stderr


# -- faults ---------------------------------------------------------------------------------------
def test_a_corrupt_or_newer_store_is_refused_with_a_message(
    qhybrid_cmd: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    store = Path(env["QHYBRID_STORE"])
    store.parent.mkdir()
    store.write_bytes(b"this is no database" * 100)
    proc = cli(qhybrid_cmd, env, "--headless", "--device", "cpu", str(relays(tmp_path)))
    assert proc.returncode == 2
    assert str(store) in proc.stderr and "not a qhybrid run store" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert cli(qhybrid_cmd, env, "runs").returncode == 2
    store.unlink()
    conn = sqlite3.connect(store)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    proc = cli(qhybrid_cmd, env, "--headless", "--device", "cpu", str(relays(tmp_path)))
    assert proc.returncode == 2 and "newer qhybrid" in proc.stderr
    # Another store still works (nothing is lost to the bad one).
    ok = cli_json(
        qhybrid_cmd,
        env,
        "--headless",
        "--device",
        "cpu",
        str(relays(tmp_path)),
        "--store",
        str(tmp_path / "other.sqlite"),
    )
    assert ok["status"] == "completed"


def test_a_locked_store_is_named(
    qhybrid_cmd: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    store = Path(env["QHYBRID_STORE"])
    cli_json(qhybrid_cmd, env, "--headless", "--device", "cpu", str(relays(tmp_path)))
    holder = sqlite3.connect(store, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        proc = cli(
            qhybrid_cmd,
            {**env, "QHYBRID_STORE_TIMEOUT": "0.2"},
            "--headless",
            str(relays(tmp_path)),
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert proc.returncode == 2 and "locked" in proc.stderr and str(store) in proc.stderr


@pytest.mark.skipif(os.name != "posix", reason="RLIMIT_FSIZE is POSIX")
def test_a_full_disk_stops_the_recording_not_the_run(
    qhybrid_cmd: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    scenario = relays(tmp_path)
    plain = cli_json(qhybrid_cmd, env, "--headless", "--device", "cpu", str(scenario), "--no-store")
    limit = 160 * 1024  # the store outgrows this in a few ticks: the disk is "full"

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [
            *qhybrid_cmd,
            "--headless",
            "--device",
            "cpu",
            str(scenario),
            "--json",
            "--checkpoint-every",
            "5",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
        preexec_fn=small_files,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["trace_hash"] == plain["trace_hash"]  # the run went on to its end
    assert "stopped recording" in proc.stderr and "disk is full" in proc.stderr
    shown = cli_json(qhybrid_cmd, env, "show", result["run_id"])
    assert 0 < shown["records"] < 1500  # what was recorded before the disk filled is kept


NOTES = """
name = "notes"
[memory]
namespace = "e2e-notes"
[[agents]]
name = "notes"
module = "@AGENTS@/notes.wasm"
[[agents]]
name = "ping"
module = "@AGENTS@/ping.wat"
count = 32
[[messages]]
to = "ping"
kind = 1
payload_i64 = [1500]
[[messages]]
to = "notes"
kind = 1
payload = "first"
at = 2
[[messages]]
to = "notes"
kind = 1
payload = "second"
at = 40
[[messages]]
to = "notes"
kind = 2
at = 1490
"""


def test_memory_survives_resume_and_a_namespace_keeps_it_across_runs(
    qhybrid_cmd: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    scenario = tmp_path / "notes.toml"
    scenario.write_text(NOTES.replace("@AGENTS@", AGENTS.as_posix()), encoding="utf-8")
    plain = cli_json(qhybrid_cmd, env, "--headless", "--device", "cpu", str(scenario), "--no-store")
    code, seen = run_and_kill(
        qhybrid_cmd,
        env,
        scenario,
        60,
        signal.SIGKILL,
        "--device",
        "cpu",
        "--checkpoint-every",
        "10",
    )
    assert code == -signal.SIGKILL and 60 <= seen < 1490
    resumed = cli_json(qhybrid_cmd, env, "resume", "last")
    assert resumed["resumed_from"] >= 40  # the checkpoint holds both notes ...
    assert resumed["trace_hash"] == plain["trace_hash"]  # ... and the run goes on as it would
    again = cli(qhybrid_cmd, env, "--headless", "--device", "cpu", str(scenario), "-v")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "notes: run 2, 2 notes remembered" in again.stderr
    assert "note/000003 = second" in again.stderr
    conn = sqlite3.connect(env["QHYBRID_STORE"])
    rows = dict(
        conn.execute(
            "SELECT key, value FROM memory WHERE namespace = 'e2e-notes' AND agent = 'notes'"
        ).fetchall()
    )
    conn.close()
    assert rows[b"runs"] == b"2" and rows[b"notes"] == b"4"


KEEPER_WAT = """
(module
  (import "qhybrid" "send" (func $send (param i32 i32 i32 i32) (result i32)))
  (import "qhybrid" "self_id" (func $self_id (result i32)))
  (import "qhybrid" "mem_get" (func $mem_get (param i32 i32 i32 i32) (result i32)))
  (import "qhybrid" "mem_put" (func $mem_put (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "k")
  (func (export "qh_abi_version") (result i32) (i32.const 1))
  (func (export "qh_alloc") (param $size i32) (result i32) (i32.const 1024))
  ;; kind 1: remember the payload as "k"; kind 3: trap; kind 2: send "k"'s value to itself.
  (func (export "qh_on_message")
    (param $from i32) (param $kind i32) (param $ptr i32) (param $len i32) (result i32)
    (local $n i32)
    (if (i32.eq (local.get $kind) (i32.const 1))
      (then (return (call $mem_put (i32.const 0) (i32.const 1) (local.get $ptr) (local.get $len)))))
    (if (i32.eq (local.get $kind) (i32.const 3)) (then unreachable))
    (if (i32.eq (local.get $kind) (i32.const 2))
      (then
        (local.set $n (call $mem_get (i32.const 0) (i32.const 1) (i32.const 512) (i32.const 256)))
        (if (i32.lt_s (local.get $n) (i32.const 0)) (then (local.set $n (i32.const 0))))
        (return (call $send (call $self_id) (i32.const 4) (i32.const 512) (local.get $n)))))
    (i32.const 0))
)
"""

KEEPER = """
name = "keeper"
[memory]
namespace = "e2e-keeper"
[[agents]]
name = "keeper"
module = "@DIR@/keeper.wat"
on_error = "restart"
[[agents]]
name = "ping"
module = "@AGENTS@/ping.wat"
[[messages]]
to = "ping"
kind = 1
payload_i64 = [80]
[[messages]]
to = "keeper"
kind = 1
payload = "v2"
at = 20
[[messages]]
to = "keeper"
kind = 3
at = 50
[[messages]]
to = "keeper"
kind = 2
at = 60
"""


def test_a_restarted_agent_after_a_fork_starts_from_the_runs_starting_memory(
    qhybrid_cmd: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    """`restart` gives an agent the memory its run started with (docs/agent-abi.md), also in
    a run restored from a checkpoint, whose process did not read the namespace itself."""
    from qhybrid.runtime.store import RunStore

    (tmp_path / "keeper.wat").write_text(KEEPER_WAT, encoding="utf-8")
    scenario = tmp_path / "keeper.toml"
    text = KEEPER.replace("@DIR@", tmp_path.as_posix()).replace("@AGENTS@", AGENTS.as_posix())
    scenario.write_text(text, encoding="utf-8")
    with RunStore(Path(env["QHYBRID_STORE"])) as store:
        store.save_memory("e2e-keeper", {"keeper": {b"k": b"v0"}})
    parent = cli_json(
        qhybrid_cmd, env, "--headless", "--device", "cpu", str(scenario), "--checkpoint-every", "10"
    )
    assert parent["status"] == "completed"
    conn = sqlite3.connect(env["QHYBRID_STORE"])
    (lines,) = conn.execute(
        "SELECT group_concat(lines, char(10)) FROM records WHERE run_id = ?", (parent["run_id"],)
    ).fetchone()
    conn.close()
    # The trap at tick 50 restarted it; at 60 it read "k" as the run started: v0, not v2.
    assert "('agent-failed', 50," in lines and ", 0, 4, b'v0', 0)" in lines
    # A fork at tick 30 with no changes restores the checkpoint; its restart must bring back
    # v0 (the run's starting memory), as the parent's did, or the trace differs at tick 60.
    same = cli_json(qhybrid_cmd, env, "fork", parent["run_id"], "--at", "30")
    assert same["trace_hash"] == parent["trace_hash"]


@pytest.mark.slow
def test_the_demo_resumes_with_llm_requests_in_flight(
    qhybrid_cmd: list[str], env: dict[str, str]
) -> None:
    """The storytellers' answers stream over most of the demo: the checkpoint a resume starts
    from has requests in flight, and the engine's state is rebuilt from the recorded steps."""
    # --device cpu: where "auto" puts the LLM and the matmul is measured per machine (a cost
    # model cached beside the modules), and the trace names the placement.
    undisturbed = cli_json(qhybrid_cmd, env, "--headless", "--device", "cpu", "--no-store")
    at = random.Random().randrange(12, 40)
    demo = ROOT / "resources" / "scenarios" / "demo.toml"
    code, seen = run_and_kill(
        qhybrid_cmd, env, demo, at, signal.SIGKILL, "--device", "cpu", "--checkpoint-every", "5"
    )
    assert code == -signal.SIGKILL and seen >= at
    resumed = cli_json(qhybrid_cmd, env, "resume", "last")
    assert 5 <= resumed["resumed_from"] <= seen
    assert resumed["trace_hash"] == undisturbed["trace_hash"], f"killed at tick {seen}"
    assert resumed["llm"]["requests"] == 2


def test_a_fork_with_llm_requests_in_flight_and_no_changes_is_its_parent(
    qhybrid_cmd: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    parent = cli_json(
        qhybrid_cmd,
        env,
        "--headless",
        "--device",
        "cpu",
        str(stories(tmp_path)),
        "--checkpoint-every",
        "4",
    )
    same = cli_json(qhybrid_cmd, env, "fork", parent["run_id"], "--at", "6")
    assert same["fork_tick"] == 6 and same["trace_hash"] == parent["trace_hash"]
    # Another seed changes the requests made after the fork (storyteller-1 asks at tick 3);
    # the one in flight at tick 2 goes on with its own.
    other = cli_json(qhybrid_cmd, env, "fork", parent["run_id"], "--at", "2", "--seed", "11")
    diff = cli_json(qhybrid_cmd, env, "diff", parent["run_id"], other["run_id"], code=1)
    assert diff["first_tick"] > 3 and "llm_done" in (diff["a"] or diff["b"])
