"""Which compiled variant of a kernel takes these arguments: numba's typing, redone in Python
for the kernels compiled ahead of time.

An export of ``numba.pycc`` checks its arguments only as far as an array's item size, and its
error path then crashes the process: given another dtype of the same size, another number of
dimensions, a strided view where it was compiled for a C-contiguous array, a read-only array
it writes to, or a constant other than the one it was compiled for, it computes garbage or
dies of SIGSEGV (measured with numba 0.68). So each variant gets a check built from its
signature (:func:`spec_of`, written into the manifest at build time) and generated as straight
Python code (:func:`make_check`): 0.3-0.8 us a call, 2.8 us for the 30 arguments of the
fused attention (measured, best of 7), about 3% of a SmolLM2 decode step; the compiled call
skips numba's dispatcher, which spends about as much typing the same arguments, so the decode
rate stays the JIT's (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["ArgSpec", "make_check", "spec_of"]

#: One argument of a compiled signature: ``["array", dtype.str, ndim, layout, readonly]``,
#: ``["literal", value]``, ``["scalar", "bool" | "int" | "float"]`` or ``["other", text]``.
ArgSpec = list[Any]


def spec_of(numba_type: Any) -> ArgSpec:
    """The :data:`ArgSpec` of one numba argument type (build side: numba is imported)."""
    from numba.core import types as nt
    from numba.np import numpy_support

    if isinstance(numba_type, nt.Array):
        dtype = numpy_support.as_dtype(numba_type.dtype).str
        return ["array", dtype, numba_type.ndim, numba_type.layout, not numba_type.mutable]
    if isinstance(numba_type, nt.Literal):
        return ["literal", numba_type.literal_value]
    if isinstance(numba_type, nt.Boolean):
        return ["scalar", "bool"]
    if isinstance(numba_type, nt.Integer):
        return ["scalar", "int"]
    if isinstance(numba_type, nt.Float):
        return ["scalar", "float"]
    return ["other", str(numba_type)]


_SCALARS: dict[str, tuple[type, ...]] = {
    "bool": (bool, np.bool_),
    "int": (int, np.integer),
    "float": (float, int, np.floating, np.integer),
}


def make_check(specs: list[ArgSpec]) -> Callable[[tuple[Any, ...]], bool] | None:
    """A function telling whether a call's arguments fit the variant compiled for ``specs``,
    or None where a type cannot be checked here (that variant is then never chosen)."""
    env: dict[str, Any] = {"_nd": np.ndarray}
    lines = ["def fits(args):", f"    if len(args) != {len(specs)}:", "        return False"]
    for i, spec in enumerate(specs):
        kind = spec[0]
        if kind == "array":
            _, dtype, ndim, layout, readonly = spec
            env[f"D{i}"] = np.dtype(dtype)
            # (no isinstance: what is not an array has no .ndim, caught below)
            lines += [
                f"    a = args[{i}]",
                f"    if a.ndim != {int(ndim)}:",
                "        return False",
                "    d = a.dtype",
                f"    if d is not D{i} and (d != D{i} or not isinstance(a, _nd)):",
                "        return False",
            ]
            need = []
            if layout == "C":
                need.append("f.c_contiguous")
            elif layout == "F":
                need.append("f.f_contiguous")
            elif layout != "A":
                return None
            if not readonly:  # the variant may write to it
                need.append("f.writeable")
            if need:
                lines += ["    f = a.flags", f"    if not ({' and '.join(need)}):"]
                lines.append("        return False")
        elif kind == "literal":
            env[f"L{i}"] = spec[1]
            env["_bools"] = (bool, np.bool_)
            lines += [
                f"    a = args[{i}]",
                f"    if a != L{i} or isinstance(a, _bools) != {isinstance(spec[1], bool)}:",
                "        return False",
            ]
        elif kind == "scalar" and spec[1] in _SCALARS:
            env[f"S{i}"] = _SCALARS[spec[1]]
            lines += [f"    if not isinstance(args[{i}], S{i}):", "        return False"]
            if spec[1] != "bool":  # a Python bool is an int, but numba types it as bool
                env["_bools"] = (bool, np.bool_)
                lines += [f"    if isinstance(args[{i}], _bools):", "        return False"]
        else:
            return None
    lines.append("    return True")
    body = "\n".join("    " + line for line in lines[1:])
    code = f"{lines[0]}\n    try:\n{body}\n    except AttributeError:\n        return False\n"
    exec(code, env)  # code generated from our own manifest
    check: Callable[[tuple[Any, ...]], bool] = env["fits"]
    return check
