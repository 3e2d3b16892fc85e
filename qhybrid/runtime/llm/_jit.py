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

AOT is used only where numba cannot be imported and the compiled module is there; with
neither, importing a kernel module fails with :class:`KernelsUnavailable`, naming both.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "AOT_MODULE",
    "CPU_FLAGS",
    "AotKernel",
    "KernelsUnavailable",
    "aot_name",
    "intrinsic",
    "ir",
    "missing_cpu_flags",
    "mode",
    "njit",
    "types",
]

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
    them in turn is safe; the one that fitted last is tried first next time.
    """

    def __init__(self, name: str, variants: Sequence[Callable[..., Any]]) -> None:
        self.__name__ = name
        self._variants = list(variants)
        self._last = 0

    def __call__(self, *args: Any) -> Any:
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
        kinds = ", ".join(_describe(a) for a in args)
        raise TypeError(
            f"the CPU kernel {self.__name__} was not compiled ahead of time for ({kinds}) "
            f"({len(variants)} variant(s) in {AOT_MODULE}); this build of qhybrid cannot run "
            "it: please report it, with the model file's quant types"
        )


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


def _load() -> tuple[str, ModuleType | None]:
    try:
        importlib.import_module("numba")
    except ImportError as numba_error:
        try:
            module = importlib.import_module(AOT_MODULE)
        except ImportError as aot_error:
            raise KernelsUnavailable(
                f"the CPU path needs numba ({numba_error}) or its kernels compiled ahead of "
                f"time ({aot_error}): pip install numba"
            ) from aot_error
        _check_cpu(module)
        return "aot", module
    return "jit", None


_MODE, _AOT = _load()


def mode() -> str:
    """``"jit"`` (numba compiles the kernels) or ``"aot"`` (compiled into this build)."""
    return _MODE


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
            kernel = AotKernel(f"{fn.__module__}.{fn.__qualname__}", variants)
            kernel.py_func = fn  # type: ignore[attr-defined]  # as numba's dispatchers have
            return kernel

        return decorate
