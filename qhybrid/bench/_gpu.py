"""``qhybrid bench gpu``: the WGSL kernel library against numpy on the same machine.

Each kernel runs on the GPU device (time per call from timestamp queries where the adapter has
them, else the wall clock around a submit that waits) and its numpy reference runs here on the
CPU; both report GFLOP/s (compute-bound kernels) or GB/s (memory-bound ones). numpy's linear
multiplies by the weight already dequantized to float32 (the best numpy can do; it does not
read GGUF blocks). The fraction of the device's peak uses a table of known GPUs, or the best
figures measured in this run when the device is not in the table (``peak_source`` says which).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qhybrid.runtime.wgpu_thread import ComputeContext, DeviceInfo, GpuDevice, GpuTensor, reference

#: FP32 TFLOP/s and memory GB/s of GPUs by a substring of the adapter's name.
KNOWN_PEAKS: dict[str, tuple[float, float]] = {
    "H200": (66.9, 4800.0),
    "H100 PCIe": (51.2, 2000.0),
    "H100": (66.9, 3350.0),
    "A100": (19.5, 1555.0),
    "L40S": (91.6, 864.0),
    "L4": (30.3, 300.0),
    "A10": (31.2, 600.0),
    "RTX 4090": (82.6, 1008.0),
    "RTX 3090": (35.6, 936.0),
    "T4": (8.1, 320.0),
    "Apple M2": (3.6, 100.0),
}
#: The issue's goals on a real GPU, as fractions of the device's peak.
GOAL_MATMUL_OF_PEAK = 0.5
GOAL_QUANT_MATVEC_OF_BANDWIDTH = 0.7


@dataclass(slots=True)
class KernelFigure:
    name: str
    shape: str
    unit: str  # "gflops" or "gbps"
    gpu: float
    numpy: float
    gpu_s: float
    numpy_s: float
    of_peak: float | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": self.name,
            "shape": self.shape,
            f"gpu_{self.unit}": round(self.gpu, 3),
            f"numpy_{self.unit}": round(self.numpy, 3),
            "gpu_ms": round(self.gpu_s * 1e3, 4),
            "numpy_ms": round(self.numpy_s * 1e3, 4),
        }
        if self.of_peak is not None:
            doc["fraction_of_peak"] = round(self.of_peak, 4)
        return doc


@dataclass(slots=True)
class GpuReport:
    device: DeviceInfo
    timing: str
    peak_source: str
    peak_gflops: float
    peak_gbps: float
    kernels: list[KernelFigure] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device.to_json(),
            "timing": self.timing,
            "peak": {
                "source": self.peak_source,
                "gflops": round(self.peak_gflops, 2),
                "gbps": round(self.peak_gbps, 2),
            },
            "goals": {
                "matmul_of_fp32_peak": GOAL_MATMUL_OF_PEAK,
                "quantized_matvec_of_bandwidth": GOAL_QUANT_MATVEC_OF_BANDWIDTH,
            },
            "kernels": [k.to_json() for k in self.kernels],
        }


def _best(fn: Callable[[], Any], repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return max(best, 1e-9)


class _Bench:
    def __init__(self, ctx: ComputeContext, repeat: int) -> None:
        self.ctx = ctx
        self.repeat = repeat
        self.held: list[GpuTensor] = []
        self.timestamps = ctx.features.timestamps
        self.tiny = self.empty(1)

    def up(self, array: Any) -> GpuTensor:
        self.held.append(self.ctx.upload(array))
        return self.held[-1]

    def empty(self, shape: Any, dtype: Any = np.float32) -> GpuTensor:
        self.held.append(self.ctx.empty(shape, dtype))
        return self.held[-1]

    def gpu_time(self, record: Callable[[Any], None]) -> float:
        """The best time of one run of the recorded kernels."""

        def once() -> float:
            rec = self.ctx.record(profile=self.timestamps)
            record(rec)
            start = time.perf_counter()
            rec.submit(read=[self.tiny])
            wall = time.perf_counter() - start
            return sum(t.gpu_s for t in rec.timings) if rec.timings else wall

        once()  # compile and warm up
        return max(min(once() for _ in range(self.repeat)), 1e-9)

    def release(self) -> None:
        for t in self.held:
            self.ctx.release(t)


def run_gpu_bench(*, quick: bool = False, prefer: str = "gpu") -> GpuReport:
    """Measure every kernel family; ``quick`` uses small shapes (a smoke run)."""
    with GpuDevice(prefer=prefer) as device:
        return device.call(lambda ctx: _measure(device.info, ctx, quick)).result()


def _measure(info: DeviceInfo, ctx: ComputeContext | None, quick: bool) -> GpuReport:
    if ctx is None:
        raise RuntimeError("no GPU adapter: nothing to benchmark (numpy runs every op)")
    rng = np.random.default_rng(0)
    repeat = 2 if quick else 5
    b = _Bench(ctx, repeat)
    figures: list[KernelFigure] = []

    def add(
        name: str, shape: str, unit: str, amount: float, gpu_s: float, cpu: Callable[[], Any]
    ) -> None:
        numpy_s = _best(cpu, repeat)
        scale = 1e9
        figures.append(
            KernelFigure(
                name, shape, unit, amount / gpu_s / scale, amount / numpy_s / scale, gpu_s, numpy_s
            )
        )

    try:
        # matrix product
        n = 256 if quick else 1024
        a = rng.standard_normal((n, n), dtype=np.float32)
        at, ct = b.up(a), b.empty((n, n))
        t = b.gpu_time(lambda r: r.matmul(at, at, ct))
        add("matmul", f"{n}x{n}x{n}", "gflops", 2.0 * n**3, t, lambda: a @ a)

        # linear, decode (M=1: matrix x vector) per format, and prefill (M=64)
        k = 1024 if quick else 4096
        rows = 1024 if quick else 4096
        for qtype in reference.QTYPES:
            raw = reference.random_quantized(rng, qtype, rows, k)
            wq = ctx.upload_weight(raw, qtype, rows, k)
            b.held.append(wq)
            dense = reference.dequantize(raw, qtype, rows, k)
            for m in (1, 64) if qtype in ("q8_0", "q4_k") else (1,):
                x = rng.standard_normal((m, k), dtype=np.float32)
                xt, out = b.up(x), b.empty((m, rows))

                def gpu(r: Any, xt: GpuTensor = xt, wq: Any = wq, out: GpuTensor = out) -> None:
                    r.linear(xt, wq, out)

                t = b.gpu_time(gpu)

                def cpu(x: Any = x, dense: Any = dense) -> Any:
                    return x @ dense.T

                if m == 1:
                    nbytes = raw.nbytes + 4 * (k + rows)
                    add(f"linear.{qtype}", f"1x{k} @ {rows}x{k}^T", "gbps", nbytes, t, cpu)
                else:
                    add(
                        f"linear.{qtype}.prefill",
                        f"{m}x{k} @ {rows}x{k}^T",
                        "gflops",
                        2.0 * m * k * rows,
                        t,
                        cpu,
                    )

        # rows
        r_, c_ = (16, 8192) if quick else (64, 32000)
        x = rng.standard_normal((r_, c_), dtype=np.float32)
        xt, out = b.up(x), b.empty((r_, c_))
        t = b.gpu_time(lambda r: r.softmax(xt, out))
        add("softmax", f"{r_}x{c_}", "gbps", 2 * x.nbytes, t, lambda: reference.softmax(x))
        w = rng.standard_normal(c_, dtype=np.float32)
        wt = b.up(w)
        t = b.gpu_time(lambda r: r.rmsnorm(xt, wt, out, 1e-5))
        add("rmsnorm", f"{r_}x{c_}", "gbps", 2 * x.nbytes, t, lambda: reference.rmsnorm(x, w, 1e-5))
        t = b.gpu_time(lambda r: r.silu_mul(xt, xt, out))
        add("silu_mul", f"{r_}x{c_}", "gbps", 3 * x.nbytes, t, lambda: reference.silu_mul(x, x))

        # attention, decode: one token per sequence, 4 sequences, GQA 32/8, D=128
        s, length, hq, hkv, d = (2, 256, 8, 2, 64) if quick else (4, 1024, 32, 8, 128)
        kc = rng.standard_normal((s, length, hkv, d), dtype=np.float32)
        vc = rng.standard_normal((s, length, hkv, d), dtype=np.float32)
        q = rng.standard_normal((s, hq, d), dtype=np.float32)
        slot = np.arange(s, dtype=np.int32)
        pos = np.full(s, length - 1, dtype=np.int32)
        kt, vt, qt, st, pt, ot = (
            b.up(kc),
            b.up(vc),
            b.up(q),
            b.up(slot),
            b.up(pos),
            b.empty(q.shape),
        )
        t = b.gpu_time(lambda r: r.attention(qt, kt, vt, st, pt, ot, d**-0.5))
        add(
            "attention",
            f"decode {s} seqs x {length} ctx, Hq {hq}/Hkv {hkv}, D {d}",
            "gbps",
            kc.nbytes + vc.nbytes,
            t,
            lambda: reference.attention(q, kc, vc, slot, pos, d**-0.5),
        )

        # sampling over a vocabulary
        v = 32000
        logits = rng.standard_normal((4, v), dtype=np.float32)
        lt, tok, u = b.up(logits), b.empty(4, np.uint32), b.up(np.full(4, 0.5, np.float32))
        t = b.gpu_time(lambda r: r.sample(lt, tok, 0.8, 40, 0.95, u))
        add(
            "sample",
            f"4x{v}, top-k 40",
            "gbps",
            logits.nbytes * 40,
            t,
            lambda: reference.sample(logits, 0.8, 40, 0.95, np.full(4, 0.5, np.float32)),
        )

        # copy: the device's achievable memory bandwidth
        big = rng.standard_normal(1 << (22 if quick else 25), dtype=np.float32)
        src, dst = b.up(big), b.empty(big.shape)
        t = b.gpu_time(lambda r: r.copy(src, dst))
        add("copy", f"{big.nbytes >> 20} MiB", "gbps", 2 * big.nbytes, t, lambda: big.copy())
    finally:
        b.release()

    peak = next((v for key, v in KNOWN_PEAKS.items() if key.lower() in info.name.lower()), None)
    if peak is not None:
        source, peak_gflops, peak_gbps = "known-devices table", peak[0] * 1e3, peak[1]
    else:
        source = "measured in this run (best matmul GFLOP/s, copy GB/s)"
        peak_gflops = max(f.gpu for f in figures if f.unit == "gflops")
        peak_gbps = next(f.gpu for f in figures if f.name == "copy")
    for f in figures:
        f.of_peak = f.gpu / (peak_gflops if f.unit == "gflops" else peak_gbps)
    timing = "timestamp queries" if b.timestamps else "wall clock around a waiting submit"
    return GpuReport(info, timing, source, peak_gflops, peak_gbps, figures)


def format_report(report: GpuReport) -> str:
    """A plain-text table for the terminal."""
    info = report.device
    lines = [
        f"device: {info.name} ({info.backend}, {info.kind}); GPU timing: {report.timing}",
        f"peak: {report.peak_gflops:.1f} GFLOP/s, {report.peak_gbps:.1f} GB/s "
        f"({report.peak_source})",
        f"{'kernel':<22} {'shape':<44} {'GPU':>10} {'numpy':>10} {'unit':>7} {'peak':>8}",
    ]
    for k in report.kernels:
        unit = "GFLOP/s" if k.unit == "gflops" else "GB/s"
        frac = "" if k.of_peak is None else f"{100 * k.of_peak:.1f}%"
        lines.append(
            f"{k.name:<22} {k.shape:<44} {k.gpu:>10.2f} {k.numpy:>10.2f} {unit:>7} {frac:>8}"
        )
    if info.kind != "hardware":
        lines.append("(a software adapter: these figures say nothing about a real GPU)")
    return "\n".join(lines)
