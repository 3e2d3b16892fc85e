"""``qhybrid models [PATHS...] [--json]``: the GGUF files on this machine, and which qhybrid runs.

Looks in the usual places (Ollama's blob store, named by its manifests; LM Studio's model
folders; the Hugging Face hub cache; qhybrid's own ``resources/models`` and its download cache
``~/.cache/qhybrid/models``) and in the files and folders given. :func:`resolve_model` turns a
name as this listing shows it (``llama3.2:1b``, ``pub/repo/model.gguf``, a file stem, or a part
of one) into a file, for ``qhybrid generate NAME``. Each file is read with
:func:`~._gguf.read_model_info`: an unreadable or unsupported one is listed with the reason,
never a crash. Exit codes: 0 listed, 2 a given path does not exist (the others are listed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qhybrid._argparse import EXIT_BAD_INPUT, EXIT_OK, Parser
from qhybrid.runtime.llm._gguf import ModelInfo, read_model_info

logger = logging.getLogger(__name__)
PROG = "qhybrid models"


@dataclass(frozen=True)
class FoundModel:
    """A GGUF file found on disk: where, and the name its store gives it."""

    path: Path
    source: str  # "ollama", "lmstudio", "huggingface", "qhybrid", "cache", "path"
    name: str | None = None


def _home() -> Path:
    return Path(os.environ.get("HOME") or Path.home())


def ollama_models_dirs() -> list[Path]:
    """``$OLLAMA_MODELS``, ``~/.ollama/models``, and the Linux service's store."""
    dirs = []
    if env := os.environ.get("OLLAMA_MODELS"):
        dirs.append(Path(env))
    dirs += [_home() / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models")]
    return dirs


def hf_hub_dirs() -> list[Path]:
    """``$HF_HUB_CACHE``, ``$HF_HOME/hub``, ``~/.cache/huggingface/hub`` (first set wins, as
    huggingface_hub resolves it; all of them are scanned when they differ)."""
    dirs = []
    if env := os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(env))
    if env := os.environ.get("HF_HOME"):
        dirs.append(Path(env) / "hub")
    xdg = os.environ.get("XDG_CACHE_HOME")
    dirs.append((Path(xdg) if xdg else _home() / ".cache") / "huggingface" / "hub")
    return dirs


def lmstudio_dirs() -> list[Path]:
    return [_home() / ".lmstudio" / "models", _home() / ".cache" / "lm-studio" / "models"]


def _gguf_files(root: Path) -> Iterator[Path]:
    try:
        if root.is_file():
            yield root
            return
        for dirpath, _dirs, files in os.walk(root, followlinks=False):
            for f in sorted(files):
                if f.lower().endswith(".gguf"):
                    yield Path(dirpath) / f
    except OSError as exc:
        logger.warning("cannot read %s: %s", root, exc)


def _ollama(models_dir: Path) -> Iterator[FoundModel]:
    manifests = models_dir / "manifests"
    if not manifests.is_dir():
        return
    for dirpath, _dirs, files in os.walk(manifests):
        for tag in sorted(files):
            manifest = Path(dirpath) / tag
            try:
                data = json.loads(manifest.read_text(encoding="utf-8"))
                layers = data.get("layers", [])
            except (OSError, ValueError, AttributeError) as exc:
                logger.warning("unreadable Ollama manifest %s: %s", manifest, exc)
                continue
            # manifests/<registry>/<namespace>/<model>/<tag>; "library" is the default namespace
            parts = manifest.relative_to(manifests).parts
            model = "/".join(p for p in parts[1:-1] if p != "library") or parts[-2]
            for layer in layers if isinstance(layers, list) else []:
                if not isinstance(layer, dict):
                    continue
                if layer.get("mediaType") != "application/vnd.ollama.image.model":
                    continue
                digest = str(layer.get("digest", "")).replace(":", "-")
                yield FoundModel(models_dir / "blobs" / digest, "ollama", f"{model}:{tag}")


def _huggingface(hub: Path) -> Iterator[FoundModel]:
    if not hub.is_dir():
        return
    for repo in sorted(hub.glob("models--*")):
        repo_name = repo.name.removeprefix("models--").replace("--", "/")
        for f in _gguf_files(repo / "snapshots"):
            yield FoundModel(f, "huggingface", f"{repo_name}/{f.name}")


def find_models(paths: list[Path] | None = None, *, usual_places: bool = True) -> list[FoundModel]:
    """Every GGUF file in the usual places (when ``usual_places``) and under ``paths``, each
    once (by resolved path; a named store entry wins over a bare path)."""
    found: list[FoundModel] = []
    if usual_places:
        for d in ollama_models_dirs():
            found += _ollama(d)
        for d in lmstudio_dirs():
            if d.is_dir():
                found += (FoundModel(f, "lmstudio", _rel_name(f, d)) for f in _gguf_files(d))
        for d in hf_hub_dirs():
            found += _huggingface(d)
        from qhybrid._resources import resource_path

        shipped = resource_path("models")
        if shipped.is_dir():
            found += (FoundModel(f, "qhybrid", f.name) for f in _gguf_files(shipped))
        from qhybrid.runtime.llm._fetch import models_dir

        cache = models_dir()
        if cache.is_dir():
            found += (FoundModel(f, "cache", f.name) for f in _gguf_files(cache))
    for p in paths or []:
        found += (FoundModel(f, "path") for f in _gguf_files(p))
    seen: set[Path] = set()
    unique = []
    for m in found:
        key = m.path.resolve() if m.path.exists() else m.path
        if key not in seen:
            seen.add(key)
            unique.append(m)
    return unique


def _rel_name(f: Path, root: Path) -> str:
    try:
        return str(f.relative_to(root))
    except ValueError:
        return f.name


class ModelNameError(Exception):
    """A model name that matches no file, or several (``candidates``)."""

    def __init__(self, message: str, candidates: list[FoundModel] | None = None) -> None:
        super().__init__(message)
        self.candidates = candidates or []


def _keys(m: FoundModel) -> set[str]:
    """The names a model answers to: its store name, file name and stem, lower-case."""
    keys = {m.path.name, m.path.stem}
    if m.name:
        keys |= {m.name, m.name.removesuffix(":latest"), Path(m.name).name, Path(m.name).stem}
        if m.source in ("huggingface", "lmstudio") and "/" in m.name:
            # the repository or LM Studio's publisher/model folder, "owner/Repo-GGUF"
            keys.add(m.name.rsplit("/", 1)[0])
    return {k.lower() for k in keys if k}


def resolve_model(name: str, models: list[FoundModel] | None = None) -> Path:
    """The file ``name`` means: an existing path; else the one model whose name, file name or
    stem is ``name`` (case-insensitive); else the one whose names contain it; else a real model
    qhybrid knows how to fetch (:data:`~._fetch.REAL_MODELS`, downloaded into the cache).
    Raises :class:`ModelNameError` (with the candidates when several match)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    found = find_models() if models is None else models
    wanted = name.lower()
    exact = [m for m in found if wanted in _keys(m)]
    matches = exact or [m for m in found if any(wanted in k for k in _keys(m))]
    if len(matches) == 1:
        return matches[0].path
    if len(matches) > 1:
        raise ModelNameError(f"{name!r} matches {len(matches)} models", matches)
    from qhybrid.runtime.llm._fetch import REAL_MODELS, FetchError, fetch_model

    if wanted in REAL_MODELS:
        try:
            return fetch_model(wanted)
        except FetchError as exc:
            raise ModelNameError(f"{name!r}: cannot fetch it: {exc}") from None
    hint = "see `qhybrid models`"
    if REAL_MODELS:
        hint += f", or fetch one of: {', '.join(REAL_MODELS)}"
    raise ModelNameError(f"no model file or model named {name!r} ({hint})")


def describe(found: FoundModel) -> dict[str, Any]:
    info: ModelInfo = read_model_info(found.path)
    row = info.to_json()
    row["name"] = found.name or info.name or found.path.stem
    row["model_name"] = info.name
    row["source"] = found.source
    return row


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def _params(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.1f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.1f}K" if n else "-"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description=(
            "List GGUF model files: Ollama's and LM Studio's model folders, the Hugging Face "
            "cache, qhybrid's own resources/models, and the files or folders given."
        ),
    )
    parser.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="files or folders")
    parser.add_argument(
        "--only", action="store_true", help="only the PATHs given, not the usual places"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    missing = [p for p in args.paths if not p.exists()]
    for p in missing:
        sys.stderr.write(f"{PROG}: error: no such file or folder: {p}\n")
    rows = [describe(m) for m in find_models(args.paths, usual_places=not args.only)]
    if args.json:
        sys.stdout.write(json.dumps({"models": rows}, sort_keys=True) + "\n")
    else:
        _print_table(rows)
    return EXIT_BAD_INPUT if missing else EXIT_OK


def _print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    if not rows:
        console.print("no GGUF files found (give a file or folder: qhybrid models PATH)")
        return
    table = Table(show_edge=False, pad_edge=False)
    for col in ("name", "arch", "params", "quant", "size", "runs", "source", "path"):
        table.add_column(col, overflow="fold")
    for r in rows:
        runs = "[green]yes[/]" if r["supported"] else f"[red]no[/]: {escape(r['reason'] or '')}"
        table.add_row(
            escape(str(r["name"])),
            escape(str(r["arch"] or "-")),
            _params(int(r["n_params"])),
            escape(str(r["quant"] or "-")),
            _size(int(r["size_bytes"])),
            runs,
            r["source"],
            escape(str(r["path"])),
        )
    console.print(table)
