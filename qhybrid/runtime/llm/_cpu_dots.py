"""The int8 dot products of the CPU path's decode kernels: numba intrinsics written in LLVM IR.

Each sums 16 or 32 products of weights rebuilt from a GGUF block's bytes with int8 activations,
in int32, as one vector multiply and one reduction (LLVM lowers them to the CPU's widening
multiply-adds; numba's own loops over int8 did not vectorize this well). Integer sums: exact,
whatever the order.

- :data:`dot_i8` ``sum(a[ao + j] * b[bo + j])`` of two int8 arrays (Q8_0 weights);
- :data:`dot_nibbles` a Q4_0/Q4_1/Q5_0/Q5_1 block: low nibbles then high nibbles of 16 bytes,
  plus a fifth bit from a 32-bit word (0 for the 4-bit formats);
- :data:`dot_planes32` / :data:`dot_planes16` a K-quant sub-block: 4 low bits from one run of
  bytes and high bits from another (Q4_K: none, Q5_K: 1, Q6_K: 2), less a bias.
"""

from __future__ import annotations

from typing import Any

from qhybrid.runtime.llm._jit import intrinsic, ir, types


def _int(bits: int) -> Any:
    # (made when a kernel is compiled: in the frozen app llvmlite is not there at all)
    return ir.IntType(bits)


def _vec(builder: Any, context: Any, array_type: Any, array: Any, offset: Any, lanes: int) -> Any:
    """``lanes`` bytes of ``array`` from ``offset``, as an i8 vector (unaligned)."""
    arr = context.make_array(array_type)(context, builder, array)
    ptr = builder.bitcast(
        builder.gep(arr.data, [offset]), ir.VectorType(_int(8), lanes).as_pointer()
    )
    return builder.load(ptr, align=1)


def _splat(builder: Any, value: Any, lanes: int) -> Any:
    """An integer as an i32 vector of ``lanes`` copies."""
    v32 = ir.VectorType(_int(32), lanes)
    one = builder.insert_element(
        ir.Constant(v32, None), builder.trunc(value, _int(32)), _int(32)(0)
    )
    return builder.shuffle_vector(one, ir.Constant(v32, None), ir.Constant(v32, [0] * lanes))


def _sum(builder: Any, vector: Any, lanes: int) -> Any:
    """The i32 sum of an i32 vector."""
    v32 = ir.VectorType(_int(32), lanes)
    name = f"llvm.vector.reduce.add.v{lanes}i32"
    fn = builder.module.globals.get(name) or ir.Function(
        builder.module, ir.FunctionType(_int(32), [v32]), name
    )
    return builder.call(fn, [vector])


@intrinsic
def _dot32_i8(typingctx: Any, a: Any, ao: Any, b: Any, bo: Any) -> Any:
    sig = types.int32(a, types.intp, b, types.intp)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        a_arr, a_off, b_arr, b_off = args
        v32 = ir.VectorType(_int(32), 32)
        pa = builder.sext(_vec(builder, context, signature.args[0], a_arr, a_off, 32), v32)
        pb = builder.sext(_vec(builder, context, signature.args[2], b_arr, b_off, 32), v32)
        return _sum(builder, builder.mul(pa, pb), 32)

    return sig, codegen


@intrinsic
def _dot32_nibbles(typingctx: Any, w: Any, wo: Any, qh: Any, x: Any, xo: Any) -> Any:
    sig = types.int32(w, types.intp, types.int64, x, types.intp)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        w_arr, w_off, qh_bits, x_arr, x_off = args
        v16i8, v32 = ir.VectorType(_int(8), 16), ir.VectorType(_int(32), 32)
        raw = _vec(builder, context, signature.args[0], w_arr, w_off, 16)
        lo = builder.and_(raw, ir.Constant(v16i8, [15] * 16))
        hi = builder.lshr(raw, ir.Constant(v16i8, [4] * 16))
        q = builder.zext(builder.shuffle_vector(lo, hi, ir.Constant(v32, list(range(32)))), v32)
        bits = builder.lshr(_splat(builder, qh_bits, 32), ir.Constant(v32, list(range(32))))
        fifth = builder.and_(bits, ir.Constant(v32, [1] * 32))
        q = builder.or_(q, builder.shl(fifth, ir.Constant(v32, [4] * 32)))
        xs = builder.sext(_vec(builder, context, signature.args[3], x_arr, x_off, 32), v32)
        return _sum(builder, builder.mul(q, xs), 32)

    return sig, codegen


def _planes_intrinsic(lanes: int) -> Any:
    @intrinsic
    def dot(
        typingctx: Any, w: Any, lo: Any, ls: Any, hi: Any, hs: Any, hmask: Any, bias: Any,
        x: Any, xo: Any,
    ) -> Any:  # fmt: skip
        sig = types.int32(w, types.intp, types.intp, types.intp, types.intp, types.intp,
                          types.intp, x, types.intp)  # fmt: skip

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            w_arr, lo_o, ls_v, hi_o, hs_v, hm_v, bias_v, x_arr, x_o = args
            v32 = ir.VectorType(_int(32), lanes)
            w_type, x_type = signature.args[0], signature.args[7]
            low = builder.and_(
                builder.lshr(
                    builder.zext(_vec(builder, context, w_type, w_arr, lo_o, lanes), v32),
                    _splat(builder, ls_v, lanes),
                ),
                ir.Constant(v32, [15] * lanes),
            )
            high = builder.and_(
                builder.lshr(
                    builder.zext(_vec(builder, context, w_type, w_arr, hi_o, lanes), v32),
                    _splat(builder, hs_v, lanes),
                ),
                _splat(builder, hm_v, lanes),
            )
            q = builder.sub(
                builder.or_(low, builder.shl(high, ir.Constant(v32, [4] * lanes))),
                _splat(builder, bias_v, lanes),
            )
            xs = builder.sext(_vec(builder, context, x_type, x_arr, x_o, lanes), v32)
            return _sum(builder, builder.mul(q, xs), lanes)

        return sig, codegen

    return dot


# (numba calls intrinsics by value; typed loosely for mypy)
#: ``dot_i8(a, ao, b, bo)``: ``sum(a[ao + j] * b[bo + j] for j < 32)``, two int8 arrays.
dot_i8: Any = _dot32_i8
#: ``dot_nibbles(w, wo, qh, x, xo)``: ``sum(q[j] * x[xo + j] for j < 32)`` with ``q[j]`` the
#: low nibble of ``w[wo + j]`` for j < 16 and the high nibble of ``w[wo + j - 16]`` after,
#: plus bit j of ``qh`` times 16.
dot_nibbles: Any = _dot32_nibbles
#: ``dot_planes32(w, lo, ls, hi, hs, hmask, bias, x, xo)``: ``sum(q[j] * x[xo + j] for j <
#: 32)`` with ``q[j] = ((w[lo + j] >> ls) & 15 | ((w[hi + j] >> hs) & hmask) << 4) - bias``.
dot_planes32: Any = _planes_intrinsic(32)
#: :data:`dot_planes32` over 16 weights.
dot_planes16: Any = _planes_intrinsic(16)
