"""The decode products' int8 activations (one numba pass) are the numpy ones, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from qhybrid.runtime.llm import _cpu_kernels as cpu
from qhybrid.runtime.llm._cpu_act import quantize_act
from qhybrid.runtime.wgpu_thread import _reference as ref


@pytest.mark.parametrize("shape", [(1, 576), (3, 1536), (2, 640)])
def test_quantize_act_is_the_numpy_quantization_bit_for_bit(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[1])
    x = (rng.standard_normal(shape) * 7.5).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block: scale 0, values 0
    x[-1, 40] = 1e6  # one outlier dominates its block
    act = quantize_act(x)
    q, d = cpu.quantize_q8(x)
    assert np.array_equal(act.q, q)
    assert np.array_equal(act.d.view(np.uint32), d.view(np.uint32))
    assert np.array_equal(act.qsum, q.reshape(shape[0], -1, 32).sum(axis=2, dtype=np.int64))
    xsum = x.reshape(shape[0], -1, 32).sum(axis=2, dtype=np.float32)
    assert np.array_equal(act.xsum.view(np.uint32), xsum.view(np.uint32))
    assert act.d[0, 0] == 0.0 and not act.q[0, :32].any()


@pytest.mark.parametrize("qtype", ["q8_0", "q4_1", "q5_0", "q4_k"])
def test_a_shared_quantization_gives_the_same_product(qtype: str) -> None:
    """The runner quantizes q/k/v's (gate/up's) input once: same floats as each product
    quantizing on its own."""
    per_block = ref.BLOCK[qtype][0]
    raw = ref.random_quantized(np.random.default_rng(3), qtype, 9, 2 * per_block)
    raw = np.ascontiguousarray(raw).view(np.uint8).reshape(9, -1)
    x = np.random.default_rng(4).standard_normal((2, 2 * per_block), dtype=np.float32)
    plain = np.empty((2, 9), dtype=np.float32)
    shared = np.empty((2, 9), dtype=np.float32)
    cpu.matvec(x, raw, qtype, plain, exact=False)
    cpu.matvec(x, raw, qtype, shared, exact=False, act=quantize_act(x))
    assert np.array_equal(plain, shared)
