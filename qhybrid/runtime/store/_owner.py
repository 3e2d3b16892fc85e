"""Which process owns a running run, and whether it is still there.

A run's row says ``running`` from its start until its process records the end. A process
killed with SIGKILL (or a machine that lost power) never records it, so the store also keeps
the owner's pid, host name and start time: a reader on the same host whose pid is gone, or
now belongs to a process started at another time (a reused pid), reads the run as
``interrupted``. On another host nothing can be told, and the run reads as recorded.
"""

from __future__ import annotations

import os
import socket
from functools import cache


def _linux_start(pid: int) -> str | None:
    """``BOOT_ID:TICKS`` for a Linux process (its start in clock ticks since this boot)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None  # a zombie (killed, not yet reaped) runs nothing any more
    return f"{_boot_id()}:{fields[19]}"


@cache
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def start_time(pid: int) -> str | None:
    """A string that names when ``pid`` started (None: no such process, or unknown)."""
    if os.path.exists("/proc/self/stat"):
        return _linux_start(pid)
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        return None
    try:
        return f"psutil:{psutil.Process(pid).create_time():.3f}"
    except Exception:
        return None


def this_process() -> tuple[int, str, str]:
    """(pid, host, start time) of the calling process."""
    pid = os.getpid()
    return pid, socket.gethostname(), start_time(pid) or ""


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except OSError:
        return False
    return True


def owner_gone(pid: int | None, host: str | None, start: str | None) -> bool:
    """Whether the process that recorded a run as running is certainly not running it any
    more: on this host, its pid is gone or is another process now."""
    if pid is None or host is None or host != socket.gethostname():
        return False
    if pid <= 0 or not _exists(pid):
        return True
    if start:
        return start_time(pid) != start
    return False
