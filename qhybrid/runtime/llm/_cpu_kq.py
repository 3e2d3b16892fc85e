"""Int8-activation decode products for Q5_K and Q6_K (llama.cpp's way), numba.

The other formats' int8 kernels live in :mod:`._cpu_kernels`; these two take the same
:class:`._cpu_act.Act` (activations as Q8_0 blocks of 32). Each 32 (Q5_K) or 16 (Q6_K)
weights of one scale are rebuilt from their low and high bit planes in a vector and
multiplied with the int8 activations in int32 (:func:`_dot_planes`); the float work is one
multiply-add per sub-block. One thread, a fixed order: the same floats every run.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qhybrid.runtime.llm._cpu_act import Act
from qhybrid.runtime.llm._cpu_kernels import _h, _jit, _k_scale_min
from qhybrid.runtime.llm._jit import intrinsic, ir, types


def _planes_intrinsic(lanes: int) -> Any:
    """``sum(q[j] * x[xo + j] for j < lanes)`` as int32, where ``q[j] = ((w[lo + j] >> ls) &
    15 | ((w[hi + j] >> hs) & hmask) << 4) - bias`` (a K-quant's low nibbles and high bits)."""

    @intrinsic
    def dot(
        typingctx: Any, w: Any, lo: Any, ls: Any, hi: Any, hs: Any, hmask: Any, bias: Any,
        x: Any, xo: Any,
    ) -> Any:  # fmt: skip
        sig = types.int32(w, types.intp, types.intp, types.intp, types.intp, types.intp,
                          types.intp, x, types.intp)  # fmt: skip

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            w_arr, lo_o, ls_v, hi_o, hs_v, hm_v, bias_v, x_arr, x_o = args
            i8, i32 = ir.IntType(8), ir.IntType(32)
            v8, v32 = ir.VectorType(i8, lanes), ir.VectorType(i32, lanes)
            arr_w = context.make_array(signature.args[0])(context, builder, w_arr)
            arr_x = context.make_array(signature.args[7])(context, builder, x_arr)

            def splat(value: Any) -> Any:
                one = builder.insert_element(
                    ir.Constant(v32, None), builder.trunc(value, i32), ir.Constant(i32, 0)
                )
                return builder.shuffle_vector(
                    one, ir.Constant(v32, None), ir.Constant(v32, [0] * lanes)
                )

            def load(arr: Any, off: Any, extend: Any) -> Any:
                p = builder.bitcast(builder.gep(arr.data, [off]), v8.as_pointer())
                return extend(builder.load(p, align=1), v32)

            low = builder.and_(
                builder.lshr(load(arr_w, lo_o, builder.zext), splat(ls_v)),
                ir.Constant(v32, [15] * lanes),
            )
            high = builder.and_(
                builder.lshr(load(arr_w, hi_o, builder.zext), splat(hs_v)), splat(hm_v)
            )
            q = builder.sub(
                builder.or_(low, builder.shl(high, ir.Constant(v32, [4] * lanes))),
                splat(bias_v),
            )
            prod = builder.mul(q, load(arr_x, x_o, builder.sext))
            name = f"llvm.vector.reduce.add.v{lanes}i32"
            fn = builder.module.globals.get(name) or ir.Function(
                builder.module, ir.FunctionType(i32, [v32]), name
            )
            return builder.call(fn, [prod])

        return sig, codegen

    return dot


_dot32: Any = _planes_intrinsic(32)
_dot16: Any = _planes_intrinsic(16)


@_jit
def _mv_q5_k_i8(raw: Any, xq: Any, xd: Any, xsum: Any, y: Any, col0: int) -> None:
    # Sub-block j of 32: d sc_j xd sum(q xq) - dmin m_j sum(x), q = nibble | fifth bit << 4.
    n_blocks = raw.shape[1] // 176
    for n in range(raw.shape[0]):
        r = raw[n]
        for m in range(xq.shape[0]):
            xqm, xdm, xfm = xq[m], xd[m], xsum[m]
            total = np.float32(0.0)
            for b in range(n_blocks):
                o = b * 176
                d = _h(r, o)
                dmin = _h(r, o + 2)
                for j in range(8):
                    sc, mn = _k_scale_min(r, o + 4, j)
                    k = 8 * b + j
                    lo = o + 48 + 32 * (j >> 1)
                    dot = _dot32(r, lo, 4 * (j & 1), o + 16, j, 1, 0, xqm, 32 * k)
                    total += np.float32(dot) * (d * np.float32(sc) * xdm[k])
                    total -= dmin * np.float32(mn) * xfm[k]
            y[m, col0 + n] = total


@_jit
def _mv_q6_k_i8(raw: Any, rawi: Any, xq: Any, xd: Any, y: Any, col0: int) -> None:
    # 16 weights per scale: d xd (sc_a sum(q xq)[:16] + sc_b sum(q xq)[16:]), q = 6 bits - 32.
    n_blocks = raw.shape[1] // 210
    for n in range(raw.shape[0]):
        r = raw[n]
        ri = rawi[n]
        for m in range(xq.shape[0]):
            xqm, xdm = xq[m], xd[m]
            total = np.float32(0.0)
            for b in range(n_blocks):
                o = b * 210
                d = _h(r, o + 208)
                for half in range(2):
                    for quarter in range(4):
                        ql = o + 64 * half + (quarter & 1) * 32
                        qh = o + 128 + 32 * half
                        shl = (quarter >> 1) * 4
                        shh = 2 * quarter
                        s = o + 192 + 8 * half + 2 * quarter
                        k = 8 * b + 4 * half + quarter
                        e = 32 * k
                        dot_a = _dot16(r, ql, shl, qh, shh, 3, 32, xqm, e)
                        dot_b = _dot16(r, ql + 16, shl, qh + 16, shh, 3, 32, xqm, e + 16)
                        sub = np.float32(np.int32(ri[s]) * dot_a + np.int32(ri[s + 1]) * dot_b)
                        total += sub * (d * xdm[k])
            y[m, col0 + n] = total


def matvec_k_i8(raw: Any, qtype: str, act: Act, out: Any, col0: int) -> None:
    """``out[:, col0 : col0 + rows] = x @ W.T`` for Q5_K or Q6_K blocks ``raw`` on ``act``."""
    if qtype == "q5_k":
        _mv_q5_k_i8(raw, act.q, act.d, act.xsum, out, col0)
    else:
        _mv_q6_k_i8(raw, raw.view(np.int8), act.q, act.d, out, col0)
