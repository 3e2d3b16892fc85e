"""The GPU thread: WGSL kernels against numpy, determinism, the numpy fallback, errors, closing."""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from multiprocessing import resource_tracker
from pathlib import Path
from typing import NoReturn

import numpy as np
import numpy.typing as npt
import pytest

from qhybrid.runtime.tensors import TensorStore
from qhybrid.runtime.wgpu_thread import (
    ComputeContext,
    DeviceInfo,
    GpuDevice,
    GpuDeviceLost,
    GpuJobError,
    GpuJobEvent,
    GpuJobResult,
    _backends,
    _library,
    gpu_ops,
)
from qhybrid.runtime.wgpu_thread._context import _grid_1d

F32 = npt.NDArray[np.float32]
SHM = Path("/dev/shm")
PACKAGE = Path(__file__).resolve().parents[2] / "qhybrid" / "runtime" / "wgpu_thread"


def _segments() -> set[str]:
    """This process's qhybrid segments (other processes may be running tests beside us)."""
    mine = f"qh_{os.getpid()}_"
    return {p.name for p in SHM.iterdir() if p.name.startswith(mine)} if SHM.is_dir() else set()


@pytest.fixture(scope="module")
def store() -> Iterator[TensorStore]:
    # multiprocessing's resource tracker is a child process that lives as long as the test
    # session; start it here so no test appears to have left it behind.
    resource_tracker.ensure_running()
    before = _segments()
    with TensorStore() as s:
        yield s
    assert _segments() - before == set(), "shared-memory segments left behind"


@pytest.fixture(scope="module")
def gpu() -> Iterator[GpuDevice]:
    """A device on a real or software adapter (llvmpipe in CI); skipped only without one."""
    threads_before = set(threading.enumerate())
    device = GpuDevice(prefer="gpu")
    try:
        device.start()
    except GpuJobError as exc:
        pytest.skip(f"no wgpu adapter on this machine: {exc}")
    yield device
    device.close()
    assert set(threading.enumerate()) - threads_before == set(), "threads left behind"


@pytest.fixture(scope="module")
def cpu() -> Iterator[GpuDevice]:
    with GpuDevice(prefer="cpu") as device:
        yield device


def _rand(shape: tuple[int, ...], seed: int = 0) -> F32:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def _run(
    device: GpuDevice,
    store: TensorStore,
    op: str,
    arrays: Sequence[F32],
    out_shape: tuple[int, ...],
    params: Mapping[str, float] | None = None,
) -> tuple[F32, GpuJobResult]:
    """Run one job through shared memory; returns a copy of the output and the result."""
    inputs = [store.from_array(a) for a in arrays]
    out = store.create(out_shape, np.float32)
    try:
        future = device.submit(op, [t.handle for t in inputs], out.handle, params)
        result = future.result(timeout=30)
        return out.array.copy(), result
    finally:
        for t in (*inputs, out):
            t.close()


def _expected(op: str, arrays: Sequence[F32], params: Mapping[str, float] | None = None) -> F32:
    a = arrays[0]
    if op == "matmul":
        return (a.astype(np.float64) @ arrays[1].astype(np.float64)).astype(np.float32)
    if op == "add":
        return a + arrays[1]
    if op == "mul":
        return a * arrays[1]
    if op == "scale":
        return a * np.float32((params or {}).get("factor", 1.0))
    if op == "relu":
        return np.maximum(a, np.float32(0.0))
    raise AssertionError(op)


MATMUL_SHAPES = [
    (1, 1, 1),
    (17, 33, 5),
    (64, 64, 64),
    (100, 37, 23),
    (5, 100, 37),
    (31, 1, 47),
    (3, 0, 4),  # K = 0: the product is all zeros
    (0, 4, 3),  # an empty output
]


@pytest.mark.parametrize(("m", "k", "n"), MATMUL_SHAPES)
def test_matmul_on_gpu_matches_numpy(
    gpu: GpuDevice, store: TensorStore, m: int, k: int, n: int
) -> None:
    a, b = _rand((m, k), 1), _rand((k, n), 2)
    got, result = _run(gpu, store, "matmul", [a, b], (m, n))
    assert result.placement == "gpu"
    assert result.op == "matmul"
    np.testing.assert_allclose(got, _expected("matmul", [a, b]), rtol=1e-4, atol=1e-5)


ELEMENTWISE = [("add", None), ("mul", None), ("scale", {"factor": -2.5}), ("relu", None)]
ELEMENTWISE_SHAPES = [(1,), (1, 1), (17, 33), (64, 64), (100, 37), (3, 5, 7), (70_001,), (0, 5)]


@pytest.mark.parametrize(("op", "params"), ELEMENTWISE)
@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES)
def test_elementwise_on_gpu_matches_numpy(
    gpu: GpuDevice,
    store: TensorStore,
    op: str,
    params: dict[str, float] | None,
    shape: tuple[int, ...],
) -> None:
    arity = 2 if op in ("add", "mul") else 1
    arrays = [_rand(shape, seed) for seed in range(arity)]
    got, result = _run(gpu, store, op, arrays, shape, params)
    assert result.placement == "gpu"
    np.testing.assert_allclose(got, _expected(op, arrays, params), rtol=1e-4, atol=0)


def test_relu_keeps_nan_and_zeroes_negative_zero(gpu: GpuDevice, store: TensorStore) -> None:
    x = np.array([-0.0, np.nan, -np.inf, np.inf, -1.5, 2.5, 0.0], dtype=np.float32)
    got, _ = _run(gpu, store, "relu", [x], x.shape)
    want = np.maximum(x, np.float32(0.0))
    np.testing.assert_array_equal(got, want)
    assert not np.signbit(got[0]), "max(-0, 0) is +0 in numpy"


def test_elementwise_grid_folds_into_two_dimensions(gpu: GpuDevice) -> None:
    # Past 65535 workgroups the grid folds into a second dimension; the shader rebuilds the
    # flat index. Checked on a tensor just past the limit (256 * 65535 + 1 elements).
    assert _grid_1d(70_000) == (65_535, 2, 1)
    assert _grid_1d(5) == (5, 1, 1)
    n = 256 * 65_535 + 1000

    def run(ctx: ComputeContext | None) -> F32:
        assert ctx is not None
        x = ctx.upload(np.arange(n, dtype=np.float32) - 1e6)
        out = ctx.empty(n)
        try:
            rec = ctx.record()
            rec.relu(x, out)
            return rec.submit(read=[out])[0]
        finally:
            ctx.release(x)
            ctx.release(out)

    got = gpu.call(run).result(timeout=120)
    np.testing.assert_array_equal(got, np.maximum(np.arange(n, dtype=np.float32) - 1e6, 0))


def test_repeated_runs_are_bit_identical(gpu: GpuDevice, store: TensorStore) -> None:
    a, b = _rand((100, 300), 3), _rand((300, 37), 4)
    runs = [_run(gpu, store, "matmul", [a, b], (100, 37))[0] for _ in range(4)]
    for other in runs[1:]:
        assert other.tobytes() == runs[0].tobytes()
    scaled = [_run(gpu, store, "scale", [a], a.shape, {"factor": 0.1})[0] for _ in range(3)]
    assert scaled[1].tobytes() == scaled[0].tobytes() == scaled[2].tobytes()


def test_gpu_device_info(gpu: GpuDevice) -> None:
    info = gpu.info
    assert info.is_gpu
    assert info.kind in ("hardware", "software")
    assert info.name
    assert info.backend
    doc = info.to_json()
    assert set(doc) == {"name", "backend", "kind", "vendor", "software"}
    assert doc["software"] is (info.kind == "software")
    if "llvmpipe" in info.name:
        assert info.kind == "software"


def test_cpu_preference_runs_numpy_with_one_notice(
    store: TensorStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="qhybrid.runtime.wgpu_thread")
    with GpuDevice(prefer="cpu") as device:
        info = device.info
        assert info == DeviceInfo(name="cpu", backend="numpy", kind="cpu", vendor="")
        assert not info.is_gpu
        assert info.to_json()["software"] is True
        a, b = _rand((17, 33), 5), _rand((33, 5), 6)
        got, result = _run(device, store, "matmul", [a, b], (17, 5))
        assert result.placement == "cpu"
        np.testing.assert_array_equal(got, a @ b)
        for op, params in ELEMENTWISE:
            arrays = [a, _rand((17, 33), 7)][: 2 if op in ("add", "mul") else 1]
            got, result = _run(device, store, op, arrays, a.shape, params)
            assert result.placement == "cpu"
            np.testing.assert_array_equal(got, _expected(op, arrays, params))
    notices = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(notices) == 1, [r.getMessage() for r in notices]
    assert "numpy" in notices[0].getMessage()


def _no_adapter() -> NoReturn:
    raise _backends.NoAdapterError("wgpu found no adapter")


def test_no_adapter_falls_back_to_numpy_with_one_notice(
    store: TensorStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("QHYBRID_DEVICE", raising=False)
    monkeypatch.setattr(_backends, "_open_wgpu", _no_adapter)
    caplog.set_level(logging.WARNING, logger="qhybrid.runtime.wgpu_thread")
    with GpuDevice() as device:
        assert device.info.kind == "cpu"
        got, result = _run(device, store, "mul", [_rand((9,), 1), _rand((9,), 2)], (9,))
        assert result.placement == "cpu"
        np.testing.assert_array_equal(got, _rand((9,), 1) * _rand((9,), 2))
    notices = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(notices) == 1
    assert "no usable GPU" in notices[0]
    assert "no adapter" in notices[0]


def test_prefer_gpu_without_an_adapter_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_backends, "_open_wgpu", _no_adapter)
    device = GpuDevice(prefer="gpu")
    with pytest.raises(GpuJobError, match="GPU was required"):
        device.start()
    assert device.thread is not None
    assert not device.thread.is_alive()
    device.close()


def test_environment_overrides_auto_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QHYBRID_DEVICE", "cpu")
    with GpuDevice() as device:
        assert device.info.kind == "cpu"
    monkeypatch.setenv("QHYBRID_DEVICE", "quantum")
    with pytest.raises(ValueError, match="QHYBRID_DEVICE"):
        GpuDevice()
    GpuDevice(prefer="cpu").close()  # an explicit choice ignores the variable
    with pytest.raises(ValueError, match="prefer"):
        GpuDevice(prefer="tpu")


def test_bad_jobs_fail_their_future_and_the_gpu_goes_on(gpu: GpuDevice, store: TensorStore) -> None:
    _check_bad_jobs(gpu, store, "gpu")


def test_bad_jobs_fail_their_future_and_numpy_goes_on(cpu: GpuDevice, store: TensorStore) -> None:
    _check_bad_jobs(cpu, store, "cpu")


def _check_bad_jobs(device: GpuDevice, store: TensorStore, placement: str) -> None:
    a = store.from_array(_rand((4, 3)))
    b = store.from_array(_rand((4, 3)))
    out = store.create((4, 4), np.float32)
    wide = store.create((4, 3), np.float64)
    gone = store.from_array(_rand((4, 3)))
    gone_handle = gone.handle
    gone.close()  # freed: the device thread cannot map it
    try:
        cases = [
            (("matmul", [a.handle, b.handle], out.handle, None), "inner dimensions"),
            (("add", [a.handle, b.handle], out.handle, None), "expected float32[4x3]"),
            (("add", [a.handle], out.handle, None), "takes 2 inputs"),
            (("conv2d", [a.handle], out.handle, None), "unknown op"),
            (("scale", [a.handle], wide.handle, {"factor": 2.0}), "expected float32"),
            (("relu", [a.handle], b.handle, {"factor": 2.0}), "no parameter"),
            (("relu", [gone_handle], b.handle, None), "failed"),
        ]
        for (op, ins, dst, params), why in cases:
            future = device.submit(op, ins, dst, params)
            with pytest.raises(GpuJobError, match=re.escape(why)) as info:
                future.result(timeout=30)
            assert op in str(info.value)
            assert "job " in str(info.value)
        # The thread survived every failure.
        assert device.thread is not None
        assert device.thread.is_alive()
        result = device.submit("add", [a.handle, b.handle], b.handle).result(timeout=30)
        assert result.placement == placement
        assert device.pending() == 0
    finally:
        for t in (a, b, out, wide):
            t.close()


def test_events_fire_on_the_device_thread(gpu: GpuDevice, store: TensorStore) -> None:
    seen: list[tuple[str, GpuJobEvent, threading.Thread]] = []

    def started(event: GpuJobEvent) -> None:
        seen.append(("started", event, threading.current_thread()))

    def finished(event: GpuJobEvent) -> None:
        seen.append(("finished", event, threading.current_thread()))

    gpu.job_started.connect(started)
    gpu.job_finished.connect(finished)
    try:
        _, result = _run(gpu, store, "relu", [_rand((8, 8))], (8, 8))
        gone = store.from_array(_rand((2,)))
        handle = gone.handle
        gone.close()
        dst = store.create((2,), np.float32)
        with pytest.raises(GpuJobError):
            gpu.submit("relu", [handle], dst.handle).result(timeout=30)
        dst.close()
    finally:
        gpu.job_started.disconnect(started)
        gpu.job_finished.disconnect(finished)
    assert [kind for kind, _, _ in seen] == ["started", "finished", "started", "finished"]
    assert all(thread is gpu.thread for _, _, thread in seen)
    ok_start, ok_end, _, bad_end = (event for _, event, _ in seen)
    assert ok_start.job_id == ok_end.job_id == result.job_id
    assert ok_start.elapsed_s == 0.0
    assert ok_end.elapsed_s > 0
    assert ok_end.placement == "gpu"
    assert ok_end.error is None
    assert bad_end.error is not None
    assert "relu" in bad_end.error


def test_a_raising_handler_does_not_break_the_device(cpu: GpuDevice, store: TensorStore) -> None:
    def boom(event: GpuJobEvent) -> None:
        raise RuntimeError("handler bug")

    cpu.job_finished.connect(boom)
    try:
        got, _ = _run(cpu, store, "scale", [np.ones(3, np.float32)], (3,), {"factor": 2.0})
    finally:
        cpu.job_finished.disconnect(boom)
    np.testing.assert_array_equal(got, np.full(3, 2.0, np.float32))


def test_jobs_from_many_threads(gpu: GpuDevice, store: TensorStore) -> None:
    def worker(seed: int) -> list[int]:
        ids = []
        for i in range(6):
            m, k, n = 5 + seed, 7 + i, 3 + seed % 4
            a, b = _rand((m, k), seed * 100 + i), _rand((k, n), seed * 100 + i + 50)
            got, result = _run(gpu, store, "matmul", [a, b], (m, n))
            np.testing.assert_allclose(got, _expected("matmul", [a, b]), rtol=1e-4, atol=1e-5)
            x = _rand((m, k), seed)
            got, result2 = _run(gpu, store, "add", [x, a], x.shape)
            np.testing.assert_array_equal(got, x + a)
            ids += [result.job_id, result2.job_id]
        return ids

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        all_ids = [i for ids in pool.map(worker, range(8)) for i in ids]
    assert len(all_ids) == len(set(all_ids)) == 8 * 12
    assert gpu.pending() == 0


def test_asyncio_callers_wrap_the_future(cpu: GpuDevice, store: TensorStore) -> None:
    a = store.from_array(_rand((6, 6)))
    out = store.create((6, 6), np.float32)

    async def main() -> GpuJobResult:
        return await asyncio.wrap_future(cpu.submit("relu", [a.handle], out.handle))

    result = asyncio.run(main())
    assert result.op == "relu"
    np.testing.assert_array_equal(out.array, np.maximum(a.array, 0))
    a.close()
    out.close()


def test_close_joins_the_thread_and_is_idempotent(store: TensorStore) -> None:
    threads_before = set(threading.enumerate())
    device = GpuDevice()  # the GPU when there is one: wgpu's poll thread must go too
    device.start()
    assert device.start() == device.info  # start is idempotent
    thread = device.thread
    assert thread is not None
    assert thread.is_alive()
    _run(device, store, "relu", [_rand((4, 4))], (4, 4))
    device.close()
    device.close()
    assert not thread.is_alive()
    assert set(threading.enumerate()) - threads_before == set()
    a = store.from_array(_rand((2,)))
    with pytest.raises(GpuJobError, match="device closed"):
        device.submit("relu", [a.handle], a.handle).result(timeout=1)
    with pytest.raises(GpuJobError, match="closed"):
        device.start()
    a.close()
    GpuDevice(prefer="cpu").close()  # closing a device never started is fine


def test_close_fails_queued_jobs_and_finishes_the_running_one(store: TensorStore) -> None:
    device = GpuDevice(prefer="cpu")
    device.start()
    gate = threading.Event()
    running = threading.Event()

    def hold(event: GpuJobEvent) -> None:
        running.set()
        gate.wait(10)

    device.job_started.connect(hold)
    a = store.from_array(_rand((3, 3)))
    outs = [store.create((3, 3), np.float32) for _ in range(4)]
    futures = [device.submit("relu", [a.handle], o.handle) for o in outs]
    assert running.wait(10)
    assert device.pending() == 4
    closer = threading.Thread(target=device.close)
    closer.start()
    for future in futures[1:]:
        with pytest.raises(GpuJobError, match="device closed"):
            future.result(timeout=10)
    gate.set()
    closer.join(10)
    assert not closer.is_alive()
    assert futures[0].result(timeout=10).op == "relu"
    np.testing.assert_array_equal(outs[0].array, np.maximum(a.array, 0))
    assert device.pending() == 0
    assert device.thread is not None
    assert not device.thread.is_alive()
    for t in (a, *outs):
        t.close()


def test_a_lost_device_fails_the_job_then_is_opened_again(
    store: TensorStore, caplog: pytest.LogCaptureFixture
) -> None:
    device = GpuDevice(prefer="gpu")
    try:
        device.start()
    except GpuJobError as exc:
        pytest.skip(f"no wgpu adapter on this machine: {exc}")
    threads_before_loss = set(threading.enumerate())
    changed: list[DeviceInfo] = []
    device.device_changed.connect(changed.append)
    try:
        a = _rand((20, 20))
        assert _run(device, store, "matmul", [a, a], (20, 20))[1].placement == "gpu"
        old = device.call(lambda ctx: ctx.upload(a) if ctx else None).result(timeout=30)
        assert old is not None and old.generation == 1

        def destroy(ctx: ComputeContext | None) -> None:
            assert ctx is not None
            ctx.wgpu_device.destroy()  # what a driver reset looks like

        device.call(destroy).result(timeout=30)
        with pytest.raises(GpuDeviceLost, match="lost"):
            _run(device, store, "matmul", [a, a], (20, 20))
        assert changed and changed[0].is_gpu
        got, result = _run(device, store, "matmul", [a, a], (20, 20))
        assert result.placement == "gpu"
        np.testing.assert_allclose(got, a @ a, rtol=1e-5, atol=1e-5)
        assert any("was lost" in r.getMessage() for r in caplog.records)

        # A tensor of the old device is dead, and says so; the context's generation moved on.
        def use_old(ctx: ComputeContext | None) -> object:
            assert ctx is not None
            assert ctx.generation == 2
            return ctx.read(old)

        with pytest.raises(GpuDeviceLost, match="upload it again"):
            device.call(use_old).result(timeout=30)

        # A call in flight when the device goes fails with GpuDeviceLost too.
        def lose_during_call(ctx: ComputeContext | None) -> object:
            assert ctx is not None
            x = ctx.upload(a)
            ctx.wgpu_device.destroy()
            return ctx.read(x)

        with pytest.raises(GpuDeviceLost):
            device.call(lose_during_call).result(timeout=30)
        assert device.call(lambda ctx: ctx.generation if ctx else 0).result(timeout=30) == 3
    finally:
        device.close()
    assert device.thread is not None
    assert not device.thread.is_alive()
    left = {t for t in threading.enumerate() if t not in threads_before_loss and t.is_alive()}
    assert left == set()


def test_importing_the_package_is_cheap_and_qt_free() -> None:
    code = (
        "import sys, qhybrid.runtime.wgpu_thread as w; "
        "assert 'wgpu' not in sys.modules, 'wgpu imported eagerly'; "
        "assert not any(m.split('.')[0] in ('PySide6', 'shiboken6') for m in sys.modules); "
        "assert set(w.__all__) >= {'GpuDevice', 'DeviceInfo', 'GpuJobResult', 'GpuJobError'}"
    )
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parents[2])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_the_package_imports_neither_qt_nor_the_worker_pool() -> None:
    # Statically, since the runtime's facade joins both subsystems anyway.
    forbidden = ("PySide6", "shiboken6", "qasync", "pyqtgraph", "qhybrid.runtime.wasm_pool")
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"
                if name.split(".")[0] == "wgpu":
                    assert node.col_offset > 0, f"{path.name} imports wgpu at module level"


def test_shaders_ship_inside_the_package() -> None:
    for name in ("linear_mv", "linear_mm", "elementwise", "quant", "attention", "select"):
        assert (PACKAGE / f"{name}.wgsl").is_file()
    assert set(gpu_ops()) >= {"matmul", "add", "mul", "scale", "relu", "silu", "softmax"}
    for spec in (_library.elementwise("add"), _library.linear_mm("matrix", _library.Variant())):
        assert "${" not in spec.source
