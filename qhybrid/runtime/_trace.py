"""The run's trace: an ordered log of what was delivered to whom and what came back.

Each record is a tuple of plain values, encoded canonically (compact JSON) and fed to one
running SHA-256; the hex digest is the run's ``trace_hash``. Records never hold wall-clock
times, worker numbers or anything else that depends on timing or placement, so the same
scenario and seed give the same hash with any number of workers.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from pathlib import Path
from typing import IO


def digest(data: bytes | memoryview) -> str:
    """A short content digest for payloads and tensor contents in the trace."""
    return hashlib.sha256(data).hexdigest()[:16]


class TraceRecorder:
    """Hashes every record; keeps the last ``keep`` in memory and can stream all to a file."""

    def __init__(self, keep: int = 1000, path: Path | None = None) -> None:
        self._hash = hashlib.sha256()
        self._recent: deque[str] = deque(maxlen=keep)
        self.records = 0
        self._file: IO[str] | None = path.open("w", encoding="utf-8") if path else None

    def record(self, *fields: str | int | float | bool | None) -> None:
        line = json.dumps(fields, separators=(",", ":"), ensure_ascii=True)
        self._hash.update(line.encode("ascii"))
        self._hash.update(b"\n")
        self._recent.append(line)
        self.records += 1
        if self._file is not None:
            self._file.write(line + "\n")

    @property
    def hash(self) -> str:
        return self._hash.hexdigest()

    def recent(self) -> list[str]:
        return list(self._recent)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
