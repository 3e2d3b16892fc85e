"""Placement: run a job on the GPU or with numpy, from a cost model calibrated at start.

The model is a handful of rates measured once per adapter (a short run, about half a second):
the GPU's fixed cost per job (upload, submit, readback round trip), its transfer rate, its
matrix-product and streaming rates, and numpy's matrix-product and streaming rates on this
machine. A job's time on either side is predicted from its flops and bytes; the faster wins.
On a software adapter (llvmpipe) numpy wins large matrix products; on a real GPU the GPU does.

The rates are cached as JSON in ``$QHYBRID_CACHE_DIR/gpu`` (or the platform's user cache
folder), keyed by the adapter, its driver and the qhybrid version, so later starts skip the
measurement.

Measured rates are timings: two calibrations differ, and a job near the crossover changes side,
and with it the bits of its result. A run, whose trace must be the same every time, therefore
places jobs by :func:`fixed_placement` instead: a rule of the adapter's kind and the job's size
only, named by :func:`placement_rule` in the run's recorded configuration (issue 12).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qhybrid.runtime.wgpu_thread._types import DeviceInfo, Placement

logger = logging.getLogger(__name__)

Shape = tuple[int, ...]

#: The cache folder's environment override (shared with the module cache).
CACHE_ENV = "QHYBRID_CACHE_DIR"


@dataclass(frozen=True, slots=True)
class CostModel:
    """Measured rates: seconds per job, bytes and flops per second."""

    gpu_overhead_s: float
    gpu_transfer_bps: float
    gpu_flops: float
    gpu_stream_bps: float
    cpu_flops: float
    cpu_stream_bps: float

    def predict(self, op: str, shapes: Sequence[Shape], out_shape: Shape) -> tuple[float, float]:
        """(GPU seconds, numpy seconds) for a job of ``op`` on these shapes (float32)."""
        nbytes = 4 * (sum(math.prod(s) for s in shapes) + math.prod(out_shape))
        if op == "matmul" and len(shapes) == 2 and len(shapes[0]) == 2:
            (m, k), n = shapes[0], shapes[1][-1]
            flops = 2.0 * m * n * k
            gpu = self.gpu_overhead_s + nbytes / self.gpu_transfer_bps + flops / self.gpu_flops
            cpu = flops / self.cpu_flops + nbytes / self.cpu_stream_bps
            return gpu, cpu
        gpu = self.gpu_overhead_s + nbytes / self.gpu_transfer_bps + nbytes / self.gpu_stream_bps
        return gpu, nbytes / self.cpu_stream_bps

    def placement(self, op: str, shapes: Sequence[Shape], out_shape: Shape) -> Placement:
        """Where ``op`` on these shapes is predicted to finish first."""
        gpu, cpu = self.predict(op, shapes, out_shape)
        return "gpu" if gpu < cpu else "cpu"

    def to_json(self) -> dict[str, float]:
        return asdict(self)


#: The fixed rule, on a hardware adapter: a matrix product of at least this many flops, or any
#: other job moving at least this many bytes, runs on the GPU; smaller jobs run with numpy.
FIXED_GPU_MIN_FLOPS = 1 << 24
FIXED_GPU_MIN_BYTES = 1 << 22


def fixed_placement(
    info: DeviceInfo, op: str, shapes: Sequence[Shape], out_shape: Shape
) -> Placement:
    """Where the fixed rule puts a job: no timing enters it, so every run agrees.

    numpy on a software adapter (on llvmpipe numpy wins every job, docs/gpu.md); on a hardware
    adapter the GPU for jobs of at least :data:`FIXED_GPU_MIN_FLOPS` (matmul) or
    :data:`FIXED_GPU_MIN_BYTES` (other ops), numpy below, where a round trip costs more than
    the job.
    """
    if info.kind != "hardware":
        return "cpu"
    if op == "matmul" and len(shapes) == 2 and len(shapes[0]) == 2:
        (m, k), n = shapes[0], shapes[1][-1]
        return "gpu" if 2 * m * n * k >= FIXED_GPU_MIN_FLOPS else "cpu"
    nbytes = 4 * (sum(math.prod(s) for s in shapes) + math.prod(out_shape))
    return "gpu" if nbytes >= FIXED_GPU_MIN_BYTES else "cpu"


def placement_rule(prefer: str, info: DeviceInfo, fixed: bool) -> str:
    """What decides placement, in words, for the run's recorded configuration."""
    if info.kind == "cpu" or prefer == "cpu":
        return "cpu: every job with numpy"
    if prefer == "gpu":
        return "gpu: every job with a kernel on the GPU"
    if not fixed:
        return "measured: a cost model of timings on this machine (not reproducible)"
    if info.kind != "hardware":
        return f"fixed: every job with numpy on a {info.kind} adapter"
    return (
        f"fixed: on the GPU a matmul of >= {FIXED_GPU_MIN_FLOPS} flops or another job of "
        f">= {FIXED_GPU_MIN_BYTES} bytes, numpy below"
    )


def cache_dir() -> Path:
    """``$QHYBRID_CACHE_DIR/gpu``, or the platform's user cache folder for qhybrid."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override) / "gpu"
    import platformdirs

    return platformdirs.user_cache_path("qhybrid") / "gpu"


def cache_key(info: DeviceInfo, driver: str) -> str:
    from qhybrid import __version__

    text = "|".join((info.name, info.backend, info.vendor, driver, __version__))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def load_or_calibrate(
    info: DeviceInfo, driver: str, measure_gpu: Callable[[], dict[str, float]]
) -> CostModel:
    """The cached model for this adapter, or a fresh measurement (then cached)."""
    path = cache_dir() / f"placement-{cache_key(info, driver)}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model = CostModel(**{k: float(v) for k, v in data["model"].items()})
        logger.debug("placement model from %s", path)
        return model
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("ignoring the unreadable placement cache %s: %s", path, exc)
    started = time.perf_counter()
    gpu = measure_gpu()
    cpu = measure_cpu()
    model = CostModel(**gpu, **cpu)
    logger.info(
        "calibrated GPU placement on %s in %.2f s: GPU %.1f GFLOP/s, numpy %.1f GFLOP/s",
        info.name,
        time.perf_counter() - started,
        model.gpu_flops / 1e9,
        model.cpu_flops / 1e9,
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        payload = {"device": info.to_json(), "driver": driver, "model": model.to_json()}
        tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("could not cache the placement model in %s: %s", path, exc)
    return model


def best_time(fn: Callable[[], Any], repeat: int = 3) -> float:
    """The best of ``repeat`` wall-clock times of ``fn()``, in seconds (at least 1 ns)."""
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return max(best, 1e-9)


def measure_cpu() -> dict[str, float]:
    """numpy's matrix-product and streaming rates here."""
    rng = np.random.default_rng(0)
    n = 256
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=out)
    t_mm = best_time(lambda: np.matmul(a, b, out=out))
    x = rng.standard_normal(1 << 20, dtype=np.float32)
    y = np.empty_like(x)
    t_add = best_time(lambda: np.add(x, x, out=y))
    return {"cpu_flops": 2.0 * n**3 / t_mm, "cpu_stream_bps": 3 * x.nbytes / t_add}
