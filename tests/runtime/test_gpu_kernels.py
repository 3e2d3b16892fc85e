"""Every WGSL kernel against its numpy reference (_reference), on the adapter wgpu finds
(llvmpipe in CI), over random shapes that are not multiples of the tile sizes, with the f16 and
subgroup variants forced on and off; plus the context's pools, profiling and the bench."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qhybrid.runtime.wgpu_thread import (
    ComputeContext,
    GpuDevice,
    GpuJobError,
    GpuTensor,
    reference,
)

R = reference
T = TypeVar("T")
F32 = npt.NDArray[np.float32]

VARIANTS = [
    pytest.param((False, False), id="plain"),
    pytest.param((True, False), id="f16"),
    pytest.param((False, True), id="subgroups"),
    pytest.param((True, True), id="f16+subgroups"),
]
HYP = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def gpu() -> Iterator[GpuDevice]:
    threads_before = set(threading.enumerate())
    device = GpuDevice(prefer="gpu")
    try:
        device.start()
    except GpuJobError as exc:
        pytest.skip(f"no wgpu adapter on this machine: {exc}")
    yield device
    device.close()
    assert set(threading.enumerate()) - threads_before == set(), "threads left behind"


def on(
    device: GpuDevice, fn: Callable[[ComputeContext], T], variant: tuple[bool, bool] = (True, True)
) -> T:
    """Run fn on the device thread with the variant's features; tensors it made are freed."""

    def body(ctx: ComputeContext | None) -> T:
        assert ctx is not None
        f16, sg = variant
        ctx.set_features(f16=f16, subgroups=sg, timestamps=True)
        try:
            return fn(ctx)
        finally:
            ctx.set_features(f16=True, subgroups=True)

    return device.call(body).result(timeout=120)


class Scope:
    """Uploads on a context, all released at the end."""

    def __init__(self, ctx: ComputeContext) -> None:
        self.ctx = ctx
        self.held: list[GpuTensor] = []

    def up(self, array: Any) -> GpuTensor:
        t = self.ctx.upload(np.asarray(array))
        self.held.append(t)
        return t

    def empty(self, shape: Any, dtype: Any = np.float32) -> GpuTensor:
        t = self.ctx.empty(shape, dtype)
        self.held.append(t)
        return t

    def weight(self, raw: Any, qtype: str, rows: int, cols: int) -> GpuTensor:
        w = self.ctx.upload_weight(raw, qtype, rows, cols)
        self.held.append(w)
        return w

    def close(self) -> None:
        for t in self.held:
            self.ctx.release(t)


def scoped(fn: Callable[[Scope], T]) -> Callable[[ComputeContext], T]:
    def run(ctx: ComputeContext) -> T:
        s = Scope(ctx)
        try:
            return fn(s)
        finally:
            s.close()

    return run


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _close(got: Any, want: Any, rtol: float = 1e-4, atol: float = 1e-4) -> None:
    np.testing.assert_allclose(np.asarray(got).reshape(np.shape(want)), want, rtol=rtol, atol=atol)


# -- linear: every weight format, matrix x vector and the tiled product ----------------------------
# The f16 variant changes only the f16 format's kernel (native f16 loads): the others run
# plain and with subgroups.
LINEAR_CASES = [
    pytest.param(q, v.values[0], id=f"{q}-{v.id}")
    for q in R.QTYPES
    for v in VARIANTS
    if q == "f16" or not v.values[0][0]
]


@pytest.mark.parametrize(("qtype", "variant"), LINEAR_CASES)
@HYP
@given(
    m=st.sampled_from([1, 2, 3, 8, 9, 17, 70]),
    n=st.integers(1, 70),
    blocks=st.integers(1, 3),
    tail=st.integers(0, 5),
    seed=st.integers(0, 2**16),
)
def test_linear_matches_the_reference(
    gpu: GpuDevice,
    qtype: str,
    variant: tuple[bool, bool],
    m: int,
    n: int,
    blocks: int,
    tail: int,
    seed: int,
) -> None:
    per_block = R.BLOCK[qtype][0]
    # Float formats take any K; quantized ones whole blocks (a q4_k / q6_k block is 256).
    k = blocks * 32 + tail if per_block == 1 else blocks * per_block
    rng = _rng(seed)
    raw = R.random_quantized(rng, qtype, n, k)
    x = rng.standard_normal((m, k), dtype=np.float32)

    def run(s: Scope) -> Any:
        out = s.empty((m, n))
        rec = s.ctx.record()
        rec.linear(s.up(x), s.weight(raw, qtype, n, k), out)  # type: ignore[arg-type]
        return rec.submit(read=[out])[0]

    want = R.linear(x, raw, qtype, n, k)
    _close(on(gpu, scoped(run), variant), want, atol=1e-4 * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("qtype", R.QTYPES)
@HYP
@given(t=st.integers(1, 9), rows=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_get_rows_matches_the_reference(
    gpu: GpuDevice, qtype: str, t: int, rows: int, seed: int
) -> None:
    cols = 34 if R.BLOCK[qtype][0] == 1 else R.BLOCK[qtype][0]
    rng = _rng(seed)
    raw = R.random_quantized(rng, qtype, rows, cols)
    ids = rng.integers(0, rows, t).astype(np.int32)

    def run(s: Scope) -> Any:
        out = s.empty((t, cols))
        rec = s.ctx.record()
        rec.get_rows(s.weight(raw, qtype, rows, cols), s.up(ids), out)  # type: ignore[arg-type]
        return rec.submit(read=[out])[0]

    for variant in ((False, False), (True, False)):
        np.testing.assert_array_equal(
            on(gpu, scoped(run), variant), R.get_rows(raw, qtype, rows, cols, ids)
        )


@HYP
@given(m=st.integers(1, 90), k=st.integers(1, 80), n=st.integers(1, 90), seed=st.integers(0, 2**16))
def test_matmul_matches_the_reference(gpu: GpuDevice, m: int, k: int, n: int, seed: int) -> None:
    rng = _rng(seed)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)

    def run(s: Scope) -> Any:
        out = s.empty((m, n))
        rec = s.ctx.record()
        rec.matmul(s.up(a), s.up(b), out)
        return rec.submit(read=[out])[0]

    _close(on(gpu, scoped(run)), R.matmul(a, b))


# -- elementwise -----------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["add", "mul", "silu_mul", "silu", "gelu", "scale", "relu"])
@HYP
@given(
    rows=st.integers(1, 7),
    cols=st.integers(1, 700),
    broadcast=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_elementwise_matches_the_reference(
    gpu: GpuDevice, op: str, rows: int, cols: int, broadcast: bool, seed: int
) -> None:
    rng = _rng(seed)
    a = (rng.standard_normal((rows, cols)) * 4).astype(np.float32)
    b = rng.standard_normal((cols,) if broadcast and op != "silu_mul" else (rows, cols)).astype(
        np.float32
    )

    def run(s: Scope) -> Any:
        out = s.empty(a.shape)
        rec = s.ctx.record()
        if op in ("add", "mul", "silu_mul"):
            getattr(rec, op)(s.up(a), s.up(b), out)
        elif op == "scale":
            rec.scale(s.up(a), 0.37, out)
        else:
            getattr(rec, op)(s.up(a), out)
        return rec.submit(read=[out])[0]

    want = {
        "add": lambda: R.add(a, b),
        "mul": lambda: R.mul(a, b),
        "silu_mul": lambda: R.silu_mul(a, b),
        "silu": lambda: R.silu(a),
        "gelu": lambda: R.gelu(a),
        "scale": lambda: R.scale(a, 0.37),
        "relu": lambda: np.maximum(a, 0),
    }[op]()
    _close(on(gpu, scoped(run)), want, rtol=1e-5, atol=1e-5)


# -- rows: softmax and the norms -------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS[::2])
@HYP
@given(
    rows=st.integers(1, 9),
    cols=st.integers(1, 1100),
    factor=st.floats(0.1, 3.0),
    seed=st.integers(0, 2**16),
)
def test_softmax_and_norms_match_the_reference(
    gpu: GpuDevice, variant: tuple[bool, bool], rows: int, cols: int, factor: float, seed: int
) -> None:
    rng = _rng(seed)
    x = (rng.standard_normal((rows, cols)) * 3).astype(np.float32)
    w = rng.standard_normal(cols).astype(np.float32)
    bias = rng.standard_normal(cols).astype(np.float32)

    def run(s: Scope) -> list[Any]:
        outs = [s.empty(x.shape) for _ in range(4)]
        xt, wt = s.up(x), s.up(w)
        rec = s.ctx.record()
        rec.softmax(xt, outs[0], factor)
        rec.rmsnorm(xt, wt, outs[1], 1e-5)
        rec.rmsnorm(xt, None, outs[2], 1e-6)
        rec.layernorm(xt, wt, s.up(bias), outs[3], 1e-5)
        return rec.submit(read=outs)

    got = on(gpu, scoped(run), variant)
    _close(got[0], R.softmax(x, factor), rtol=1e-4, atol=1e-6)
    _close(got[1], R.rmsnorm(x, w, 1e-5), rtol=1e-4, atol=1e-5)
    _close(got[2], R.rmsnorm(x, None, 1e-6), rtol=1e-4, atol=1e-5)
    _close(got[3], R.layernorm(x, w, bias, 1e-5), rtol=1e-4, atol=1e-4)


# -- attention -------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["normal", "neox"])
@HYP
@given(
    t=st.integers(1, 6),
    h=st.integers(1, 4),
    half=st.integers(1, 40),
    partial=st.booleans(),
    inplace=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_rope_matches_the_reference(
    gpu: GpuDevice, mode: str, t: int, h: int, half: int, partial: bool, inplace: bool, seed: int
) -> None:
    d = 2 * half
    n_dims = 2 * max(1, half // 2) if partial else d
    rng = _rng(seed)
    x = rng.standard_normal((t, h, d)).astype(np.float32)
    pos = rng.integers(0, 2048, t).astype(np.int32)

    def run(s: Scope) -> Any:
        xt = s.up(x)
        out = xt if inplace else s.empty(x.shape)
        rec = s.ctx.record()
        rec.rope(xt, s.up(pos), out, 10000.0, mode, n_dims)
        return rec.submit(read=[out])[0]

    # Angles up to 2048 rad: the GPU's pow/sin/cos round differently from numpy's.
    _close(on(gpu, scoped(run)), R.rope(x, pos, 10000.0, mode, n_dims), rtol=1e-3, atol=2e-3)  # type: ignore[arg-type]


@pytest.mark.parametrize("variant", VARIANTS[::2])
@HYP
@given(
    s_count=st.integers(1, 3),
    length=st.integers(1, 150),
    hkv=st.integers(1, 3),
    group=st.integers(1, 3),
    d=st.sampled_from([4, 16, 33, 64, 100, 128, 256]),
    t=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_kv_store_and_attention_match_the_reference(
    gpu: GpuDevice,
    variant: tuple[bool, bool],
    s_count: int,
    length: int,
    hkv: int,
    group: int,
    d: int,
    t: int,
    seed: int,
) -> None:
    rng = _rng(seed)
    hq = hkv * group
    k_cache = rng.standard_normal((s_count, length, hkv, d)).astype(np.float32)
    v_cache = rng.standard_normal((s_count, length, hkv, d)).astype(np.float32)
    slot = rng.integers(0, s_count, t).astype(np.int32)
    pos = rng.integers(0, length, t).astype(np.int32)
    pos_u = pos.astype(np.uint32)
    k_new = rng.standard_normal((t, hkv, d)).astype(np.float32)
    q = rng.standard_normal((t, hq, d)).astype(np.float32)
    # Distinct (slot, pos) per token, as the engine writes them; duplicates would race.
    _, first = np.unique(slot * length + pos, return_index=True)
    keep = np.sort(first)
    slot, pos, pos_u, k_new, q = slot[keep], pos[keep], pos_u[keep], k_new[keep], q[keep]
    t = len(keep)

    def run(s: Scope) -> list[Any]:
        kc = s.up(k_cache)
        out = s.empty(q.shape)
        st_, pt = s.up(slot), s.up(pos_u)
        rec = s.ctx.record()
        rec.kv_store(kc, s.up(k_new), st_, pt)
        rec.attention(s.up(q), kc, s.up(v_cache), st_, pt, out, d**-0.5)
        return rec.submit(read=[kc, out])

    kc_got, out = on(gpu, scoped(run), variant)
    kc_want = k_cache.copy()
    R.kv_store(kc_want, k_new, slot, pos)
    np.testing.assert_array_equal(kc_got, kc_want)
    _close(out, R.attention(q, kc_want, v_cache, slot, pos, d**-0.5), rtol=1e-4, atol=1e-4)


# -- sampling --------------------------------------------------------------------------------------
@HYP
@given(
    b=st.integers(1, 4),
    v=st.integers(1, 3000),
    k=st.integers(1, 64),
    ties=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_argmax_and_topk_match_the_reference(
    gpu: GpuDevice, b: int, v: int, k: int, ties: bool, seed: int
) -> None:
    rng = _rng(seed)
    x = rng.standard_normal((b, v)).astype(np.float32)
    if ties:  # few distinct values: the lower index must win
        x = np.round(x).astype(np.float32)
    kk = min(k, v)

    def run(s: Scope) -> list[Any]:
        xt = s.up(x)
        am, tv, ti = s.empty(b, np.uint32), s.empty((b, kk)), s.empty((b, kk), np.uint32)
        rec = s.ctx.record()
        rec.argmax(xt, am)
        rec.topk(xt, k, tv, ti)
        return rec.submit(read=[am, tv, ti])

    am, tv, ti = on(gpu, scoped(run))
    np.testing.assert_array_equal(am, R.argmax(x))
    want_v, want_i = R.topk(x, kk)
    np.testing.assert_array_equal(tv, want_v)
    np.testing.assert_array_equal(ti, want_i)


@HYP
@given(
    b=st.integers(1, 4),
    v=st.integers(2, 500),
    r=st.integers(1, 30),
    penalty=st.floats(1.0, 2.0),
    seed=st.integers(0, 2**16),
)
def test_repeat_penalty_matches_the_reference(
    gpu: GpuDevice, b: int, v: int, r: int, penalty: float, seed: int
) -> None:
    rng = _rng(seed)
    logits = rng.standard_normal((b, v)).astype(np.float32)
    recent = rng.integers(0, min(v, 20), (b, r)).astype(np.int32)  # repeats on purpose
    counts = rng.integers(0, r + 1, b).astype(np.int32)

    def run(s: Scope) -> Any:
        lt = s.up(logits)
        rec = s.ctx.record()
        rec.repeat_penalty(lt, s.up(recent), s.up(counts), penalty)
        return rec.submit(read=[lt])[0]

    np.testing.assert_array_equal(
        on(gpu, scoped(run)), R.repeat_penalty(logits, recent, counts, penalty)
    )


@HYP
@given(
    b=st.integers(1, 4),
    v=st.integers(1, 2000),
    temperature=st.sampled_from([0.0, 0.3, 0.8, 1.0, 1.7]),
    top_k=st.sampled_from([0, 1, 5, 40, 64, 100]),
    top_p=st.sampled_from([0.1, 0.5, 0.9, 1.0]),
    per_row=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_sample_matches_the_reference(
    gpu: GpuDevice,
    b: int,
    v: int,
    temperature: float,
    top_k: int,
    top_p: float,
    per_row: bool,
    seed: int,
) -> None:
    rng = _rng(seed)
    logits = (rng.standard_normal((b, v)) * 2).astype(np.float32)
    uniform = rng.random(b).astype(np.float32)

    def run(s: Scope) -> Any:
        out = s.empty(b, np.uint32)
        rec = s.ctx.record()
        if per_row:
            rec.sample(
                s.up(logits),
                out,
                s.up(np.full(b, temperature, np.float32)),
                s.up(np.full(b, top_k, np.int32)),
                s.up(np.full(b, top_p, np.float32)),
                s.up(uniform),
            )
        else:
            rec.sample(s.up(logits), out, temperature, top_k, top_p, s.up(uniform))
        return rec.submit(read=[out])[0]

    got = on(gpu, scoped(run))
    # The GPU sums probabilities in another order: a draw within 1e-4 of a boundary may
    # fall on either side, so the pick must match the reference at u or at u +- 1e-4.
    for row in range(b):
        options = {
            int(R.sample(logits[row : row + 1], temperature, top_k, top_p, np.float32([u]))[0])
            for u in (uniform[row], max(uniform[row] - 1e-4, 0), min(uniform[row] + 1e-4, 0.9999))
        }
        assert int(got[row]) in options


# -- the context: pools, caches, profiling, copies, errors -----------------------------------------
def test_repeated_recordings_reuse_buffers_pipelines_and_bind_groups(gpu: GpuDevice) -> None:
    rng = _rng(1)
    raw = R.random_quantized(rng, "q8_0", 64, 256)
    x = rng.standard_normal((2, 256), dtype=np.float32)

    def step(s: Scope) -> Any:
        out = s.empty((2, 64))
        normed = s.empty((2, 256))
        rec = s.ctx.record()
        rec.rmsnorm(s.up(x), None, normed, 1e-5)
        rec.linear(normed, s.weight(raw, "q8_0", 64, 256), out)  # type: ignore[arg-type]
        return rec.submit(read=[out])[0]

    def stats(ctx: ComputeContext) -> dict[str, int]:
        return dict(ctx.pool_stats)

    first = on(gpu, scoped(step))
    on(gpu, scoped(step))  # the pool settles on which buffer each tensor gets
    before = on(gpu, stats)
    for _ in range(20):
        np.testing.assert_array_equal(on(gpu, scoped(step)), first)
    after = on(gpu, stats)
    assert after["buffers_created"] == before["buffers_created"]
    assert after["pipelines"] == before["pipelines"]
    assert after["bind_groups"] == before["bind_groups"]


def test_profiling_reports_each_dispatch_gpu_time(gpu: GpuDevice) -> None:
    def run(s: Scope) -> list[tuple[str, float]]:
        if not s.ctx.features.timestamps:
            pytest.skip("the adapter has no timestamp queries")
        a = s.up(np.ones((70, 70), np.float32))
        out, out2 = s.empty((70, 70)), s.empty((70, 70))
        rec = s.ctx.record(profile=True)
        rec.matmul(a, a, out)
        rec.softmax(out, out2)
        rec.submit(read=[out2])
        return [(t.name, t.gpu_s) for t in rec.timings]

    timings = on(gpu, scoped(run))
    assert [name for name, _ in timings] == ["matmul", "softmax"]
    assert all(0 < s < 10 for _, s in timings)


def test_copy_write_and_one_submission_for_many_kernels(gpu: GpuDevice) -> None:
    def run(s: Scope) -> list[Any]:
        src = s.up(np.arange(10, dtype=np.float32))
        dst = s.up(np.zeros(16, np.float32))
        s.ctx.write(dst, np.float32([7, 7]), offset_elements=14)
        rec = s.ctx.record()
        rec.copy(src, dst, src_offset=2, dst_offset=4, count=5)
        rec.scale(src, -1.0, src)  # elementwise ops work in place
        rec.add(src, s.up(np.ones(10, np.float32)), src)
        with pytest.raises(ValueError, match="in place"):
            rec.softmax(src, src)
        assert rec.dispatches == 2
        return rec.submit(read=[dst, src])

    dst, src = on(gpu, scoped(run))
    np.testing.assert_array_equal(dst, np.float32([0, 0, 0, 0, 2, 3, 4, 5, 6, 0, 0, 0, 0, 0, 7, 7]))
    np.testing.assert_array_equal(src, 1 - np.arange(10, dtype=np.float32))


def test_bad_arguments_say_what_is_wrong(gpu: GpuDevice) -> None:
    def run(s: Scope) -> None:
        x = s.up(np.zeros((2, 64), np.float32))
        w = s.weight(np.zeros((3, 68), np.uint8), "q8_0", 3, 64)
        with pytest.raises(ValueError, match="out has 4 elements, expected 6"):
            s.ctx.record().linear(x, w, s.empty((2, 2)))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="GpuWeight"):
            s.ctx.record().linear(x, x, s.empty((2, 3)))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="takes 204 bytes"):
            s.ctx.upload_weight(np.zeros(10, np.uint8), "q8_0", 3, 64)
        with pytest.raises(ValueError, match="multiple of 32 columns"):
            s.ctx.upload_weight(np.zeros(10, np.uint8), "q8_0", 1, 10)
        with pytest.raises(ValueError, match="dtype"):
            s.ctx.upload(np.zeros(3, np.float64))
        q = s.empty((1, 1, 300))
        with pytest.raises(ValueError, match="D <= 256"):
            s.ctx.record().attention(
                q,
                s.empty((1, 2, 1, 300)),
                s.empty((1, 2, 1, 300)),
                s.empty(1, np.int32),
                s.empty(1, np.int32),
                q,
                1.0,
            )
        released = s.ctx.upload(np.zeros(4, np.float32))
        s.ctx.release(released)
        with pytest.raises(ValueError, match="released"):
            s.ctx.read(released)

    on(gpu, scoped(run))


def test_calls_run_in_order_with_jobs_and_without_a_gpu_get_none() -> None:
    with GpuDevice(prefer="cpu") as device:
        assert device.call(lambda ctx: ctx).result(timeout=30) is None
        with pytest.raises(ZeroDivisionError):
            device.call(lambda ctx: 1 // 0).result(timeout=30)
        assert device.call(lambda ctx: 42).result(timeout=30) == 42


def test_placement_model_is_calibrated_once_and_cached(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QHYBRID_CACHE_DIR", str(tmp_path))
    with GpuDevice(prefer="auto") as device:
        if not device.info.is_gpu:
            pytest.skip("no wgpu adapter")
        model = device.cost_model
    assert model is not None
    files = list((tmp_path / "gpu").glob("placement-*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    assert saved["device"]["name"] == device.info.name
    assert saved["model"]["gpu_flops"] == pytest.approx(model.gpu_flops)
    with GpuDevice(prefer="auto") as again:
        assert again.cost_model == model  # read back, not measured again
    # Large products: the faster side by the measured rates, and tiny jobs stay on the CPU
    # (a GPU round trip costs more than numpy's whole job).
    big = model.placement("matmul", [(1024, 1024), (1024, 1024)], (1024, 1024))
    gpu_t, cpu_t = model.predict("matmul", [(1024, 1024), (1024, 1024)], (1024, 1024))
    assert big == ("gpu" if gpu_t < cpu_t else "cpu")
    assert model.placement("add", [(4,), (4,)], (4,)) == "cpu"
    if device.info.kind == "software":
        assert big == "cpu", "on a software adapter numpy should win large matrix products"


def test_bench_gpu_json_smoke() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "qhybrid", "bench", "gpu", "--json", "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert set(report["device"]) >= {"name", "backend", "kind"}
    names = {k["name"] for k in report["kernels"]}
    assert {"matmul", "linear.q8_0", "softmax", "rmsnorm", "attention"} <= names
    for kernel in report["kernels"]:
        assert "shape" in kernel
        assert ("gpu_gflops" in kernel and "numpy_gflops" in kernel) or (
            "gpu_gbps" in kernel and "numpy_gbps" in kernel
        )


@pytest.mark.parametrize("qtype", ["q8_0", "q6_k", "f16"])
def test_a_matrix_split_across_bindings_gives_the_same_products_and_rows(
    gpu: GpuDevice, qtype: str
) -> None:
    """A weight larger than one binding (Gemma 3's embedding) is split by rows into parts;
    linear (both kernels) and get_rows over the parts equal the reference on the whole."""
    per_block = R.BLOCK[qtype][0]
    n, k = 37, 2 * max(per_block, 32)
    rng = _rng(3)
    raw = R.random_quantized(rng, qtype, n, k)
    part_bytes = 5 * R.row_nbytes(qtype, k) + 3  # 5 rows per part: 8 parts, the last 2 rows
    ids = np.array([0, 4, 5, 36, 11, 99, 30], dtype=np.int32)  # 99: out of range, zeros

    def run(s: Scope) -> Any:
        w = s.ctx.upload_weight(raw, qtype, n, k, max_part_bytes=part_bytes)
        s.held.append(w)
        assert len(w.pieces()) == 8 and w.pieces()[-1].part_rows == 2
        outs = []
        for m in (3, 20):
            x = rng.standard_normal((m, k), dtype=np.float32)
            out = s.empty((m, n))
            rec = s.ctx.record()
            rec.linear(s.up(x), w, out)
            outs.append((x, rec.submit(read=[out])[0]))
        rows = s.empty((len(ids), k))
        rec = s.ctx.record()
        rec.get_rows(w, s.up(ids), rows)
        return outs, rec.submit(read=[rows])[0]

    outs, rows = on(gpu, scoped(run), (False, False))
    for x, got in outs:
        want = R.linear(x, raw, qtype, n, k)
        _close(got, want, atol=1e-4 * max(1.0, float(np.abs(want).max())))
    dense = R.dequantize(raw, qtype, n, k)
    want_rows = np.zeros((len(ids), k), np.float32)
    want_rows[ids < n] = dense[ids[ids < n]]
    np.testing.assert_array_equal(np.asarray(rows).reshape(len(ids), k), want_rows)
