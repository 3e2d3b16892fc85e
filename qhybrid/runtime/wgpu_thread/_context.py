"""ComputeContext: tensors on the wgpu device, and a Recorder that batches kernels into one submit.

Everything here runs on the device thread only (:meth:`GpuDevice.call` hands the context to a
function there); nothing is thread-safe and nothing needs to be. The context outlives a lost
device: :class:`GpuDevice` gives it a new device (``generation`` bumps) and tensors of an older
generation raise :class:`GpuDeviceLost` when used.

What is reused, never allocated per call: GPU buffers (a pool by size class), pipelines (one
per kernel specialisation), bind groups (per kernel and buffers), the uniform parameter ring
(every dispatch's parameters go into one buffer, written once per submit, bound at a dynamic
offset), the staging buffer that reads come back through, and the timestamp query set.
"""

from __future__ import annotations

import itertools
import logging
import math
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from qhybrid.runtime.wgpu_thread import _library as lib
from qhybrid.runtime.wgpu_thread._reference import QTYPES, row_nbytes
from qhybrid.runtime.wgpu_thread._types import DeviceInfo, GpuJobError

logger = logging.getLogger(__name__)

Array = npt.NDArray[Any]

#: dtypes a tensor may have.
TENSOR_DTYPES = (np.float32, np.float16, np.uint32, np.int32, np.uint8)

_MIN_BUFFER = 256
_MIB = 1024 * 1024
# Free buffers kept for reuse, in bytes; a released buffer beyond this is destroyed.
_POOL_BYTES = 256 * _MIB
# Stride of the parameter ring: 256 bytes satisfies every device's uniform offset alignment.
_PARAMS_STRIDE = 256
_PARAMS_SLOTS = 1024
_MAX_TIMESTAMPS = 4096
# Cached bind groups kept at most (the oldest go first).
_BIND_GROUPS = 4096
_POLLER_JOIN_S = 5.0


class GpuDeviceLost(GpuJobError):
    """The wgpu device was lost (or the tensor belongs to a device that was): the work failed.

    The device is created again; tensors of the old device must be uploaded again.
    """


@dataclass(frozen=True, slots=True)
class DeviceFeatures:
    """Optional WebGPU features the kernels use: ``shader-f16``, subgroups, timestamp queries."""

    f16: bool = False
    subgroups: bool = False
    timestamps: bool = False


@dataclass(frozen=True, slots=True)
class KernelTiming:
    """One dispatch's GPU time from timestamp queries (a profiling recorder's)."""

    name: str
    gpu_s: float


class _Buffer:
    """A wgpu buffer and a serial number that keys cached bind groups."""

    __slots__ = ("buffer", "serial", "size")
    _serials = itertools.count(1)

    def __init__(self, buffer: Any, size: int) -> None:
        self.buffer = buffer
        self.size = size
        self.serial = next(self._serials)


class GpuTensor:
    """A tensor in a GPU buffer: ``shape`` and ``dtype`` over a pooled buffer.

    Made by :meth:`ComputeContext.upload` / :meth:`~ComputeContext.empty`; given back with
    :meth:`ComputeContext.release`. Use it on the device thread only. ``generation`` is the
    device's at creation; after a device loss the tensor is dead (:class:`GpuDeviceLost`).
    """

    __slots__ = ("_buf", "dtype", "generation", "label", "nbytes", "shape")

    def __init__(
        self,
        buf: _Buffer,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        generation: int,
        label: str,
    ) -> None:
        self._buf: _Buffer | None = buf
        self.shape = shape
        self.dtype = dtype
        self.nbytes = math.prod(shape) * dtype.itemsize
        self.generation = generation
        self.label = label

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def released(self) -> bool:
        return self._buf is None

    def __repr__(self) -> str:
        dims = "x".join(str(d) for d in self.shape)
        state = " released" if self._buf is None else ""
        return f"<GpuTensor {self.label!r} {self.dtype.name}[{dims}] gen {self.generation}{state}>"


class GpuWeight(GpuTensor):
    """A weight matrix ``rows x cols`` in a GGUF format (``qtype``), raw blocks on the GPU.

    A matrix larger than the device's largest binding (Gemma 3's 262,144-row embedding) is
    split by rows across buffers: this object holds rows ``row0 .. row0 + part_rows`` (``row0``
    0) and ``parts`` the others, each a :class:`GpuWeight` of its own rows; kernels run once per
    part. Releasing the matrix releases every part.
    """

    __slots__ = ("cols", "part_rows", "parts", "qtype", "row0", "row_bytes", "rows")

    def __init__(
        self,
        buf: _Buffer,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        generation: int,
        label: str,
        qtype: str,
        rows: int,
        cols: int,
        row0: int = 0,
        part_rows: int | None = None,
    ) -> None:
        super().__init__(buf, shape, dtype, generation, label)
        self.qtype = qtype
        self.rows = rows
        self.cols = cols
        self.row_bytes = row_nbytes(qtype, cols)
        self.row0 = row0
        self.part_rows = rows if part_rows is None else part_rows
        self.parts: tuple[GpuWeight, ...] = ()

    def pieces(self) -> tuple[GpuWeight, ...]:
        """This buffer's rows and then the other parts', in row order."""
        return (self, *self.parts)

    def __repr__(self) -> str:
        shape = f"{self.qtype}[{self.rows}x{self.cols}]"
        split = f" in {len(self.parts) + 1} parts" if self.parts else ""
        return f"<GpuWeight {self.label!r} {shape}{split} gen {self.generation}>"


class _BufferPool:
    """Free GPU buffers by size class: powers of two to 1 MiB, then whole MiB."""

    def __init__(self, device: Any, usage: int, limit: int) -> None:
        self._device = device
        self._usage = usage
        self._limit = limit
        self._free: dict[int, list[_Buffer]] = {}
        self._free_bytes = 0
        self.created = 0
        self.on_destroy: list[Any] = []

    def size_for(self, nbytes: int) -> int:
        nbytes = max(nbytes, 4)
        if nbytes <= _MIB:
            size = max(_MIN_BUFFER, 1 << (nbytes - 1).bit_length())
        else:
            size = -(-nbytes // _MIB) * _MIB
        if size > self._limit:
            size = -(-nbytes // 4) * 4
        return size

    def acquire(self, nbytes: int, label: str) -> _Buffer:
        size = self.size_for(nbytes)
        if size > self._limit:
            raise GpuJobError(
                f"{label}: {nbytes} bytes exceed the device's storage binding limit "
                f"({self._limit} bytes)"
            )
        free = self._free.get(size)
        if free:
            self._free_bytes -= size
            return free.pop()
        self.created += 1
        return _Buffer(self._device.create_buffer(label=label, size=size, usage=self._usage), size)

    def release(self, buf: _Buffer) -> None:
        if self._free_bytes + buf.size > _POOL_BYTES:
            self.destroy(buf)
            return
        self._free.setdefault(buf.size, []).append(buf)
        self._free_bytes += buf.size

    def destroy(self, buf: _Buffer) -> None:
        for callback in self.on_destroy:
            callback(buf)
        _destroy(buf.buffer)

    @property
    def free_bytes(self) -> int:
        return self._free_bytes

    def clear(self) -> None:
        for buffers in self._free.values():
            for buf in buffers:
                self.destroy(buf)
        self._free.clear()
        self._free_bytes = 0


def _destroy(buffer: Any) -> None:
    try:
        buffer.destroy()
    except Exception:  # a lost device may refuse; the handle is dropped anyway
        logger.debug("could not destroy a GPU buffer", exc_info=True)


class _Pipeline:
    __slots__ = ("layout", "pipeline", "spec")

    def __init__(self, spec: lib.KernelSpec, pipeline: Any, layout: Any) -> None:
        self.spec = spec
        self.pipeline = pipeline
        self.layout = layout


class _Gpu:
    """One generation's wgpu objects: device, queue, pools and caches."""

    def __init__(self, wgpu: Any, adapter: Any, device: Any) -> None:
        self.wgpu = wgpu
        self.adapter = adapter
        self.device = device
        self.queue = device.queue
        self.driver = str(adapter.info.get("description", ""))
        limits = device.limits
        self.max_binding = min(
            int(limits["max-storage-buffer-binding-size"]), int(limits["max-buffer-size"])
        )
        usage = wgpu.BufferUsage
        self.pool = _BufferPool(
            device, int(usage.STORAGE | usage.COPY_DST | usage.COPY_SRC), self.max_binding
        )
        self.pool.on_destroy.append(self._forget)
        self.pipelines: dict[tuple[str, ...], _Pipeline] = {}
        self.bind_groups: dict[tuple[Any, ...], Any] = {}
        self.bind_keys: dict[int, list[tuple[Any, ...]]] = {}
        self.params_slots = _PARAMS_SLOTS
        self.params = _Buffer(
            device.create_buffer(
                label="qhybrid.params",
                size=_PARAMS_SLOTS * _PARAMS_STRIDE,
                usage=int(usage.UNIFORM | usage.COPY_DST),
            ),
            _PARAMS_SLOTS * _PARAMS_STRIDE,
        )
        self.staging: _Buffer | None = None
        self.staging_usage = int(usage.MAP_READ | usage.COPY_DST)
        self.placeholder = self.pool.acquire(16, "qhybrid.placeholder")
        features = set(device.features)
        self.query_set: Any = None
        self.resolve: _Buffer | None = None
        if "timestamp-query" in features:
            self.query_set = device.create_query_set(type="timestamp", count=_MAX_TIMESTAMPS)
            self.resolve = _Buffer(
                device.create_buffer(
                    label="qhybrid.timestamps",
                    size=_MAX_TIMESTAMPS * 8,
                    usage=int(usage.QUERY_RESOLVE | usage.COPY_SRC),
                ),
                _MAX_TIMESTAMPS * 8,
            )

    def _forget(self, buf: _Buffer) -> None:
        for key in self.bind_keys.pop(buf.serial, ()):
            self.bind_groups.pop(key, None)

    def pipeline(self, spec: lib.KernelSpec) -> _Pipeline:
        pipe = self.pipelines.get(spec.key)
        if pipe is not None:
            return pipe
        wgpu, device = self.wgpu, self.device
        entries: list[dict[str, Any]] = [
            {
                "binding": 0,
                "visibility": wgpu.ShaderStage.COMPUTE,
                "buffer": {
                    "type": wgpu.BufferBindingType.uniform,
                    "has_dynamic_offset": True,
                    "min_binding_size": lib.PARAMS_NBYTES,
                },
            }
        ]
        for i, access in enumerate(spec.bindings, start=1):
            kind = (
                wgpu.BufferBindingType.read_only_storage
                if access == "read"
                else wgpu.BufferBindingType.storage
            )
            entries.append(
                {"binding": i, "visibility": wgpu.ShaderStage.COMPUTE, "buffer": {"type": kind}}
            )
        layout = device.create_bind_group_layout(label=spec.label, entries=entries)
        pipeline_layout = device.create_pipeline_layout(
            label=spec.label, bind_group_layouts=[layout]
        )
        module = device.create_shader_module(label=spec.label, code=spec.source)
        pipeline = device.create_compute_pipeline(
            label=spec.label,
            layout=pipeline_layout,
            compute={"module": module, "entry_point": "main"},
        )
        pipe = _Pipeline(spec, pipeline, layout)
        self.pipelines[spec.key] = pipe
        logger.debug("compiled the %s pipeline", spec.label)
        return pipe

    def bind_group(self, pipe: _Pipeline, buffers: Sequence[_Buffer]) -> Any:
        key = (pipe.spec.key, self.params.serial, *(b.serial for b in buffers))
        group = self.bind_groups.get(key)
        if group is None:
            entries: list[dict[str, Any]] = [
                {
                    "binding": 0,
                    "resource": {
                        "buffer": self.params.buffer,
                        "offset": 0,
                        "size": lib.PARAMS_NBYTES,
                    },
                }
            ]
            for i, b in enumerate(buffers, start=1):
                entries.append({"binding": i, "resource": {"buffer": b.buffer}})
            group = self.device.create_bind_group(
                label=pipe.spec.label, layout=pipe.layout, entries=entries
            )
            if len(self.bind_groups) >= _BIND_GROUPS:  # drop the oldest (insertion order)
                self.bind_groups.pop(next(iter(self.bind_groups)))
            self.bind_groups[key] = group
            for b in (self.params, *buffers):
                self.bind_keys.setdefault(b.serial, []).append(key)
        return group

    def ensure_params(self, slots: int) -> None:
        if slots <= self.params_slots:
            return
        new = self.params_slots
        while new < slots:
            new *= 2
        self._forget(self.params)
        _destroy(self.params.buffer)
        usage = self.wgpu.BufferUsage
        self.params = _Buffer(
            self.device.create_buffer(
                label="qhybrid.params",
                size=new * _PARAMS_STRIDE,
                usage=int(usage.UNIFORM | usage.COPY_DST),
            ),
            new * _PARAMS_STRIDE,
        )
        self.params_slots = new

    def ensure_staging(self, nbytes: int) -> _Buffer:
        staging = self.staging
        if staging is None or staging.size < nbytes:
            if staging is not None:
                _destroy(staging.buffer)
            size = max(_MIN_BUFFER * 16, 1 << (max(nbytes, 1) - 1).bit_length())
            staging = _Buffer(
                self.device.create_buffer(
                    label="qhybrid.staging", size=size, usage=self.staging_usage
                ),
                size,
            )
            self.staging = staging
        return staging

    def close(self) -> None:
        self.pool.clear()
        self.bind_groups.clear()
        self.bind_keys.clear()
        self.pipelines.clear()
        for buf in (self.params, self.staging, self.resolve, self.placeholder):
            if buf is not None:
                _destroy(buf.buffer)
        if self.query_set is not None:
            try:
                self.query_set.destroy()
            except Exception:
                logger.debug("destroying the query set failed", exc_info=True)
        # wgpu-py polls each device on its own thread and stops it in destroy(), joining it for
        # at most a second; join it again so that closing leaves no thread behind.
        poller = getattr(self.device, "_poller", None)
        try:
            self.device.destroy()
        except Exception:
            logger.debug("destroying the wgpu device failed", exc_info=True)
        if isinstance(poller, threading.Thread) and poller.is_alive():
            poller.join(_POLLER_JOIN_S)
            if poller.is_alive():
                logger.warning("wgpu's poll thread did not stop within %g s", _POLLER_JOIN_S)


def _align(n: int, a: int) -> int:
    return -(-n // a) * a


def _as_dtype(dtype: npt.DTypeLike) -> np.dtype[Any]:
    dt = np.dtype(dtype)
    if dt not in [np.dtype(d) for d in TENSOR_DTYPES]:
        names = ", ".join(np.dtype(d).name for d in TENSOR_DTYPES)
        raise ValueError(f"a GPU tensor's dtype must be one of {names}; got {dt.name}")
    return dt


class ComputeContext:
    """The device thread's handle on the GPU: tensors, kernels, reads. Device thread only.

    Obtained through :meth:`GpuDevice.call`. ``info`` describes the adapter, ``features`` the
    optional features the kernels use (a test may turn them off, see :meth:`set_features`),
    ``generation`` counts device re-creations after a loss.
    """

    def __init__(self, gpu: _Gpu, info: DeviceInfo) -> None:
        self._gpu = gpu
        self.info = info
        self.generation = 1
        self.available = _features_of(gpu.device)
        self.features = self.available

    # -- device lifecycle (GpuDevice calls these) -------------------------------------------
    def _replace(self, gpu: _Gpu, info: DeviceInfo) -> None:
        """A new device after a loss: a new generation, the same feature choices."""
        try:
            self._gpu.close()
        except Exception:
            logger.debug("closing the lost device failed", exc_info=True)
        self._gpu = gpu
        self.info = info
        self.generation += 1
        self.available = _features_of(gpu.device)
        self.features = DeviceFeatures(
            f16=self.features.f16 and self.available.f16,
            subgroups=self.features.subgroups and self.available.subgroups,
            timestamps=self.features.timestamps and self.available.timestamps,
        )

    def _close(self) -> None:
        self._gpu.close()

    @property
    def wgpu_device(self) -> Any:
        """The underlying ``wgpu.GPUDevice`` (for diagnostics and tests)."""
        return self._gpu.device

    @property
    def max_buffer_bytes(self) -> int:
        """The largest tensor the device can bind."""
        return self._gpu.max_binding

    def set_features(
        self,
        *,
        f16: bool | None = None,
        subgroups: bool | None = None,
        timestamps: bool | None = None,
    ) -> DeviceFeatures:
        """Use (or stop using) kernel variants; features the device lacks stay off. Returns
        the features now in use. Later recordings pick their kernels accordingly."""
        current = self.features
        self.features = DeviceFeatures(
            f16=(current.f16 if f16 is None else f16) and self.available.f16,
            subgroups=(current.subgroups if subgroups is None else subgroups)
            and self.available.subgroups,
            timestamps=(current.timestamps if timestamps is None else timestamps)
            and self.available.timestamps,
        )
        return self.features

    @property
    def variant(self) -> lib.Variant:
        return lib.Variant(f16=self.features.f16, subgroups=self.features.subgroups)

    # -- tensors --------------------------------------------------------------------------
    def empty(
        self, shape: Sequence[int] | int, dtype: npt.DTypeLike = np.float32, label: str = ""
    ) -> GpuTensor:
        """A tensor of ``shape`` and ``dtype`` with unspecified contents (a pooled buffer)."""
        dims = (int(shape),) if isinstance(shape, int) else tuple(int(d) for d in shape)
        if any(d < 0 for d in dims):
            raise ValueError(f"negative dimension in shape {dims}")
        dt = _as_dtype(dtype)
        nbytes = math.prod(dims) * dt.itemsize
        buf = self._gpu.pool.acquire(nbytes, label or "tensor")
        return GpuTensor(buf, dims, dt, self.generation, label)

    def upload(self, array: npt.ArrayLike, label: str = "") -> GpuTensor:
        """A new tensor holding ``array`` (f32, f16, u32, i32, or uint8 raw blocks): one
        ``queue.write_buffer`` straight from the array's memory (a shared-memory view works)."""
        data = np.asarray(array)
        tensor = self.empty(data.shape, data.dtype, label)
        try:
            self.write(tensor, data)
        except BaseException:
            self.release(tensor)
            raise
        return tensor

    def upload_weight(
        self,
        raw: npt.ArrayLike,
        qtype: str,
        rows: int,
        cols: int,
        label: str = "",
        *,
        max_part_bytes: int | None = None,
    ) -> GpuWeight:
        """A weight matrix ``rows x cols`` stored as GGUF ``qtype`` (raw blocks, or f32/f16
        values), uploaded as is; kernels dequantize it while they read it. A matrix larger than
        the largest binding (or ``max_part_bytes``) is split by rows into several buffers."""
        if qtype not in QTYPES:
            raise ValueError(f"unknown weight format {qtype!r} (known: {', '.join(QTYPES)})")
        data = np.asarray(raw)
        row_bytes = row_nbytes(qtype, cols)
        expected = rows * row_bytes
        if data.nbytes != expected:
            raise ValueError(
                f"{label or 'weight'}: {qtype} {rows}x{cols} takes {expected} bytes, "
                f"got {data.nbytes}"
            )
        limit = self.max_buffer_bytes if max_part_bytes is None else max_part_bytes
        per_part = max(1, limit // row_bytes) if row_bytes else max(rows, 1)
        if row_bytes > limit:
            raise ValueError(
                f"{label or 'weight'}: one row of {row_bytes} bytes is larger than the GPU's "
                f"largest binding ({limit} bytes)"
            )
        flat = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        pieces: list[GpuWeight] = []
        try:
            for row0 in range(0, max(rows, 1), per_part):
                n = min(per_part, rows - row0)
                chunk = flat[row0 * row_bytes : (row0 + n) * row_bytes]
                buf = self._gpu.pool.acquire(chunk.nbytes, label or "weight")
                piece = GpuWeight(
                    buf,
                    (chunk.nbytes,),
                    np.dtype(np.uint8),
                    self.generation,
                    label,
                    qtype,
                    rows,
                    cols,
                    row0,
                    n,
                )
                pieces.append(piece)
                self.write(piece, chunk)
        except BaseException:
            for piece in pieces:
                self.release(piece)
            raise
        head = pieces[0]
        head.parts = tuple(pieces[1:])
        if head.parts:
            logger.info(
                "%s: %d bytes split by rows into %d buffers", label, flat.nbytes, len(pieces)
            )
        return head

    def write(self, tensor: GpuTensor, array: npt.ArrayLike, offset_elements: int = 0) -> None:
        """Write ``array`` (cast to the tensor's dtype) into ``tensor`` from element
        ``offset_elements`` on. Ordered on the queue: work submitted later sees it."""
        buf = self._buffer(tensor)
        data = np.ascontiguousarray(np.asarray(array), dtype=tensor.dtype).reshape(-1)
        if offset_elements < 0 or offset_elements + data.size > tensor.size:
            raise ValueError(
                f"writing {data.size} elements at {offset_elements} overflows {tensor!r}"
            )
        if data.size == 0:
            return
        offset = offset_elements * tensor.dtype.itemsize
        if offset % 4:
            raise ValueError(f"a write into {tensor!r} must start at a multiple of 4 bytes")
        raw = data.view(np.uint8)
        whole = raw.size - raw.size % 4
        queue = self._gpu.queue
        if whole:
            queue.write_buffer(buf.buffer, offset, raw[:whole] if whole < raw.size else raw)
        if whole < raw.size:  # write_buffer takes whole words: pad the tail
            tail = np.zeros(4, dtype=np.uint8)
            tail[: raw.size - whole] = raw[whole:]
            queue.write_buffer(buf.buffer, offset + whole, tail)

    def release(self, tensor: GpuTensor) -> None:
        """Give the tensor's buffer back to the pool; the tensor is dead after. Idempotent;
        a tensor of an older generation is just dropped."""
        buf = tensor._buf
        tensor._buf = None
        if buf is not None and tensor.generation == self.generation:
            self._gpu.pool.release(buf)
        if isinstance(tensor, GpuWeight):
            for part in tensor.parts:
                self.release(part)

    def read(self, tensor: GpuTensor) -> Array:
        """A copy of the tensor's contents (waits for the queue)."""
        return self.record().submit(read=[tensor])[0]

    def record(self, *, profile: bool = False) -> Recorder:
        """A recorder: kernels recorded into one command encoder, submitted once. With
        ``profile`` (and timestamp queries), :attr:`Recorder.timings` gets each dispatch's
        GPU time."""
        return Recorder(self, profile and self.features.timestamps)

    @property
    def pool_stats(self) -> dict[str, int]:
        """Buffers created since the device started and bytes free in the pool."""
        gpu = self._gpu
        return {
            "buffers_created": gpu.pool.created,
            "free_bytes": gpu.pool.free_bytes,
            "pipelines": len(gpu.pipelines),
            "bind_groups": len(gpu.bind_groups),
        }

    # -- internals --------------------------------------------------------------------------
    def _buffer(self, tensor: GpuTensor) -> _Buffer:
        if tensor.generation != self.generation:
            raise GpuDeviceLost(
                f"{tensor!r} belongs to a GPU device that was lost (now generation "
                f"{self.generation}); upload it again"
            )
        buf = tensor._buf
        if buf is None:
            raise ValueError(f"{tensor!r} was released")
        return buf


def _features_of(device: Any) -> DeviceFeatures:
    features = set(device.features)
    return DeviceFeatures(
        f16="shader-f16" in features,
        subgroups="subgroup" in features or "subgroups" in features,
        timestamps="timestamp-query" in features,
    )


# -- the recorder --------------------------------------------------------------------------
@dataclass(slots=True)
class _Dispatch:
    pipe: _Pipeline
    buffers: tuple[_Buffer, ...]
    params_slot: int
    grid: tuple[int, int, int]
    name: str


@dataclass(slots=True)
class _Copy:
    src: _Buffer
    src_offset: int
    dst: _Buffer
    dst_offset: int
    nbytes: int


def _grid_1d(groups: int) -> tuple[int, int, int]:
    """``groups`` workgroups as a 2-D grid when one dimension is not enough (the shader
    rebuilds the flat index from both)."""
    if groups <= lib.MAX_GROUPS:
        return (max(groups, 0), 1, 1)
    y = -(-groups // lib.MAX_GROUPS)
    if y > lib.MAX_GROUPS:
        raise ValueError(f"{groups} workgroups is too many for one dispatch")
    return (lib.MAX_GROUPS, y, 1)


def _pack(fmt: str, *values: float | int) -> bytes:
    data = struct.pack("<" + fmt, *values)
    return data + bytes(lib.PARAMS_NBYTES - len(data))


class Recorder:
    """Kernels recorded into one command encoder and submitted once (:meth:`submit`).

    One method per kernel, named and ordered as :mod:`._reference`, on :class:`GpuTensor`
    arguments, writing into an ``out`` tensor that the caller made (``ctx.empty``). Shapes
    are checked when a kernel is recorded (``ValueError`` says which argument and what was
    expected); sizes go to the kernel through the parameter ring, so recording allocates no
    GPU memory. Tensors must stay alive (not released) until :meth:`submit` returns.
    Activations are float32; ids, positions and slots int32 or uint32.
    """

    def __init__(self, ctx: ComputeContext, profile: bool) -> None:
        self._ctx = ctx
        self._gpu = ctx._gpu
        self._generation = ctx.generation
        self._variant = ctx.variant
        self._profile = profile
        self._commands: list[_Dispatch | _Copy] = []
        self._params: list[bytes] = []
        self._submitted = False
        #: Per-dispatch GPU times of a profiling recorder, filled by :meth:`submit`.
        self.timings: list[KernelTiming] = []

    @property
    def dispatches(self) -> int:
        return sum(1 for c in self._commands if isinstance(c, _Dispatch))

    # -- plumbing ---------------------------------------------------------------------------
    def _buf(self, tensor: GpuTensor, what: str) -> _Buffer:
        if not isinstance(tensor, GpuTensor):
            raise TypeError(f"{what} must be a GpuTensor, got {type(tensor).__name__}")
        return self._ctx._buffer(tensor)

    def _dispatch(
        self,
        name: str,
        spec: lib.KernelSpec,
        tensors: Sequence[tuple[GpuTensor | None, str]],
        params: bytes,
        grid: tuple[int, int, int],
    ) -> None:
        if self._submitted:
            raise RuntimeError("this recorder was submitted already; record() a new one")
        if self._ctx.generation != self._generation:
            raise GpuDeviceLost("the GPU device was lost while this recorder was open")
        buffers = tuple(
            self._gpu.placeholder if t is None else self._buf(t, what) for t, what in tensors
        )
        written = {
            id(buf) for buf, access in zip(buffers, spec.bindings, strict=True) if access == "write"
        }
        if len({id(b) for b in buffers}) < len(buffers) and any(
            sum(1 for b in buffers if id(b) == w) > 1 for w in written
        ):
            raise ValueError(
                f"{name}: an output shares its buffer with an input; this kernel does not "
                "work in place (use a separate out)"
            )
        if 0 in grid:
            return  # nothing to compute; a zero-size dispatch is refused
        pipe = self._gpu.pipeline(spec)
        self._commands.append(_Dispatch(pipe, buffers, len(self._params), grid, name))
        self._params.append(params)

    @staticmethod
    def _check(cond: bool, message: str) -> None:
        if not cond:
            raise ValueError(message)

    @staticmethod
    def _f32(t: GpuTensor, what: str) -> None:
        if t.dtype != np.float32:
            raise ValueError(f"{what} must be float32, got {t.dtype.name} ({t!r})")

    @staticmethod
    def _ints(t: GpuTensor, what: str, count: int) -> None:
        if t.dtype not in (np.int32, np.uint32):
            raise ValueError(f"{what} must be int32 or uint32, got {t.dtype.name}")
        if t.size < count:
            raise ValueError(f"{what} has {t.size} elements, needs {count}")

    def _same(self, out: GpuTensor, size: int, what: str = "out") -> None:
        self._f32(out, what)
        self._check(out.size == size, f"{what} has {out.size} elements, expected {size}")

    # -- matrix products ----------------------------------------------------------------------
    def linear(self, x: GpuTensor, w: GpuWeight, out: GpuTensor) -> None:
        """``out[M, N] = x[M, K] @ W[N, K]^T`` (``x`` any shape ending in K, ``out`` M*N
        elements). Matrix x vector for M <= 8 (decode), a tiled matrix product above."""
        if not isinstance(w, GpuWeight):
            raise TypeError(f"w must be a GpuWeight (ctx.upload_weight), got {type(w).__name__}")
        self._f32(x, "x")
        k, n = w.cols, w.rows
        self._check(x.size % k == 0 if k else x.size == 0, f"x {x.shape} does not end in K={k}")
        m = x.size // k if k else 0
        self._same(out, m * n)
        for part in w.pieces():
            # A split matrix: each part writes its rows' columns of out (stride n).
            rows = part.part_rows
            if m <= lib.MV_MAX_M:
                spec = lib.linear_mv(w.qtype, self._variant)
                grid = _grid_1d(-(-rows // lib.MV_ROWS))
            else:
                spec = lib.linear_mm(w.qtype, self._variant)
                grid = (-(-rows // lib.MM_TILE), -(-m // lib.MM_TILE), 1)
            self._dispatch(
                f"linear.{w.qtype}",
                spec,
                [(x, "x"), (part, "w"), (out, "out")],
                _pack("6I", m, rows, k, w.row_bytes, n, part.row0),
                grid,
            )

    def matmul(self, a: GpuTensor, b: GpuTensor, out: GpuTensor) -> None:
        """``out[M, N] = a[M, K] @ b[K, N]``, tiled and register-blocked."""
        self._f32(a, "a")
        self._f32(b, "b")
        self._check(len(a.shape) == 2 and len(b.shape) == 2, "matmul takes 2-D a and b")
        (m, k), (k2, n) = a.shape, b.shape
        self._check(k == k2, f"matmul inner dimensions differ: {a.shape} @ {b.shape}")
        self._same(out, m * n)
        self._dispatch(
            "matmul",
            lib.linear_mm("matrix", self._variant),
            [(a, "a"), (b, "b"), (out, "out")],
            _pack("6I", m, n, k, 0, n, 0),
            (-(-n // lib.MM_TILE), -(-m // lib.MM_TILE), 1),
        )

    def get_rows(self, table: GpuWeight, ids: GpuTensor, out: GpuTensor) -> None:
        """``out[T, cols]``: rows ``ids[T]`` of the table, dequantized (an id out of range
        gives zeros; the reference raises)."""
        if not isinstance(table, GpuWeight):
            raise TypeError("table must be a GpuWeight (ctx.upload_weight)")
        t = ids.size
        self._ints(ids, "ids", t)
        self._same(out, t * table.cols)
        for part in table.pieces():
            # Each part writes the ids in its rows; the first also the out-of-range ones.
            self._dispatch(
                f"get_rows.{table.qtype}",
                lib.get_rows(table.qtype, self._variant),
                [(part, "table"), (ids, "ids"), (out, "out")],
                _pack("6I", t, part.part_rows, table.cols, table.row_bytes, part.row0, table.rows),
                (-(-table.cols // 256), t, 1),
            )

    # -- elementwise ------------------------------------------------------------------------
    def _elementwise(
        self, op: str, a: GpuTensor, b: GpuTensor | None, out: GpuTensor, factor: float = 1.0
    ) -> None:
        self._f32(a, "a")
        self._same(out, a.size)
        inplace = out._buf is not None and out._buf is a._buf
        tensors: list[tuple[GpuTensor | None, str]] = [] if inplace else [(a, "a")]
        b_count = 1
        if b is not None:
            self._f32(b, "b")
            b_count = max(b.size, 1)
            self._check(
                b.shape == a.shape or (b.size > 0 and a.shape[-len(b.shape) :] == b.shape),
                f"{op}: b {b.shape} neither matches a {a.shape} nor broadcasts over its rows",
            )
            tensors.append((b, "b"))
        tensors.append((out, "out"))
        self._dispatch(
            op,
            lib.elementwise(op, inplace),
            tensors,
            _pack("2If", a.size, b_count, factor),
            _grid_1d(-(-a.size // 256)),
        )

    def add(self, a: GpuTensor, b: GpuTensor, out: GpuTensor) -> None:
        """``out = a + b``; ``b`` the same shape, or a trailing shape broadcast over a's rows.
        Elementwise ops work in place when ``out`` is ``a``."""
        self._elementwise("add", a, b, out)

    def mul(self, a: GpuTensor, b: GpuTensor, out: GpuTensor) -> None:
        """``out = a * b`` (broadcast as :meth:`add`)."""
        self._elementwise("mul", a, b, out)

    def scale(self, a: GpuTensor, factor: float, out: GpuTensor) -> None:
        """``out = a * factor``."""
        self._elementwise("scale", a, None, out, factor)

    def relu(self, a: GpuTensor, out: GpuTensor) -> None:
        """``out = max(a, 0)`` (NaN stays NaN)."""
        self._elementwise("relu", a, None, out)

    def silu(self, x: GpuTensor, out: GpuTensor) -> None:
        """``out = x * sigmoid(x)``."""
        self._elementwise("silu", x, None, out)

    def gelu(self, x: GpuTensor, out: GpuTensor) -> None:
        """``out = gelu(x)``, the tanh approximation."""
        self._elementwise("gelu", x, None, out)

    def silu_mul(self, gate: GpuTensor, up: GpuTensor, out: GpuTensor) -> None:
        """``out = silu(gate) * up`` (SwiGLU)."""
        self._elementwise("silu_mul", gate, up, out)

    def gelu_mul(self, gate: GpuTensor, up: GpuTensor, out: GpuTensor) -> None:
        """``out = gelu(gate) * up`` (GeGLU, the tanh GELU)."""
        self._elementwise("gelu_mul", gate, up, out)

    def softcap(self, a: GpuTensor, cap: float, out: GpuTensor) -> None:
        """``out = cap * tanh(a / cap)`` (soft-capping; ``cap`` > 0)."""
        self._check(cap > 0, f"softcap: cap must be > 0, got {cap}")
        self._elementwise("softcap", a, None, out, cap)

    def copy(
        self,
        src: GpuTensor,
        dst: GpuTensor,
        src_offset: int = 0,
        dst_offset: int = 0,
        count: int | None = None,
    ) -> None:
        """Copy ``count`` elements (default all of ``src``) from ``src[src_offset:]`` to
        ``dst[dst_offset:]``; same dtype, byte offsets and sizes multiples of 4."""
        self._check(src.dtype == dst.dtype, f"copy: dtypes differ ({src.dtype} -> {dst.dtype})")
        n = src.size - src_offset if count is None else count
        self._check(
            src_offset >= 0
            and src_offset + n <= src.size
            and dst_offset >= 0
            and dst_offset + n <= dst.size,
            f"copy: {n} elements from {src_offset} of {src!r} to {dst_offset} of {dst!r} overflow",
        )
        size = src.dtype.itemsize
        for v in (src_offset * size, dst_offset * size, n * size):
            self._check(v % 4 == 0, "copy: offsets and sizes must be multiples of 4 bytes")
        if n:
            self._commands.append(
                _Copy(
                    self._buf(src, "src"),
                    src_offset * size,
                    self._buf(dst, "dst"),
                    dst_offset * size,
                    n * size,
                )
            )

    # -- rows ---------------------------------------------------------------------------------
    def softmax(self, x: GpuTensor, out: GpuTensor, factor: float = 1.0) -> None:
        """Softmax of ``x * factor`` over the last axis."""
        self._f32(x, "x")
        self._same(out, x.size)
        cols = x.shape[-1] if x.shape else 1
        rows = x.size // cols if cols else 0
        self._dispatch(
            "softmax",
            lib.softmax(self._variant),
            [(x, "x"), (out, "out")],
            _pack("2If", rows, cols, factor),
            _grid_1d(rows),
        )

    def _norm(
        self,
        name: str,
        x: GpuTensor,
        weight: GpuTensor | None,
        bias: GpuTensor | None,
        out: GpuTensor,
        eps: float,
        layer: bool,
    ) -> None:
        self._f32(x, "x")
        self._same(out, x.size)
        cols = x.shape[-1] if x.shape else 1
        rows = x.size // cols if cols else 0
        flags = 4 if layer else 0
        for t, bit, what in ((weight, 1, "weight"), (bias, 2, "bias")):
            if t is not None:
                self._same(t, cols, what)
                flags |= bit
        self._dispatch(
            name,
            lib.norm(self._variant),
            [(x, "x"), (weight, "weight"), (bias, "bias"), (out, "out")],
            _pack("2IfI", rows, cols, eps, flags),
            _grid_1d(rows),
        )

    def rmsnorm(self, x: GpuTensor, weight: GpuTensor | None, out: GpuTensor, eps: float) -> None:
        """``x / sqrt(mean(x^2) + eps) * weight`` over the last axis (``weight`` optional)."""
        self._norm("rmsnorm", x, weight, None, out, eps, False)

    def layernorm(
        self,
        x: GpuTensor,
        weight: GpuTensor | None,
        bias: GpuTensor | None,
        out: GpuTensor,
        eps: float,
    ) -> None:
        """``(x - mean) / sqrt(var + eps) * weight + bias`` over the last axis."""
        self._norm("layernorm", x, weight, bias, out, eps, True)

    # -- attention ------------------------------------------------------------------------------
    def rope(
        self,
        x: GpuTensor,
        pos: GpuTensor,
        out: GpuTensor,
        base: float,
        mode: str = "normal",
        n_dims: int | None = None,
        freq_scale: float = 1.0,
        factors: GpuTensor | None = None,
    ) -> None:
        """Rotary embeddings on ``x[T, H, D]`` at ``pos[T]``; ``out`` may be ``x`` (in place).
        ``freq_scale`` multiplies the positions (linear rope scaling); ``factors[n_dims/2]``
        divides each pair's angle (Llama 3.1+'s ``rope_freqs.weight``)."""
        self._f32(x, "x")
        self._check(len(x.shape) == 3, f"rope takes x[T, H, D], got {x.shape}")
        self._check(mode in ("normal", "neox"), f"unknown rope mode {mode!r}")
        t, h, d = x.shape
        nd = d if n_dims is None else n_dims
        self._check(
            d % 2 == 0 and 0 < nd <= d and nd % 2 == 0,
            f"rope: D={d}, n_dims={nd} must be even, n_dims <= D",
        )
        self._ints(pos, "pos", t)
        self._same(out, x.size)
        inplace = out is x or (out._buf is not None and out._buf is x._buf)
        if factors is not None:
            self._f32(factors, "factors")
            self._same(factors, nd // 2, "factors")
        tensors: list[tuple[GpuTensor | None, str]] = [(pos, "pos"), (factors, "factors")]
        tensors += [(out, "out")] if inplace else [(x, "x"), (out, "out")]
        self._dispatch(
            "rope",
            lib.rope(inplace),
            tensors,
            _pack(
                "5IffI",
                t,
                h,
                d,
                nd,
                1 if mode == "neox" else 0,
                base,
                freq_scale,
                0 if factors is None else 1,
            ),
            (-(-(d // 2) // 64), t * h, 1),
        )

    def kv_store(self, cache: GpuTensor, x: GpuTensor, slot: GpuTensor, pos: GpuTensor) -> None:
        """``cache[S, L, Hkv, D][slot[t], pos[t]] = x[t]`` for ``x[T, Hkv, D]``, in place."""
        self._f32(cache, "cache")
        self._f32(x, "x")
        self._check(len(cache.shape) == 4, f"cache must be [S, L, Hkv, D], got {cache.shape}")
        _, length, hkv, d = cache.shape
        row = hkv * d
        self._check(row > 0 and x.size % row == 0, f"x {x.shape} is not [T, {hkv}, {d}]")
        t = x.size // row
        self._ints(slot, "slot", t)
        self._ints(pos, "pos", t)
        self._dispatch(
            "kv_store",
            lib.kv_store(),
            [(x, "x"), (slot, "slot"), (pos, "pos"), (cache, "cache")],
            _pack("4I", t * row, row, length, 0),
            _grid_1d(-(-(t * row) // 256)),
        )

    def attention(
        self,
        q: GpuTensor,
        k_cache: GpuTensor,
        v_cache: GpuTensor,
        slot: GpuTensor,
        pos: GpuTensor,
        out: GpuTensor,
        factor: float,
        *,
        window: int = 0,
        softcap: float = 0.0,
    ) -> None:
        """Causal GQA attention of ``q[T, Hq, D]`` over caches ``[S, L, Hkv, D]``: query t
        attends to positions ``0..pos[t]`` of slot ``slot[t]`` (only the last ``window`` of
        them when ``window`` > 0: sliding-window layers); scores ``s`` become
        ``softcap * tanh(s / softcap)`` when ``softcap`` > 0. D <= 256."""
        self._f32(q, "q")
        self._check(len(q.shape) == 3, f"q must be [T, Hq, D], got {q.shape}")
        self._check(
            k_cache.shape == v_cache.shape and len(k_cache.shape) == 4,
            "k_cache and v_cache must both be [S, L, Hkv, D]",
        )
        t, hq, d = q.shape
        _, length, hkv, d2 = k_cache.shape
        self._check(d == d2, f"q's D={d} differs from the cache's D={d2}")
        self._check(
            d <= lib.ATTENTION_MAX_D, f"attention takes D <= {lib.ATTENTION_MAX_D}, got {d}"
        )
        self._check(hkv > 0 and hq % hkv == 0, f"Hq={hq} must be a multiple of Hkv={hkv}")
        self._ints(slot, "slot", t)
        self._ints(pos, "pos", t)
        self._same(out, q.size)
        self._dispatch(
            "attention",
            lib.attention(self._variant),
            [
                (q, "q"),
                (k_cache, "k_cache"),
                (v_cache, "v_cache"),
                (slot, "slot"),
                (pos, "pos"),
                (out, "out"),
            ],
            _pack("5IfIf", t, hq, hkv, d, length, factor, max(window, 0), max(softcap, 0.0)),
            (hq, t, 1),
        )

    # -- sampling -------------------------------------------------------------------------------
    def _rows(self, x: GpuTensor) -> tuple[int, int]:
        self._f32(x, "logits")
        cols = x.shape[-1] if x.shape else 1
        rows = x.size // cols if cols else 0
        self._check(rows <= lib.MAX_GROUPS, f"at most {lib.MAX_GROUPS} rows, got {rows}")
        return rows, cols

    def argmax(self, x: GpuTensor, out: GpuTensor) -> None:
        """``out[B]`` (uint32): each row's largest value's index, the first on ties."""
        rows, cols = self._rows(x)
        self._ints(out, "out", rows)
        self._dispatch(
            "argmax",
            lib.select("argmax"),
            [(x, "x"), (out, "out")],
            _pack("4I2f", rows, cols, 1, 0, 0.0, 0.0),
            (rows, 1, 1),
        )

    def topk(self, x: GpuTensor, k: int, out_values: GpuTensor, out_indices: GpuTensor) -> None:
        """Each row's ``min(k, cols)`` largest values, descending, and their indices (ties:
        lower index first). ``k <= 64``; outputs ``[B, min(k, cols)]``."""
        rows, cols = self._rows(x)
        self._check(0 < k <= lib.SELECT_MAX_K, f"topk takes 1 <= k <= {lib.SELECT_MAX_K}, got {k}")
        k = min(k, cols)
        self._same(out_values, rows * k, "out_values")
        self._ints(out_indices, "out_indices", rows * k)
        self._dispatch(
            "topk",
            lib.select("topk"),
            [(x, "x"), (out_values, "out_values"), (out_indices, "out_indices")],
            _pack("4I2f", rows, cols, k, 0, 0.0, 0.0),
            (rows, 1, 1),
        )

    def repeat_penalty(
        self, logits: GpuTensor, recent: GpuTensor, counts: GpuTensor, penalty: float
    ) -> None:
        """In place on ``logits[B, V]``: the distinct tokens of ``recent[B, R][:counts[b]]``
        get their logit divided by ``penalty`` if positive, else multiplied."""
        rows, vocab = self._rows(logits)
        self._check(recent.size % max(rows, 1) == 0, f"recent {recent.shape} is not [B={rows}, R]")
        r = recent.size // rows if rows else 0
        self._ints(recent, "recent", rows * r)
        self._ints(counts, "counts", rows)
        self._dispatch(
            "repeat_penalty",
            lib.repeat_penalty(),
            [(recent, "recent"), (counts, "counts"), (logits, "logits")],
            _pack("3If", rows, vocab, r, penalty),
            (rows, 1, 1),
        )

    def sample(
        self,
        logits: GpuTensor,
        out_tokens: GpuTensor,
        temperature: float | GpuTensor,
        top_k: int | GpuTensor,
        top_p: float | GpuTensor,
        uniform: GpuTensor,
    ) -> None:
        """One token per row into ``out_tokens[B]`` (uint32), as :func:`._reference.sample`
        with ``uniform[B]`` (float32 in [0, 1)). ``temperature``, ``top_k`` and ``top_p``
        are scalars for every row, or per-row tensors ``[B]`` (float32, int32, float32)."""
        rows, cols = self._rows(logits)
        self._ints(out_tokens, "out_tokens", rows)
        self._check(
            uniform.dtype == np.float32 and uniform.size >= rows, "uniform must be float32[B]"
        )
        flags = 0
        tensors: list[tuple[GpuTensor | None, str]] = [(logits, "logits"), (uniform, "uniform")]
        scalars: list[float] = []
        for i, (value, what, dtype) in enumerate(
            (
                (temperature, "temperature", np.float32),
                (top_k, "top_k", np.int32),
                (top_p, "top_p", np.float32),
            )
        ):
            if isinstance(value, GpuTensor):
                self._check(
                    value.dtype == dtype and value.size >= rows,
                    f"{what} must be {np.dtype(dtype).name}[B]",
                )
                flags |= 1 << i
                tensors.append((value, what))
                scalars.append(0)
            else:
                tensors.append((None, what))
                scalars.append(float(value))
        tensors.append((out_tokens, "out_tokens"))
        k_scalar = int(scalars[1])
        self._dispatch(
            "sample",
            lib.select("sample"),
            tensors,
            _pack("4I2f", rows, cols, max(k_scalar, 0), flags, scalars[0], scalars[2]),
            (rows, 1, 1),
        )

    # -- submitting ---------------------------------------------------------------------------
    def submit(self, read: Sequence[GpuTensor] = ()) -> list[Array]:
        """Submit everything recorded in one command buffer and return copies of the
        ``read`` tensors (through the persistent staging buffer). Waits for the GPU when
        something is read or profiled; otherwise returns once the work is queued."""
        if self._submitted:
            raise RuntimeError("this recorder was submitted already")
        self._submitted = True
        ctx, gpu = self._ctx, self._gpu
        if ctx.generation != self._generation:
            raise GpuDeviceLost("the GPU device was lost while this recorder was open")
        read_bufs = [self._buf(t, "read") for t in read]
        dispatches = [c for c in self._commands if isinstance(c, _Dispatch)]
        profile = self._profile and bool(dispatches)
        if profile and 2 * len(dispatches) > _MAX_TIMESTAMPS:
            raise ValueError(
                f"a profiling recorder takes at most {_MAX_TIMESTAMPS // 2} dispatches"
            )
        if not self._commands and not read_bufs:
            return []
        device, queue = gpu.device, gpu.queue
        if self._params:
            gpu.ensure_params(len(self._params))
            queue.write_buffer(gpu.params.buffer, 0, self._params_bytes())

        encoder = device.create_command_encoder(label="qhybrid.recorder")
        compute: Any = None
        index = 0
        for command in self._commands:
            if isinstance(command, _Copy):
                if compute is not None:
                    compute.end()
                    compute = None
                encoder.copy_buffer_to_buffer(
                    command.src.buffer,
                    command.src_offset,
                    command.dst.buffer,
                    command.dst_offset,
                    command.nbytes,
                )
                continue
            if profile:
                compute = encoder.begin_compute_pass(
                    label=command.name,
                    timestamp_writes={
                        "query_set": gpu.query_set,
                        "beginning_of_pass_write_index": 2 * index,
                        "end_of_pass_write_index": 2 * index + 1,
                    },
                )
            elif compute is None:
                compute = encoder.begin_compute_pass(label="qhybrid")
            compute.set_pipeline(command.pipe.pipeline)
            compute.set_bind_group(
                0,
                gpu.bind_group(command.pipe, command.buffers),
                [command.params_slot * _PARAMS_STRIDE],
            )
            compute.dispatch_workgroups(*command.grid)
            index += 1
            if profile:
                compute.end()
                compute = None
        if compute is not None:
            compute.end()

        # Reads (and timestamps) land in one staging buffer at 256-byte aligned offsets.
        layout: list[tuple[int, int]] = []
        total = 0
        for t in read:
            nbytes = _align(t.nbytes, 4)
            layout.append((total, nbytes))
            total = _align(total + nbytes, 256)
        ts_offset = total
        if profile:
            total += 16 * len(dispatches)
            assert gpu.resolve is not None
            encoder.resolve_query_set(gpu.query_set, 0, 2 * len(dispatches), gpu.resolve.buffer, 0)
        staging: _Buffer | None = None
        if total:
            staging = gpu.ensure_staging(total)
            for (offset, nbytes), buf in zip(layout, read_bufs, strict=True):
                if nbytes:
                    encoder.copy_buffer_to_buffer(buf.buffer, 0, staging.buffer, offset, nbytes)
            if profile:
                assert gpu.resolve is not None
                encoder.copy_buffer_to_buffer(
                    gpu.resolve.buffer, 0, staging.buffer, ts_offset, 16 * len(dispatches)
                )
        queue.submit([encoder.finish()])
        if staging is None:
            return [np.empty(t.shape, t.dtype) for t in read]

        staging.buffer.map_sync(gpu.wgpu.MapMode.READ, 0, _align(total, 8))
        try:
            results: list[Array] = []
            for (offset, nbytes), t in zip(layout, read, strict=True):
                if t.nbytes == 0:
                    results.append(np.empty(t.shape, t.dtype))
                    continue
                mapped = staging.buffer.read_mapped(offset, nbytes, copy=False)
                results.append(
                    np.frombuffer(mapped, dtype=t.dtype, count=t.size).reshape(t.shape).copy()
                )
                del mapped  # no view may outlive the mapping
            if profile:
                mapped = staging.buffer.read_mapped(ts_offset, 16 * len(dispatches), copy=False)
                ticks = np.frombuffer(mapped, dtype=np.uint64).copy()
                del mapped
                # WebGPU timestamps are nanoseconds.
                self.timings = [
                    KernelTiming(d.name, max(int(ticks[2 * i + 1]) - int(ticks[2 * i]), 0) * 1e-9)
                    for i, d in enumerate(dispatches)
                ]
        finally:
            staging.buffer.unmap()
        return results

    def _params_bytes(self) -> bytes:
        pad = bytes(_PARAMS_STRIDE - lib.PARAMS_NBYTES)
        return b"".join(p + pad for p in self._params)
