"""Compiled modules cached on disk, so a run does not compile what an earlier one did.

A cached artifact is native code that wasmtime runs without checking it, so every entry is
verified before it is deserialized (the threat model is in ``docs/security.md``):

- the file name is a SHA-256 of wasmtime's version, the engine settings that affect code
  generation and the module's bytes (:func:`cache_key`);
- the file holds a header (``MAGIC``), a SHA-256 digest and the artifact. The digest covers the
  artifact *and* the same version, engine settings and module digest, so a flipped byte, a
  truncated file or another module's entry copied under this key does not verify;
- the folder is made owner-only (0700) and the entries 0600; a folder owned by another user or
  writable by others that cannot be fixed is not used; entries are opened without following
  symbolic links and must be regular files owned by this user.

A corrupt, foreign or incompatible entry is compiled again and replaced; entries are written
atomically. The cache lives in the user's own cache folder (``platformdirs``), or
``QHYBRID_CACHE_DIR``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import stat
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
#: The entry format: magic, then the 32-byte digest, then wasmtime's artifact.
MAGIC = b"QHCWASM2"
_DIGEST = 32
#: Larger entries are not read (no compiled agent comes near it).
MAX_ENTRY_BYTES = 1 << 30


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


def _hash(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.digest()


def cache_key(data: bytes) -> str:
    """The entry's name: binds wasmtime's version, the engine settings and the module."""
    return _hash(_wasmtime_version().encode(), engine_config_key().encode(), data).hex()


def entry_digest(module_digest: bytes, artifact: bytes) -> bytes:
    """The digest stored in an entry: over the artifact, bound to the module and the engine."""
    return _hash(
        MAGIC,
        _wasmtime_version().encode(),
        engine_config_key().encode(),
        module_digest,
        artifact,
    )


def _owner_only_dir(folder: Path) -> bool:
    """Create ``folder`` (0700) or make it so; False when it cannot be trusted."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(folder)
        if not stat.S_ISDIR(st.st_mode):
            logger.warning("module cache %s is not a folder; not using it", folder)
            return False
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            logger.warning("module cache %s belongs to another user; not using it", folder)
            return False
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(folder, 0o700)
    except OSError as exc:
        logger.warning("module cache %s is unusable (%s); compiling without it", folder, exc)
        return False
    return True


def _read_entry(entry: Path) -> bytes | None:
    """The entry's bytes, or None when absent or not a regular file of this user's."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(entry, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symbolic link
        logger.warning("module cache entry %s is not a plain file (%s); compiling", entry, exc)
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_ENTRY_BYTES:
            logger.warning("module cache entry %s is not a plain file; compiling", entry)
            return None
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            logger.warning("module cache entry %s belongs to another user; compiling", entry)
            return None
        return f.read(MAX_ENTRY_BYTES + 1)


def _verified_artifact(raw: bytes, module_digest: bytes) -> bytes | None:
    head = len(MAGIC) + _DIGEST
    if len(raw) <= head or not raw.startswith(MAGIC):
        return None
    artifact = raw[head:]
    if entry_digest(module_digest, artifact) != raw[len(MAGIC) : head]:
        return None
    return artifact


def _write_entry(entry: Path, module_digest: bytes, artifact: bytes) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=entry.parent, suffix=".tmp")  # 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC)
                f.write(entry_digest(module_digest, artifact))
                f.write(artifact)
            os.replace(tmp, entry)  # replaces a symbolic link itself, never its target
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        logger.info("cannot write the module cache %s: %s", entry, exc)


def load_module(
    engine: wasmtime.Engine, path: Path, cache_dir: Path | None
) -> tuple[wasmtime.Module, ModuleInfo, bytes, bool]:
    """Compile (or load from the cache, verified) and check a module.

    Returns the module, what the check found, the file's bytes and whether the cache served it.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        from qhybrid.runtime.wasm_pool._abi import AgentModuleError

        raise AgentModuleError(f"{path}: cannot read module: {exc.strerror or exc}") from None
    module_digest = hashlib.sha256(data).digest()
    entry: Path | None = None
    if cache_dir is not None and _owner_only_dir(cache_dir):
        entry = cache_dir / f"{cache_key(data)}.cwasm"
    if entry is not None:
        raw = _read_entry(entry)
        if raw is not None:
            artifact = _verified_artifact(raw, module_digest)
            if artifact is None:
                logger.warning("cached module %s failed verification; compiling again", entry)
            else:
                try:
                    module = wasmtime.Module.deserialize(engine, artifact)
                    return module, check_module(module, path), data, True
                except wasmtime.WasmtimeError as exc:
                    logger.info("cached module %s is unusable (%s); compiling again", entry, exc)
    module = compile_module(engine, path)
    info = check_module(module, path)
    if entry is not None:
        _write_entry(entry, module_digest, bytes(module.serialize()))
    return module, info, data, False
