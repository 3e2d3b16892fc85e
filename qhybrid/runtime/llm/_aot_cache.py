"""The CPU kernels compiled ahead of time for this machine, cached under ``~/.cache/qhybrid``.

numba's JIT costs a process that runs a model about 100-150 MB of resident memory before the
first token (numba and llvmlite imported: +60 MB; LLVM's pages and the machine code at the
first kernel: +45-60 MB more), whatever the model's size. A pip install or a checkout
therefore compiles the kernels once with ``numba.pycc`` (as ``packaging/aot.py`` does for the
frozen app, but for this CPU) into an extension module cached here, and later processes import
only that module: numba and LLVM stay out of them.

- **The key** (:func:`cache_key`): the sources of the kernels and of the modules that make the
  arrays they are called with (:data:`KEY_SOURCES`; their argument types are the compiled
  signatures), the versions of numba, numpy and Python, the machine and this CPU's model and
  instruction sets (the module is compiled for the host CPU: a copy of the cache on another
  CPU is a miss, never a SIGILL). Entries live in ``<cache>/kernels/<key>/``.
- **Building** (:func:`build`, run by ``python -m qhybrid.runtime.llm._aot_build --cache`` in
  a child process, so that the process that runs a model never loads LLVM): under a lock
  file, into a temporary folder beside the entry, renamed into place when complete. Two
  builders at once cannot leave a half-written entry: the second waits for the lock, or (in
  the background) leaves, and finds the first's entry.
- **Loading** (:func:`load`): a missing entry, a stale one (another key) or a broken one (its
  module does not import) means numba's JIT, as before, with a log line; a broken entry is
  moved aside so that the next build replaces it.

``QHYBRID_CPU_KERNELS`` chooses (:func:`kernel_choice`): ``auto`` (default: the cached module
where there is one, else the JIT), ``jit`` (numba's JIT, never the cache; the kernel tests'
choice when they need numba's dispatchers), ``aot`` (the compiled module or an error saying
how to build it). ``QHYBRID_AOT_BUILD=0`` stops the commands from starting a build.

Imports the standard library only: :mod:`._jit` calls it before any kernel module loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

__all__ = [
    "BUILD_ENV",
    "CHOICE_ENV",
    "KEY_SOURCES",
    "MANIFEST",
    "MODULE",
    "BadChoice",
    "build",
    "cache_key",
    "cache_root",
    "discard",
    "ensure_built",
    "failure_marker",
    "find",
    "kernel_choice",
    "load",
    "numba_installed",
    "prepare",
    "start_background_build",
    "twin_import",
    "twin_import_active",
]

logger = logging.getLogger(__name__)

#: ``auto`` | ``jit`` | ``aot``: which kernels a process loads (see the module docstring).
CHOICE_ENV = "QHYBRID_CPU_KERNELS"
#: ``0`` keeps ``qhybrid generate`` / ``serve`` / ``bench llm`` from building the cache.
BUILD_ENV = "QHYBRID_AOT_BUILD"
#: The extension module's name (its ``PyInit__aot_kernels``), as in the frozen app.
MODULE = "_aot_kernels"
MANIFEST = "aot-kernels.json"
#: Bumped when the layout of an entry changes.
_FORMAT = 1

_LLM = Path(__file__).resolve().parent
#: What the compiled module depends on: the kernels, the builder, and the modules whose
#: arrays are the kernels' arguments (their dtypes, dimensions and layouts are the signatures).
KEY_SOURCES: tuple[Path, ...] = (
    *sorted(_LLM.glob("_cpu_*.py")),
    _LLM / "_jit.py",
    _LLM / "_aot_build.py",
    _LLM / "_aot_cache.py",
    _LLM / "_aot_args.py",
    _LLM / "_numpy_model.py",
    _LLM / "_gguf.py",
    _LLM.parent / "wgpu_thread" / "_quants.py",
)


_twin_import = False


@contextlib.contextmanager
def twin_import() -> Iterator[None]:
    """While the kernel modules are imported a second time in JIT mode (:func:`._jit.jit_twin`):
    their ``_jit`` then chooses numba's JIT whatever ``QHYBRID_CPU_KERNELS`` says."""
    global _twin_import
    _twin_import = True
    try:
        yield
    finally:
        _twin_import = False


def twin_import_active() -> bool:
    return _twin_import


class BadChoice(ValueError):
    """``QHYBRID_CPU_KERNELS`` has a value other than auto, jit or aot (or ``aot`` where
    nothing is compiled)."""


def kernel_choice() -> str:
    """``QHYBRID_CPU_KERNELS``: ``auto`` (unset or empty), ``jit`` or ``aot``."""
    value = os.environ.get(CHOICE_ENV, "").strip().lower() or "auto"
    if value not in ("auto", "jit", "aot"):
        raise BadChoice(
            f"{CHOICE_ENV}={os.environ[CHOICE_ENV]!r}: expected auto, jit or aot "
            "(auto: the kernels compiled ahead of time where they are cached, else numba's JIT)"
        )
    return value


def numba_installed() -> bool:
    """Whether numba can be imported (found without importing it: not in the frozen app)."""
    try:
        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):
        return False


def cache_root() -> Path:
    """``<qhybrid cache>/kernels`` (``$QHYBRID_CACHE`` or ``~/.cache/qhybrid``, as the models)."""
    if env := os.environ.get("QHYBRID_CACHE"):
        return Path(env) / "kernels"
    xdg = os.environ.get("XDG_CACHE_HOME")
    home = Path(os.environ.get("HOME") or Path.home())
    return (Path(xdg) if xdg else home / ".cache") / "qhybrid" / "kernels"


def _cpu_identity() -> str:
    """This CPU's model and instruction sets (what code compiled for the host may use)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    model = flags = ""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip()
        if name in ("model name", "Processor", "CPU part") and not model:
            model = value.strip()
        elif name in ("flags", "Features") and not flags:
            flags = " ".join(sorted(value.split()))
        if model and flags:
            break
    return f"{platform.machine()} {model} {flags}"


def _version(package: str) -> str:
    """The text of the installed package's version file (found without importing it, or
    importlib.metadata: ~4 MB), else its ``__init__.py``'s size and time."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return "-"
    folder = Path(next(iter(spec.submodule_search_locations)))
    for name in ("_version.py", "version.py"):
        try:
            return (folder / name).read_text()
        except OSError:
            continue
    try:
        stat = (folder / "__init__.py").stat()
    except OSError:
        return "-"
    return f"{stat.st_size} {stat.st_mtime_ns}"


def cache_key(sources: tuple[Path, ...] = KEY_SOURCES) -> str:
    """The cache entry's name for these sources, numba, numpy, Python and this CPU."""
    digest = hashlib.sha256(f"qhybrid-aot-{_FORMAT}\0{sys.version}\0".encode())
    for part in (_version("numba"), _version("numpy"), _cpu_identity()):
        digest.update(part.encode() + b"\0")
    for path in sources:
        try:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        except OSError:
            digest.update(path.name.encode() + b"\0missing\0")
    return digest.hexdigest()[:32]


def find(root: Path | None = None, key: str | None = None) -> Path | None:
    """The cached module's path for ``key`` (default: this process's), or None: no entry, or
    one whose manifest is unreadable or names another key or a missing module."""
    root = cache_root() if root is None else root
    key = cache_key() if key is None else key
    entry = root / key
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        module = entry / str(manifest["module"])
        if manifest.get("key") != key or not module.is_file():
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return module


def load(path: Path) -> ModuleType:
    """Import the extension module at ``path`` as ``qhybrid.runtime.llm._aot_kernels``
    (raises ImportError for a file that is not one)."""
    name = f"qhybrid.runtime.llm.{MODULE}"
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    if spec is None:
        raise ImportError(f"{path}: not an extension module", path=str(path))
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    if not any(attr.count("__") >= 2 for attr in dir(module)):
        raise ImportError(f"{path}: no compiled kernels in it", path=str(path))
    sys.modules[name] = module
    return module


def discard(module: Path) -> None:
    """Move a broken entry aside (then delete it) so that the next build replaces it."""
    entry = module.parent
    aside = entry.with_name(f".broken-{entry.name}-{os.getpid()}")
    with contextlib.suppress(OSError):
        os.rename(entry, aside)
        shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def _lock(path: Path, *, wait: bool) -> Iterator[bool]:
    """An exclusive lock on ``path`` (POSIX ``flock``; released when the process ends, even
    killed); yields False when ``wait`` is False and another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: the temporary folder and the rename still keep it whole
        yield True
        return
    with path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build(
    compile_into: Callable[[Path], str],
    *,
    root: Path | None = None,
    key: str | None = None,
    wait: bool = True,
    keep: int = 6,
) -> Path | None:
    """Build the entry for ``key`` unless it is there: ``compile_into(folder)`` writes the
    module into a temporary folder and returns its file name; the folder is renamed into place
    whole. Returns the module, or None when ``wait`` is False and another process is building
    it. Older entries beyond the ``keep`` most recent are removed."""
    root = cache_root() if root is None else root
    key = cache_key() if key is None else key
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root / f".{key}.lock", wait=wait) as locked:
        if not locked:
            return None
        found = find(root, key)
        if found is not None:
            return found
        entry = root / key
        if entry.exists():  # stale or broken: replaced below
            discard(entry / MANIFEST)
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=root))
        try:
            name = compile_into(tmp)
            manifest_path = tmp / MANIFEST
            manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
            manifest.update(module=name, key=key, built=time.strftime("%Y-%m-%dT%H:%M:%SZ"))
            manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
            try:
                os.rename(tmp, entry)
            except OSError:  # another builder's entry got there first (no lock: Windows)
                if find(root, key) is None:
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    _prune(root, keep)
    module = find(root, key)
    if module is None:
        raise RuntimeError(f"{entry}: the built entry cannot be read back")
    return module


def _prune(root: Path, keep: int) -> None:
    entries = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        discard(old / MANIFEST)
        with contextlib.suppress(OSError):
            (root / f".{old.name}.lock").unlink()


def _builder(*extra: str) -> list[str]:
    return [sys.executable, "-m", "qhybrid.runtime.llm._aot_build", "--cache", *extra]


def _child_env() -> dict[str, str]:
    # the child compiles with numba's JIT first (its warm-up), whatever this process chose
    return dict(os.environ, **{CHOICE_ENV: "jit"})


def failure_marker(root: Path | None = None, key: str | None = None) -> Path:
    """The file a failed build leaves (its error): the commands then do not start it again for
    the same key; ``python -m qhybrid.runtime.llm._aot_build --cache`` does, and removes it."""
    root = cache_root() if root is None else root
    return root / f".{cache_key() if key is None else key}.failed"


def start_background_build() -> Path | None:
    """Start the builder as a detached, low-priority process that outlives this one (the
    next run loads what it builds); returns its log file, or None when builds are off
    (``QHYBRID_AOT_BUILD=0``) or the process cannot start."""
    if os.environ.get(BUILD_ENV, "1").strip() == "0":
        return None
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        log = root / "build.log"
        with log.open("w") as out:
            subprocess.Popen(
                _builder("--background"),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                start_new_session=True,
                close_fds=True,
            )
    except OSError as exc:
        logger.warning("cannot start the CPU kernels' build (%s): numba's JIT is used", exc)
        return None
    return log


def ensure_built(progress: Callable[[str], None] | None = None) -> Path | None:
    """Build the cache entry in a child process now, unless it is there (waiting for another
    builder if one is running); returns the module, or None (builds off, or the build failed:
    its output is logged)."""
    found = find()
    if found is not None or os.environ.get(BUILD_ENV, "1").strip() == "0":
        return found
    if progress is not None:
        progress(f"compiling the CPU kernels ahead of time into {cache_root()} (once)")
    started = time.monotonic()
    result = subprocess.run(
        _builder(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=_child_env(),
        check=False,
    )
    found = find()
    if found is None:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        logger.warning(
            "compiling the CPU kernels ahead of time failed (exit %s): numba's JIT is used\n%s",
            result.returncode,
            "\n".join(tail),
        )
    elif progress is not None:
        progress(f"CPU kernels compiled in {time.monotonic() - started:.0f} s: {found}")
    return found


def prepare() -> str | None:
    """For a command about to run a model (``qhybrid generate``, ``serve``), before the kernels
    load: where this machine has no compiled kernels yet, start their build in the background
    and return a line saying so (this run compiles with numba's JIT, as before; the build
    takes about a CPU-minute at low priority, and the runs after it start without numba).
    Raises :class:`BadChoice` for a bad ``QHYBRID_CPU_KERNELS``."""
    choice = kernel_choice()
    if choice == "jit" or not numba_installed() or find() is not None:
        return None
    if choice == "aot":
        raise BadChoice(
            f"{CHOICE_ENV}=aot, and no CPU kernels are compiled ahead of time for this machine "
            f"in {cache_root()}: build them with `python -m qhybrid.runtime.llm._aot_build "
            "--cache`, or unset the variable"
        )
    root, key = cache_root(), cache_key()
    if failure_marker(root, key).exists():  # it failed for these sources: not every run again
        logger.info("the CPU kernels' build failed before (%s): numba's JIT is used", root)
        return None
    if (root / f".{key}.lock").exists():
        with _lock(root / f".{key}.lock", wait=False) as free:
            if not free:
                return (
                    "the CPU kernels are compiled by numba in this run; another process is "
                    f"compiling them ahead of time (log: {root / 'build.log'})"
                )
    log = start_background_build()
    if log is None:
        return None
    return (
        "the CPU kernels are compiled by numba in this run; compiling them ahead of time in "
        f"the background (log: {log}), so that later runs start without numba and LLVM"
    )
