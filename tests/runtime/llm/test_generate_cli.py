"""``qhybrid generate``: streamed text, the JSON summary, determinism, and bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from qhybrid.cli import main
from qhybrid.runtime.llm._random_model import RandomModelSpec, write_random_model


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_model(tmp_path_factory.mktemp("m") / "r.gguf", RandomModelSpec(n_layer=1))


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(["generate", *argv, "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)


def test_json_summary_has_the_documented_fields(model: Path, capsys) -> None:
    summary = _json(capsys, str(model), "hello", "--max-tokens", "6", "--device", "cpu")
    for key in ("prompt_tokens", "tokens", "text", "prefill_tok_s", "decode_tok_s"):
        assert key in summary
    # The random model's tokenizer: BOS (256) then one token per byte.
    assert summary["prompt_tokens"] == [256, *b"hello"]
    assert len(summary["tokens"]) == 6
    assert summary["finish"] == "length"
    assert summary["placement"] == "cpu"


def test_same_seed_same_tokens_and_greedy_agrees_across_devices(model: Path, capsys) -> None:
    args = (str(model), "once", "--max-tokens", "8", "--seed", "3", "--temperature", "0.9")
    assert (
        _json(capsys, *args, "--device", "cpu")["tokens"]
        == _json(capsys, *args, "--device", "cpu")["tokens"]
    )
    greedy = (str(model), "once", "--max-tokens", "8", "--temperature", "0")
    on_cpu = _json(capsys, *greedy, "--device", "cpu")
    on_gpu = _json(capsys, *greedy, "--device", "gpu")
    assert on_gpu["placement"] == "gpu"
    assert on_gpu["tokens"] == on_cpu["tokens"]


def test_streams_text_to_stdout(model: Path, tmp_path: Path, qhybrid_cmd, cli_env) -> None:
    proc = subprocess.run(
        [*qhybrid_cmd, "generate", str(model), "hi", "--max-tokens", "4", "--device", "cpu"],
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "4 generated" in proc.stderr
    assert "Traceback" not in proc.stderr


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse rejects a flag
        return int(exc.code or 0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{missing}", "hi"], "no such model file"),
        (["{truncated}", "hi"], "truncated"),
        (["{model}", "hi", "--temperature", "-1"], "--temperature"),
        (["{model}", "hi", "--top-p", "0"], "--top-p"),
        (["{model}", "hello world", "--n-ctx", "4"], "context holds 4"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    model: Path, tmp_path: Path, capsys, argv: list[str], message: str
) -> None:
    truncated = tmp_path / "t.gguf"
    truncated.write_bytes(model.read_bytes()[:5000])
    paths = {"model": model, "missing": tmp_path / "nope.gguf", "truncated": truncated}
    code = _exit_code(["generate", *(a.format(**paths) for a in argv), "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_the_prompt_is_printed_before_the_continuation(model: Path, capsys) -> None:
    assert main(["generate", str(model), "hello", "--max-tokens", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("hello") and len(out) > len("hello\n")


def test_chat_keeps_the_conversation_going_on_stdin(
    model: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("second turn\n\nthird\n"))
    argv = ["generate", str(model), "first", "--chat", "--max-tokens", "3", "--json"]
    assert main([*argv, "--device", "cpu", "--temperature", "0"]) == 0
    turns = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(turns) == 3  # the argument's turn, then one per non-empty stdin line
    # Each prompt is the whole conversation so far, through the random model's template.
    texts = [bytes(t % 256 for t in turn["prompt_tokens"][1:] if t < 256) for turn in turns]
    assert b"user\nfirst" in texts[0] and b"second turn" not in texts[0]
    assert b"user\nfirst" in texts[1] and b"user\nsecond turn" in texts[1]
    # ... with the model's earlier answers as assistant turns.
    assert [t.count(b"assistant\n") for t in texts] == [1, 2, 3]
    assert len(turns[2]["prompt_tokens"]) > len(turns[1]["prompt_tokens"])
