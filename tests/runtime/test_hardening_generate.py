"""``qhybrid generate`` shows model text, it does not obey it (issue 12, item 10).

What users rely on: text a model generates (or a prompt from a file) cannot clear the screen,
set the terminal's title or forge a line: on the human output its control characters are
escaped. (``--json`` writes the result's exact text, as before: tests/runtime/llm/
test_generate_cli.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qhybrid.cli import main
from qhybrid.runtime.llm import _service
from qhybrid.runtime.llm._random_model import RandomModelSpec, write_random_model

HOSTILE = "\x1b]0;pwned\x07\x1b[2J\rcompleted\n"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_model(tmp_path_factory.mktemp("m") / "r.gguf", RandomModelSpec(n_layer=1))


@pytest.fixture
def hostile_model_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's stream yields terminal escapes before its own text."""
    original = _service.TokenStream.__anext__
    first: dict[int, bool] = {}

    async def anext(self: Any) -> str:
        if id(self) not in first:
            first[id(self)] = True
            return HOSTILE
        return await original(self)

    monkeypatch.setattr(_service.TokenStream, "__anext__", anext)


def test_escapes_in_the_prompt_are_shown_not_obeyed(model: Path, capsys) -> None:
    argv = ["generate", str(model), "hi\x1b[2Jthere", "--max-tokens", "2", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert out.startswith("hi\\x1b[2Jthere")


def test_escapes_in_model_text_are_shown_not_obeyed(
    model: Path, capsys, hostile_model_text: None
) -> None:
    assert main(["generate", str(model), "hi", "--max-tokens", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\rcompleted\n" in out
