"""Room in shared memory, checked before a segment is made (issue 12).

A segment on a full ``/dev/shm`` (a tmpfs) is created without complaint: ``ftruncate`` only
sets its size, and the first write to a page that tmpfs cannot back kills the writer with
SIGBUS, the orchestrator included. So a segment's size is checked against the free space
first (with a reserve for the rest of the system), and its memory is reserved when it is
created (``posix_fallocate``), which fails cleanly with ENOSPC instead.
"""

from __future__ import annotations

import os

__all__ = ["SHM_RESERVE_BYTES", "SharedMemoryFull", "room_problem", "shm_free"]

#: Free space left in /dev/shm for everything else: a segment may not take it.
SHM_RESERVE_BYTES = 16 << 20
_SHM = "/dev/shm"


class SharedMemoryFull(OSError):
    """A segment does not fit in the shared memory that is left."""


def shm_free() -> int | None:
    """Bytes free in /dev/shm for this user, or None where there is no such folder."""
    try:
        st = os.statvfs(_SHM)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def room_problem(nbytes: int) -> str | None:
    """Why a segment of ``nbytes`` cannot be made now, or None if it fits."""
    free = shm_free()
    if free is None or nbytes + SHM_RESERVE_BYTES <= free:
        return None
    return (
        f"shared memory is full: a tensor of {_mib(nbytes)} does not fit in the "
        f"{_mib(free)} free in {_SHM} (with {_mib(SHM_RESERVE_BYTES)} kept in reserve)"
    )
