"""``qhybrid serve`` as a command: bad input is exit 2 with a message; it listens, answers,
and stops on Ctrl-C (SIGINT) with exit 0, leaving no process behind."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from qhybrid.serve._cli import main as serve_main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no-such-model-anywhere"], "model named 'no-such-model-anywhere'"),
        (["--port", "70000"], "expected a port in 0..65535"),
        (["--slots", "0"], "expected a positive integer"),
        (["--max-queue", "-1"], "expected an integer >= 0"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    try:
        code = serve_main(args)
    except SystemExit as exc:  # argparse's own exit, with our code
        code = exc.code  # type: ignore[assignment]
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_file_that_is_not_a_model_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    assert serve_main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.gguf" in err and "Traceback" not in err


def test_serves_and_stops_on_sigint(qhybrid_cmd: list[str], cli_env: dict[str, str]) -> None:
    proc = subprocess.Popen(
        [*qhybrid_cmd, "serve", "--port", "0", "--device", "cpu"],
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert match, line
        url = match.group(1)
        r = httpx.post(
            url + "/v1/completions",
            json={"prompt": "Once upon a time", "max_tokens": 5, "temperature": 0},
            timeout=60,
        )
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
