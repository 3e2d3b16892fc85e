"""Agent text on human output paths cannot drive the terminal or forge lines (issue 12, item 10).

What users rely on: an agent's log line, WASI stdout, error or LLM answer is shown with its
control characters made visible (``\\x1b``, ``\\r``, ``\\n``, bidi overrides as ``\\u202e``), on
the terminal and in the window; ``--json`` and ``--trace`` keep the exact text.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from qhybrid.runtime import printable
from tests.conftest import ROOT

HOSTILE = ROOT / "tests" / "agents"
RAW = "\x1b[2J\x1b]0;pwned\x07\rcompleted: all agents finished\nhi\u202eevil\x1b[31mred\x08\x00end"
CONTROLS = ("\x1b", "\x07", "\r", "\x08", "\x00", "\u202e")


def test_printable_escapes_every_control_and_keeps_the_rest() -> None:
    out = printable(RAW)
    for c in CONTROLS:
        assert c not in out
    assert "\n" not in out
    assert out.startswith("\\x1b[2J\\x1b]0;pwned\\x07\\rcompleted")
    assert "\\n" in out and "\\u202e" in out and "\\x00end" in out
    assert printable("plain text, é, 日本, tab\there") == "plain text, é, 日本, tab\there"
    for c in ("\x7f", "\x9b", "\u2028", "\u2066", "\u200f", "\ufeff"):
        assert c not in printable(f"a{c}b")


def test_the_cli_log_formatter_escapes_agent_text() -> None:
    from qhybrid.cli import _setup_logging

    _setup_logging(0)
    root = logging.getLogger()
    handler = root.handlers[0]
    record = logging.LogRecord(
        "qhybrid.runtime._orchestrator", 30, __file__, 1, "%s: %s", ("evil", RAW), None
    )
    text = handler.format(record)
    for c in CONTROLS:
        assert c not in text
    assert "\n" not in text
    logging.basicConfig(force=True, handlers=[logging.NullHandler()])


def _scenario(tmp_path: Path) -> Path:
    module = (HOSTILE / "escapes.wat").as_posix()
    path = tmp_path / "escapes.toml"
    path.write_text(
        f"""
name = "escapes"
seed = 1
[[agents]]
name = "evil"
module = "{module}"
[[messages]]
to = "evil"
kind = 1
payload = ""
at = 0
[stop]
max_ticks = 3
""",
        encoding="utf-8",
    )
    return path


def test_headless_stderr_shows_agent_escapes_and_json_and_trace_stay_exact(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    trace = tmp_path / "trace.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "qhybrid", "--headless", "--json", "--workers", "1",
         "--device", "cpu", "--trace", str(trace), str(_scenario(tmp_path))],
        capture_output=True, text=True, env=cli_env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for c in CONTROLS:
        assert c not in proc.stderr, f"{c!r} reached the terminal raw"
    assert "\\x1b]0;pwned\\x07" in proc.stderr
    # No line of stderr starts with the forged text.
    assert not any(line.startswith("completed: all") for line in proc.stderr.splitlines())
    json.loads(proc.stdout)  # still one exact JSON object
    logs = [
        json.loads(line) for line in trace.read_text(encoding="utf-8").splitlines()
        if '"log"' in line
    ]  # fmt: skip
    texts = [t for entry in logs for t in entry if isinstance(t, str)]
    assert any(RAW in t for t in texts), "the trace must keep the exact text"
