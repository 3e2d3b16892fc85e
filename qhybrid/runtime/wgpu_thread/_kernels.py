"""The job path's ops on the GPU: which recorder kernel runs each op of the tensor op table.

A job (:meth:`GpuDevice.submit`) names an op of :data:`qhybrid.runtime.tensors.OPS`; the ops
listed here have a WGSL kernel and run through a :class:`Recorder`, the others with numpy.
Nothing here touches wgpu.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from qhybrid.runtime.wgpu_thread._context import GpuTensor, Recorder

Shape = tuple[int, ...]
JobKernel = Callable[[Recorder, Sequence[GpuTensor], GpuTensor, Mapping[str, float]], None]

JOB_KERNELS: dict[str, JobKernel] = {
    "matmul": lambda r, i, o, p: r.matmul(i[0], i[1], o),
    "add": lambda r, i, o, p: r.add(i[0], i[1], o),
    "mul": lambda r, i, o, p: r.mul(i[0], i[1], o),
    "scale": lambda r, i, o, p: r.scale(i[0], float(p.get("factor", 1.0)), o),
    "relu": lambda r, i, o, p: r.relu(i[0], o),
    "silu": lambda r, i, o, p: r.silu(i[0], o),
    "gelu": lambda r, i, o, p: r.gelu(i[0], o),
    "softmax": lambda r, i, o, p: r.softmax(i[0], o, float(p.get("factor", 1.0))),
    "rmsnorm": lambda r, i, o, p: r.rmsnorm(i[0], i[1], o, float(p.get("eps", 1e-6))),
}


def get_kernel(op: str) -> JobKernel | None:
    """The recorder call for ``op``, or None when it has no GPU kernel (numpy runs it)."""
    return JOB_KERNELS.get(op)


def gpu_ops() -> tuple[str, ...]:
    """The job ops that have a GPU kernel."""
    return tuple(JOB_KERNELS)
