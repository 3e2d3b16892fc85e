"""The GPU graph of every architecture against the numpy graph (itself checked against an
independent reference in test_archs.py), on random models, on whatever adapter wgpu finds
(llvmpipe in CI): prefill of two sequences at once, then decode steps past gemma's window."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from qhybrid.runtime.llm import NumpyRunner, SeqInput, load_model
from qhybrid.runtime.llm._gpu_model import GpuRunner
from qhybrid.runtime.llm._random_model import RandomModelSpec, write_random_model
from qhybrid.runtime.wgpu_thread import GpuDevice

CASES = {
    "qwen3": {},
    "phi3": {},
    "gemma2": {"sliding_window": 3, "attn_softcap": 1.5, "final_softcap": 4.0, "n_layer": 2},
    "gemma3": {"sliding_window": 3, "n_layer": 7, "tied": True, "rope_linear_factor": 8.0},
    "llama": {"rope_linear_factor": 4.0},
    "llama-rope-freqs": {"rope_freqs": True},  # Llama 3.1+'s per-pair divisors
}


@pytest.fixture(scope="module")
def device() -> Iterator[GpuDevice]:
    dev = GpuDevice(prefer="gpu")
    try:
        dev.start()
    except Exception as exc:  # pragma: no cover - CI has llvmpipe
        dev.close()
        pytest.skip(f"no GPU adapter: {exc}")
    yield dev
    dev.close()


@pytest.mark.parametrize("arch", list(CASES))
def test_gpu_graph_matches_numpy(device: GpuDevice, tmp_path: Path, arch: str) -> None:
    spec = RandomModelSpec(
        arch=arch.split("-")[0],
        qtype="q8_0",
        n_embd=128,
        n_ff=256,
        **CASES[arch],  # type: ignore[arg-type]
    )
    model = load_model(write_random_model(tmp_path / f"{arch}.gguf", spec))
    cpu = NumpyRunner(model, 2, 32)
    gpu = device.call(lambda ctx: GpuRunner(ctx, model, 2, 32)).result()
    try:
        rng = np.random.default_rng(3)
        a = rng.integers(0, spec.n_vocab, 9).astype(np.int32)
        b = rng.integers(0, spec.n_vocab, 4).astype(np.int32)
        steps = [
            [SeqInput(0, a, 0), SeqInput(1, b, 0)],
            [SeqInput(0, np.array([5], np.int32), 9), SeqInput(1, np.array([7], np.int32), 4)],
            [SeqInput(0, np.array([11], np.int32), 10)],
        ]
        for items in steps:
            want = cpu.logits(items)
            got = device.call(lambda _ctx, it=items: gpu.logits(it)).result()
            scale = max(float(np.abs(want).max()), 1.0)
            np.testing.assert_allclose(got, want, atol=5e-5 * scale, rtol=1e-4)
            assert (got.argmax(axis=1) == want.argmax(axis=1)).all()
    finally:
        device.call(lambda _ctx: gpu.close()).result()
