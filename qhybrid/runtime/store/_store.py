"""The run store: every run's scenario, settings, trace records, logs, LLM traffic, job
results, checkpoints and summary, in one SQLite file (see ``_schema``).

One :class:`RunStore` is one connection; it is not shared between threads (the recorder's
writer thread opens its own). Writes are grouped into transactions by the caller
(:meth:`RunStore.transaction`), which is what makes one tick's records, or one checkpoint,
all-or-nothing: a crash during a checkpoint leaves the previous one valid.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qhybrid.runtime.store._owner import owner_gone, this_process
from qhybrid.runtime.store._schema import StoreError, connect, describe

#: Statuses: "running", "interrupted" (Ctrl-C, or a "running" run whose process is gone, see
#: ``_owner``), "completed", "failed", "diverged" (a replay that differed).
RUNNING = "running"
INTERRUPTED = "interrupted"


def _live_status(row: dict[str, Any]) -> dict[str, Any]:
    """A run's row with a ``running`` status that no process carries on read as interrupted."""
    if row.get("status") == RUNNING and owner_gone(
        row.get("owner_pid"), row.get("owner_host"), row.get("owner_start")
    ):
        row["status"] = INTERRUPTED
        row["reason"] = (
            f"its process (pid {row['owner_pid']} on {row['owner_host']}) is gone; "
            "it was killed or crashed"
        )
    return row


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A saved state: the tick after whose commit it was taken, how many trace records the
    run had then, and the orchestrator's state (see ``_checkpoint``)."""

    run_id: str
    tick: int
    records: int
    state: bytes


def tick_of(line: str, default: int) -> int:
    """The tick a record's ``repr`` names (its second field), or ``default`` (``end``)."""
    parts = line.split(", ", 2)
    if len(parts) > 1:
        field = parts[1].rstrip(")")
        if field.lstrip("-").isdigit():
            return int(field)
    return default


def blob_digest(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def new_run_id() -> str:
    """Sortable by creation time and short enough to type: ``20261201-094512-3fa9``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


class RunStore:
    """The store at ``path``; ``readonly`` opens it for reading only (a second process)."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self._conn = connect(path, readonly=readonly)
        self._depth = 0

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One all-or-nothing transaction (nested calls join the outer one)."""
        conn = self._conn
        if self._depth:
            self._depth += 1
            try:
                yield conn
            finally:
                self._depth -= 1
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(describe(self.path, exc)) from None
        self._depth = 1
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(exc, sqlite3.Error):
                raise StoreError(describe(self.path, exc)) from None
            raise
        finally:
            self._depth = 0

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            cur = self._conn.execute(sql, args)
            cur.row_factory = sqlite3.Row
            return list(cur.fetchall())
        except sqlite3.Error as exc:
            raise StoreError(describe(self.path, exc)) from None

    # -- runs -------------------------------------------------------------------------------
    def new_run(
        self,
        *,
        scenario_name: str,
        scenario_path: str,
        scenario_text: str,
        seed: int,
        config: dict[str, Any],
        version: str,
        kind: str = "run",
        parent: str | None = None,
        fork_tick: int | None = None,
    ) -> str:
        run_id = new_run_id()
        now = time.time()
        digest = hashlib.sha256(scenario_text.encode("utf-8")).hexdigest()
        with self.transaction() as conn:
            while conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                run_id = new_run_id()
            conn.execute(
                "INSERT INTO runs (run_id, parent, fork_tick, kind, scenario_name, scenario_path,"
                " scenario_text, scenario_digest, seed, config, version, status, created,"
                " updated, owner_pid, owner_host, owner_start)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    parent,
                    fork_tick,
                    kind,
                    scenario_name,
                    scenario_path,
                    scenario_text,
                    digest,
                    seed,
                    json.dumps(config, sort_keys=True),
                    version,
                    RUNNING,
                    now,
                    now,
                    *this_process(),
                ),
            )
        return run_id

    def resolve(self, ref: str) -> str:
        """A run id from what a user typed: the id, a unique prefix of it, or ``last``."""
        if ref in ("last", "latest"):
            rows = self._query("SELECT run_id FROM runs ORDER BY created DESC, run_id DESC LIMIT 1")
            if not rows:
                raise StoreError(f"run store {self.path}: it holds no runs")
            return str(rows[0]["run_id"])
        rows = self._query(
            "SELECT run_id FROM runs WHERE run_id = ? OR run_id LIKE ? ESCAPE '\\' LIMIT 3",
            (ref, ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"),
        )
        ids = [str(r["run_id"]) for r in rows]
        if ref in ids:
            return ref
        if not ids:
            raise StoreError(f"run store {self.path}: no run {ref!r} (see `qhybrid runs`)")
        if len(ids) > 1:
            raise StoreError(f"run store {self.path}: {ref!r} names several runs; type more of it")
        return ids[0]

    def runs(self) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT run_id, parent, fork_tick, kind, scenario_name, seed, status, reason,"
            " created, finished, last_tick, records, trace_hash, owner_pid, owner_host,"
            " owner_start FROM runs ORDER BY created, run_id"
        )
        return [_live_status(dict(r)) for r in rows]

    def run(self, run_id: str) -> dict[str, Any]:
        rows = self._query("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        if not rows:
            raise StoreError(f"run store {self.path}: no run {run_id!r}")
        data = _live_status(dict(rows[0]))
        data["config"] = json.loads(data["config"])
        data["summary"] = json.loads(data["summary"]) if data["summary"] else None
        counts = self._query(
            "SELECT (SELECT count(*) FROM logs WHERE run_id = ?) AS logs,"
            " (SELECT count(*) FROM llm_requests WHERE run_id = ?) AS llm_requests,"
            " (SELECT count(*) FROM jobs WHERE run_id = ?) AS jobs,"
            " (SELECT count(*) FROM checkpoints WHERE run_id = ?) AS checkpoints,"
            " (SELECT max(tick) FROM checkpoints WHERE run_id = ?) AS last_checkpoint",
            (run_id,) * 5,
        )
        data.update(dict(counts[0]))
        if data["parent"] is not None:
            data["parent_deleted"] = not self._query(
                "SELECT 1 FROM runs WHERE run_id = ?", (data["parent"],)
            )
        data["children"] = [
            str(r["run_id"])
            for r in self._query(
                "SELECT run_id FROM runs WHERE parent = ? ORDER BY created", (run_id,)
            )
        ]
        return data

    def set_status(
        self,
        run_id: str,
        status: str,
        reason: str | None = None,
        *,
        trace_hash: str | None = None,
        summary: dict[str, Any] | None = None,
    ) -> None:
        now = time.time()
        finished = None if status == RUNNING else now
        with self.transaction() as conn:
            conn.execute(
                "UPDATE runs SET status = ?, reason = ?, updated = ?, finished = ?,"
                " trace_hash = coalesce(?, trace_hash), summary = coalesce(?, summary)"
                " WHERE run_id = ?",
                (
                    status,
                    reason,
                    now,
                    finished,
                    trace_hash,
                    json.dumps(summary, sort_keys=True) if summary is not None else None,
                    run_id,
                ),
            )

    # -- what a tick recorded -----------------------------------------------------------------
    def append_tick(
        self,
        run_id: str,
        last_tick: int,
        records: int,
        rows: Iterable[tuple[int, int, str]],
        logs: Iterable[tuple[int, str, int, str]] = (),
        llm_requests: Iterable[tuple[int, int, str, str, str]] = (),
        llm_updates: Iterable[tuple[int, int, str, str, int, str | None]] = (),
        jobs: Iterable[tuple[int, str, str, str, str, float, str | None, str | None]] = (),
        ticks: Iterable[tuple[int, float, float, int, str, float]] = (),
        blobs: dict[str, bytes] | None = None,
        payloads: Iterable[tuple[int, int, bytes]] = (),
        effects: Iterable[tuple[str, int, str]] = (),
        usage: Iterable[tuple[int, bytes]] = (),
    ) -> None:
        """Add trace records and what came with them; call inside a :meth:`transaction` to
        batch several ticks. ``rows`` are ``(n, tick, lines)``: the records from number ``n``
        on, their ``repr`` lines joined by newlines (one row per flush of the trace, not one
        per record: what keeps recording cheap), ``tick`` the tick they were flushed in."""
        with self.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO records (run_id, n, tick, count, lines) VALUES (?,?,?,?,?)",
                ((run_id, n, t, text.count("\n") + 1, text) for n, t, text in rows),
            )
            conn.executemany(
                "INSERT INTO logs (run_id, tick, agent, level, text) VALUES (?,?,?,?,?)",
                ((run_id, *row) for row in logs),
            )
            conn.executemany(
                "INSERT OR REPLACE INTO llm_requests (run_id, request_id, tick, prompt_ids,"
                " params, seed) VALUES (?,?,?,?,?,?)",
                ((run_id, *row) for row in llm_requests),
            )
            conn.executemany(
                "INSERT INTO llm_updates (run_id, tick, request_id, text, new_tokens, done,"
                " result) VALUES (?,?,?,?,?,?,?)",
                ((run_id, *row) for row in llm_updates),
            )
            conn.executemany(
                "INSERT INTO jobs (run_id, tick, name, kind, op, placement, elapsed_s, error,"
                " digest) VALUES (?,?,?,?,?,?,?,?,?)",
                ((run_id, *row) for row in jobs),
            )
            if blobs:
                conn.executemany(
                    "INSERT OR IGNORE INTO blobs (digest, data) VALUES (?, ?)", blobs.items()
                )
            conn.executemany(
                "INSERT OR REPLACE INTO payloads (run_id, tick, seq, data) VALUES (?,?,?,?)",
                ((run_id, *row) for row in payloads),
            )
            conn.executemany(
                "INSERT OR REPLACE INTO effects (run_id, key, tick, text) VALUES (?,?,?,?)",
                ((run_id, *row) for row in effects),
            )
            conn.executemany(
                "INSERT OR REPLACE INTO usage (run_id, tick, data) VALUES (?,?,?)",
                ((run_id, *row) for row in usage),
            )
            conn.executemany(
                "INSERT OR REPLACE INTO ticks (run_id, tick, t_s, dur_s, delivered, busy, llm_s)"
                " VALUES (?,?,?,?,?,?,?)",
                ((run_id, *row) for row in ticks),
            )
            conn.execute(
                "UPDATE runs SET last_tick = ?, records = ?, updated = ? WHERE run_id = ?",
                (last_tick, records, time.time(), run_id),
            )

    def records(
        self, run_id: str, *, from_tick: int | None = None, to_tick: int | None = None
    ) -> Iterator[tuple[int, int, str]]:
        """``(n, tick, line)`` in order; ``line`` is the record's ``repr``, the text the
        trace hash covers."""
        sql = "SELECT n, tick, lines FROM records WHERE run_id = ? ORDER BY n"
        try:
            cur = self._conn.execute(sql, (run_id,))
            while batch := cur.fetchmany(256):
                for n, chunk_tick, text in batch:
                    for i, line in enumerate(str(text).split("\n")):
                        tick = tick_of(line, int(chunk_tick))
                        if from_tick is not None and tick < from_tick:
                            continue
                        if to_tick is not None and tick > to_tick:
                            return
                        yield int(n) + i, tick, line
        except sqlite3.Error as exc:
            raise StoreError(describe(self.path, exc)) from None

    def copy_records(self, run_id: str, lines: list[str], tick: int) -> None:
        """Give ``run_id`` these records as its first ones (a fork's past)."""
        if lines:
            self.append_tick(run_id, tick, len(lines), [(0, tick, "\n".join(lines))])

    def logs(self, run_id: str) -> list[tuple[int, str, int, str]]:
        rows = self._query(
            "SELECT tick, agent, level, text FROM logs WHERE run_id = ? ORDER BY rowid", (run_id,)
        )
        return [(int(r[0]), str(r[1]), int(r[2]), str(r[3])) for r in rows]

    def jobs(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._query("SELECT * FROM jobs WHERE run_id = ? ORDER BY rowid", (run_id,))
        return [dict(r) for r in rows]

    def ticks(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._query("SELECT * FROM ticks WHERE run_id = ? ORDER BY tick", (run_id,))
        return [{**dict(r), "busy": json.loads(r["busy"])} for r in rows]

    def llm_requests(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT request_id, tick, prompt_ids, params, seed FROM llm_requests"
            " WHERE run_id = ? ORDER BY request_id",
            (run_id,),
        )
        return [
            {
                **dict(r),
                "prompt_ids": json.loads(r["prompt_ids"]),
                "params": json.loads(r["params"]),
            }
            for r in rows
        ]

    def llm_updates(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT tick, request_id, text, new_tokens, done, result FROM llm_updates"
            " WHERE run_id = ? ORDER BY rowid",
            (run_id,),
        )
        return [
            {
                **dict(r),
                "new_tokens": json.loads(r["new_tokens"]),
                "done": bool(r["done"]),
                "result": json.loads(r["result"]) if r["result"] else None,
            }
            for r in rows
        ]

    def truncate_after(self, run_id: str, tick: int, records: int) -> None:
        """Forget what a run recorded after ``tick`` (and records from number ``records`` on):
        what a resume from the checkpoint at ``tick`` will record again."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM records WHERE run_id = ? AND n >= ?", (run_id, records))
            row = conn.execute(
                "SELECT n, tick, lines FROM records WHERE run_id = ? AND n + count > ?",
                (run_id, records),
            ).fetchone()
            if row is not None:  # a row that straddles the cut keeps its first records
                keep = str(row[2]).split("\n")[: records - int(row[0])]
                conn.execute(
                    "UPDATE records SET count = ?, lines = ? WHERE run_id = ? AND n = ?",
                    (len(keep), "\n".join(keep), run_id, row[0]),
                )
            for table in (
                "logs",
                "llm_updates",
                "jobs",
                "llm_requests",
                "ticks",
                "effects",
                "usage",
            ):
                # (Not ``payloads``: keyed by due tick and queue seq, which a resume makes
                # again the same; those queued before the cut and due after it stay valid.)
                conn.execute(f"DELETE FROM {table} WHERE run_id = ? AND tick > ?", (run_id, tick))
            conn.execute("DELETE FROM checkpoints WHERE run_id = ? AND tick > ?", (run_id, tick))
            conn.execute(
                "UPDATE runs SET last_tick = ?, records = ?, status = ?, reason = NULL,"
                " finished = NULL, trace_hash = NULL, summary = NULL, owner_pid = ?,"
                " owner_host = ?, owner_start = ? WHERE run_id = ?",
                (tick, records, RUNNING, *this_process(), run_id),
            )

    # -- deleting a run -----------------------------------------------------------------------
    def delete_run(self, run_id: str) -> dict[str, Any]:
        """Delete a run: its trace, logs, LLM traffic, jobs, ticks, message payloads and
        checkpoints, and the blobs (snapshots, tensor contents, job outputs) that no other
        run's checkpoints or jobs name. A run still running is refused (:class:`StoreError`).

        Its forks keep working: a fork holds its own copy of the trace before its fork tick
        and its own checkpoints; it keeps its parent's id, which :meth:`run` then reports as
        deleted. Returns what was deleted (rows per table, ``blobs`` freed, ``forks`` left)."""
        run = self.run(run_id)
        if run["status"] == RUNNING:
            raise StoreError(
                f"run store {self.path}: run {run_id} is still running "
                f"(pid {run['owner_pid']} on {run['owner_host']}); stop it first"
            )
        from qhybrid.runtime.store._checkpoint import CheckpointUnavailable, load_state

        def named_by(rows: Iterable[sqlite3.Row]) -> set[str]:
            keys: set[str] = set()
            for (data,) in rows:
                try:
                    state = load_state(bytes(data))
                except CheckpointUnavailable:
                    continue  # an old pickled checkpoint names no blob this code can read
                keys.update(a[4] for a in state["agents"] if a[4])
                keys.update(t[3] for t in state["tensors"])
            return keys

        counts: dict[str, Any] = {}
        with self.transaction() as conn:
            mine = named_by(
                conn.execute("SELECT state FROM checkpoints WHERE run_id = ?", (run_id,))
            )
            mine.update(
                str(r[0])
                for r in conn.execute(
                    "SELECT digest FROM jobs WHERE run_id = ? AND digest IS NOT NULL", (run_id,)
                )
            )
            others = named_by(
                conn.execute("SELECT state FROM checkpoints WHERE run_id != ?", (run_id,))
            )
            others.update(
                str(r[0])
                for r in conn.execute(
                    "SELECT digest FROM jobs WHERE run_id != ? AND digest IS NOT NULL", (run_id,)
                )
            )
            for table in (
                "records",
                "logs",
                "llm_requests",
                "llm_updates",
                "jobs",
                "ticks",
                "payloads",
                "effects",
                "usage",
                "checkpoints",
                "runs",
            ):
                cur = conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
                counts[table] = cur.rowcount
            freed = sorted(mine - others)
            for i in range(0, len(freed), 500):
                part = freed[i : i + 500]
                conn.execute(
                    f"DELETE FROM blobs WHERE digest IN ({','.join('?' * len(part))})", part
                )
        counts["blobs"] = len(freed)
        counts["forks"] = list(run["children"])
        return counts

    def effects(self, run_id: str, *, to_tick: int | None = None) -> dict[str, str]:
        """ABI v2 tool results and people's answers, by their key (``agent/ask/3``): what a
        replay answers with instead of asking again (up to ``to_tick``, when given)."""
        sql = "SELECT key, text FROM effects WHERE run_id = ?"
        args: list[Any] = [run_id]
        if to_tick is not None:
            sql += " AND tick <= ?"
            args.append(to_tick)
        return {str(r[0]): str(r[1]) for r in self._query(sql, args)}

    def copy_effects(self, run_id: str, effects: dict[str, str], tick: int) -> None:
        """Give ``run_id`` these effects (a fork's, from before its fork tick)."""
        self.append_tick(
            run_id,
            tick,
            self.run(run_id)["records"],
            [],
            effects=[(k, tick, v) for k, v in effects.items()],
        )

    # -- message payloads (beside the trace, which keeps only a digest of long ones) ----------
    def message_usage(self, run_id: str) -> dict[tuple[int, int], tuple[int, int]]:
        """(tick, seq) -> the fuel a message's handler burnt (-1: not metered) and its agent's
        memory after it, as the workers reported them (runs recorded before store format 5,
        and messages dropped before they were handled, have none)."""
        rows = self._query("SELECT tick, data FROM usage WHERE run_id = ?", (run_id,))
        out: dict[tuple[int, int], tuple[int, int]] = {}
        for tick, data in rows:
            values = np.frombuffer(bytes(data), "<i8").reshape(-1, 3).tolist()
            for seq, fuel, memory in values:
                out[(int(tick), seq)] = (fuel, memory)
        return out

    def payloads(self, run_id: str) -> dict[tuple[int, int], bytes]:
        """(tick, seq) -> the full payload of a message the trace keeps only a digest of."""
        rows = self._query("SELECT tick, seq, data FROM payloads WHERE run_id = ?", (run_id,))
        return {(int(r[0]), int(r[1])): bytes(r[2]) for r in rows}

    # -- agents' long-term memory ----------------------------------------------------------------
    def load_memory(self, namespace: str) -> dict[str, dict[bytes, bytes]]:
        """A persistent namespace's memory: agent name -> key -> value."""
        rows = self._query(
            "SELECT agent, key, value FROM memory WHERE namespace = ? ORDER BY agent, key",
            (namespace,),
        )
        out: dict[str, dict[bytes, bytes]] = {}
        for r in rows:
            out.setdefault(str(r[0]), {})[bytes(r[1])] = bytes(r[2])
        return out

    def save_memory(self, namespace: str, memory: dict[str, dict[bytes, bytes]]) -> None:
        """Replace what ``namespace`` holds for these agents, atomically."""
        with self.transaction() as conn:
            for agent, kv in memory.items():
                conn.execute(
                    "DELETE FROM memory WHERE namespace = ? AND agent = ?", (namespace, agent)
                )
                conn.executemany(
                    "INSERT INTO memory (namespace, agent, key, value) VALUES (?,?,?,?)",
                    ((namespace, agent, k, v) for k, v in kv.items()),
                )

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(
        self, run_id: str, tick: int, records: int, state: bytes, blobs: dict[str, bytes]
    ) -> None:
        """Save a checkpoint and the blobs it names (deduplicated by digest), atomically."""
        with self.transaction() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO blobs (digest, data) VALUES (?, ?)", blobs.items()
            )
            conn.execute(
                "INSERT OR REPLACE INTO checkpoints (run_id, tick, records, created, state)"
                " VALUES (?,?,?,?,?)",
                (run_id, tick, records, time.time(), state),
            )

    def checkpoint(self, run_id: str, at_or_before: int | None = None) -> Checkpoint | None:
        """The latest checkpoint of a run, or the latest at or before a tick."""
        sql = "SELECT tick, records, state FROM checkpoints WHERE run_id = ?"
        args: list[Any] = [run_id]
        if at_or_before is not None:
            sql += " AND tick <= ?"
            args.append(at_or_before)
        rows = self._query(sql + " ORDER BY tick DESC LIMIT 1", args)
        if not rows:
            return None
        r = rows[0]
        return Checkpoint(run_id, int(r["tick"]), int(r["records"]), bytes(r["state"]))

    def checkpoint_ticks(self, run_id: str) -> list[int]:
        rows = self._query("SELECT tick FROM checkpoints WHERE run_id = ? ORDER BY tick", (run_id,))
        return [int(r[0]) for r in rows]

    def blobs(self, digests: Iterable[str]) -> dict[str, bytes]:
        wanted = list(dict.fromkeys(digests))
        found: dict[str, bytes] = {}
        for i in range(0, len(wanted), 500):
            part = wanted[i : i + 500]
            rows = self._query(
                f"SELECT digest, data FROM blobs WHERE digest IN ({','.join('?' * len(part))})",
                part,
            )
            found.update((str(r[0]), bytes(r[1])) for r in rows)
        missing = [d for d in wanted if d not in found]
        if missing:
            raise StoreError(f"run store {self.path}: a checkpoint names missing data {missing[0]}")
        return found
