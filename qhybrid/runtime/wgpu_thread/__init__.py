"""The GPU thread: one thread owns the wgpu device and runs tensor ops as WGSL compute shaders.

:class:`GpuDevice` takes jobs (an op from :data:`qhybrid.runtime.tensors.OPS`, input and
output :class:`~qhybrid.runtime.tensors.TensorHandle` s) from any thread and hands back
futures. Without a usable GPU adapter the same thread runs the ops with numpy. Importing this
package does not import wgpu; the device thread does, when it starts.
"""

from __future__ import annotations

from qhybrid.runtime.wgpu_thread._device import DEVICE_ENV, GpuDevice
from qhybrid.runtime.wgpu_thread._kernels import gpu_ops
from qhybrid.runtime.wgpu_thread._types import (
    DeviceInfo,
    GpuJobError,
    GpuJobEvent,
    GpuJobResult,
    Placement,
)

__all__ = [
    "DEVICE_ENV",
    "DeviceInfo",
    "GpuDevice",
    "GpuJobError",
    "GpuJobEvent",
    "GpuJobResult",
    "Placement",
    "gpu_ops",
]
