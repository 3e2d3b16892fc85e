"""Fixtures for every test: nothing may be left behind.

``no_leftovers`` (autouse) fails a test that leaves a thread, a child process or a qhybrid
shared-memory segment (``/dev/shm/qh_*``) behind after it ends.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent

# Compiled modules go to a cache of the test session's own, not the user's.
_CACHE = tempfile.TemporaryDirectory(prefix="qhybrid-test-cache-")
os.environ["QHYBRID_CACHE_DIR"] = _CACHE.name
# Runs the CLI records go to a store of the test session's own, not the user's data folder.
os.environ["QHYBRID_STORE"] = os.path.join(_CACHE.name, "runs.sqlite")
# The commands that run a model build the CPU kernels' ahead-of-time cache in a background
# process where it is missing: not from tests (scripts/test.sh builds it first; the kernels
# load from it where it is there, else numba compiles them, see qhybrid/runtime/llm/_jit.py).
os.environ.setdefault("QHYBRID_AOT_BUILD", "0")

if os.name == "posix":
    # The resource tracker is one helper process per interpreter that the first shared-memory
    # segment starts and that lives as long as the interpreter: start it before any test,
    # so that it is not mistaken for a child process a test left behind.
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
SHM = Path("/dev/shm")

#: The shipped sample agents.
AGENTS = ROOT / "resources" / "agents"
#: What a worker process's command line names.
WORKER_MODULE = "qhybrid.runtime.wasm_pool"
#: A run that goes on until it is stopped (for the hard-stop tests): relays passing a token,
#: a sink, and a shared tensor (so that it has a /dev/shm segment to leave behind or not).
LONG_RUN_SCENARIO = f"""
name = "long"
seed = 11
[stop]
max_ticks = 1000000
timeout_s = 120
[[agents]]
name = "relay"
module = "{AGENTS.as_posix()}/relay.wat"
count = 4
[[agents]]
name = "sink"
module = "{AGENTS.as_posix()}/sink.wat"
[[messages]]
to = "relay"
kind = 1
payload_i64 = [1000000, 0]
[[tensors]]
name = "a"
shape = [64, 64]
init = "random"
"""


def _foreign(name: str) -> bool:
    """Whether a segment belongs to a live process outside this test session's tree.

    Segments are named ``qh_<pid>_...`` after the process that created them. Another test
    session on the same machine (a second checkout, a developer's run) owns its own segments:
    they are not this session's leftovers. A segment whose creator is gone, or is this
    process or one of its descendants, is counted.
    """
    try:
        pid = int(name.split("_")[1])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid() or not psutil.pid_exists(pid):
        return False
    try:
        proc = psutil.Process(pid)
        return all(parent.pid != os.getpid() for parent in proc.parents())
    except psutil.Error:
        return False


def shm_segments() -> set[str]:
    """Names of this test session's qhybrid segments that exist now (POSIX only)."""
    if not SHM.is_dir():
        return set()
    return {p.name for p in SHM.iterdir() if p.name.startswith("qh_") and not _foreign(p.name)}


#: Pids whose process trees are not a test's leftovers (see ``owned_process_trees``).
_OWNED_TREES: set[int] = set()


@pytest.fixture(scope="session")
def owned_process_trees() -> set[int]:
    """Add a pid here to exempt it and its descendants from ``no_leftovers``: only for the
    daemons of a module-scoped fixture that start and reap children of their own (a local Ray
    cluster's raylets start and end worker processes as Ray sees fit), and only if that
    fixture ends them itself and checks that they are gone."""
    return _OWNED_TREES


def _children() -> set[int]:
    owned: set[int] = set()
    for pid in list(_OWNED_TREES):
        try:
            root = psutil.Process(pid)
            owned |= {pid} | {p.pid for p in root.children(recursive=True)}
        except psutil.Error:
            continue
    return {p.pid for p in psutil.Process().children(recursive=True) if p.is_running()} - owned


def _threads() -> set[int]:
    return {t.ident for t in threading.enumerate() if t.ident is not None}


@pytest.fixture(autouse=True)
def no_leftovers(request: pytest.FixtureRequest) -> Iterator[None]:
    threads = _threads()
    children = _children()
    segments = shm_segments()
    yield
    deadline = time.monotonic() + 5.0
    while True:
        extra_threads = [
            t for t in threading.enumerate() if t.ident not in threads and t.is_alive()
        ]
        extra_children = _children() - children
        extra_segments = shm_segments() - segments
        if not (extra_threads or extra_children or extra_segments) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    problems = []
    if extra_threads:
        problems.append(f"threads left running: {[t.name for t in extra_threads]}")
    if extra_children:
        problems.append(f"child processes left running: {sorted(extra_children)}")
        for pid in extra_children:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
    if extra_segments:
        problems.append(f"shared-memory segments left in /dev/shm: {sorted(extra_segments)}")
        for name in extra_segments:
            (SHM / name).unlink(missing_ok=True)
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def qhybrid_cmd() -> list[str]:
    """The command line that starts the CLI with this interpreter."""
    return [sys.executable, "-m", "qhybrid"]


@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for CLI subprocesses: quiet logs, no window system needed."""
    env = dict(os.environ)
    env.pop("QHYBRID_DEVICE", None)
    env.pop("QHYBRID_WORKERS", None)
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    return env
