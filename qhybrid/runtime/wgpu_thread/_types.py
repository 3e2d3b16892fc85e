"""Plain data the GPU thread hands out: device description, job results, events, errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Where a job ran: on the wgpu device, or with numpy on the device thread.
Placement = Literal["gpu", "cpu"]

#: What the caller asked for: a GPU if there is one, a GPU or an error, or numpy only.
Prefer = Literal["auto", "gpu", "cpu"]
PREFER_CHOICES: tuple[Prefer, ...] = ("auto", "gpu", "cpu")


class GpuJobError(RuntimeError):
    """A job that failed, or a device that could not start; the message says which and why."""


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """The device that runs the jobs.

    ``kind`` is ``"hardware"`` for a real GPU, ``"software"`` for a software adapter such as
    llvmpipe (wgpu reports its adapter type as CPU), and ``"cpu"`` when there is no adapter and
    numpy does the work (then ``name`` is ``"cpu"`` and ``backend`` is ``"numpy"``).
    """

    name: str
    backend: str
    kind: Literal["hardware", "software", "cpu"]
    vendor: str

    @property
    def is_gpu(self) -> bool:
        """True when jobs run on a wgpu device (hardware or software adapter)."""
        return self.kind != "cpu"

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict; ``software`` is true unless the work runs on a hardware GPU."""
        return {
            "name": self.name,
            "backend": self.backend,
            "kind": self.kind,
            "vendor": self.vendor,
            "software": self.kind != "hardware",
        }


#: The description used when numpy runs every job.
CPU_DEVICE_INFO = DeviceInfo(name="cpu", backend="numpy", kind="cpu", vendor="")


@dataclass(frozen=True, slots=True)
class GpuJobResult:
    """A job that finished: its output is in the output tensor's shared memory."""

    job_id: int
    op: str
    placement: Placement
    elapsed_s: float
    #: GPU time of the job's kernels from timestamp queries, where the adapter has them.
    gpu_s: float | None = None


@dataclass(frozen=True, slots=True)
class GpuJobEvent:
    """A job starting or finishing, as :class:`~qhybrid.runtime.wgpu_thread.GpuDevice` emits it.

    ``elapsed_s`` is 0 when the job starts; ``error`` is the failure's message, or None.
    ``placement`` is where the job runs (or ran); ``device`` the adapter's description
    (:class:`DeviceInfo`), ``gpu_s`` the kernels' GPU time from timestamp queries (finished
    GPU jobs on adapters that have them, else None).
    """

    job_id: int
    op: str
    placement: Placement
    elapsed_s: float
    error: str | None = None
    device: DeviceInfo | None = None
    gpu_s: float | None = None
