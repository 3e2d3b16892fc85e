"""``qhybrid bench llm MODEL``: prefill and decode tokens/s, GPU and CPU paths, llama.cpp beside.

Every figure comes from the same file in the same run:

- for each path qhybrid has here (the GPU graph when there is an adapter, numpy on the CPU):
  prefill tokens/s (a prompt of ``prompt_tokens``, one step) and decode tokens/s (one greedy
  stream of ``decode_tokens``, end-of-sequence ignored), the best of ``repeat`` runs;
- continuous batching on each path: the total tokens/s of ``streams`` concurrent
  streams against one stream (goal: at least 4x with 8 streams);
- llama.cpp through ``llama-cpp-python`` (the optional ``bench`` extra), when installed: the same
  prompt and decode on the CPU (and with all layers offloaded when its build has a GPU
  backend), so ``vs_llama_cpp`` compares decode and prefill rates on the same device (goals,
  ``GOALS_VS_LLAMA_CPP``: on the CPU decode at least 0.7x and prefill 0.5x per CPU second,
  the same thread count; on a GPU decode at least 0.9x);
- memory: each engine runs in a process of its own (spawned), so that its peak resident set
  is the whole process's, from its start (Linux: ``VmHWM``): the interpreter, the imports,
  the model's mapped pages and everything the engine allocates, and nothing of the other
  engine's; the resident set before the model opens (the fixed cost) beside it. For qhybrid,
  the goal of at most 1.5x the file plus the KV cache, met or not;
- rates per CPU second of that process as well (``time.process_time``: all its threads),
  steadier than wall-clock tokens/s on a shared machine;
- the machine (CPU model, cores, memory) and the load average before and after, since the
  figures of a shared machine move with its load.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qhybrid.bench._llm_peer import Memory, prompt_ids

logger = logging.getLogger(__name__)

GOAL_BATCHING = 4.0
#: Rates against llama.cpp's on the same file: on the CPU per CPU second (issue #10), on a GPU
#: in wall-clock time.
GOALS_VS_LLAMA_CPP: dict[str, dict[str, float]] = {
    "cpu": {"decode": 0.7, "prefill": 0.5},
    "gpu": {"decode": 0.9},
}
#: Peak RSS of the whole process at most this times (file + KV cache).
GOAL_MEMORY = 1.5


class BenchmarkError(RuntimeError):
    """A measurement that could not be taken; the message says which and why."""


@dataclass(frozen=True)
class LlmBenchConfig:
    model: Path
    prompt_tokens: int = 128
    decode_tokens: int = 64
    streams: int = 8
    repeat: int = 2
    paths: tuple[str, ...] = ("gpu", "cpu")
    llama_cpp: bool = True


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": total,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


@dataclass
class LlmBenchReport:
    model: dict[str, Any]
    device: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)
    batching: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=machine)
    load_before: list[float] = field(default_factory=_load)
    load_after: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        ours = {r["placement"]: r for r in self.runs if r["engine"] == "qhybrid"}
        theirs = {r["placement"]: r for r in self.runs if r["engine"] == "llama.cpp"}

        def ratio(key: str) -> dict[str, float]:
            return {
                place: round(ours[place][key] / theirs[place][key], 3)
                for place in ours
                if place in theirs and theirs[place][key] > 0
            }

        ratios = ratio("decode_tok_s")
        per_cpu_s = {key: ratio(f"{key}_tok_per_cpu_s") for key in ("decode", "prefill")}
        wall = {key: ratio(f"{key}_tok_s") for key in ("decode", "prefill")}

        def met(place: str) -> bool:
            # The CPU path against llama.cpp on one thread: per CPU second (the same thread
            # count, and steadier on a shared machine); a GPU: wall-clock time.
            got = per_cpu_s if place == "cpu" else wall
            return all(
                got[key].get(place, 0.0) >= goal
                for key, goal in GOALS_VS_LLAMA_CPP.get(place, {}).items()
            )

        return {
            "model": self.model,
            "device": self.device,
            "machine": self.machine,
            "load_average": {"before": self.load_before, "after": self.load_after},
            "runs": self.runs,
            "batching": self.batching,
            "vs_llama_cpp": {
                "decode_ratio": ratios,
                "prefill_ratio": ratio("prefill_tok_s"),
                "decode_ratio_per_cpu_s": per_cpu_s["decode"],
                "prefill_ratio_per_cpu_s": per_cpu_s["prefill"],
                "goal": {place: GOALS_VS_LLAMA_CPP.get(place, {}) for place in ratios},
                "met": {place: met(place) for place in ratios},
            },
            "notes": self.notes,
        }


Progress = Callable[[str], None]


def run_llm_bench(config: LlmBenchConfig, progress: Progress) -> LlmBenchReport:
    """Measure everything (see the module docstring); raises :class:`BenchmarkError`."""
    from qhybrid.runtime.llm import read_model_info

    info = read_model_info(config.model)
    if not info.supported:
        raise BenchmarkError(f"{config.model}: {info.reason}")
    report = LlmBenchReport(model=info.to_json(), device={})
    _prepare_kernels(progress)
    engines = ["qhybrid", "llama.cpp"] if config.llama_cpp else ["qhybrid"]
    for engine in engines:
        if engine == "qhybrid":
            part = _in_own_process(engine, config, progress)
        else:
            part = _llama_cpp_process(config, progress)
        report.device = report.device or part.get("device", {})
        report.runs += part["runs"]
        report.batching.update(part.get("batching", {}))
        report.notes += part["notes"]
    report.load_after = _load()
    return report


def _prepare_kernels(progress: Progress) -> None:
    """Compile the CPU kernels ahead of time first (once per machine and version, in a child
    process: qhybrid's measurement process then loads them without numba and LLVM, as every
    run after the first does), unless QHYBRID_CPU_KERNELS=jit asks for numba's JIT."""
    from qhybrid.runtime.llm import _aot_cache

    try:
        choice = _aot_cache.kernel_choice()
    except _aot_cache.BadChoice as exc:
        raise BenchmarkError(str(exc)) from None
    if choice != "jit" and _aot_cache.numba_installed():
        _aot_cache.ensure_built(progress)


def _in_own_process(engine: str, config: LlmBenchConfig, progress: Progress) -> dict[str, Any]:
    """One engine's measurements in a spawned process (its peak RSS is then its own)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(engine, config, theirs), name=f"bench-{engine}")
    child.start()
    theirs.close()
    result: dict[str, Any] | None = None
    error: str | None = None
    try:
        while True:
            try:
                kind, payload = ours.recv()
            except EOFError:
                break
            if kind == "progress":
                progress(payload)
            elif kind == "done":
                result = payload
            else:
                error = payload
    finally:
        ours.close()
        child.join()
    if error is not None:
        raise BenchmarkError(error)
    if result is None:
        raise BenchmarkError(
            f"the {engine} measurement process ended without a result (exit code "
            f"{child.exitcode}; its error is on stderr above)"
        )
    return result


def _llama_cpp_process(config: LlmBenchConfig, progress: Progress) -> dict[str, Any]:
    """llama.cpp's measurements by :mod:`._llm_peer`, run as a script: a process with the
    interpreter and llama-cpp-python only, so that its peak RSS is llama.cpp's own."""
    import json
    import subprocess
    import sys

    from qhybrid.bench import _llm_peer

    args = {
        "model": str(config.model),
        "prompt_tokens": config.prompt_tokens,
        "decode_tokens": config.decode_tokens,
        "repeat": config.repeat,
    }
    script = [sys.executable, _llm_peer.__file__, json.dumps(args)]
    result: dict[str, Any] | None = None
    with subprocess.Popen(script, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        for line in child.stdout:
            try:
                kind, payload = json.loads(line)
            except ValueError:
                continue  # not one of its event lines
            if kind == "progress":
                progress(str(payload))
            elif kind == "done":
                result = payload
            else:
                child.wait()
                raise BenchmarkError(str(payload))
    if result is None:
        raise BenchmarkError(
            f"the llama.cpp measurement process ended without a result (exit code "
            f"{child.returncode}; its error is on stderr above)"
        )
    return result


def _child(engine: str, config: LlmBenchConfig, conn: Any) -> None:  # pragma: no cover (child)
    from qhybrid.runtime.llm import ModelError
    from qhybrid.runtime.wgpu_thread import GpuJobError

    report = LlmBenchReport(model={}, device={})

    def progress(message: str) -> None:
        conn.send(("progress", message))

    try:
        asyncio.run(_measure_qhybrid(config, report, progress))
        part = {
            "device": report.device,
            "runs": report.runs,
            "batching": report.batching,
            "notes": report.notes,
        }
        conn.send(("done", part))
    except (BenchmarkError, ModelError, GpuJobError, ValueError) as exc:
        conn.send(("error", str(exc)))
    finally:
        conn.close()


async def _measure_qhybrid(
    config: LlmBenchConfig, report: LlmBenchReport, progress: Progress
) -> None:
    from qhybrid.runtime.llm import GenerationParams, Llm, LlmOptions, SamplingParams
    from qhybrid.runtime.wgpu_thread import GpuDevice

    greedy = SamplingParams(temperature=0.0)
    n_ctx = config.prompt_tokens + config.decode_tokens + 8
    # Only the GPU path needs an adapter (and wgpu's and the driver's memory).
    device = GpuDevice() if "gpu" in config.paths else GpuDevice(prefer="cpu")
    try:
        await asyncio.to_thread(device.start)
        report.device = device.info.to_json()
        placements = [p for p in config.paths if p == "cpu" or device.info.is_gpu]
        if "gpu" in config.paths and not device.info.is_gpu:
            report.notes.append("no GPU adapter: the GPU path was not measured")
        for placement in placements:
            options = LlmOptions(
                n_slots=max(config.streams, 1),
                n_ctx=n_ctx,
                runner=placement,  # type: ignore[arg-type]
            )
            progress(f"qhybrid {placement}: loading {config.model.name}")
            memory = Memory().__enter__()
            async with await Llm.open(config.model, options, device=device) as llm:
                n_vocab = llm.model.config.n_vocab
                prompt = prompt_ids(llm.tokenizer, n_vocab, config.prompt_tokens)
                short = prompt[:8]
                # Warm-up: pipelines compile, weights get cached.
                await llm.complete(prompt, GenerationParams(max_tokens=2, sampling=greedy))
                prefill = decode = prefill_cpu = decode_cpu = 0.0
                for _ in range(config.repeat):
                    cpu = time.process_time()
                    result = await llm.complete(
                        prompt, GenerationParams(max_tokens=1, sampling=greedy)
                    )
                    prefill = max(prefill, result.prefill_tok_s)
                    prefill_cpu = max(prefill_cpu, len(prompt) / (time.process_time() - cpu))
                    cpu = time.process_time()
                    result = await llm.complete(
                        short,
                        GenerationParams(
                            max_tokens=config.decode_tokens, sampling=greedy, ignore_eos=True
                        ),
                    )
                    decode = max(decode, result.decode_tok_s)
                    # (this CPU time includes the 8-token prompt's step)
                    used = time.process_time() - cpu
                    decode_cpu = max(decode_cpu, len(result.tokens) / used)
                memory.__exit__()
                progress(
                    f"qhybrid {placement}: prefill {prefill:,.1f} tok/s, decode {decode:,.1f} tok/s"
                )
                report.runs.append(
                    {
                        "engine": "qhybrid",
                        "placement": placement,
                        "device": report.device["name"] if placement == "gpu" else "cpu (numpy)",
                        "cpu_kernels": _kernel_mode(),
                        "prompt_tokens": len(prompt),
                        "decode_tokens": config.decode_tokens,
                        "prefill_tok_s": round(prefill, 3),
                        "decode_tok_s": round(decode, 3),
                        "prefill_tok_per_cpu_s": round(prefill_cpu, 3),
                        "decode_tok_per_cpu_s": round(decode_cpu, 3),
                        **memory.to_json(),
                        "memory_goal": _memory_goal(llm.model, options, memory),
                    }
                )
                if config.streams > 1:
                    report.batching[placement] = await _batching(
                        llm, short, config, placement, progress
                    )
    finally:
        await asyncio.to_thread(device.close)


def _kernel_mode() -> str:
    """``aot`` (compiled ahead of time: numba was never imported) or ``jit``, as this process
    ran them."""
    import sys

    from qhybrid.runtime.llm import _jit

    jitted = "numba" in sys.modules
    return _jit.mode() + (" (+ numba JIT fallback)" if _jit.mode() == "aot" and jitted else "")


def _memory_goal(model: Any, options: Any, memory: Memory) -> dict[str, Any]:
    """Peak RSS against 1.5x (the file + the KV cache), the issue's memory goal."""
    from qhybrid.runtime.llm._memory import kv_cache_bytes

    file_mb = model.path.stat().st_size / 2**20
    kv_mb = kv_cache_bytes(model.config, options.n_slots, options.n_ctx) / 2**20
    limit = GOAL_MEMORY * (file_mb + kv_mb)
    peak = memory.to_json()["peak_rss_mb"]
    return {
        "file_mb": round(file_mb, 1),
        "kv_cache_mb": round(kv_mb, 1),
        "limit_mb": round(limit, 1),
        "met": None if peak is None else peak <= limit,
    }


async def _batching(
    llm: Any, prompt: list[int], config: LlmBenchConfig, placement: str, progress: Progress
) -> dict[str, Any]:
    from qhybrid.runtime.llm import GenerationParams, SamplingParams

    params = GenerationParams(
        max_tokens=config.decode_tokens,
        sampling=SamplingParams(temperature=0.0),
        ignore_eos=True,
    )

    async def total_rate(streams: int) -> float:
        best = 0.0
        for _ in range(config.repeat):
            started = time.perf_counter()
            results = await asyncio.gather(*(llm.complete(prompt, params) for _ in range(streams)))
            elapsed = time.perf_counter() - started
            best = max(best, sum(len(r.tokens) for r in results) / elapsed)
        return best

    one = await total_rate(1)
    many = await total_rate(config.streams)
    ratio = many / one if one > 0 else 0.0
    progress(
        f"qhybrid {placement}: 1 stream {one:,.1f} tok/s, {config.streams} streams "
        f"{many:,.1f} tok/s in all ({ratio:.2f}x)"
    )
    return {
        "placement": placement,
        "streams": config.streams,
        "tok_s_1": round(one, 3),
        "tok_s_n": round(many, 3),
        "ratio": round(ratio, 3),
        "goal": GOAL_BATCHING,
        "met": ratio >= GOAL_BATCHING,
    }
