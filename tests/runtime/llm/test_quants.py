"""The weight formats: the block table against gguf's, and the CPU path's numba kernels
(dequantization and the matrix x vector product straight from the blocks) against
``gguf.quants`` on random blocks, over row counts and widths that are not tile multiples."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

from qhybrid.runtime.llm import _cpu_kernels as cpu
from qhybrid.runtime.llm._numpy_model import _Weights
from qhybrid.runtime.wgpu_thread import _reference as ref
from qhybrid.runtime.wgpu_thread._quants import FORMATS

#: Every format of the issue's list, and the ones the project read before.
EXPECTED = (
    *("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"),
    *("q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_xs"),
)


def test_the_block_table_is_ggufs_and_lists_every_common_format() -> None:
    assert set(ref.QTYPES) == set(EXPECTED) == set(FORMATS)
    for name, f in FORMATS.items():
        assert GGML_QUANT_SIZES[GGMLQuantizationType[name.upper()]] == (f.elements, f.nbytes)
        for offset, low, high in f.scales:
            assert 0 <= offset <= f.nbytes - 2 and low < high


def _blocks(qtype: str, rows: int, blocks: int, seed: int) -> tuple[np.ndarray, int]:
    per_block = ref.BLOCK[qtype][0]
    cols = blocks * per_block if per_block > 1 else 32 * blocks + 3
    raw = ref.random_quantized(np.random.default_rng(seed), qtype, rows, cols)
    return np.ascontiguousarray(raw).view(np.uint8).reshape(rows, -1), cols


def _gguf(raw: np.ndarray, qtype: str, cols: int) -> np.ndarray:
    return np.asarray(
        quants.dequantize(raw, GGMLQuantizationType[qtype.upper()]), dtype=np.float32
    ).reshape(raw.shape[0], cols)


@pytest.mark.parametrize("qtype", EXPECTED)
@pytest.mark.parametrize(("rows", "blocks", "seed"), [(1, 1, 0), (7, 3, 1), (37, 2, 2)])
def test_numba_dequantization_equals_gguf(qtype: str, rows: int, blocks: int, seed: int) -> None:
    raw, cols = _blocks(qtype, rows, blocks, seed)
    want = _gguf(raw, qtype, cols)
    np.testing.assert_allclose(cpu.dequantize_rows(raw, qtype, cols), want, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(ref.dequantize(raw, qtype, rows, cols), want)


@pytest.mark.parametrize("qtype", EXPECTED)
@pytest.mark.parametrize(("m", "rows", "blocks", "seed"), [(1, 5, 1, 3), (3, 37, 3, 4)])
def test_matvec_from_the_blocks_equals_the_product_with_ggufs_matrix(
    qtype: str, m: int, rows: int, blocks: int, seed: int
) -> None:
    raw, cols = _blocks(qtype, rows, blocks, seed)
    x = np.random.default_rng(seed).standard_normal((m, cols), dtype=np.float32)
    want = x @ _gguf(raw, qtype, cols).T
    out = np.full((m, rows + 4), np.nan, dtype=np.float32)
    cpu.matvec(x, raw, qtype, out, col0=2)  # into columns 2 .. rows + 1 of a wider output
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(out[:, 2 : rows + 2], want, rtol=0, atol=2e-5 * scale)
    assert np.isnan(out[:, :2]).all() and np.isnan(out[:, rows + 2 :]).all()
    again = np.empty_like(out)
    cpu.matvec(x, raw, qtype, again, col0=2)
    np.testing.assert_array_equal(again[:, 2 : rows + 2], out[:, 2 : rows + 2])  # same floats


class _T:
    def __init__(self, raw: np.ndarray, qtype: str, rows: int, cols: int) -> None:
        self.name, self.data, self.qtype, self.rows, self.cols = "w", raw, qtype, rows, cols


@pytest.mark.parametrize("qtype", ["q8_0", "q4_k", "q5_0", "f16"])
def test_the_cpu_weights_keep_no_float_copy_and_tile_the_prefill(qtype: str) -> None:
    """Decode (few rows) and prefill (many rows, dequantized a tile at a time into one reused
    buffer) give the product with gguf's matrix; nothing is kept but that tile."""
    raw, cols = _blocks(qtype, 300, 2, 5)
    w = _Weights(None, 0)  # type: ignore[arg-type]
    w.TILE_BYTES = 64 * cols * 4 + 100  # 64 rows a tile: 5 tiles, the last one short
    t = _T(raw, qtype, 300, cols)
    dense = _gguf(raw, qtype, cols)
    for m in (1, 2, 9, 40):
        x = np.random.default_rng(m).standard_normal((m, cols), dtype=np.float32)
        want = x @ dense.T
        got = w.linear(x, t)  # type: ignore[arg-type]
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * float(np.abs(want).max()))
    assert w.used == 0 and w.transposed(t) is None  # type: ignore[arg-type]
    assert w._tile.nbytes <= w.TILE_BYTES
    ids = np.array([0, 299, 17, 17])
    np.testing.assert_allclose(w.rows(t, ids), dense[ids], rtol=1e-6)  # type: ignore[arg-type]


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k"])
def test_int8_activation_products_are_close_and_deterministic(qtype: str) -> None:
    """``exact=False`` (the engine's CPU path): int8 activations against the blocks, as
    llama.cpp does; within the activations' rounding of the float32 product, the same floats
    every run."""
    raw, cols = _blocks(qtype, 37, 3, 6)
    x = np.random.default_rng(6).standard_normal((3, cols), dtype=np.float32)
    want = x @ _gguf(raw, qtype, cols).T
    out = np.empty((3, 37), dtype=np.float32)
    cpu.matvec(x, raw, qtype, out, exact=False)
    np.testing.assert_allclose(out, want, rtol=0, atol=2e-2 * float(np.abs(want).max()))
    again = np.empty_like(out)
    cpu.matvec(x, raw, qtype, again, exact=False)
    np.testing.assert_array_equal(again, out)
    q, d = cpu.quantize_q8(x)
    assert q.dtype == np.int8 and np.abs(q).max() == 127
    np.testing.assert_allclose(
        q.reshape(3, -1, 32) * d[:, :, None], x.reshape(3, -1, 32), atol=float(d.max())
    )
