"""Compile the CPU path's numba kernels ahead of time (``numba.pycc``): run in a process of its
own, never in one that runs a model.

    python -m qhybrid.runtime.llm._aot_build --cache [--background]
    python -m qhybrid.runtime.llm._aot_build --out DIR [--cpu x86-64-v3] [--models DIR]

``--cache`` builds this machine's entry of :mod:`._aot_cache` (for the host CPU, with the
host's instruction sets, as numba's JIT would compile), which later processes load instead of
numba; ``--background`` first lowers its priority and leaves at once if another builder holds
the entry's lock. ``--out`` writes the module and its manifest into DIR for the frozen app
(``packaging/aot.py``, ``packaging/build.py``). Either way it

1. runs the CPU path on small random models of every quant type the kernels read (each
   architecture the engine supports, exact and int8-activation products, prefill and decode,
   one and two sequences), on the shipped demo model, and on the GGUF files in ``--models``,
   so that numba compiles every kernel with every argument signature the CPU path uses;
2. compiles each (kernel, signature) into one extension module, ``_aot_kernels``, with each
   kernel's own options (fastmath, boundscheck, error model);
3. writes ``_aot_kernels<suffix>`` and ``aot-kernels.json`` (what was compiled).

Needs a C compiler (numba.pycc builds a small C wrapper). Exit code 1 and one line on stderr
when it cannot build.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_CPU", "AotError", "check_return_types", "compile_kernels", "main", "warm_up"]

#: The extension module's name (as :data:`._aot_cache.MODULE`).
MODULE = "_aot_kernels"
#: The CPU path's kernel modules: every numba dispatcher in them is compiled.
KERNEL_PREFIX = "qhybrid.runtime.llm._cpu_"
#: The frozen app's baseline (x86-64-v3: AVX2 and FMA, Haswell and later).
DEFAULT_CPU = {
    "x86_64": "x86-64-v3",
    "AMD64": "x86-64-v3",
    "aarch64": "generic",
    "arm64": "generic",
}

logger = logging.getLogger("qhybrid.aot")


class AotError(Exception):
    """The kernels cannot be compiled ahead of time here (said in one line)."""


def warm_up(models: Path | None) -> int:
    """Run the CPU path so that numba compiles each kernel with each signature it is called
    with. Returns the number of model runs."""
    import numpy as np

    from qhybrid._resources import resource_path
    from qhybrid.runtime.llm._gguf import load_model
    from qhybrid.runtime.llm._numpy_model import NumpyRunner
    from qhybrid.runtime.llm._random_model import RandomModelSpec, write_random_model
    from qhybrid.runtime.llm._runner import SeqInput
    from qhybrid.runtime.wgpu_thread._quants import FORMATS

    def run(path: Path, n_slots: int = 2, n_ctx: int = 32) -> None:
        model = load_model(path)
        try:
            for exact in (False, True):
                runner = NumpyRunner(model, n_slots, n_ctx, exact=exact)
                prompt = np.array([1, 2, 3, 4, 5, 6, 7, 8], dtype=np.int32)
                runner.logits([SeqInput(0, prompt, 0)])
                runner.logits([SeqInput(0, prompt[:1], len(prompt))])  # decode, one sequence
                if n_slots > 1:  # decode beside a prefill, then two decodes
                    runner.logits(
                        [SeqInput(0, prompt[:1], len(prompt) + 1), SeqInput(1, prompt[:5], 0)]
                    )
                    runner.logits(
                        [SeqInput(0, prompt[:1], len(prompt) + 2), SeqInput(1, prompt[:1], 5)]
                    )
        finally:
            model.close()

    runs = 0
    qtypes = sorted(name for name in FORMATS if name not in ("f32",))
    archs = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")
    with tempfile.TemporaryDirectory(prefix="qhybrid-aot-") as tmp:
        plan = [("llama", q) for q in qtypes] + [(a, "q8_0") for a in archs if a != "llama"]
        plan += [("gemma3", q) for q in ("q4_k", "q5_0", "q6_k")]
        for arch, qtype in plan:
            path = Path(tmp) / f"{arch}-{qtype}.gguf"
            try:
                write_random_model(path, RandomModelSpec(arch=arch, qtype=qtype))
            except (ValueError, NotImplementedError) as exc:  # a type gguf cannot write
                logger.info("warm-up: no random %s %s model (%s)", arch, qtype, exc)
                continue
            run(path)
            runs += 1
    demo = resource_path("models", "tiny-stories.gguf")
    if demo.is_file():
        run(demo)
        runs += 1
    for path in sorted(models.glob("*.gguf")) if models and models.is_dir() else []:
        logger.info("warm-up: %s", path.name)
        run(path, n_slots=1, n_ctx=64)
        runs += 1
    return runs


def kernels() -> Iterator[tuple[str, str, Any]]:
    """(module, qualname, dispatcher) for each compiled numba kernel of the CPU path."""
    from numba.core.registry import CPUDispatcher

    for name in sorted(sys.modules):
        if not name.startswith(KERNEL_PREFIX):
            continue
        module = sys.modules[name]
        for attr in sorted(vars(module)):
            obj = getattr(module, attr)
            if isinstance(obj, CPUDispatcher) and obj.__module__ == name and obj.signatures:
                yield name, obj.py_func.__qualname__, obj


def check_return_types() -> None:
    """Every kernel must return nothing: the AOT exports are compiled as ``void``."""
    for module, qualname, dispatcher in kernels():
        for sig in dispatcher.nopython_signatures:
            if str(sig.return_type) != "none":
                raise AotError(
                    f"{module}.{qualname} returns {sig.return_type}: AOT kernels return None"
                )


def compile_kernels(out: Path, cpu: str) -> dict[str, Any]:
    """Compile every (kernel, signature) numba has compiled in this process into
    ``out/_aot_kernels<suffix>``; returns the manifest. ``cpu`` ``host``: this CPU, with the
    instruction sets numba's JIT would use on it."""
    from qhybrid.runtime.llm._aot_args import spec_of
    from qhybrid.runtime.llm._jit import aot_name

    # (numba is untyped: its modules as Any)
    numba: Any = importlib.import_module("numba")
    codegen: Any = importlib.import_module("numba.core.codegen")
    flags_class: Any = importlib.import_module("numba.core.compiler").Flags
    pycc_compiler: Any = importlib.import_module("numba.pycc.compiler")
    cc: Any = importlib.import_module("numba.pycc").CC(MODULE)
    cc.output_dir = str(out)
    cc.target_cpu = cpu
    flags_of: dict[Any, Any] = {}
    manifest: dict[str, Any] = {"cpu": cpu, "numba": numba.__version__, "kernels": {}}
    if cpu == "host":
        manifest["cpu_name"] = codegen.ll.get_host_cpu_name()
    for module, qualname, dispatcher in kernels():
        flags = flags_class()
        dispatcher.targetdescr.options.parse_as_flags(flags, dispatcher.targetoptions)
        flags_of[dispatcher.py_func] = flags
        names = []
        for i, sig in enumerate(dispatcher.signatures):
            name = aot_name(module, qualname, i)
            cc.export(name, numba.void(*sig))(dispatcher.py_func)
            names.append([name, str(sig), [spec_of(t) for t in sig]])
        manifest["kernels"][f"{module}.{qualname}"] = names
    if not flags_of:
        raise AotError("the warm-up compiled no kernel: nothing to build")

    # pycc compiles every export with one set of flags; each kernel gets its own (those its
    # @njit asked for), keeping pycc's own switches.
    compile_extra = pycc_compiler.compile_extra

    def with_kernel_flags(
        typingctx: Any,
        targetctx: Any,
        func: Any,
        args: Any,
        return_type: Any,
        flags: Any,
        **kw: Any,
    ) -> Any:
        own = flags_of.get(func)
        if own is not None:
            own = own.copy()
            for switch in ("no_compile", "no_cpython_wrapper", "no_cfunc_wrapper", "nrt"):
                setattr(own, switch, getattr(flags, switch))
            flags = own
        return compile_extra(typingctx, targetctx, func, args, return_type, flags, **kw)

    # For the host, the features LLVM detects (as the JIT passes them), not only the CPU's
    # name: a VM may hide some of the named model's instruction sets.
    features = codegen.AOTCPUCodegen._customize_tm_features
    if cpu == "host":
        codegen.AOTCPUCodegen._customize_tm_features = lambda self: self._get_host_cpu_features()
    pycc_compiler.compile_extra = with_kernel_flags
    try:
        cc.compile()
    finally:
        pycc_compiler.compile_extra = compile_extra
        codegen.AOTCPUCodegen._customize_tm_features = features
    built = sorted(out.glob(f"{MODULE}.*"))
    built = [p for p in built if p.suffix in (".so", ".pyd", ".dylib")]
    if not built:
        raise AotError(f"numba.pycc wrote no {MODULE} extension module into {out}")
    manifest["module"] = built[0].name
    (out / "aot-kernels.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def build_into(out: Path, cpu: str, models: Path | None) -> dict[str, Any]:
    """Warm up, check, compile (the whole build); returns the manifest."""
    from qhybrid.runtime.llm import _jit

    if _jit.mode() != "jit":
        raise AotError("numba is not importable here: install it (pip install numba)")
    started = time.monotonic()
    runs = warm_up(models)
    check_return_types()
    warm = time.monotonic() - started
    logger.info("warm-up: %d model runs, %.0f s", runs, warm)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    manifest = compile_kernels(out, cpu)
    count = sum(len(v) for v in manifest["kernels"].values())
    manifest["seconds"] = {"warm_up": round(warm, 1), "compile": round(time.monotonic() - started)}
    (out / "aot-kernels.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    logger.info(
        "%s: %d kernels, %d variants, for %s, %.0f s",
        out / manifest["module"],
        len(manifest["kernels"]),
        count,
        cpu,
        time.monotonic() - started,
    )
    return manifest


def main(argv: list[str] | None = None, *, default_models: Path | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qhybrid.runtime.llm._aot_build", description=__doc__.split("\n")[0]
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="write the module and its manifest here")
    where.add_argument("--cache", action="store_true", help="build this machine's cache entry")
    parser.add_argument(
        "--background", action="store_true", help="(--cache) low priority; leave if one runs"
    )
    parser.add_argument(
        "--cpu",
        default=None,
        help="the CPU to compile for, as LLVM names it (default: 'host' with --cache, "
        f"else {DEFAULT_CPU.get(platform.machine(), 'generic')})",
    )
    parser.add_argument(
        "--models",
        type=Path,
        default=default_models,
        help="GGUF models to warm up on too (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="aot: %(message)s")
    logging.getLogger("qhybrid").setLevel(logging.WARNING)  # not each model's load
    logging.getLogger("qhybrid.aot").setLevel(logging.INFO)
    logging.getLogger("gguf").setLevel(logging.WARNING)
    cpu = args.cpu or ("host" if args.cache else DEFAULT_CPU.get(platform.machine(), "generic"))
    # This process compiles with numba first (the warm-up), whatever is cached already.
    os.environ["QHYBRID_CPU_KERNELS"] = "jit"
    try:
        if args.cache:
            return _build_cache(cpu, args.models, background=args.background)
        build_into(args.out, cpu, args.models)
    except AotError as exc:
        sys.stderr.write(f"qhybrid aot build: {exc}\n")
        return 1
    return 0


def _build_cache(cpu: str, models: Path | None, *, background: bool) -> int:
    from qhybrid.runtime.llm import _aot_cache

    if background and hasattr(os, "nice"):
        os.nice(10)

    def compile_into(folder: Path) -> str:
        return str(build_into(folder, cpu, models)["module"])

    started = time.monotonic()
    failed = _aot_cache.failure_marker()
    try:
        module = _aot_cache.build(compile_into, wait=not background)
    except Exception as exc:  # the C compiler, LLVM, a full disk: one line, then JIT
        message = f"{type(exc).__name__}: {exc}"
        sys.stderr.write(f"qhybrid aot build: {message}\n")
        with contextlib.suppress(OSError):  # the commands do not retry it in the background
            failed.write_text(message + "\n")
        return 1
    with contextlib.suppress(OSError):
        failed.unlink(missing_ok=True)
    if module is None:
        logger.info("another process is building %s", _aot_cache.cache_root())
    else:
        logger.info("cached: %s (%.0f s)", module, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
