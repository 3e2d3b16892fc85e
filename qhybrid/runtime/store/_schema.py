"""The run store's file: an SQLite database in WAL mode, its schema and its format version.

WAL lets a second process (``qhybrid runs``, the window) read while a run writes. The format
version lives in ``PRAGMA user_version``: a store made by a newer qhybrid is refused with a
message rather than misread. Every SQLite failure reaches callers as :class:`StoreError`,
whose message names the file and what went wrong (locked, full disk, not a database, ...).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

#: The format this code writes; a store with a higher ``user_version`` is refused.
SCHEMA_VERSION = 5

# Format 1 kept one ``records`` row per trace record (``line``); format 2 one per flush of the
# trace (``count`` lines joined in ``lines``). Each old row becomes a row of one line.
_MIGRATE_1_TO_2 = """
ALTER TABLE records RENAME TO records_v1;
DROP INDEX IF EXISTS records_tick;
CREATE TABLE records (
    run_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    tick INTEGER NOT NULL,
    count INTEGER NOT NULL,
    lines TEXT NOT NULL,
    PRIMARY KEY (run_id, n)
) WITHOUT ROWID;
INSERT INTO records (run_id, n, tick, count, lines)
    SELECT run_id, n, tick, 1, line FROM records_v1;
DROP TABLE records_v1;
"""

# Format 3 names the process that owns a running run (so a dead one reads as interrupted) and
# writes checkpoints as data (``_codec``) instead of pickles; format 2's pickled checkpoints
# stay in the file but are refused when loaded (loading a pickle can run code).
_MIGRATE_2_TO_3 = """
ALTER TABLE runs ADD COLUMN owner_pid INTEGER;
ALTER TABLE runs ADD COLUMN owner_host TEXT;
ALTER TABLE runs ADD COLUMN owner_start TEXT;
"""

# Format 4 adds ``payloads``: the full payloads of messages over 32 bytes (the trace keeps only
# a digest of them), for the window's message inspector and its reply chains; and ``effects``:
# ABI v2 tool results and people's answers, which a replay takes instead of asking again. Both
# are created by the schema's ``IF NOT EXISTS``; runs recorded before have none.

# Format 5 adds ``usage``: each tick's messages' fuel and memory as the workers reported them
# (packed int64 triplets: queue seq, fuel, memory), for the debugger's per-message columns; a
# rowid table, its rows being kilobytes. Created by ``IF NOT EXISTS``; runs recorded before
# have none.

#: How long a writer waits for another process's transaction before it calls the store locked
#: (``QHYBRID_STORE_TIMEOUT`` seconds overrides it).
BUSY_TIMEOUT_MS = 5000


def _busy_timeout_ms() -> int:
    try:
        return int(float(os.environ.get("QHYBRID_STORE_TIMEOUT", "")) * 1000)
    except ValueError:
        return BUSY_TIMEOUT_MS


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    parent TEXT,
    fork_tick INTEGER,
    kind TEXT NOT NULL,
    scenario_name TEXT NOT NULL,
    scenario_path TEXT NOT NULL,
    scenario_text TEXT NOT NULL,
    scenario_digest TEXT NOT NULL,
    seed INTEGER NOT NULL,
    config TEXT NOT NULL,
    version TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    finished REAL,
    last_tick INTEGER NOT NULL DEFAULT 0,
    records INTEGER NOT NULL DEFAULT 0,
    trace_hash TEXT,
    summary TEXT,
    owner_pid INTEGER,
    owner_host TEXT,
    owner_start TEXT
);
CREATE TABLE IF NOT EXISTS records (
    run_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    tick INTEGER NOT NULL,
    count INTEGER NOT NULL,
    lines TEXT NOT NULL,
    PRIMARY KEY (run_id, n)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS logs (
    run_id TEXT NOT NULL,
    tick INTEGER NOT NULL,
    agent TEXT NOT NULL,
    level INTEGER NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_run ON logs (run_id, tick);
CREATE TABLE IF NOT EXISTS llm_requests (
    run_id TEXT NOT NULL,
    request_id INTEGER NOT NULL,
    tick INTEGER NOT NULL,
    prompt_ids TEXT NOT NULL,
    params TEXT NOT NULL,
    seed TEXT NOT NULL,
    PRIMARY KEY (run_id, request_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS llm_updates (
    run_id TEXT NOT NULL,
    tick INTEGER NOT NULL,
    request_id INTEGER NOT NULL,
    text TEXT NOT NULL,
    new_tokens TEXT NOT NULL,
    done INTEGER NOT NULL,
    result TEXT
);
CREATE INDEX IF NOT EXISTS llm_updates_run ON llm_updates (run_id, tick);
CREATE TABLE IF NOT EXISTS jobs (
    run_id TEXT NOT NULL,
    tick INTEGER NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    op TEXT NOT NULL,
    placement TEXT NOT NULL,
    elapsed_s REAL NOT NULL,
    error TEXT,
    digest TEXT
);
CREATE INDEX IF NOT EXISTS jobs_run ON jobs (run_id, tick);
CREATE TABLE IF NOT EXISTS ticks (
    run_id TEXT NOT NULL,
    tick INTEGER NOT NULL,
    t_s REAL NOT NULL,
    dur_s REAL NOT NULL,
    delivered INTEGER NOT NULL,
    busy TEXT NOT NULL,
    llm_s REAL NOT NULL,
    PRIMARY KEY (run_id, tick)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS memory (
    namespace TEXT NOT NULL,
    agent TEXT NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (namespace, agent, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    data BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS payloads (
    run_id TEXT NOT NULL,
    tick INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run_id, tick, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS effects (
    run_id TEXT NOT NULL,
    key TEXT NOT NULL,
    tick INTEGER NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage (
    run_id TEXT NOT NULL,
    tick INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run_id, tick)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id TEXT NOT NULL,
    tick INTEGER NOT NULL,
    records INTEGER NOT NULL,
    created REAL NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (run_id, tick)
) WITHOUT ROWID;
"""


class StoreError(RuntimeError):
    """The run store cannot be used; the message names the file and the cause."""


def describe(path: Path, exc: BaseException) -> str:
    """What an SQLite failure means for a user, naming the store's file."""
    text = str(exc)
    low = text.lower()
    if "locked" in low or "busy" in low:
        why = "it is locked by another process (another run or a tool holding a transaction)"
    elif "disk is full" in low or "disk i/o" in low or isinstance(exc, OSError | MemoryError):
        why = f"the disk is full or failing ({text})"
    elif "not a database" in low or "malformed" in low or "corrupt" in low:
        why = (
            "it is not a qhybrid run store or it is corrupt "
            f"({text}); move it away or choose another with --store"
        )
    elif "readonly" in low or "read-only" in low or "unable to open" in low:
        why = f"it cannot be opened for writing ({text})"
    else:
        why = text
    return f"run store {path}: {why}"


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open (creating when writable) the store at ``path``, check its version, set WAL."""
    timeout_ms = _busy_timeout_ms()
    try:
        if readonly:
            if not path.exists():
                raise StoreError(f"run store {path}: no such file")
            conn = sqlite3.connect(
                f"file:{path}?mode=ro",
                uri=True,
                timeout=timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                path,
                timeout=timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(describe(path, exc)) from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {timeout_ms}")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"run store {path}: it was written by a newer qhybrid (store format {version}; "
                f"this qhybrid reads formats up to {SCHEMA_VERSION}); upgrade qhybrid or "
                "choose another store with --store"
            )
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
            # WAL with synchronous=NORMAL: a committed tick survives a crash of the process
            # (not necessarily of the machine), at a fraction of FULL's cost.
            conn.execute("PRAGMA synchronous = NORMAL")
            if version < SCHEMA_VERSION:
                columns = {r[1] for r in conn.execute("PRAGMA table_info(records)")}
                # (A development build wrote format 2's table under version 1: no migration.)
                migrate = _MIGRATE_1_TO_2 if version == 1 and "line" in columns else ""
                runs = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
                if runs and "owner_pid" not in runs:
                    migrate += _MIGRATE_2_TO_3
                conn.executescript(
                    "BEGIN IMMEDIATE;"
                    + migrate
                    + _SCHEMA
                    + f"PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                )
        elif 0 < version < SCHEMA_VERSION:
            # An older format: brought up to date once (that takes a writer), then read.
            conn.close()
            connect(path).close()
            return connect(path, readonly=True)
        elif version == 0:
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if not tables:
                raise StoreError(f"run store {path}: it holds no runs yet (an empty database)")
    except StoreError:
        conn.close()
        raise
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(describe(path, exc)) from None
    return conn


def default_store_path() -> Path:
    """``QHYBRID_STORE``, else ``runs.sqlite`` in the user's data folder (platformdirs)."""
    env = os.environ.get("QHYBRID_STORE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return platformdirs.user_data_path("qhybrid") / "runs.sqlite"
