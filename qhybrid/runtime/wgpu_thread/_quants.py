"""The GGUF weight formats qhybrid reads: one table of block layouts, for every implementation.

A GGUF weight matrix is stored row after row; each row is a run of blocks of ``elements``
values in ``nbytes`` bytes (ggml-common.h's ``block_*`` structs, gguf-py's ``quants.py``).
This table is the one place that names them; the WGSL ``load4`` sections (``quant.wgsl``), the
numba kernels of the CPU path (``qhybrid.runtime.llm._cpu_kernels``) and the tests all follow
it, and the numpy reference (:mod:`._reference`) dequantizes with the ``gguf`` package's own
code. ``scales`` names the f16 fields of a block (byte offset in the block, and a range of
values that keeps random test weights near unit size); ``layout`` is the byte map.

A tensor in any other format is refused by name when a model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BlockFormat:
    """One weight format: values per block, bytes per block, its f16 fields, its byte map."""

    name: str
    elements: int
    nbytes: int
    scales: tuple[tuple[int, float, float], ...]
    layout: str


_F = BlockFormat
#: Every format, by qhybrid's name (gguf's ``GGMLQuantizationType`` name in lower case).
FORMATS: dict[str, BlockFormat] = {
    f.name: f
    for f in (
        _F("f32", 1, 4, (), "float32 values"),
        _F("f16", 1, 2, (), "float16 values"),
        _F("bf16", 1, 2, (), "bfloat16 values (the high half of a float32)"),
        _F(
            "q8_0",
            32,
            34,
            ((0, 0.002, 0.02),),
            "d f16 | qs int8[32]; x = d * q",
        ),
        _F(
            "q4_0",
            32,
            18,
            ((0, 0.05, 0.3),),
            "d f16 | qs[16]: x[j] low nibble of qs[j], x[j+16] high; x = d * (q - 8)",
        ),
        _F(
            "q4_1",
            32,
            20,
            ((0, 0.05, 0.3), (2, -1.0, 0.0)),
            "d f16 | m f16 | qs[16] as q4_0; x = d * q + m",
        ),
        _F(
            "q5_0",
            32,
            22,
            ((0, 0.02, 0.1),),
            "d f16 | qh u32 (bit j: 5th bit of x[j]) | qs[16] as q4_0; x = d * (q - 16)",
        ),
        _F(
            "q5_1",
            32,
            24,
            ((0, 0.02, 0.1), (2, -1.0, 0.0)),
            "d f16 | m f16 | qh u32 | qs[16] as q5_0; x = d * q + m",
        ),
        _F(
            "iq4_nl",
            32,
            18,
            ((0, 0.002, 0.01),),
            "d f16 | qs[16] as q4_0; x = d * KVALUES[q] (a fixed non-linear table of 16)",
        ),
        _F(
            "q2_k",
            256,
            84,
            ((80, 0.01, 0.05), (82, 0.01, 0.05)),
            "scales[16] (low nibble scale, high nibble min of each 16) | qs[64] | d f16 | "
            "dmin f16; x[e]: h = e/128, j = e%128/32, l = e%32: q = qs[32h+l] >> 2j & 3, "
            "s = scales[e/16]: x = d * (s & 15) * q - dmin * (s >> 4)",
        ),
        _F(
            "q3_k",
            256,
            110,
            ((108, 0.005, 0.02),),
            "hmask[32] | qs[64] | scales[12] (16 6-bit signed) | d f16; x[e] as q2_k's q with "
            "the 3rd bit hmask[l] >> (e/32) & 1 (set: q, clear: q - 4); scale i: low 4 bits "
            "scales[i%8] >> 4(i/8), high 2 bits scales[8+i%4] >> 2(i/4), minus 32; "
            "x = d * scale[e/16] * q",
        ),
        _F(
            "q4_k",
            256,
            144,
            ((0, 0.002, 0.01), (2, 0.002, 0.01)),
            "d f16 | dmin f16 | scales[12] (8 6-bit scales and mins) | qs[128]; sub-block "
            "j = e/32 reads qs[32(j/2) + e%32], low nibble for even j; "
            "x = d * sc[j] * q - dmin * m[j]",
        ),
        _F(
            "q5_k",
            256,
            176,
            ((0, 0.001, 0.005), (2, 0.001, 0.005)),
            "d f16 | dmin f16 | scales[12] as q4_k | qh[32] (bit j of qh[e%32]: 5th bit) | "
            "qs[128] as q4_k; x = d * sc[j] * q - dmin * m[j]",
        ),
        _F(
            "q6_k",
            256,
            210,
            ((208, 0.0005, 0.002),),
            "ql[128] | qh[64] | scales int8[16] | d f16; x[e]: n = e/128, quarter "
            "= e%128/32, l = e%32: x = d * scales[8n + l/16 + 2 quarter] * (q - 32)",
        ),
        _F(
            "iq4_xs",
            256,
            136,
            ((0, 0.0005, 0.002),),
            "d f16 | scales_h u16 | scales_l[4] | qs[128]; sub-block ib = e/32: 6-bit scale "
            "(scales_l[ib/2] >> 4(ib%2) & 15) | (scales_h >> 2ib & 3) << 4, minus 32; "
            "qs[16 ib + l%16] nibbles as q4_0; x = d * scale * KVALUES[q]",
        ),
    )
}

#: IQ4_NL's and IQ4_XS's 16 levels (ggml-common.h's kvalues_iq4nl).
IQ4_KVALUES: tuple[int, ...] = (
    -127,
    -104,
    -83,
    -65,
    -49,
    -35,
    -22,
    -10,
    1,
    13,
    25,
    38,
    53,
    69,
    89,
    113,
)


def supported() -> tuple[str, ...]:
    """The formats' names, in table order."""
    return tuple(FORMATS)
