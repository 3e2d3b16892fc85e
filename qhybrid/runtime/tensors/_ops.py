"""Tensor operations by name: shape rules and the numpy implementation.

The same table serves validation (a scenario's task shapes are checked before anything runs),
CPU tasks in worker processes, and the GPU thread's CPU fallback, so every placement computes
the same thing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Shape = tuple[int, ...]
Params = Mapping[str, float]


class OpError(ValueError):
    """Inputs that an op cannot take (wrong count, shape or dtype)."""


@dataclass(frozen=True, slots=True)
class OpSpec:
    """One operation: how many inputs, the output's shape and dtype, and numpy's way to do it."""

    name: str
    arity: int
    params: tuple[str, ...]
    infer: Callable[[Sequence[Shape], Sequence[str], Params], tuple[Shape, str]]
    run: Callable[[Sequence[npt.NDArray[Any]], npt.NDArray[Any], Params], None]
    doc: str

    def check(
        self, shapes: Sequence[Shape], dtypes: Sequence[str], params: Params | None = None
    ) -> tuple[Shape, str]:
        """The output's (shape, dtype), or :class:`OpError` saying what is wrong."""
        params = params or {}
        if len(shapes) != self.arity:
            raise OpError(f"{self.name} takes {self.arity} inputs, got {len(shapes)}")
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            allowed = ", ".join(self.params) or "none"
            raise OpError(f"{self.name} has no parameter {unknown[0]!r} (allowed: {allowed})")
        for dt in dtypes:
            if np.dtype(dt) != np.float32:
                raise OpError(f"{self.name} takes float32 tensors, got {np.dtype(dt).name}")
        return self.infer(shapes, dtypes, params)


def _matmul_infer(
    shapes: Sequence[Shape], dtypes: Sequence[str], params: Params
) -> tuple[Shape, str]:
    a, b = shapes
    if len(a) != 2 or len(b) != 2:
        raise OpError(f"matmul takes two 2-D tensors, got shapes {list(a)} and {list(b)}")
    if a[1] != b[0]:
        raise OpError(f"matmul inner dimensions differ: {list(a)} @ {list(b)}")
    return (a[0], b[1]), np.dtype(np.float32).str


def _matmul_run(inputs: Sequence[npt.NDArray[Any]], out: npt.NDArray[Any], params: Params) -> None:
    np.matmul(inputs[0], inputs[1], out=out)


def _same_shape_infer(
    shapes: Sequence[Shape], dtypes: Sequence[str], params: Params
) -> tuple[Shape, str]:
    first = shapes[0]
    for other in shapes[1:]:
        if other != first:
            raise OpError(f"shapes differ: {list(first)} and {list(other)}")
    return first, np.dtype(np.float32).str


def _add_run(inputs: Sequence[npt.NDArray[Any]], out: npt.NDArray[Any], params: Params) -> None:
    np.add(inputs[0], inputs[1], out=out)


def _mul_run(inputs: Sequence[npt.NDArray[Any]], out: npt.NDArray[Any], params: Params) -> None:
    np.multiply(inputs[0], inputs[1], out=out)


def _scale_run(inputs: Sequence[npt.NDArray[Any]], out: npt.NDArray[Any], params: Params) -> None:
    np.multiply(inputs[0], np.float32(params.get("factor", 1.0)), out=out)


def _relu_run(inputs: Sequence[npt.NDArray[Any]], out: npt.NDArray[Any], params: Params) -> None:
    np.maximum(inputs[0], np.float32(0.0), out=out)


def _silu_run(inputs: Sequence[npt.NDArray[Any]], out: npt.NDArray[Any], params: Params) -> None:
    x = inputs[0]
    np.divide(x, np.float32(1.0) + np.exp(-x), out=out)


_GELU_C = np.float32(0.7978845608028654)  # sqrt(2 / pi)


def _gelu_run(inputs: Sequence[npt.NDArray[Any]], out: npt.NDArray[Any], params: Params) -> None:
    x = inputs[0]
    inner = _GELU_C * (x + np.float32(0.044715) * x * x * x)
    np.multiply(np.float32(0.5) * x, np.float32(1.0) + np.tanh(inner), out=out)


def _softmax_run(inputs: Sequence[npt.NDArray[Any]], out: npt.NDArray[Any], params: Params) -> None:
    z = inputs[0] * np.float32(params.get("factor", 1.0))
    if z.size == 0:
        return
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    np.divide(e, e.sum(axis=-1, keepdims=True), out=out)


def _rmsnorm_infer(
    shapes: Sequence[Shape], dtypes: Sequence[str], params: Params
) -> tuple[Shape, str]:
    x, w = shapes
    if not x or w != x[-1:]:
        raise OpError(f"rmsnorm takes x[..., D] and weight[D], got {list(x)} and {list(w)}")
    return x, np.dtype(np.float32).str


def _rmsnorm_run(inputs: Sequence[npt.NDArray[Any]], out: npt.NDArray[Any], params: Params) -> None:
    x, w = inputs
    ms = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
    np.multiply(x / np.sqrt(ms + np.float32(params.get("eps", 1e-6))), w, out=out)


OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec("matmul", 2, (), _matmul_infer, _matmul_run, "matrix product a[M,K] @ b[K,N]"),
        OpSpec("add", 2, (), _same_shape_infer, _add_run, "elementwise a + b"),
        OpSpec("mul", 2, (), _same_shape_infer, _mul_run, "elementwise a * b"),
        OpSpec("scale", 1, ("factor",), _same_shape_infer, _scale_run, "a * factor"),
        OpSpec("relu", 1, (), _same_shape_infer, _relu_run, "max(a, 0)"),
        OpSpec("silu", 1, (), _same_shape_infer, _silu_run, "a * sigmoid(a)"),
        OpSpec("gelu", 1, (), _same_shape_infer, _gelu_run, "GELU, tanh approximation"),
        OpSpec(
            "softmax", 1, ("factor",), _same_shape_infer, _softmax_run, "softmax(a * factor), rows"
        ),
        OpSpec("rmsnorm", 2, ("eps",), _rmsnorm_infer, _rmsnorm_run, "RMSNorm of rows times w"),
    )
}


def get_op(name: str) -> OpSpec:
    """The op called ``name``, or :class:`OpError` listing the known ones."""
    try:
        return OPS[name]
    except KeyError:
        raise OpError(f"unknown op {name!r} (known: {', '.join(sorted(OPS))})") from None


def run_numpy(
    name: str,
    inputs: Sequence[npt.NDArray[Any]],
    out: npt.NDArray[Any],
    params: Params | None = None,
) -> None:
    """Compute op ``name`` into ``out`` with numpy, after checking shapes."""
    spec = get_op(name)
    shape, _ = spec.check([tuple(a.shape) for a in inputs], [a.dtype.str for a in inputs], params)
    if tuple(out.shape) != shape:
        raise OpError(f"{name}: output has shape {list(out.shape)}, expected {list(shape)}")
    spec.run(inputs, out, params or {})
