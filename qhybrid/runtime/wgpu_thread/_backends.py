"""What the device thread computes with: a wgpu device, or numpy when there is none.

Everything here runs on the device thread only; nothing is thread-safe and nothing needs to be.
``wgpu`` is imported here lazily, inside :func:`open_backend`, so importing the package stays
cheap and works where wgpu's native library is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from qhybrid.runtime.tensors import run_numpy
from qhybrid.runtime.wgpu_thread._context import (
    ComputeContext,
    GpuTensor,
    _Gpu,
)
from qhybrid.runtime.wgpu_thread._kernels import Shape, get_kernel
from qhybrid.runtime.wgpu_thread._placement import (
    CostModel,
    best_time,
    fixed_placement,
    load_or_calibrate,
)
from qhybrid.runtime.wgpu_thread._types import (
    CPU_DEVICE_INFO,
    DeviceInfo,
    GpuJobError,
    Placement,
    Prefer,
)

logger = logging.getLogger(__name__)

Array = npt.NDArray[Any]


class Backend(Protocol):
    """The device thread's compute engine."""

    #: The GPU context :meth:`GpuDevice.call` hands out; None when numpy does the work.
    context: ComputeContext | None
    #: The placement model (``prefer="auto"`` on a GPU only).
    cost: CostModel | None

    @property
    def info(self) -> DeviceInfo: ...

    def placement(self, op: str, shapes: Sequence[Shape], out_shape: Shape) -> Placement:
        """Where a job with these shapes will run."""
        ...

    def run(
        self,
        op: str,
        placement: Placement,
        inputs: Sequence[Array],
        out: Array,
        params: Mapping[str, float],
    ) -> float | None:
        """Compute ``op`` into ``out`` where :meth:`placement` said; the GPU time in
        seconds where timestamp queries measured it, else None."""
        ...

    def check_lost(self, exc: BaseException) -> str | None:
        """Why the device is gone, after ``exc``; None if it is not."""
        ...

    def recreate(self, reason: str) -> bool:
        """Open the device again after a loss; False if numpy must take over."""
        ...

    def close(self) -> None: ...


class NumpyBackend:
    """Every op with numpy, through the same op table worker processes use."""

    context: ComputeContext | None = None
    cost: CostModel | None = None

    @property
    def info(self) -> DeviceInfo:
        return CPU_DEVICE_INFO

    def placement(self, op: str, shapes: Sequence[Shape], out_shape: Shape) -> Placement:
        return "cpu"

    def run(
        self,
        op: str,
        placement: Placement,
        inputs: Sequence[Array],
        out: Array,
        params: Mapping[str, float],
    ) -> float | None:
        run_numpy(op, inputs, out, params)
        return None

    def check_lost(self, exc: BaseException) -> str | None:
        return None

    def recreate(self, reason: str) -> bool:
        return False

    def close(self) -> None:
        pass


class NoAdapterError(RuntimeError):
    """wgpu is missing, or it found no adapter or could not open a device."""


#: Optional features the kernels use, requested when the adapter has them.
WANTED_FEATURES = ("shader-f16", "subgroup", "timestamp-query")


class WgpuBackend:
    """Jobs as WGSL kernels through a :class:`ComputeContext`; ops without a kernel, and jobs
    the cost model gives to the CPU (``prefer="auto"``), run with numpy.

    Inputs are uploaded straight from the shared-memory views with ``queue.write_buffer`` into
    pooled buffers; the output comes back through the context's persistent staging buffer.
    """

    def __init__(
        self, ctx: ComputeContext, prefer: Prefer, cost: CostModel | None, fixed: bool = False
    ) -> None:
        self.context: ComputeContext | None = ctx
        self._ctx = ctx
        self._prefer = prefer
        self.cost = cost
        self._fixed = fixed
        self._lost: str | None = None

    @property
    def info(self) -> DeviceInfo:
        return self._ctx.info

    # -- planning -------------------------------------------------------------------------
    def placement(self, op: str, shapes: Sequence[Shape], out_shape: Shape) -> Placement:
        if self.context is None or get_kernel(op) is None:
            return "cpu"
        limit = self._ctx.max_buffer_bytes
        for shape in (*shapes, out_shape):
            if _nbytes(shape) > limit:
                logger.debug(
                    "%s: a %s tensor exceeds the GPU binding limit; numpy runs it", op, shape
                )
                return "cpu"
        if self._prefer == "auto" and self._fixed:
            return fixed_placement(self._ctx.info, op, shapes, out_shape)
        if self._prefer == "auto" and self.cost is not None:
            return self.cost.placement(op, shapes, out_shape)
        return "gpu"

    # -- running --------------------------------------------------------------------------
    def run(
        self,
        op: str,
        placement: Placement,
        inputs: Sequence[Array],
        out: Array,
        params: Mapping[str, float],
    ) -> float | None:
        kernel = get_kernel(op)
        if placement == "cpu" or kernel is None:
            run_numpy(op, inputs, out, params)
            return None
        if self.context is None:
            raise GpuJobError(f"the GPU device was lost earlier: {self._lost}")
        ctx = self._ctx
        held: list[GpuTensor] = []
        try:
            tensors = []
            for array in inputs:
                tensors.append(ctx.upload(array, label=f"{op}.in"))
                held.append(tensors[-1])
            result = ctx.empty(out.shape, out.dtype, label=f"{op}.out")
            held.append(result)
            rec = ctx.record(profile=True)
            kernel(rec, tensors, result, params)
            (values,) = rec.submit(read=[result])
            out[...] = values
            return sum(t.gpu_s for t in rec.timings) if rec.timings else None
        finally:
            for t in held:
                ctx.release(t)

    def check_lost(self, exc: BaseException) -> str | None:
        """If the device is gone, the reason (else None), whatever ``exc`` says: probes the
        device with a tiny buffer (a stale tensor's GpuDeviceLost is not a new loss)."""
        try:
            self._ctx.wgpu_device.create_buffer(size=4, usage=0x0040).destroy()  # UNIFORM
        except Exception as probe:
            return _first_line(probe)
        return None

    def recreate(self, reason: str) -> bool:
        """Open a new device after a loss (a new context generation); False if none opens,
        and then later jobs run with numpy."""
        logger.error("the GPU device %r was lost (%s); opening it again", self.info.name, reason)
        try:
            gpu, info = _open_gpu()
        except Exception as exc:
            logger.error("no GPU device after the loss (%s): tensor ops run with numpy", exc)
            self._lost = reason
            self.context = None
            return False
        self._ctx._replace(gpu, info)
        self.context = self._ctx
        return True

    # -- closing --------------------------------------------------------------------------
    def close(self) -> None:
        """Free buffers and pipelines and destroy the device (which stops wgpu's poll thread)."""
        self._ctx._close()


def _nbytes(shape: Shape) -> int:
    n = 4  # float32, the only dtype the ops take
    for d in shape:
        n *= d
    return n


def _first_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text or type(exc).__name__


def _describe(info: Mapping[str, Any]) -> DeviceInfo:
    adapter_type = str(info.get("adapter_type", ""))
    return DeviceInfo(
        name=str(info.get("device") or info.get("description") or "unknown adapter"),
        backend=str(info.get("backend_type") or "unknown"),
        kind="software" if adapter_type.upper() == "CPU" else "hardware",
        vendor=str(info.get("vendor") or ""),
    )


def open_backend(prefer: Prefer, fixed: bool = False) -> Backend:
    """The backend for ``prefer``, logging one warning when numpy stands in for a GPU.

    Raises :class:`GpuJobError` when ``prefer`` is ``"gpu"`` and no device can be opened.
    With ``prefer="auto"`` the placement cost model is loaded or calibrated here, unless
    ``fixed`` (then :func:`fixed_placement` decides, with no timing).
    """
    if prefer == "cpu":
        logger.warning(
            "GPU disabled (prefer='cpu' or QHYBRID_DEVICE=cpu): "
            "tensor ops run with numpy on the device thread"
        )
        return NumpyBackend()
    try:
        gpu, info = _open_gpu()
    except NoAdapterError as exc:
        if prefer == "gpu":
            raise GpuJobError(
                f"a GPU was required (prefer='gpu') but none is usable: {exc}"
            ) from exc
        logger.warning("no usable GPU (%s): tensor ops run with numpy on the device thread", exc)
        return NumpyBackend()
    ctx = ComputeContext(gpu, info)
    logger.info(
        "GPU device: %s via %s (%s); f16 %s, subgroups %s, timestamps %s",
        info.name,
        info.backend,
        info.kind,
        ctx.features.f16,
        ctx.features.subgroups,
        ctx.features.timestamps,
    )
    cost: CostModel | None = None
    if prefer == "auto" and not fixed:
        try:
            cost = load_or_calibrate(info, gpu.driver, lambda: measure_gpu(ctx))
        except Exception:
            logger.exception("calibrating the placement model failed; every kernel runs on the GPU")
    return WgpuBackend(ctx, prefer, cost, fixed)


def _open_gpu() -> tuple[_Gpu, DeviceInfo]:
    wgpu, adapter, device = _open_wgpu()
    return _Gpu(wgpu, adapter, device), _describe(adapter.info)


def _open_wgpu() -> tuple[Any, Any, Any]:
    try:
        import wgpu
    except Exception as exc:  # missing package or native library
        raise NoAdapterError(f"wgpu could not be imported: {_first_line(exc)}") from exc
    try:
        adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    except Exception as exc:
        raise NoAdapterError(f"requesting an adapter failed: {_first_line(exc)}") from exc
    if adapter is None:
        raise NoAdapterError("wgpu found no adapter")
    features = [f for f in WANTED_FEATURES if f in adapter.features]
    try:
        # No required limits: wgpu-py then asks for the adapter's own limits, not the defaults.
        device = adapter.request_device_sync(label="qhybrid", required_features=features)
    except Exception as exc:
        raise NoAdapterError(
            f"opening a device on {adapter.summary} failed: {_first_line(exc)}"
        ) from exc
    return wgpu, adapter, device


def measure_gpu(ctx: ComputeContext) -> dict[str, float]:
    """The GPU's rates for the placement model: a job's round trip, transfers, a matrix
    product and a streaming kernel (about a quarter of a second on llvmpipe)."""
    rng = np.random.default_rng(0)
    tiny = ctx.upload(np.zeros(64, np.float32))
    tiny_out = ctx.empty(64)
    n = 256
    a = rng.standard_normal((n, n), dtype=np.float32)
    big = rng.standard_normal(1 << 20, dtype=np.float32)
    at, ct = ctx.upload(a), ctx.empty((n, n))
    bt, bo = ctx.upload(big), ctx.empty(big.shape)
    try:

        def round_trip() -> None:
            rec = ctx.record()
            rec.relu(tiny, tiny_out)
            rec.submit(read=[tiny_out])

        def transfer() -> None:
            ctx.write(bt, big)
            ctx.read(bt)

        def product() -> None:
            rec = ctx.record()
            rec.matmul(at, at, ct)
            rec.submit(read=[tiny_out])

        def stream() -> None:
            rec = ctx.record()
            rec.add(bt, bt, bo)
            rec.submit(read=[tiny_out])

        round_trip()
        product()
        overhead = best_time(round_trip)
        t_transfer = max(best_time(transfer) - overhead, 1e-6)
        t_product = max(best_time(product) - overhead, 1e-6)
        t_stream = max(best_time(stream) - overhead, 1e-6)
    finally:
        for t in (tiny, tiny_out, at, ct, bt, bo):
            ctx.release(t)
    return {
        "gpu_overhead_s": overhead,
        "gpu_transfer_bps": 2 * big.nbytes / t_transfer,
        "gpu_flops": 2.0 * n**3 / t_product,
        "gpu_stream_bps": 3 * big.nbytes / t_stream,
    }
