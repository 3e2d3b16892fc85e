"""The CPU kernels' two modes: numba's JIT, and kernels compiled ahead of time (the frozen
app's, built by packaging/aot.py; a pip install's cache is tested in test_aot_cache.py). The
frozen app's AOT module itself is built and run by the installers' smoke test
(packaging/smoke.sh: the frozen app's demo gives the source checkout's hash)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from qhybrid.runtime.llm._jit import AotKernel, aot_name, missing_cpu_flags, mode

# Runs first in the child: numba and llvmlite cannot be imported, as in the frozen app.
BLOCK_NUMBA = """
import importlib.abc, sys, types
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("numba", "llvmlite"):
            raise ImportError(f"No module named {name!r}")
        return None
sys.meta_path.insert(0, Block())
"""


def run_child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_NUMBA + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_qhybrid_cpu_kernels_jit_compiles_with_numba_whatever_is_cached() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from qhybrid.runtime.llm import _jit; "
         "print(_jit.mode(), 'numba' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "QHYBRID_CPU_KERNELS": "jit"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["jit", "True"]
    assert mode() in ("jit", "aot")  # this process: the cache's kernels where built


def test_exported_names_say_module_kernel_and_variant() -> None:
    assert aot_name("qhybrid.runtime.llm._cpu_kernels", "_mv_q4_1", 2) == (
        "_cpu_kernels___mv_q4_1__2"
    )


def test_an_aot_kernel_calls_the_variant_that_fits_and_tries_it_first_next_time() -> None:
    calls: list[str] = []

    def for_ints(x: object) -> str:
        calls.append("ints")
        if not isinstance(x, int):
            raise TypeError("can't unbox")
        return "ints"

    def for_strs(x: object) -> str:
        calls.append("strs")
        if not isinstance(x, str):
            raise TypeError("can't unbox")
        return "strs"

    kernel = AotKernel("m._k", [for_ints, for_strs])
    assert kernel(1) == "ints"
    assert kernel("a") == "strs"
    calls.clear()
    assert kernel("b") == "strs"
    assert calls == ["strs"]  # the one that fitted last, first


def test_arguments_no_variant_was_compiled_for_are_refused_by_name() -> None:
    import numpy as np

    def refuse(*args: object) -> None:
        raise TypeError("can't unbox")

    kernel = AotKernel("qhybrid.runtime.llm._cpu_kernels._mv_q4_1", [refuse])
    view = np.zeros((4, 4), dtype=np.uint8)[:, ::2]
    view.flags.writeable = False
    with pytest.raises(TypeError, match=r"_mv_q4_1 was not compiled .*uint8\[2d, A, readonly\]"):
        kernel(view, 3)
    with pytest.raises(TypeError, match="0 variant"):
        AotKernel("m.inline_only", [])(1.0)


def test_cpu_levels_are_checked_against_proc_cpuinfo() -> None:
    haswell = "processor: 0\nflags\t\t: fpu sse2 avx avx2 bmi1 bmi2 f16c fma abm movbe xsave\n"
    old = "processor: 0\nflags\t\t: fpu sse2 sse4_1 sse4_2 ssse3 popcnt cx16 avx\n"
    assert missing_cpu_flags("x86-64-v3", haswell) == []
    assert missing_cpu_flags("x86-64-v3", old) == [
        "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"
    ]  # fmt: skip
    assert missing_cpu_flags("x86-64-v2", old) == []
    assert missing_cpu_flags("generic", old) == []


def test_without_numba_the_kernel_modules_load_the_compiled_kernels() -> None:
    result = run_child(
        """
        aot = types.ModuleType("qhybrid.runtime.llm._aot_kernels")
        aot.__file__ = "/nonexistent/_aot_kernels.so"  # no manifest: no CPU check
        def _quantize(*args):
            if len(args) != 5:
                raise TypeError("can't unbox")
            return "compiled"
        aot._cpu_act___quantize__0 = _quantize
        sys.modules[aot.__name__] = aot
        from qhybrid.runtime.llm import _cpu_act, _cpu_kernels, _jit  # noqa: F401
        from qhybrid.runtime.llm import _cpu_decode, _cpu_dots, _cpu_i8, _cpu_ops  # noqa: F401
        from qhybrid.runtime.llm import _numpy_model  # noqa: F401
        assert _jit.mode() == "aot", _jit.mode()
        assert "numba" not in sys.modules and "llvmlite" not in sys.modules
        assert _cpu_act._quantize(1, 2, 3, 4, 5) == "compiled"
        try:
            _cpu_kernels._mv_q8_0(1, 2, 3, 4, 5)
        except TypeError as exc:
            print("refused:", exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "refused: the CPU kernel qhybrid.runtime.llm._cpu_kernels._mv_q8_0" in result.stdout


def test_with_neither_numba_nor_compiled_kernels_the_error_says_what_to_install() -> None:
    result = run_child(
        """
        try:
            import qhybrid.runtime.llm._cpu_kernels
        except ImportError as exc:
            print(type(exc).__name__, exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("KernelsUnavailable the CPU path needs numba")
    assert "pip install numba" in result.stdout
