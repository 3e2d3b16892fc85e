"""The GPU graph against the numpy graph, on random GGUF models of every supported format.

Runs on whatever adapter wgpu finds (llvmpipe in CI). Logits must agree to float32 rounding;
sampled tokens must be the same for the same uniform draws.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qhybrid.runtime.llm import NumpyRunner, SamplingParams, SeqInput, load_model
from qhybrid.runtime.llm._gpu_model import GpuRunner
from qhybrid.runtime.llm._random_model import RandomModelSpec, write_random_model
from qhybrid.runtime.wgpu_thread import GpuDevice

QTYPES = ("f32", "f16", "q8_0", "q4_0", "q4_k", "q6_k", "q4_1", "q5_0", "q5_k")


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


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    folder = tmp_path_factory.mktemp("models")
    return {
        (arch, q): write_random_model(
            folder / f"{arch}-{q}.gguf", RandomModelSpec(arch=arch, qtype=q, n_layer=2)
        )
        for arch in ("llama", "qwen2")
        for q in QTYPES
    }


def _pair(device: GpuDevice, path: Path, slots: int = 3, n_ctx: int = 64):
    model = load_model(path)
    cpu = NumpyRunner(model, slots, n_ctx)
    gpu = device.call(lambda ctx: GpuRunner(ctx, model, slots, n_ctx)).result()
    return model, cpu, gpu


def _close(device: GpuDevice, gpu: GpuRunner) -> None:
    device.call(lambda _ctx: gpu.close()).result()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("qtype", QTYPES)
def test_gpu_logits_match_numpy(device: GpuDevice, models, arch: str, qtype: str) -> None:
    _, cpu, gpu = _pair(device, models[arch, qtype])
    try:
        rng = np.random.default_rng(1)
        n_vocab = cpu.config.n_vocab
        prompt_a = rng.integers(0, n_vocab, 11).astype(np.int32)
        prompt_b = rng.integers(0, n_vocab, 4).astype(np.int32)
        # Prefill of two sequences of different lengths in one step (continuous batching) ...
        prefill = [SeqInput(0, prompt_a, 0), SeqInput(2, prompt_b, 0)]
        want = cpu.logits(prefill)
        got = device.call(lambda _ctx: gpu.logits(prefill)).result()
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(got, want, atol=2e-5 * max(scale, 1.0), rtol=1e-4)
        # ... then decode steps reading the KV cache both wrote, and a new prompt joining.
        decode = [
            SeqInput(0, np.array([7], np.int32), 11),
            SeqInput(1, prompt_b[:2], 0),
            SeqInput(2, np.array([3], np.int32), 4),
        ]
        want = cpu.logits(decode)
        got = device.call(lambda _ctx: gpu.logits(decode)).result()
        np.testing.assert_allclose(got, want, atol=2e-5 * max(scale, 1.0), rtol=1e-4)
        assert (got.argmax(axis=1) == want.argmax(axis=1)).all()
    finally:
        _close(device, gpu)


def test_sampled_tokens_match_numpy(device: GpuDevice, models) -> None:
    _, cpu, gpu = _pair(device, models["llama", "q8_0"], slots=4)
    try:
        rng = np.random.default_rng(2)
        n_vocab = cpu.config.n_vocab
        settings = [
            SamplingParams(temperature=0.0),
            SamplingParams(temperature=0.8, top_k=40, top_p=0.95),
            SamplingParams(temperature=1.5, top_k=0, top_p=1.0),
            SamplingParams(temperature=0.7, top_k=5, top_p=0.5, repeat_penalty=1.3),
        ]
        items = [
            SeqInput(
                slot,
                rng.integers(0, n_vocab, 5).astype(np.int32),
                0,
                sampling,
                rng.integers(0, n_vocab, 8).astype(np.int32),
                float(u),
            )
            for slot, (sampling, u) in enumerate(zip(settings, (0.1, 0.5, 0.93, 0.3), strict=True))
        ]
        want = cpu.step(items)
        got = device.call(lambda _ctx: gpu.step(items)).result()
        assert got.dtype == np.uint32
        assert got.tolist() == want.tolist()
    finally:
        _close(device, gpu)


def test_gpu_memory_is_given_back(device: GpuDevice, models) -> None:
    def pool_free(ctx) -> int:
        return ctx.pool_stats["free_bytes"]

    _, _cpu, gpu = _pair(device, models["qwen2", "q4_0"])
    held = gpu.gpu_bytes
    assert held > 0
    before = device.call(pool_free).result()
    _close(device, gpu)
    assert device.call(pool_free).result() >= before


def test_a_tensor_beyond_the_binding_limit_is_split_and_a_row_beyond_it_refused(
    device: GpuDevice, models
) -> None:
    """A matrix larger than the device's largest binding (Gemma 3's embedding) is split by rows
    across buffers and gives the same logits; only a row larger than a binding is refused."""
    from types import SimpleNamespace

    from qhybrid.runtime.llm import ModelError, load_model
    from qhybrid.runtime.llm._gpu_model import gpu_too_large

    model = load_model(models["llama", "q8_0"])
    small = SimpleNamespace(max_buffer_bytes=64)
    reason = gpu_too_large(small, model)  # type: ignore[arg-type]
    assert reason is not None and "largest binding" in reason
    assert gpu_too_large(SimpleNamespace(max_buffer_bytes=1 << 40), model) is None  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="largest binding"):
        GpuRunner(small, model, 1, 16)  # type: ignore[arg-type]

    embd = model.tensor("token_embd.weight")
    limit = embd.data.nbytes // 3  # the embedding (and tied output) in 4 parts

    def build(ctx: Any) -> tuple[Any, int]:
        original = ctx.upload_weight

        def split(*args: Any, **kwargs: Any) -> Any:
            return original(*args, max_part_bytes=limit, **kwargs)

        ctx.upload_weight = split
        try:
            runner = GpuRunner(ctx, model, 1, 16)
        finally:
            del ctx.upload_weight
        return runner, len(runner.token_embd.pieces())

    split_runner, parts = device.call(build).result(timeout=120)
    whole = device.call(lambda ctx: GpuRunner(ctx, model, 1, 16)).result(timeout=120)
    try:
        assert parts == 4
        items = [SeqInput(slot=0, tokens=np.array([1, 5, 9], dtype=np.int32), start_pos=0)]
        got = device.call(lambda ctx: split_runner.logits(items)).result(timeout=120)
        want = device.call(lambda ctx: whole.logits(items)).result(timeout=120)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    finally:
        _close(device, split_runner)
        _close(device, whole)
