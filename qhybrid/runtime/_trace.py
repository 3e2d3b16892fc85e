"""The run's trace: an ordered log of what was delivered to whom and what came back.

Each record is a tuple of plain values (ints, strings, bytes, bools,
None). The ``trace_hash`` is the
SHA-256 of every record's ``repr`` followed by a newline, in order; ``repr`` of those types is
the same on every platform and Python 3 version, and far cheaper than JSON, which matters at
several records per message. Each record's line is made when the record is (while its fields
are in the CPU's caches: made later, after the workers' turn, it cost three times as much,
``qhybrid bench dispatch``); the commit's hot path makes the line of a handled message with
:data:`OK_LINE`, which gives ``repr``'s text. Lines are hashed in batches (at the end of each
tick); the hash does not depend on where the batches break. Records never hold wall-clock
times, worker numbers or anything else that depends on timing or placement, so the same
scenario and seed give the same hash with any number of workers.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO

Field = str | int | float | bool | bytes | None


#: ``repr`` of an ``("ok", tick, seq, sender, receiver, kind, payload field, sent)`` record,
#: from its fields after the first (``OK_LINE % fields``): the commit's hot path.
OK_LINE = "('ok', %r, %r, %r, %r, %r, %r, %r)"


def digest(data: bytes | memoryview) -> str:
    """A short content digest for payloads and tensor contents in the trace."""
    return hashlib.sha256(data).hexdigest()[:16]


class TraceRecorder:
    """Hashes every record; keeps the last ``keep`` in memory and can stream all to a file
    (one JSON array per line)."""

    def __init__(self, keep: int = 1000, path: Path | None = None) -> None:
        self._hash = hashlib.sha256()
        self._pending: list[tuple[Field, ...]] = []
        self._lines: list[str] = []  # each pending record's repr, in the same order
        self._recent: deque[tuple[Field, ...]] = deque(maxlen=keep)
        self.records = 0
        self._file: IO[str] | None = path.open("w", encoding="utf-8") if path else None
        #: Called with each flushed batch and its ``repr`` lines (the run store records them).
        self.sink: Callable[[list[tuple[Field, ...]], list[str]], None] | None = None

    def record(self, *fields: Field) -> None:
        self._pending.append(fields)
        self._lines.append(repr(fields))

    def appenders(
        self,
    ) -> tuple[Callable[[tuple[Field, ...]], None], Callable[[str], None]]:
        """``(add_record, add_line)``: ``record(*fields)`` is ``add_record(fields)`` then
        ``add_line(repr(fields))``, without a call per record, until the next :meth:`flush`
        (a loop over a tick's messages takes them once; ``add_line`` must follow each
        ``add_record`` with that record's ``repr``, e.g. by :data:`OK_LINE`)."""
        return self._pending.append, self._lines.append

    def flush(self) -> list[tuple[Field, ...]]:
        """Take the buffered records (returned, oldest first) and hash (and write) them."""
        pending = self._pending
        if not pending:
            return pending
        lines = self._lines
        self._pending, self._lines = [], []
        self.records += len(pending)
        self._hash.update(("\n".join(lines) + "\n").encode("utf-8"))
        if self.sink is not None:
            self.sink(pending, lines)
        self._recent.extend(pending)
        if self._file is not None:
            self._file.writelines(_json(r) + "\n" for r in pending)
        return pending

    def resume_from(self, lines: list[str]) -> None:
        """Continue a run restored from a checkpoint: drop what is buffered and hash the
        recorded ``repr`` lines of the records before it, so the hash goes on as it would."""
        self._pending, self._lines = [], []
        if lines:
            self._hash.update(("\n".join(lines) + "\n").encode("utf-8"))
        self.records = len(lines)

    @property
    def hash(self) -> str:
        self.flush()
        return self._hash.hexdigest()

    def recent(self) -> list[str]:
        """The last records, as JSON lines."""
        self.flush()
        return [_json(r) for r in self._recent]

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None


def _json(record: tuple[Field, ...]) -> str:
    return json.dumps(
        [f.hex() if isinstance(f, bytes) else f for f in record],
        separators=(",", ":"),
        ensure_ascii=False,
    )
