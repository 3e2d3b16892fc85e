"""The WGSL kernel library: one source per kernel, specialised per weight format and feature.

Shader sources are ``.wgsl`` files next to this module (inside the package, so a wheel carries
them); ``string.Template`` fills in the parts that vary: the weight format's ``load4`` (the
sections of ``quant.wgsl``), the reduction (subgroup operations or workgroup memory, the
sections of ``reduce.wgsl``), ``enable f16;`` and the f16 weight binding. Each
:class:`KernelSpec` says what the kernel binds, so the backend can build an explicit pipeline
layout with a dynamic-offset uniform at binding 0. Nothing here touches wgpu.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import Literal

Access = Literal["read", "write"]

#: Workgroups per grid dimension that WebGPU guarantees.
MAX_GROUPS = 65535
#: Rows of x that the matrix x vector kernel takes at once (its MAX_M).
MV_MAX_M = 8
#: Output rows per workgroup of the matrix x vector kernel.
MV_ROWS = 4
#: Output tile edge of the tiled matrix product.
MM_TILE = 64
#: Largest head size the attention kernel takes.
ATTENTION_MAX_D = 256
#: Largest k of the top-k and sampling kernels (the reference's SAMPLE_MAX_K).
SELECT_MAX_K = 64
#: Bytes of every kernel's uniform parameter block.
PARAMS_NBYTES = 64


@dataclass(frozen=True, slots=True)
class Variant:
    """Device features a kernel is specialised for."""

    f16: bool = False
    subgroups: bool = False


@dataclass(frozen=True, slots=True)
class KernelSpec:
    """One specialised kernel: its source and the access mode of bindings 1..n (0 is params)."""

    key: tuple[str, ...]
    source: str
    bindings: tuple[Access, ...]

    @property
    def label(self) -> str:
        return ":".join(self.key)


def _read(name: str) -> str:
    return (
        resources.files(__package__ or "qhybrid.runtime.wgpu_thread")
        .joinpath(name)
        .read_text(encoding="utf-8")
    )


def _sections(name: str) -> tuple[str, dict[str, str]]:
    """A file's common prelude and its ``//@ name`` sections."""
    text = _read(name)
    parts = re.split(r"^//@ (\w+)\n", text, flags=re.MULTILINE)
    prelude = parts[0]
    return prelude, {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


@functools.cache
def _quant(qtype: str, f16: bool) -> tuple[str, str, str]:
    """(enables, weight binding declaration at binding 2, load4 source) for a weight format."""
    prelude, sections = _sections("quant.wgsl")
    if qtype == "f16" and f16:
        return (
            "enable f16;",
            "@group(0) @binding(2) var<storage, read> wh: array<f16>;",
            sections["f16_native"],
        )
    enables = "enable f16;" if f16 else ""
    declaration = "@group(0) @binding(2) var<storage, read> w: array<u32>;"
    return enables, declaration, prelude + sections[qtype]


@functools.cache
def _reduce(subgroups: bool) -> tuple[str, str, str]:
    """(reduction source, entry-point parameters, their initialisation)."""
    prelude, sections = _sections("reduce.wgsl")
    if subgroups:
        return (
            prelude + sections["subgroups"],
            "@builtin(subgroup_invocation_id) sg_lane_in: u32, "
            "@builtin(subgroup_size) sg_size_in: u32,",
            "sg_lane = sg_lane_in; sg_size = sg_size_in;",
        )
    return prelude + sections["shared"], "", ""


_MV_REDUCE_SHARED = """
    for (var i: u32 = 0u; i < SUMS; i = i + 1u) {
        partial[i * WG + lid] = acc[i];
    }
    workgroupBarrier();
    if (lid < SUMS) {
        let row = row0 + lid / MAX_M;
        let m = lid % MAX_M;
        var s = 0.0;
        for (var t: u32 = 0u; t < WG; t = t + 1u) {
            s = s + partial[lid * WG + t];
        }
        if (row < n_count && m < m_count) {
            y[m * params.y_stride + params.row0 + row] = s;
        }
    }
"""

_MV_REDUCE_SUBGROUPS = """
    // At least 4 invocations per subgroup (WebGPU's minimum): at most 16 subgroups.
    let n_sg = WG / sg_size;
    let sg = lid / sg_size;
    for (var i: u32 = 0u; i < SUMS; i = i + 1u) {
        let s = subgroupAdd(acc[i]);
        if (sg_lane == 0u) {
            partial[i * 16u + sg] = s;
        }
    }
    workgroupBarrier();
    if (lid < SUMS) {
        let row = row0 + lid / MAX_M;
        let m = lid % MAX_M;
        var s = 0.0;
        for (var t: u32 = 0u; t < n_sg; t = t + 1u) {
            s = s + partial[lid * 16u + t];
        }
        if (row < n_count && m < m_count) {
            y[m * params.y_stride + params.row0 + row] = s;
        }
    }
"""

_MM_LOAD_WEIGHT = """
        // W: 64 rows x 32 k as 512 groups of 4, 2 per invocation, dequantized by load4.
        for (var i: u32 = 0u; i < 2u; i = i + 1u) {
            let g = lid + i * 256u;
            let nn = g / 8u;
            let kk = (g % 8u) * 4u;
            var v = vec4<f32>(0.0);
            if (n0 + nn < n_count && k0 + kk < k_count) {
                v = load4((n0 + nn) * params.row_bytes, k0 + kk, k_count);
            }
            tile_b[kk * TN + nn] = v.x;
            tile_b[(kk + 1u) * TN + nn] = v.y;
            tile_b[(kk + 2u) * TN + nn] = v.z;
            tile_b[(kk + 3u) * TN + nn] = v.w;
        }
"""

_MM_LOAD_MATRIX = """
        // b: 32 k x 64 columns, 8 per invocation; consecutive invocations read consecutive n.
        for (var i: u32 = 0u; i < 8u; i = i + 1u) {
            let e = lid + i * 256u;
            let kk = e / TN;
            let nn = e % TN;
            var v = 0.0;
            if (k0 + kk < k_count && n0 + nn < n_count) {
                v = b[(k0 + kk) * n_count + n0 + nn];
            }
            tile_b[kk * TN + nn] = v;
        }
"""


@functools.cache
def linear_mv(qtype: str, variant: Variant) -> KernelSpec:
    """``y[M, N] = x[M, K] @ W^T`` for M <= :data:`MV_MAX_M`, W in ``qtype``."""
    f16 = variant.f16 and qtype == "f16"
    enables, weight, quant = _quant(qtype, f16)
    sg = variant.subgroups
    source = Template(_read("linear_mv.wgsl")).substitute(
        qtype=qtype,
        enables=enables,
        weight=weight,
        quant=quant,
        partial_size="512" if sg else "2048",
        sg_params=(
            "@builtin(subgroup_invocation_id) sg_lane: u32, @builtin(subgroup_size) sg_size: u32,"
            if sg
            else ""
        ),
        reduce=_MV_REDUCE_SUBGROUPS if sg else _MV_REDUCE_SHARED,
    )
    key = ("linear_mv", qtype, "f16" if f16 else "f32", "sg" if sg else "wg")
    return KernelSpec(key, source, ("read", "read", "write"))


@functools.cache
def linear_mm(qtype: str, variant: Variant) -> KernelSpec:
    """``c[M, N] = a[M, K] @ W^T``, tiled; ``qtype`` ``"matrix"`` is the plain ``a @ b[K, N]``."""
    if qtype == "matrix":
        enables, quant = "", ""
        weight = "@group(0) @binding(2) var<storage, read> b: array<f32>;"
        what = "B is a plain row-major b[K, N] (the matmul op)."
        load_b = _MM_LOAD_MATRIX
        f16 = False
    else:
        f16 = variant.f16 and qtype == "f16"
        enables, weight, quant = _quant(qtype, f16)
        what = f"B is W^T, W[N, K] stored as {qtype} and dequantized while staged."
        load_b = _MM_LOAD_WEIGHT
    source = Template(_read("linear_mm.wgsl")).substitute(
        what=what, enables=enables, weight=weight, quant=quant, load_b=load_b
    )
    key = ("linear_mm", qtype, "f16" if f16 else "f32")
    return KernelSpec(key, source, ("read", "read", "write"))


@functools.cache
def get_rows(qtype: str, variant: Variant) -> KernelSpec:
    f16 = variant.f16 and qtype == "f16"
    enables, weight, quant = _quant(qtype, f16)
    weight = weight.replace("@binding(2)", "@binding(1)")
    source = Template(_read("get_rows.wgsl")).substitute(
        qtype=qtype, enables=enables, weight=weight, quant=quant
    )
    key = ("get_rows", qtype, "f16" if f16 else "f32")
    return KernelSpec(key, source, ("read", "read", "write"))


#: Elementwise ops: (arity, expression over a[i], b[i % b_count] and params).
ELEMENTWISE: dict[str, tuple[int, str]] = {
    "add": (2, "a[i] + b[i % params.b_count]"),
    "mul": (2, "a[i] * b[i % params.b_count]"),
    "silu_mul": (2, "silu(a[i]) * b[i % params.b_count]"),
    "scale": (1, "a[i] * params.factor"),
    "relu": (1, "relu(a[i])"),
    "silu": (1, "silu(a[i])"),
    "gelu": (1, "gelu(a[i])"),
    # GeGLU (gemma's FFN) and soft-capping (gemma2's logits): factor * tanh(a / factor).
    "gelu_mul": (2, "gelu(a[i]) * b[i % params.b_count]"),
    "softcap": (1, "params.factor * tanh(clamp(a[i] / params.factor, -10.0, 10.0))"),
}


@functools.cache
def elementwise(op: str, inplace: bool = False) -> KernelSpec:
    """``op``'s kernel; ``inplace`` writes into ``a``'s buffer (bound once, read_write)."""
    arity, expr = ELEMENTWISE[op]
    b = "@group(0) @binding(2) var<storage, read> b: array<f32>;" if arity == 2 else ""
    source = Template(_read("elementwise.wgsl")).substitute(
        inputs=b, expr=expr.replace("a[i]", "dst[i]") if inplace else expr
    )
    dst = "@binding(3) var<storage, read_write> dst"
    a = "@group(0) @binding(1) var<storage, read> a: array<f32>;"
    # Binding numbers stay contiguous from 1: [a,] [b,] dst.
    if inplace:
        source = source.replace(a, "").replace(
            "@binding(2) var<storage, read> b", "@binding(1) var<storage, read> b"
        )
        source = source.replace(
            dst,
            "@binding(2) var<storage, read_write> dst"
            if arity == 2
            else "@binding(1) var<storage, read_write> dst",
        )
    elif arity == 1:
        source = source.replace(dst, "@binding(2) var<storage, read_write> dst")
    access: tuple[Access, ...] = ("read", "write")
    if arity == 2:
        access = ("read", "write") if inplace else ("read", "read", "write")
    elif inplace:
        access = ("write",)
    return KernelSpec(("elementwise", op, "inplace" if inplace else "copy"), source, access)


def _row_kernel(name: str, variant: Variant, bindings: tuple[Access, ...]) -> KernelSpec:
    reduce, sg_params, sg_init = _reduce(variant.subgroups)
    source = Template(_read(f"{name}.wgsl")).substitute(
        enables="", reduce=reduce, sg_params=sg_params, sg_init=sg_init
    )
    return KernelSpec((name, "sg" if variant.subgroups else "wg"), source, bindings)


@functools.cache
def softmax(variant: Variant) -> KernelSpec:
    return _row_kernel("softmax", variant, ("read", "write"))


@functools.cache
def norm(variant: Variant) -> KernelSpec:
    return _row_kernel("norm", variant, ("read", "read", "read", "write"))


@functools.cache
def attention(variant: Variant) -> KernelSpec:
    return _row_kernel("attention", variant, ("read",) * 5 + ("write",))


@functools.cache
def rope(inplace: bool) -> KernelSpec:
    if inplace:
        bindings = "@group(0) @binding(3) var<storage, read_write> dst: array<f32>;"
        src, tail, note = "dst", "", "This variant works in place (x is dst)."
        access: tuple[Access, ...] = ("read", "read", "write")
    else:
        bindings = (
            "@group(0) @binding(3) var<storage, read> x: array<f32>;\n"
            "@group(0) @binding(4) var<storage, read_write> dst: array<f32>;"
        )
        src, note = "x", "This variant writes a separate output."
        tail = (
            "let j = base + params.n_dims + 2u * (i - half);\n"
            "        dst[j] = x[j];\n        dst[j + 1u] = x[j + 1u];"
        )
        access = ("read", "read", "read", "write")
    source = Template(_read("rope.wgsl")).substitute(
        bindings=bindings, src=src, copy_tail=tail, inplace_note=note
    )
    return KernelSpec(("rope", "inplace" if inplace else "copy"), source, access)


@functools.cache
def kv_store() -> KernelSpec:
    return KernelSpec(("kv_store",), _read("kv_store.wgsl"), ("read", "read", "read", "write"))


@functools.cache
def repeat_penalty() -> KernelSpec:
    return KernelSpec(("repeat_penalty",), _read("repeat_penalty.wgsl"), ("read", "read", "write"))


_SELECT: dict[str, tuple[int, str, str, str, tuple[Access, ...]]] = {
    "argmax": (
        0,
        "@group(0) @binding(2) var<storage, read_write> out_i: array<u32>;",
        "k = 1u;",
        "out_i[row] = pick_i[0];",
        ("read", "write"),
    ),
    "topk": (
        1,
        "@group(0) @binding(2) var<storage, read_write> out_v: array<f32>;\n"
        "@group(0) @binding(3) var<storage, read_write> out_i: array<u32>;",
        "",
        "for (var r: u32 = 0u; r < k; r = r + 1u) {\n"
        "        out_v[row * params.k + r] = pick_v[r];\n"
        "        out_i[row * params.k + r] = pick_i[r];\n    }",
        ("read", "write", "write"),
    ),
    "sample": (
        2,
        "@group(0) @binding(2) var<storage, read> uniform_u: array<f32>;\n"
        "@group(0) @binding(3) var<storage, read> temps: array<f32>;\n"
        "@group(0) @binding(4) var<storage, read> top_ks: array<i32>;\n"
        "@group(0) @binding(5) var<storage, read> top_ps: array<f32>;\n"
        "@group(0) @binding(6) var<storage, read_write> out_t: array<u32>;",
        """var temp = params.temperature;
    if ((params.flags & 1u) != 0u) {
        temp = temps[row];
    }
    var tk = i32(params.k);
    if ((params.flags & 2u) != 0u) {
        tk = top_ks[row];
    }
    k = select(u32(max(tk, 0)), MAX_K, tk <= 0);
    if (temp <= 0.0) {
        k = 1u;
    }""",
        """if (temp <= 0.0) {
        out_t[row] = pick_i[0];
        return;
    }
    var top_p = params.top_p;
    if ((params.flags & 4u) != 0u) {
        top_p = top_ps[row];
    }
    // The reference: softmax(values * (1 / temperature)), cumulative sums in order, top-p
    // keeps the shortest prefix reaching top_p, the pick is the first cumulative sum above
    // u times the kept total.
    let f = 1.0 / temp;
    let mx = pick_v[0] * f;
    var total = 0.0;
    for (var r: u32 = 0u; r < k; r = r + 1u) {
        total = total + exp(pick_v[r] * f - mx);
    }
    var cum: array<f32, 64>;
    var run = 0.0;
    var keep = k;
    for (var r: u32 = 0u; r < k; r = r + 1u) {
        run = run + exp(pick_v[r] * f - mx) / total;
        cum[r] = run;
        if (keep == k && run >= top_p) {
            keep = r + 1u;
        }
    }
    keep = max(keep, 1u);
    let target_sum = uniform_u[row] * cum[keep - 1u];
    var j = 0u;
    while (j < keep && cum[j] <= target_sum) {
        j = j + 1u;
    }
    out_t[row] = pick_i[min(j, keep - 1u)];""",
        ("read", "read", "read", "read", "read", "write"),
    ),
}


@functools.cache
def select(mode: str) -> KernelSpec:
    """``argmax``, ``topk`` or ``sample`` (see select.wgsl)."""
    number, bindings, row_setup, finish, access = _SELECT[mode]
    source = Template(_read("select.wgsl")).substitute(
        mode=str(number), bindings=bindings, row_setup=row_setup, finish=finish
    )
    return KernelSpec(("select", mode), source, access)
