"""Compiled modules cached on disk, so a run does not compile what an earlier one did.

The key is a SHA-256 of wasmtime's version, the engine settings that affect code generation
and the module's bytes; entries are written atomically. A corrupt or incompatible entry is
compiled again and replaced. Cached artifacts are native code that wasmtime trusts, so the
cache lives in the user's own cache folder (``platformdirs``), or ``QHYBRID_CACHE_DIR``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import tempfile
from pathlib import Path

import wasmtime

from qhybrid.runtime.wasm_pool._abi import (
    ModuleInfo,
    check_module,
    compile_module,
    engine_config_key,
)

logger = logging.getLogger(__name__)

CACHE_ENV = "QHYBRID_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$QHYBRID_CACHE_DIR/modules``, or the platform's user cache folder for qhybrid."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override) / "modules"
    import platformdirs

    return platformdirs.user_cache_path("qhybrid") / "modules"


def _wasmtime_version() -> str:
    try:
        return importlib.metadata.version("wasmtime")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - vendored wasmtime
        return "unknown"


def cache_key(data: bytes) -> str:
    h = hashlib.sha256()
    for part in (_wasmtime_version().encode(), engine_config_key().encode(), data):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def load_module(
    engine: wasmtime.Engine, path: Path, cache_dir: Path | None
) -> tuple[wasmtime.Module, ModuleInfo, bytes, bool]:
    """Compile (or load from the cache) and check a module.

    Returns the module, what the check found, the file's bytes and whether the cache served it.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        from qhybrid.runtime.wasm_pool._abi import AgentModuleError

        raise AgentModuleError(f"{path}: cannot read module: {exc.strerror or exc}") from None
    entry = cache_dir / f"{cache_key(data)}.cwasm" if cache_dir is not None else None
    if entry is not None and entry.is_file():
        try:
            module = wasmtime.Module.deserialize_file(engine, str(entry))
            return module, check_module(module, path), data, True
        except wasmtime.WasmtimeError as exc:
            logger.info("cached module %s is unusable (%s); compiling again", entry, exc)
    module = compile_module(engine, path)
    info = check_module(module, path)
    if entry is not None:
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=entry.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(module.serialize())
            os.replace(tmp, entry)
        except OSError as exc:
            logger.info("cannot write the module cache %s: %s", entry, exc)
    return module, info, data, False
