"""Model names: a path, a `qhybrid models` name (file name, stem, NAME:latest), and the shared
resolver of `qhybrid models` where it has one."""

from __future__ import annotations

from pathlib import Path

import pytest

from qhybrid._resources import resource_path
from qhybrid.runtime.llm import _models_cli
from qhybrid.serve import ModelNotFound, resolve_model

SHIPPED = resource_path("models", "tiny-stories.gguf")


@pytest.mark.parametrize("spec", ["tiny-stories.gguf", "tiny-stories", "tiny-stories:latest"])
def test_names_of_the_shipped_model(spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(_models_cli, "resolve_model", raising=False)
    found = resolve_model(spec)
    assert found.path.resolve() == SHIPPED.resolve() and found.name == "tiny-stories.gguf"


def test_a_path_is_taken_as_it_is(tmp_path: Path) -> None:
    found = resolve_model(str(SHIPPED))
    assert found.path == SHIPPED and found.name == "tiny-stories.gguf"


def test_an_unknown_name_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(_models_cli, "resolve_model", raising=False)
    with pytest.raises(ModelNotFound, match="no model named 'nope'"):
        resolve_model("nope")


def test_the_shared_resolver_decides_when_there_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    class NameError_(Exception):
        pass

    def shared(name: str) -> Path:
        if name == "tiny":
            return SHIPPED
        raise NameError_(f"'{name}' matches 2 models")

    monkeypatch.setattr(_models_cli, "resolve_model", shared, raising=False)
    monkeypatch.setattr(_models_cli, "ModelNameError", NameError_, raising=False)
    assert resolve_model("tiny:latest").path == SHIPPED
    with pytest.raises(ModelNotFound, match="matches 2 models"):
        resolve_model("t")
