"""Keep wasmtime's trap handlers across ``ray.init`` in the driver.

wasmtime turns a trap in guest code (``unreachable``, a bad memory access, a division by
zero) into a Python exception through handlers for SIGSEGV, SIGILL, SIGFPE, SIGBUS (SIGTRAP
on some CPUs), installed in every process that runs wasm. ``ray.init`` installs crash
handlers over them: Python's ``faulthandler`` (unless already enabled) and, in its core
worker, absl's failure signal handler; neither hands a signal on to the handler it replaced.
A driver that ran wasm after ``ray.init`` (the orchestrator validates and compiles agents
in-process) was then killed by its first trap (SIGILL) instead of raising ``Trap``.

``ray.shutdown`` then resets them to the default action (a trap after it killed the process
too). Ray has no option for the driver's handlers that covers all of it, so
:func:`kept_crash_handlers` saves the process's handlers for those signals before
``ray.init`` (and ``ray.shutdown``) and puts them back after
(``sigaction`` through ctypes, the saved ``struct sigaction`` kept as opaque bytes). What is
lost: Ray's stack dump when the driver itself crashes in native code (a crash still ends the
process; wasmtime hands signals that are not traps on to the handler before it).
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import logging
import os
import signal
from collections.abc import Iterator

__all__ = ["CRASH_SIGNALS", "kept_crash_handlers"]

logger = logging.getLogger(__name__)

#: The signals wasmtime handles for traps.
CRASH_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGSEGV", "SIGILL", "SIGFPE", "SIGBUS", "SIGTRAP")
    if hasattr(signal, name)
)
#: Larger than any platform's ``struct sigaction`` (152 bytes on Linux x86-64).
_SIGACTION_BYTES = 1024


@contextlib.contextmanager
def kept_crash_handlers() -> Iterator[None]:
    """Run the body (``ray.init``, ``ray.shutdown``), then restore the crash-signal handlers
    it replaced."""
    if os.name != "posix":  # no signal handlers for traps to lose (Windows uses SEH)
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    saved: list[tuple[int, ctypes.Array[ctypes.c_char]]] = []
    for sig in CRASH_SIGNALS:
        old = ctypes.create_string_buffer(_SIGACTION_BYTES)
        if libc.sigaction(int(sig), None, old) == 0:
            saved.append((int(sig), old))
    had_faulthandler = faulthandler.is_enabled()
    try:
        yield
    finally:
        if not had_faulthandler and faulthandler.is_enabled():
            faulthandler.disable()
        for sig, old in saved:
            if libc.sigaction(sig, old, None) != 0:
                err = ctypes.get_errno()
                logger.warning(
                    "could not restore the handler of signal %d: %s", sig, os.strerror(err)
                )
