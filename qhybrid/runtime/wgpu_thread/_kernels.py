"""The WGSL kernels: which op runs on which shader, its parameters and its grid of workgroups.

The shader sources are ``.wgsl`` files next to this module (inside the package, so a wheel
carries them). ``elementwise.wgsl`` is one template specialised per op by substituting the
op's expression. Nothing here touches wgpu: the GPU backend compiles what this module describes.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import Literal

Shape = tuple[int, ...]

#: Invocations per workgroup of the elementwise kernel (its ``@workgroup_size``).
ELEMENTWISE_WORKGROUP = 256
#: Tile edge of the matmul kernel (its ``@workgroup_size`` is TILE x TILE).
MATMUL_TILE = 16
#: Bytes of every kernel's uniform parameter block (four 32-bit words).
PARAMS_NBYTES = 16


@dataclass(frozen=True, slots=True)
class Kernel:
    """One op's compute shader: its source, how many inputs it binds, and its family."""

    op: str
    family: Literal["matmul", "elementwise"]
    arity: int
    source: str

    # Binding numbers, fixed by the .wgsl files.
    @property
    def input_bindings(self) -> tuple[int, ...]:
        if self.family == "matmul":
            return (0, 1)
        return (0, 3)[: self.arity]

    @property
    def output_binding(self) -> int:
        return 2 if self.family == "matmul" else 1

    @property
    def params_binding(self) -> int:
        return 3 if self.family == "matmul" else 2

    def pack_params(self, shapes: Sequence[Shape], params: Mapping[str, float]) -> bytes:
        """The uniform block: (M, N, K, 0) for matmul, (count, factor, 0, 0) otherwise."""
        if self.family == "matmul":
            (m, k), (_, n) = shapes[0], shapes[1]
            return struct.pack("<4I", m, n, k, 0)
        count = math.prod(shapes[0])
        # "<f" rounds the factor to float32 exactly as numpy's np.float32(factor) does.
        return struct.pack("<IfII", count, float(params.get("factor", 1.0)), 0, 0)

    def grid(self, shapes: Sequence[Shape], max_per_dim: int) -> tuple[int, int, int] | None:
        """Workgroups to dispatch, or None if the tensor is too big for one dispatch."""
        if self.family == "matmul":
            (m, _), (_, n) = shapes[0], shapes[1]
            x, y = -(-n // MATMUL_TILE), -(-m // MATMUL_TILE)
        else:
            groups = -(-math.prod(shapes[0]) // ELEMENTWISE_WORKGROUP)
            # Fold into 2-D when one dimension is not enough; the shader rebuilds the index.
            x = min(groups, max_per_dim)
            y = -(-groups // x) if x else 0
        if x > max_per_dim or y > max_per_dim:
            return None
        return (x, y, 1)


# The expression each elementwise op computes for element i; ``relu`` is defined in the template.
_ELEMENTWISE: dict[str, tuple[int, str]] = {
    "add": (2, "a[i] + b[i]"),
    "mul": (2, "a[i] * b[i]"),
    "scale": (1, "a[i] * params.factor"),
    "relu": (1, "relu(a[i])"),
}

_B_DECLARATION = "@group(0) @binding(3) var<storage, read> b: array<f32>;"


def _read_shader(name: str) -> str:
    return (
        resources.files(__package__ or "qhybrid.runtime.wgpu_thread")
        .joinpath(name)
        .read_text(encoding="utf-8")
    )


@functools.cache
def get_kernel(op: str) -> Kernel | None:
    """The GPU kernel for ``op``, or None when the op has none (it then runs with numpy)."""
    if op == "matmul":
        return Kernel("matmul", "matmul", 2, _read_shader("matmul.wgsl"))
    if op in _ELEMENTWISE:
        arity, expr = _ELEMENTWISE[op]
        template = Template(_read_shader("elementwise.wgsl"))
        source = template.substitute(inputs=_B_DECLARATION if arity == 2 else "", expr=expr)
        return Kernel(op, "elementwise", arity, source)
    return None


def gpu_ops() -> tuple[str, ...]:
    """The ops that have a GPU kernel."""
    return ("matmul", *_ELEMENTWISE)
