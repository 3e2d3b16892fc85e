#!/usr/bin/env python3
"""Compile the LLM CPU path's numba kernels ahead of time, for the frozen app.

    python packaging/aot.py --out DIR [--cpu x86-64-v3] [--models DIR]

numba compiles the CPU path's kernels (``qhybrid/runtime/llm/_cpu_*.py``) on the user's CPU at
first use, through LLVM: llvmlite's library is 170 MiB, 38 MiB compressed, about a third of an
installer. The frozen app does without it: this script runs the CPU path on small random models
of every quant type and architecture, on the shipped demo model and on the real models in
``--models`` (default: qhybrid's model cache), so that numba compiles every kernel with every
argument signature the CPU path uses, then compiles those with ``numba.pycc`` for a baseline
CPU (``--cpu``; ``x86-64-v3`` is AVX2 and FMA, Haswell and later, on x86_64) into
``DIR/_aot_kernels<suffix>`` and ``DIR/aot-kernels.json``.

The work is :mod:`qhybrid.runtime.llm._aot_build`'s, which also builds a pip install's cache
of the same kernels for the host CPU (``--cache``; see :mod:`qhybrid.runtime.llm._aot_cache`).
At run time ``qhybrid.runtime.llm._jit`` uses the bundled module when numba is absent (the
spec leaves numba and llvmlite out when packaging/build.py passes it the module). Needs a C
compiler (numba.pycc builds a small C wrapper).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO_ROOT))
    from qhybrid.runtime.llm._aot_build import main as build_main

    argv = sys.argv[1:] if argv is None else argv
    if "--out" not in argv and not any(a.startswith("--out=") for a in argv):
        sys.stderr.write("packaging/aot.py: --out DIR is required\n")
        return 2
    return build_main(argv, default_models=Path.home() / ".cache" / "qhybrid" / "models")


if __name__ == "__main__":
    sys.exit(main())
