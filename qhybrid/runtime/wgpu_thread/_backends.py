"""What the device thread computes with: a wgpu device, or numpy when there is none.

Everything here runs on the device thread only; nothing is thread-safe and nothing needs to be.
``wgpu`` is imported here lazily, inside :func:`open_backend`, so importing the package stays
cheap and works where wgpu's native library is missing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from qhybrid.runtime.tensors import run_numpy
from qhybrid.runtime.wgpu_thread._kernels import PARAMS_NBYTES, Kernel, Shape, get_kernel
from qhybrid.runtime.wgpu_thread._types import (
    CPU_DEVICE_INFO,
    DeviceInfo,
    GpuJobError,
    Placement,
    Prefer,
)

logger = logging.getLogger(__name__)

Array = npt.NDArray[Any]

# Pooled buffer sizes: powers of two from 256 bytes to 1 MiB, then whole MiB, so similar jobs
# reuse buffers without wasting much memory on big ones.
_MIN_BUFFER = 256
_MIB = 1024 * 1024
# Free buffers kept for reuse, in bytes; a released buffer beyond this is destroyed.
_POOL_BYTES = 128 * _MIB
# How long close() waits for wgpu's poll thread to end.
_POLLER_JOIN_S = 5.0


class Backend(Protocol):
    """The device thread's compute engine."""

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
    ) -> None:
        """Compute ``op`` into ``out`` where :meth:`placement` said."""
        ...

    def close(self) -> None: ...


class NumpyBackend:
    """Every op with numpy, through the same op table worker processes use."""

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
    ) -> None:
        run_numpy(op, inputs, out, params)

    def close(self) -> None:
        pass


class NoAdapterError(RuntimeError):
    """wgpu is missing, or it found no adapter or could not open a device."""


class _BufferPool:
    """Free GPU buffers by (usage, size); jobs run one at a time, so reuse is immediate."""

    def __init__(self, device: Any, limit: int) -> None:
        self._device = device
        self._limit = limit
        self._free: dict[tuple[int, int], list[Any]] = {}
        self._free_bytes = 0

    def size_for(self, nbytes: int) -> int:
        """The pooled size for ``nbytes`` (never beyond the binding limit when it fits)."""
        if nbytes <= _MIB:
            size = max(_MIN_BUFFER, 1 << max(nbytes - 1, 0).bit_length())
        else:
            size = -(-nbytes // _MIB) * _MIB
        if size > self._limit:
            size = max(4, -(-nbytes // 4) * 4)
        return size

    def acquire(self, usage: int, nbytes: int, label: str) -> Any:
        size = self.size_for(nbytes)
        free = self._free.get((usage, size))
        if free:
            self._free_bytes -= size
            return free.pop()
        return self._device.create_buffer(label=label, size=size, usage=usage)

    def release(self, buffer: Any) -> None:
        size = int(buffer.size)
        if self._free_bytes + size > _POOL_BYTES:
            _destroy(buffer)
            return
        self._free.setdefault((int(buffer.usage), size), []).append(buffer)
        self._free_bytes += size

    def clear(self) -> None:
        for buffers in self._free.values():
            for buffer in buffers:
                _destroy(buffer)
        self._free.clear()
        self._free_bytes = 0


def _destroy(buffer: Any) -> None:
    try:
        buffer.destroy()
    except Exception:  # a lost device may refuse; the handle is dropped anyway
        logger.debug("could not destroy a GPU buffer", exc_info=True)


class _Pipeline:
    __slots__ = ("layout", "params", "pipeline")

    def __init__(self, pipeline: Any, layout: Any, params: Any) -> None:
        self.pipeline = pipeline
        self.layout = layout
        self.params = params


class WgpuBackend:
    """Ops as WGSL compute shaders on one wgpu device; ops without a kernel run with numpy.

    Pipelines are compiled once per op. Inputs are uploaded straight from the shared-memory
    views with ``queue.write_buffer``; the output is copied into a mappable staging buffer in the
    same submission and read back into the output tensor.
    """

    def __init__(self, wgpu: Any, adapter: Any, device: Any) -> None:
        self._wgpu = wgpu
        self._adapter = adapter
        self._device = device
        self._queue = device.queue
        limits = device.limits
        self._max_binding = min(
            int(limits["max-storage-buffer-binding-size"]), int(limits["max-buffer-size"])
        )
        self._max_groups = int(limits["max-compute-workgroups-per-dimension"])
        self._pool = _BufferPool(device, self._max_binding)
        self._pipelines: dict[str, _Pipeline] = {}
        self._lost: str | None = None
        usage = wgpu.BufferUsage
        self._input_usage = int(usage.STORAGE | usage.COPY_DST)
        self._output_usage = int(usage.STORAGE | usage.COPY_SRC)
        self._staging_usage = int(usage.MAP_READ | usage.COPY_DST)
        self._params_usage = int(usage.UNIFORM | usage.COPY_DST)
        self._info = _describe(adapter.info)

    @property
    def info(self) -> DeviceInfo:
        return self._info

    # -- planning -------------------------------------------------------------------------
    def placement(self, op: str, shapes: Sequence[Shape], out_shape: Shape) -> Placement:
        kernel = get_kernel(op)
        if self._lost is not None or kernel is None:
            return "cpu"
        for shape in (*shapes, out_shape):
            if _nbytes(shape) > self._max_binding:
                logger.debug(
                    "%s: a %s tensor exceeds the GPU binding limit; numpy runs it", op, shape
                )
                return "cpu"
        if kernel.grid(shapes, self._max_groups) is None:
            logger.debug("%s: too many workgroups for one dispatch; numpy runs it", op)
            return "cpu"
        return "gpu"

    # -- running --------------------------------------------------------------------------
    def run(
        self,
        op: str,
        placement: Placement,
        inputs: Sequence[Array],
        out: Array,
        params: Mapping[str, float],
    ) -> None:
        kernel = get_kernel(op)
        if placement == "cpu" or kernel is None:
            run_numpy(op, inputs, out, params)
            return
        if self._lost is not None:
            raise GpuJobError(f"the GPU device was lost earlier: {self._lost}")
        try:
            self._dispatch(kernel, inputs, out, params)
        except Exception as exc:
            # A failed submission can leave a buffer mapped or invalid: start the pool afresh.
            self._pool.clear()
            lost = self._check_lost(exc)
            if lost:
                raise GpuJobError(f"the GPU device was lost: {lost}") from exc
            raise

    def _dispatch(
        self, kernel: Kernel, inputs: Sequence[Array], out: Array, params: Mapping[str, float]
    ) -> None:
        if out.size == 0:
            return  # nothing to write; a zero-size dispatch or copy would be refused
        shapes = [tuple(a.shape) for a in inputs]
        grid = kernel.grid(shapes, self._max_groups)
        if grid is None:  # placement() rules this out; kept for a clear message
            raise GpuJobError(f"{kernel.op}: too many workgroups for one dispatch")
        pipe = self._pipeline(kernel)
        device, queue, pool = self._device, self._queue, self._pool

        held: list[Any] = []
        try:
            entries: list[dict[str, Any]] = []
            for binding, array in zip(kernel.input_bindings, inputs, strict=True):
                buf = pool.acquire(self._input_usage, array.nbytes, f"{kernel.op}.in{binding}")
                held.append(buf)
                if array.nbytes:
                    queue.write_buffer(buf, 0, np.ascontiguousarray(array))
                entries.append({"binding": binding, "resource": {"buffer": buf}})
            out_buf = pool.acquire(self._output_usage, out.nbytes, f"{kernel.op}.out")
            held.append(out_buf)
            staging = pool.acquire(self._staging_usage, out.nbytes, f"{kernel.op}.staging")
            held.append(staging)
            entries.append({"binding": kernel.output_binding, "resource": {"buffer": out_buf}})
            entries.append({"binding": kernel.params_binding, "resource": {"buffer": pipe.params}})
            queue.write_buffer(pipe.params, 0, kernel.pack_params(shapes, params))

            bind_group = device.create_bind_group(layout=pipe.layout, entries=entries)
            encoder = device.create_command_encoder(label=kernel.op)
            compute = encoder.begin_compute_pass(label=kernel.op)
            compute.set_pipeline(pipe.pipeline)
            compute.set_bind_group(0, bind_group)
            compute.dispatch_workgroups(*grid)
            compute.end()
            encoder.copy_buffer_to_buffer(out_buf, 0, staging, 0, out.nbytes)
            queue.submit([encoder.finish()])

            staging.map_sync(self._wgpu.MapMode.READ, 0, out.nbytes)
            try:
                mapped = staging.read_mapped(0, out.nbytes, copy=False)
                out[...] = np.frombuffer(mapped, dtype=out.dtype, count=out.size).reshape(out.shape)
                del mapped  # no view may outlive the mapping
            finally:
                staging.unmap()
        finally:
            for buf in held:
                pool.release(buf)

    def _pipeline(self, kernel: Kernel) -> _Pipeline:
        pipe = self._pipelines.get(kernel.op)
        if pipe is None:
            device = self._device
            module = device.create_shader_module(label=kernel.op, code=kernel.source)
            pipeline = device.create_compute_pipeline(
                label=kernel.op, layout="auto", compute={"module": module, "entry_point": "main"}
            )
            params = device.create_buffer(
                label=f"{kernel.op}.params", size=PARAMS_NBYTES, usage=self._params_usage
            )
            pipe = _Pipeline(pipeline, pipeline.get_bind_group_layout(0), params)
            self._pipelines[kernel.op] = pipe
            logger.debug("compiled the %s pipeline", kernel.op)
        return pipe

    def _check_lost(self, exc: Exception) -> str | None:
        """If the device is gone, remember why (later jobs then run with numpy)."""
        reason: str | None = None
        if "lost" in str(exc).lower():
            reason = _first_line(exc)
        else:
            try:  # a device that cannot make a 4-byte buffer is gone
                self._device.create_buffer(size=4, usage=self._params_usage).destroy()
            except Exception as probe:
                reason = _first_line(probe)
        if reason is not None and self._lost is None:
            self._lost = reason
            self._pipelines.clear()
            logger.error(
                "the GPU device %r was lost (%s); later jobs run with numpy on the device thread",
                self._info.name,
                reason,
            )
        return reason

    # -- closing --------------------------------------------------------------------------
    def close(self) -> None:
        """Free buffers and pipelines and destroy the device (which stops wgpu's poll thread)."""
        self._pool.clear()
        for pipe in self._pipelines.values():
            _destroy(pipe.params)
        self._pipelines.clear()
        # wgpu-py polls each device on its own thread and stops it in destroy(), joining it for
        # at most a second; join it again so that close() leaves no thread behind.
        poller = getattr(self._device, "_poller", None)
        try:
            self._device.destroy()
        except Exception:
            logger.debug("destroying the wgpu device failed", exc_info=True)
        if isinstance(poller, threading.Thread) and poller.is_alive():
            poller.join(_POLLER_JOIN_S)
            if poller.is_alive():
                logger.warning("wgpu's poll thread did not stop within %g s", _POLLER_JOIN_S)
        self._queue = None
        self._device = None
        self._adapter = None


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


def open_backend(prefer: Prefer) -> Backend:
    """The backend for ``prefer``, logging one warning when numpy stands in for a GPU.

    Raises :class:`GpuJobError` when ``prefer`` is ``"gpu"`` and no device can be opened.
    """
    if prefer == "cpu":
        logger.warning(
            "GPU disabled (prefer='cpu' or QHYBRID_DEVICE=cpu): "
            "tensor ops run with numpy on the device thread"
        )
        return NumpyBackend()
    try:
        backend = _open_wgpu()
    except NoAdapterError as exc:
        if prefer == "gpu":
            raise GpuJobError(
                f"a GPU was required (prefer='gpu') but none is usable: {exc}"
            ) from exc
        logger.warning("no usable GPU (%s): tensor ops run with numpy on the device thread", exc)
        return NumpyBackend()
    info = backend.info
    logger.info("GPU device: %s via %s (%s)", info.name, info.backend, info.kind)
    return backend


def _open_wgpu() -> WgpuBackend:
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
    try:
        # No required limits: wgpu-py then asks for the adapter's own limits, not the defaults.
        device = adapter.request_device_sync(label="qhybrid")
    except Exception as exc:
        raise NoAdapterError(
            f"opening a device on {adapter.summary} failed: {_first_line(exc)}"
        ) from exc
    return WgpuBackend(wgpu, adapter, device)
