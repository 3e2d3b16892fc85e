"""numba for the CPU path's kernels: its JIT, or the same kernels compiled ahead of time.

Every kernel module of the CPU path (``_cpu_*.py``) takes ``njit``, ``intrinsic``, ``types``
and ``ir`` from here instead of from numba and llvmlite:

- **JIT** (a source checkout, a wheel): numba compiles each kernel on first use for this CPU,
  and ``cache=True`` keeps the machine code between runs (where there is no cache folder,
  e.g. a read-only install, it compiles per process).
- **AOT** (the frozen app of the installers): ``packaging/aot.py`` compiled every kernel, with
  each signature the CPU path calls it with and the same options (fastmath, boundscheck), into
  the extension module ``qhybrid.runtime.llm._aot_kernels``, and numba and llvmlite (LLVM is
  170 MiB) stay out of the bundle. A kernel is then an :class:`AotKernel` that calls the
  compiled variant whose argument types fit. Its exported names are
  ``<module>__<qualname>__<n>``: ``_cpu_kernels___mv_q4_1__0``.

- **AOT from the cache** (a pip install or a checkout, the default once built): the same
  kernels compiled for this CPU by ``python -m qhybrid.runtime.llm._aot_build --cache`` in a
  child process, cached by :mod:`._aot_cache`; the process that runs a model then never
  imports numba or llvmlite (about 100-150 MB less resident memory). A call with argument
  types the build did not see falls back, with a log line, to numba's JIT for the kernel
  modules (:func:`jit_twin`): slower to start and larger, never wrong.

Which one: the bundled module where numba cannot be imported (the frozen app);
``QHYBRID_CPU_KERNELS=jit`` numba's JIT; ``aot`` the cached module or
:class:`KernelsUnavailable` saying how to build it; ``auto`` (default) the cached module where
its entry is there, else the JIT. With neither numba nor compiled kernels, importing a kernel
module fails with :class:`KernelsUnavailable`, naming both.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from qhybrid.runtime.llm import _aot_cache

__all__ = [
    "AOT_MODULE",
    "CPU_FLAGS",
    "AotKernel",
    "KernelsUnavailable",
    "aot_name",
    "intrinsic",
    "ir",
    "jit_twin",
    "missing_cpu_flags",
    "mode",
    "njit",
    "source",
    "types",
]

logger = logging.getLogger(__name__)

#: The extension module that packaging/aot.py builds for the frozen app.
AOT_MODULE = "qhybrid.runtime.llm._aot_kernels"


class KernelsUnavailable(ImportError):
    """Neither numba nor the ahead-of-time compiled kernels can be loaded."""


def aot_name(module: str, qualname: str, variant: int) -> str:
    """The exported name of variant ``variant`` of the kernel ``module.qualname``."""
    return f"{module.rsplit('.', 1)[-1]}__{qualname.replace('.', '_')}__{variant}"


class AotKernel:
    """A kernel compiled ahead of time: calls the first variant whose argument types fit.

    A compiled variant refuses arguments it was not compiled for with ``TypeError`` (its
    unboxing checks dtypes, dimensions, layouts and writability) before it runs, so trying
    them in turn is safe; the one that fitted last is tried first next time. With
    ``fallback`` (the cached build, where numba is installed), arguments no variant takes go
    to the kernel's numba JIT twin (:func:`jit_twin`) instead of failing.
    """

    def __init__(
        self,
        name: str,
        variants: Sequence[Callable[..., Any]],
        fallback: Callable[[], Callable[..., Any]] | None = None,
        checks: Sequence[Callable[[tuple[Any, ...]], bool] | None] | None = None,
    ) -> None:
        self.__name__ = name
        self._variants = list(variants)
        self._last = 0
        self._fallback = fallback
        self._jit: Callable[..., Any] | None = None
        # With checks (from the manifest's signatures, :mod:`._aot_args`), the variant is
        # chosen by them: a pycc export does not refuse arguments it was not compiled for.
        self._checks: list[Callable[[tuple[Any, ...]], bool]] | None = None
        if checks is not None:
            self._checks = [c if c is not None else _never for c in checks]

    def __call__(self, *args: Any) -> Any:
        checks = self._checks
        if checks is not None:
            if checks and checks[self._last](args):
                return self._variants[self._last](*args)
            for i, check in enumerate(checks):
                if check(args):
                    self._last = i
                    return self._variants[i](*args)
            return self._no_variant(args)
        variants = self._variants
        if variants:
            try:
                return variants[self._last](*args)
            except TypeError:
                pass
            for i, variant in enumerate(variants):
                if i == self._last:
                    continue
                try:
                    result = variant(*args)
                except TypeError:
                    continue
                self._last = i
                return result
        return self._no_variant(args)

    def _no_variant(self, args: tuple[Any, ...]) -> Any:
        kinds = ", ".join(_describe(a) for a in args)
        if self._fallback is not None:
            if self._jit is None:
                logger.warning(
                    "the CPU kernel %s was not compiled ahead of time for (%s): numba "
                    "compiles it (JIT) in this process",
                    self.__name__,
                    kinds,
                )
                self._jit = self._fallback()
            return self._jit(*args)
        raise TypeError(
            f"the CPU kernel {self.__name__} was not compiled ahead of time for ({kinds}) "
            f"({len(self._variants)} variant(s) in {AOT_MODULE}); this build of qhybrid cannot "
            "run it: please report it, with the model file's quant types"
        )


def _never(args: tuple[Any, ...]) -> bool:
    return False


def _describe(value: Any) -> str:
    dtype, shape = getattr(value, "dtype", None), getattr(value, "shape", None)
    if dtype is None or shape is None:
        return type(value).__name__
    flags = getattr(value, "flags", None)
    layout = "C" if flags is not None and flags.c_contiguous else "A"
    ro = "" if flags is None or flags.writeable else ", readonly"
    return f"{dtype}[{len(shape)}d, {layout}{ro}]"


class _Unavailable:
    """numba's ``types`` or llvmlite's ``ir`` in the frozen app: only kernels' typing and
    lowering code (never run there) uses them."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        raise KernelsUnavailable(
            f"{self._name}.{attr}: numba is not part of this build (its CPU kernels were "
            "compiled ahead of time)"
        )


#: What each CPU level the kernels can be compiled for needs, as Linux's /proc/cpuinfo names
#: the instruction sets (x86-64-v3: AVX2, FMA, BMI1/2, F16C, LZCNT, MOVBE).
CPU_FLAGS = {
    "x86-64-v3": ("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"),
    "x86-64-v2": ("sse4_1", "sse4_2", "ssse3", "popcnt", "cx16"),
}


def missing_cpu_flags(cpu: str, cpuinfo: str) -> list[str]:
    """The instruction sets that code compiled for ``cpu`` needs and ``cpuinfo`` (the text of
    /proc/cpuinfo) lacks."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            have = set(line.partition(":")[2].split())
            return [flag for flag in CPU_FLAGS.get(cpu, ()) if flag not in have]
    return []


def _check_cpu(module: ModuleType) -> None:
    """Refuse, by name, kernels compiled for instructions this CPU lacks (they would end the
    process with SIGILL). The build's manifest says which CPU level it targets."""
    manifest = Path(str(module.__file__)).with_name("aot-kernels.json")
    try:
        cpu = str(json.loads(manifest.read_text())["cpu"])
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except (OSError, ValueError, KeyError):
        return  # no manifest or no /proc (macOS, Windows): nothing to check against
    missing = missing_cpu_flags(cpu, cpuinfo)
    if missing:
        raise KernelsUnavailable(
            f"this build's CPU kernels are compiled for {cpu}, and this CPU lacks "
            f"{', '.join(missing)}: install qhybrid with pip instead (numba compiles them "
            "for this CPU)"
        )


_NUMBA = _aot_cache.numba_installed()


def _load() -> tuple[str, ModuleType | None, Path | None]:
    """(mode, compiled module or None, where it came from): see the module docstring."""
    choice = "jit" if _aot_cache.twin_import_active() else _aot_cache.kernel_choice()
    if not _NUMBA:  # the frozen app
        try:
            module = importlib.import_module(AOT_MODULE)
        except ImportError as aot_error:
            raise KernelsUnavailable(
                f"the CPU path needs numba (not installed) or its kernels compiled ahead of "
                f"time ({aot_error}): pip install numba"
            ) from aot_error
        _check_cpu(module)
        return "aot", module, Path(str(module.__file__))
    if choice == "jit":
        return "jit", None, None
    cached = _aot_cache.find()
    if cached is not None:
        try:
            return "aot", _aot_cache.load(cached), cached
        except ImportError as exc:
            logger.warning("%s: the cached CPU kernels do not load (%s); discarded", cached, exc)
            _aot_cache.discard(cached)
    if choice == "aot":
        raise KernelsUnavailable(
            f"{_aot_cache.CHOICE_ENV}=aot, and no CPU kernels are compiled ahead of time for "
            f"this machine in {_aot_cache.cache_root()}: build them with `python -m "
            "qhybrid.runtime.llm._aot_build --cache`, or unset the variable"
        )
    logger.info(
        "no CPU kernels compiled ahead of time in %s: numba compiles them (JIT)",
        _aot_cache.cache_root(),
    )
    return "jit", None, None


_MODE, _AOT, _SOURCE = _load()


def mode() -> str:
    """``"jit"`` (numba compiles the kernels) or ``"aot"`` (compiled ahead of time: the frozen
    app's bundled module, or this machine's cached one)."""
    return _MODE


def source() -> Path | None:
    """The compiled module's file in ``aot`` mode, else None."""
    return _SOURCE


_TWINS: dict[str, ModuleType] | None = None
_TWIN_LOCK = threading.Lock()


def jit_twin(module: str, qualname: str) -> Callable[..., Any]:
    """The numba JIT version of the kernel ``module.qualname``, from a second import of every
    kernel module in JIT mode (imported once, at the first call; it loads numba)."""
    global _TWINS
    with _TWIN_LOCK:
        if _TWINS is None:
            _TWINS = _import_twins()
    twin = _TWINS[module]
    for value in vars(twin).values():
        py_func = getattr(value, "py_func", None)
        if getattr(py_func, "__qualname__", None) == qualname and value.__module__ == module:
            return value  # type: ignore[no-any-return]
    raise KeyError(f"{module}.{qualname}: no such kernel")


def _import_twins() -> dict[str, ModuleType]:
    prefix = "qhybrid.runtime.llm._cpu_"
    names = sorted(n for n in sys.modules if n.startswith(prefix))
    mine = [*names, __name__]
    saved = {n: sys.modules.pop(n) for n in mine if n in sys.modules}
    package = sys.modules["qhybrid.runtime.llm"]
    attrs = {n: vars(package).get(n.rpartition(".")[2]) for n in mine}
    try:
        with _aot_cache.twin_import():
            return {n: importlib.import_module(n) for n in names}
    finally:
        for n in mine:
            sys.modules.pop(n, None)
        sys.modules.update(saved)
        for n, value in attrs.items():
            if value is not None:
                setattr(package, n.rpartition(".")[2], value)


def _signature_specs(module_file: Path | None) -> dict[str, list[Any]] | None:
    """Each export's argument specs from the build's manifest (None for a build without
    them: its variants are then chosen by the ``TypeError`` they raise, as before)."""
    if module_file is None:
        return None
    try:
        manifest = json.loads(module_file.with_name("aot-kernels.json").read_text())
        specs = {
            str(entry[0]): list(entry[2])
            for entries in manifest["kernels"].values()
            for entry in entries
            if len(entry) > 2
        }
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    return specs or None


def _check(spec: list[Any] | None) -> Callable[[tuple[Any, ...]], bool] | None:
    from qhybrid.runtime.llm._aot_args import make_check

    return None if spec is None else make_check(spec)


if _AOT is None:
    import numba as _nb
    from llvmlite import ir as _ir  # type: ignore[import-untyped]
    from numba import types as _types
    from numba.extending import intrinsic as _intrinsic

    ir: Any = _ir
    types: Any = _types
    intrinsic: Callable[[Callable[..., Any]], Any] = _intrinsic

    def njit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
        """numba.njit with ``cache=True`` where a cache folder can be found."""

        def decorate(fn: Callable[..., Any]) -> Any:
            try:
                return _nb.njit(cache=True, **options)(fn)
            except RuntimeError:  # "cannot cache function ...: no locator available"
                return _nb.njit(cache=False, **options)(fn)

        return decorate

else:
    _COMPILED: dict[str, list[tuple[int, Callable[..., Any]]]] = {}
    for _exported in dir(_AOT):
        _key, _sep, _n = _exported.rpartition("__")
        if _sep and _key and _n.isdigit():
            _COMPILED.setdefault(_key, []).append((int(_n), getattr(_AOT, _exported)))
    _SPECS = _signature_specs(_SOURCE)

    ir = _Unavailable("llvmlite.ir")
    types = _Unavailable("numba.types")

    def intrinsic(fn: Callable[..., Any]) -> Any:
        """An intrinsic is lowered into the kernels that use it; nothing calls it alone."""
        return fn

    def njit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
        """The compiled variants of the decorated kernel (none for helpers that are only
        inlined into other kernels: calling those from Python says so)."""

        def decorate(fn: Callable[..., Any]) -> Any:
            key = aot_name(fn.__module__, fn.__qualname__, 0).rpartition("__")[0]
            variants = [f for _, f in sorted(_COMPILED.get(key, []), key=lambda v: v[0])]
            module, qualname = fn.__module__, fn.__qualname__
            # numba installed (a cached build): what no variant takes goes to the JIT
            fallback = (lambda: jit_twin(module, qualname)) if _NUMBA else None
            exported = [aot_name(module, qualname, n) for n, _ in sorted(_COMPILED.get(key, []))]
            checks = None
            if _SPECS is not None:
                checks = [_check(_SPECS.get(name)) for name in exported]
            kernel = AotKernel(f"{module}.{qualname}", variants, fallback, checks)
            kernel.py_func = fn  # type: ignore[attr-defined]  # as numba's dispatchers have
            return kernel

        return decorate
