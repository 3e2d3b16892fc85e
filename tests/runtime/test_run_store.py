"""The run store's file: transactions all-or-nothing, checkpoints that survive a failed write,
readers beside a writer, run ids as users type them, refusals with messages."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from qhybrid.runtime.store import SCHEMA_VERSION, RunStore, StoreError


def _run(store: RunStore) -> str:
    return store.new_run(
        scenario_name="s",
        scenario_path="/x/s.toml",
        scenario_text="name = 's'",
        seed=1,
        config={"workers": 2},
        version="test",
    )


def _crash_while_checkpointing(store: RunStore, run: str) -> None:
    with store.transaction():
        # The next checkpoint is half written (its blobs are in, its row too) when it fails.
        store.save_checkpoint(run, 20, 200, b"state-20", {"b" * 64: b"other"})
        raise ZeroDivisionError


def test_a_failed_checkpoint_write_leaves_the_previous_one(tmp_path: Path) -> None:
    with RunStore(tmp_path / "runs.sqlite") as store:
        run = _run(store)
        store.save_checkpoint(run, 10, 100, b"state-10", {"a" * 64: b"blob"})
        with pytest.raises(ZeroDivisionError):
            _crash_while_checkpointing(store, run)
        cp = store.checkpoint(run)
        assert cp is not None and (cp.tick, cp.records, cp.state) == (10, 100, b"state-10")
        assert store.blobs(["a" * 64]) == {"a" * 64: b"blob"}
        with pytest.raises(StoreError, match="missing data"):
            store.blobs(["b" * 64])


def test_a_reader_reads_while_a_writer_holds_a_transaction(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    with RunStore(path) as writer:
        run = _run(writer)
        writer.append_tick(run, 1, 1, [(0, 1, "('ok', 1)")])
        with writer.transaction():
            writer.append_tick(run, 2, 2, [(1, 2, "('ok', 2)")])
            with RunStore(path, readonly=True) as reader:  # WAL: it sees the last commit
                assert [line for _, _, line in reader.records(run)] == ["('ok', 1)"]
        with RunStore(path, readonly=True) as reader:
            assert reader.run(run)["records"] == 2


def test_run_ids_resolve_from_what_a_user_types(tmp_path: Path) -> None:
    with RunStore(tmp_path / "runs.sqlite") as store:
        first, second = _run(store), _run(store)
        assert store.resolve("last") == second
        assert store.resolve(first) == first
        if first[:-1] != second[:-1]:
            assert store.resolve(second[:-1]) == second  # a unique prefix
        with pytest.raises(StoreError, match="no run 'zzz'"):
            store.resolve("zzz")
        common = first[:8]  # both start with the same date
        with pytest.raises(StoreError, match="names several runs"):
            store.resolve(common)


def test_a_newer_or_foreign_file_is_refused_with_its_path(tmp_path: Path) -> None:
    newer = tmp_path / "newer.sqlite"
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer qhybrid") as err:
        RunStore(newer)
    assert str(newer) in str(err.value)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"\x00not sqlite" * 500)
    with pytest.raises(StoreError, match="not a qhybrid run store"):
        RunStore(junk)
    with pytest.raises(StoreError, match="no such file"):
        RunStore(tmp_path / "missing.sqlite", readonly=True)


def test_a_format_1_store_is_migrated_with_its_records(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE runs (run_id TEXT PRIMARY KEY, parent TEXT, fork_tick INTEGER, kind TEXT,"
        " scenario_name TEXT, scenario_path TEXT, scenario_text TEXT, scenario_digest TEXT,"
        " seed INTEGER, config TEXT, version TEXT, status TEXT, reason TEXT, created REAL,"
        " updated REAL, finished REAL, last_tick INTEGER, records INTEGER, trace_hash TEXT,"
        " summary TEXT);"
        "CREATE TABLE records (run_id TEXT, n INTEGER, tick INTEGER, line TEXT,"
        " PRIMARY KEY (run_id, n)) WITHOUT ROWID;"
        "CREATE INDEX records_tick ON records (run_id, tick);"
        "INSERT INTO runs VALUES ('r1', NULL, NULL, 'run', 's', '/s.toml', '', 'd', 1, '{}',"
        " 'old', 'completed', NULL, 1, 1, 2, 3, 2, 'h', NULL);"
        "INSERT INTO records VALUES ('r1', 0, 0, \"('llm_model', 0, 0, 'm', 'a', 'cpu')\");"
        "INSERT INTO records VALUES ('r1', 1, 3, \"('end', 'completed', 3)\");"
        "PRAGMA user_version = 1;"
    )
    conn.close()
    with RunStore(path) as store:
        assert list(store.records("r1")) == [
            (0, 0, "('llm_model', 0, 0, 'm', 'a', 'cpu')"),
            (1, 3, "('end', 'completed', 3)"),
        ]
        assert store.run("r1")["status"] == "completed"


def test_a_resume_forgets_what_came_after_its_checkpoint(tmp_path: Path) -> None:
    with RunStore(tmp_path / "runs.sqlite") as store:
        run = _run(store)
        store.append_tick(run, 5, 3, [(0, 0, "a"), (1, 5, "b"), (2, 5, "c")])
        store.save_checkpoint(run, 5, 3, b"s5", {})
        store.append_tick(run, 9, 5, [(3, 9, "d"), (4, 9, "e")], logs=[(9, "x", 20, "late")])
        store.save_checkpoint(run, 9, 5, b"s9", {})
        store.set_status(run, "interrupted")
        store.truncate_after(run, 5, 3)
        assert [line for _, _, line in store.records(run)] == ["a", "b", "c"]
        assert store.logs(run) == []
        assert store.checkpoint_ticks(run) == [5]
        assert store.run(run)["status"] == "running"


def test_a_run_whose_process_is_gone_reads_as_interrupted(tmp_path: Path) -> None:
    import subprocess
    import sys

    with RunStore(tmp_path / "runs.sqlite") as store:
        mine, dead = _run(store), _run(store)
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()  # reaped: its pid names no process (or, reused, one started later)
        with store.transaction() as conn:
            conn.execute("UPDATE runs SET owner_pid = ? WHERE run_id = ?", (gone.pid, dead))
        statuses = {r["run_id"]: r["status"] for r in store.runs()}
        assert statuses == {mine: "running", dead: "interrupted"}
        assert f"pid {gone.pid}" in store.run(dead)["reason"]
        # A pid that is alive but started at another time is another process: gone too.
        with store.transaction() as conn:
            conn.execute("UPDATE runs SET owner_start = 'other' WHERE run_id = ?", (mine,))
        assert store.run(mine)["status"] == "interrupted"


def test_checkpoint_state_is_data_and_a_pickle_is_refused(tmp_path: Path) -> None:
    import os
    import pickle
    from types import MappingProxyType

    from qhybrid.runtime._scenario_specs import TaskSpec
    from qhybrid.runtime.store import CheckpointUnavailable
    from qhybrid.runtime.store._checkpoint import check_snapshot
    from qhybrid.runtime.store._codec import CodecError, decode, encode

    task = TaskSpec("t", "cpu", "relu", ("x",), "y", (2, 2), "<f4", MappingProxyType({"a": 1.5}))
    state = {
        "version": 2,
        "queue": [(3, -1, 7, (1, 2, 3, b"\x00\xff"), None), (4, 0, 8, None, task)],
        "job_owner": {"t": (1, 2)},
        "memory": ({}, {"a": {b"k": b"v"}}),
        "writers": frozenset({"a", "b"}),
        "floats": (0.1, float("inf"), -0.0),
    }
    back = decode(encode(state))
    assert back["queue"][0] == state["queue"][0] and back["queue"][1][4].params == {"a": 1.5}
    assert back["job_owner"] == {"t": (1, 2)} and back["memory"] == state["memory"]
    assert back["writers"] == state["writers"] and back["floats"] == state["floats"]

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    evil = pickle.dumps({"version": 1, "x": Evil()})
    with pytest.raises(CodecError, match="pickle"):
        decode(evil)
    with pytest.raises(CodecError, match="class"):
        decode(b'QHCK2\n{"c": "Popen", "v": {"d": []}}')
    with pytest.raises(CheckpointUnavailable, match=r"names (posix|nt)\.system"):
        check_snapshot(evil)
    check_snapshot(pickle.dumps(("host", (1, 2, (), 0, 0, ()), ((3, [(0, b"ab")]), {"g": 1}))))
    assert not (tmp_path / "pwned").exists()


def test_a_format_2_store_gains_process_owners(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    with RunStore(path) as store:
        run = _run(store)
    conn = sqlite3.connect(path)
    conn.executescript(
        "ALTER TABLE runs DROP COLUMN owner_pid; ALTER TABLE runs DROP COLUMN owner_host;"
        "ALTER TABLE runs DROP COLUMN owner_start; PRAGMA user_version = 2;"
    )
    conn.close()
    with RunStore(path, readonly=True) as store:  # a reader brings it up to date too
        row = store.run(run)
        assert row["status"] == "running" and row["owner_pid"] is None
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    conn.close()


def test_a_format_4_store_gains_the_messages_usage_and_its_runs_have_none(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    with RunStore(path) as store:
        run = _run(store)
    conn = sqlite3.connect(path)
    conn.executescript("DROP TABLE usage; PRAGMA user_version = 4;")
    conn.close()
    with RunStore(path, readonly=True) as store:  # brought up to date, then read
        assert store.message_usage(run) == {}
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 5
    assert conn.execute("SELECT count(*) FROM usage").fetchone()[0] == 0
    conn.close()
