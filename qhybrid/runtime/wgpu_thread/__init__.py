"""The GPU thread: one thread owns the wgpu device and runs tensor kernels as WGSL shaders.

Two ways in, both from any thread, both handing back :class:`concurrent.futures.Future` s:

- :meth:`GpuDevice.submit`: a job, an op of :data:`qhybrid.runtime.tensors.OPS` on
  shared-memory tensors by handle (agents' and scenarios' GPU tasks); placed on the GPU or
  numpy by a calibrated cost model.
- :meth:`GpuDevice.call`: a function run on the device thread with the
  :class:`ComputeContext` (GPU tensors, GGUF weights, a :class:`Recorder` that batches the
  kernel library's dispatches into one submit); what the LLM engine uses.

Every kernel matches its numpy reference in :mod:`qhybrid.runtime.wgpu_thread.reference`
(``_reference``). Without a usable GPU adapter the same thread runs jobs with numpy and calls
get ``ctx=None``. Importing this package does not import wgpu; the device thread does.
"""

from __future__ import annotations

from qhybrid.runtime.wgpu_thread import _reference as reference
from qhybrid.runtime.wgpu_thread._context import (
    ComputeContext,
    DeviceFeatures,
    GpuDeviceLost,
    GpuTensor,
    GpuWeight,
    KernelTiming,
    Recorder,
)
from qhybrid.runtime.wgpu_thread._device import DEVICE_ENV, GpuDevice
from qhybrid.runtime.wgpu_thread._kernels import gpu_ops
from qhybrid.runtime.wgpu_thread._placement import CostModel
from qhybrid.runtime.wgpu_thread._types import (
    DeviceInfo,
    GpuJobError,
    GpuJobEvent,
    GpuJobResult,
    Placement,
)

__all__ = [
    "DEVICE_ENV",
    "ComputeContext",
    "CostModel",
    "DeviceFeatures",
    "DeviceInfo",
    "GpuDevice",
    "GpuDeviceLost",
    "GpuJobError",
    "GpuJobEvent",
    "GpuJobResult",
    "GpuTensor",
    "GpuWeight",
    "KernelTiming",
    "Placement",
    "Recorder",
    "gpu_ops",
    "reference",
]
