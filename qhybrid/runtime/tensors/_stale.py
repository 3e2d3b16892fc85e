"""Segments left behind by qhybrid processes that are gone, removed at start-up.

A run stopped with SIGKILL to its whole process group (its resource tracker included) cannot
unlink its segments, and ``/dev/shm`` keeps them until reboot. Every segment qhybrid creates is
named ``qh_<pid>_<store>_<n>`` after the process that owns it, so a later start can tell which
ones are orphans: those whose owner no longer exists. Only those are removed, and only when
they belong to this user; a segment of a live process (another run, another user's) is never
touched. A pid reused by an unrelated process keeps its segments (a leak, never a loss).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from qhybrid.runtime.tensors._handle import SEGMENT_PREFIX

__all__ = ["remove_stale_segments"]

logger = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
_NAME = re.compile(rf"{re.escape(SEGMENT_PREFIX)}(\d+)_\d+_\d+")
_swept = False


def _alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a pid of ours to judge
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    except OSError:
        return True
    return True


def remove_stale_segments(shm_dir: Path = SHM_DIR) -> list[str]:
    """Unlink this user's qhybrid segments whose owning process is gone; their names."""
    if os.name != "posix" or not shm_dir.is_dir():
        return []
    removed: list[str] = []
    uid = os.getuid()
    try:
        entries = list(os.scandir(shm_dir))
    except OSError:
        return []
    for entry in entries:
        match = _NAME.fullmatch(entry.name)
        if match is None:
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid != uid or _alive(int(match.group(1))):
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(entry.name)
    if removed:
        logger.info(
            "removed %d shared-memory segment(s) left by qhybrid processes that are gone",
            len(removed),
        )
    return removed


def sweep_once() -> None:
    """:func:`remove_stale_segments` the first time a process asks (a store is created)."""
    global _swept
    if not _swept:
        _swept = True
        remove_stale_segments()
