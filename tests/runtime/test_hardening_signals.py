"""Hard stops leave nothing behind (issue 12, item 9).

What users rely on: closing the terminal (SIGHUP) or ``kill`` (SIGTERM) stops a headless run as
Ctrl-C does (a partial summary, workers gone, no /dev/shm segment left); and segments that a
run killed outright (SIGKILL to its whole process group) left behind are removed the next time
qhybrid starts, but only those whose owning process is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from qhybrid.runtime.tensors import remove_stale_segments
from tests.conftest import AGENTS, LONG_RUN_SCENARIO, SHM, WORKER_MODULE, shm_segments

pytestmark = pytest.mark.skipif(not SHM.is_dir(), reason="POSIX shared memory in /dev/shm")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not psutil.pid_exists(proc.pid)
    return proc.pid


def _start(tmp_path: Path, cli_env: dict[str, str]) -> tuple[subprocess.Popen[str], list[int]]:
    path = tmp_path / "long.toml"
    path.write_text(LONG_RUN_SCENARIO, encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "qhybrid", "--headless", "--workers", "2", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env,
        start_new_session=True,  # its own process group, like a shell job in a terminal
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        workers = []
        for p in psutil.Process(proc.pid).children(recursive=True):
            try:
                if WORKER_MODULE in " ".join(p.cmdline()):
                    workers.append(p.pid)
            except psutil.NoSuchProcess:
                continue
        if len(workers) == 2 and any(s.startswith(f"qh_{proc.pid}_") for s in shm_segments()):
            time.sleep(0.3)
            return proc, workers
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("the run did not start")


@pytest.mark.parametrize(
    ("sig", "group", "code"),
    [(signal.SIGHUP, True, 129), (signal.SIGTERM, False, 143), (signal.SIGTERM, True, 143)],
)
def test_sighup_and_sigterm_stop_like_ctrl_c(
    tmp_path: Path, cli_env: dict[str, str], sig: signal.Signals, group: bool, code: int
) -> None:
    proc, workers = _start(tmp_path, cli_env)
    try:
        if group:
            os.killpg(proc.pid, sig)  # closing the terminal sends SIGHUP to the whole group
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == code, err
    assert f"interrupted by {sig.name}" in err
    assert "Traceback" not in err
    assert not [s for s in shm_segments() if s.startswith(f"qh_{proc.pid}_")]
    time.sleep(0.2)
    for pid in workers:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def _fake_segment(name: str) -> Path:
    path = SHM / name
    path.write_bytes(b"x" * 16)
    return path


def test_start_up_removes_only_segments_whose_owner_is_gone() -> None:
    dead = _dead_pid()
    stale = _fake_segment(f"qh_{dead}_0_0")
    stale2 = _fake_segment(f"qh_{dead}_3_17")
    # A live owner (this very process, and its parent): kept.
    alive = _fake_segment(f"qh_{os.getpid()}_987654_0")
    parent = _fake_segment(f"qh_{os.getppid()}_987654_1")
    # Not a qhybrid segment name: kept, whatever it is.
    other = _fake_segment(f"qhx_{dead}_0_0")
    odd = _fake_segment("qh_notapid_0_0")
    try:
        removed = remove_stale_segments()
        assert {f"qh_{dead}_0_0", f"qh_{dead}_3_17"} <= set(removed)
        assert not stale.exists() and not stale2.exists()
        for kept in (alive, parent, other, odd):
            assert kept.exists(), f"{kept.name} was removed"
    finally:
        for p in (stale, stale2, alive, parent, other, odd):
            p.unlink(missing_ok=True)


def test_a_headless_run_sweeps_what_a_killed_run_left(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    # A run killed outright, with its whole process group (its resource tracker too).
    proc, _ = _start(tmp_path, cli_env)
    left = {s for s in shm_segments() if s.startswith(f"qh_{proc.pid}_")}
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    time.sleep(0.2)
    try:
        assert left and all((SHM / s).exists() for s in left), "nothing was leaked to sweep"
        scenario = tmp_path / "short.toml"
        scenario.write_text(
            f'name = "short"\nseed = 1\n[[agents]]\nname = "sink"\n'
            f'module = "{AGENTS.as_posix()}/sink.wat"\n[stop]\nmax_ticks = 1\n',
            encoding="utf-8",
        )
        run = subprocess.run(
            [sys.executable, "-m", "qhybrid", "--headless", "--workers", "1", str(scenario)],
            capture_output=True, text=True, env=cli_env, timeout=120, check=False,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert not [s for s in left if (SHM / s).exists()]
    finally:
        for s in left:
            (SHM / s).unlink(missing_ok=True)
