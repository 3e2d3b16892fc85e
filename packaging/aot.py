#!/usr/bin/env python3
"""Compile the LLM CPU path's numba kernels ahead of time, for the frozen app.

    python packaging/aot.py --out DIR [--cpu x86-64-v3] [--models DIR]

numba compiles the CPU path's kernels (``qhybrid/runtime/llm/_cpu_*.py``) on the user's CPU at
first use, through LLVM: llvmlite's library is 170 MiB, 38 MiB compressed, about a third of an
installer. The frozen app does without it: this script

1. runs the CPU path on small random models of every quant type the kernels read (each
   architecture the engine supports, exact and int8-activation products, prefill and decode,
   one and two sequences), on the shipped demo model, and on the real models in ``--models``
   (default: qhybrid's model cache), so that numba compiles every kernel with every argument
   signature the CPU path uses;
2. compiles each (kernel, signature) into one extension module, ``_aot_kernels``, with
   numba's own ahead-of-time compiler (``numba.pycc``), the kernel's own options (fastmath,
   boundscheck, error model) and, for a portable build, a baseline CPU (``--cpu``;
   ``x86-64-v3`` is AVX2 and FMA, Haswell and later, on x86_64);
3. writes ``DIR/_aot_kernels<suffix>`` and ``DIR/aot-kernels.json`` (what was compiled).

At run time ``qhybrid.runtime.llm._jit`` uses that module when numba is absent (the spec
leaves numba and llvmlite out when packaging/build.py passes it the module). A call with
argument types that were not compiled fails with a message naming the kernel and the types.
Needs a C compiler (numba.pycc builds a small C wrapper).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
MODULE = "_aot_kernels"
#: The CPU path's kernel modules: every numba dispatcher in them is compiled.
KERNEL_PREFIX = "qhybrid.runtime.llm._cpu_"
DEFAULT_CPU = {
    "x86_64": "x86-64-v3",
    "AMD64": "x86-64-v3",
    "aarch64": "generic",
    "arm64": "generic",
}

logger = logging.getLogger("aot")


class AotError(Exception):
    """The kernels cannot be compiled ahead of time here (said in one line)."""


def warm_up(models: Path | None) -> int:
    """Run the CPU path so that numba compiles each kernel with each signature it is called
    with. Returns the number of model runs."""
    import numpy as np

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
    run(REPO_ROOT / "resources" / "models" / "tiny-stories.gguf")
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


def compile_kernels(out: Path, cpu: str) -> dict[str, Any]:
    """Compile every (kernel, signature) numba has compiled in this process into
    ``out/_aot_kernels<suffix>``; returns the manifest."""
    import numba
    from numba.core.compiler import Flags
    from numba.pycc import CC
    from numba.pycc import compiler as pycc_compiler

    from qhybrid.runtime.llm._jit import aot_name

    cc = CC(MODULE)
    cc.output_dir = str(out)
    cc.target_cpu = cpu
    flags_of: dict[Any, Any] = {}
    manifest: dict[str, Any] = {"cpu": cpu, "numba": numba.__version__, "kernels": {}}
    for module, qualname, dispatcher in kernels():
        flags = Flags()
        dispatcher.targetdescr.options.parse_as_flags(flags, dispatcher.targetoptions)
        flags_of[dispatcher.py_func] = flags
        names = []
        for i, sig in enumerate(dispatcher.signatures):
            name = aot_name(module, qualname, i)
            cc.export(name, numba.void(*sig))(dispatcher.py_func)
            names.append([name, str(sig)])
        manifest["kernels"][f"{module}.{qualname}"] = names
    if not flags_of:
        raise AotError("the warm-up compiled no kernel: nothing to build")

    # pycc compiles every export with one set of flags; each kernel gets its own (those its
    # @njit asked for), keeping pycc's own switches.
    compile_extra = pycc_compiler.compile_extra

    def with_kernel_flags(typingctx, targetctx, func, args, return_type, flags, **kw):  # type: ignore[no-untyped-def]
        own = flags_of.get(func)
        if own is not None:
            own = own.copy()
            for switch in ("no_compile", "no_cpython_wrapper", "no_cfunc_wrapper", "nrt"):
                setattr(own, switch, getattr(flags, switch))
            flags = own
        return compile_extra(typingctx, targetctx, func, args, return_type, flags, **kw)

    pycc_compiler.compile_extra = with_kernel_flags
    try:
        cc.compile()
    finally:
        pycc_compiler.compile_extra = compile_extra
    built = sorted(out.glob(f"{MODULE}.*"))
    built = [p for p in built if p.suffix in (".so", ".pyd", ".dylib")]
    if not built:
        raise AotError(f"numba.pycc wrote no {MODULE} extension module into {out}")
    manifest["module"] = built[0].name
    (out / "aot-kernels.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def check_return_types() -> None:
    """Every kernel must return nothing: the AOT exports are compiled as ``void``."""
    for module, qualname, dispatcher in kernels():
        for sig in dispatcher.nopython_signatures:
            if str(sig.return_type) != "none":
                raise AotError(
                    f"{module}.{qualname} returns {sig.return_type}: AOT kernels return None"
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="packaging/aot.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where the module goes")
    parser.add_argument(
        "--cpu",
        default=DEFAULT_CPU.get(platform.machine(), "generic"),
        help="the CPU to compile for, as LLVM names it (default: %(default)s; 'host': this one)",
    )
    parser.add_argument(
        "--models",
        type=Path,
        default=Path.home() / ".cache" / "qhybrid" / "models",
        help="real GGUF models to warm up on too (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="aot: %(message)s")
    logging.getLogger("qhybrid").setLevel(logging.WARNING)  # not each model's load
    logging.getLogger("gguf").setLevel(logging.WARNING)
    sys.path.insert(0, str(REPO_ROOT))
    try:
        jit = importlib.import_module("qhybrid.runtime.llm._jit")
        if jit.mode() != "jit":
            raise AotError("numba is not importable here: install it (pip install numba)")
        started = time.monotonic()
        runs = warm_up(args.models)
        check_return_types()
        logger.info("warm-up: %d model runs, %.0f s", runs, time.monotonic() - started)
        args.out.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        manifest = compile_kernels(args.out, args.cpu)
    except AotError as exc:
        print(f"packaging/aot.py: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    count = sum(len(v) for v in manifest["kernels"].values())
    logger.info(
        "%s: %d kernels, %d variants, for %s, %.0f s",
        args.out / manifest["module"],
        len(manifest["kernels"]),
        count,
        args.cpu,
        time.monotonic() - started,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
