"""Hard stops of the window leave nothing behind (issue 12, item 9, for the window).

What users rely on: closing the terminal that launched ``qhybrid`` (SIGHUP to its whole
process group) or ``kill`` (SIGTERM) stops a run in the window as Ctrl-C does: the window
closes, the run stops, the worker processes go, and no /dev/shm segment is left.
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

from tests.conftest import LONG_RUN_SCENARIO, SHM, WORKER_MODULE, shm_segments

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or not SHM.is_dir(), reason="POSIX signals and /dev/shm"
)


def _workers(pid: int) -> list[int]:
    found = []
    for p in psutil.Process(pid).children(recursive=True):
        try:
            if WORKER_MODULE in " ".join(p.cmdline()):
                found.append(p.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def _start_window(
    tmp_path: Path, cli_env: dict[str, str]
) -> tuple[subprocess.Popen[str], list[int]]:
    path = tmp_path / "long.toml"
    path.write_text(LONG_RUN_SCENARIO, encoding="utf-8")
    env = dict(cli_env)
    env["QT_QPA_PLATFORM"] = "offscreen"
    # The window's settings, run store and chats: the test's own, never the user's.
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    env["QHYBRID_STORE"] = str(tmp_path / "runs.sqlite")
    proc = subprocess.Popen(
        [sys.executable, "-m", "qhybrid", "--start", "--device", "cpu", "--workers", "2",
         str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,  # its own process group, like a shell job in a terminal
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        workers = _workers(proc.pid)
        if len(workers) == 2 and any(s.startswith(f"qh_{proc.pid}_") for s in shm_segments()):
            time.sleep(0.5)  # mid-run: ticks go by
            return proc, workers
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    raise AssertionError("the window's run did not start")


@pytest.mark.parametrize(
    ("sig", "group", "code"),
    [(signal.SIGHUP, True, 129), (signal.SIGTERM, False, 143)],
)
def test_closing_the_terminal_stops_the_window_run_cleanly(
    tmp_path: Path, cli_env: dict[str, str], sig: signal.Signals, group: bool, code: int
) -> None:
    proc, workers = _start_window(tmp_path, cli_env)
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
    # 128 + the signal: the handler ran (killed by the signal itself, it would read -sig).
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert not [s for s in shm_segments() if s.startswith(f"qh_{proc.pid}_")]
    time.sleep(0.2)
    for pid in workers:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
