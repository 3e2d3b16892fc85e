"""``qhybrid bench llm MODEL``: prefill and decode tokens/s, GPU and CPU paths, llama.cpp beside.

Every figure comes from the same file in the same run:

- for each path qhybrid has here (the GPU graph when there is an adapter, numpy on the CPU):
  prefill tokens/s (a prompt of ``prompt_tokens``, one step) and decode tokens/s (one greedy
  stream of ``decode_tokens``, end-of-sequence ignored), the best of ``repeat`` runs;
- continuous batching on each path: the total tokens/s of ``streams`` concurrent
  streams against one stream (goal: at least 4x with 8 streams);
- llama.cpp through ``llama-cpp-python`` (the optional ``bench`` extra), when installed: the same
  prompt and decode on the CPU (and with all layers offloaded when its build has a GPU
  backend), so ``vs_llama_cpp`` compares decode and prefill rates on the same device (goal:
  decode at least 0.9);
- memory: each engine's peak resident set while it loads and runs (Linux: the process's
  ``VmHWM``, reset through ``/proc/self/clear_refs`` before each engine starts), and the
  resident set before it, so that the growth is that engine's own;
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

logger = logging.getLogger(__name__)

GOAL_BATCHING = 4.0
GOAL_VS_LLAMA_CPP = 0.9


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


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class _Memory:
    """Resident set before an engine runs and its peak while it runs (Linux; None elsewhere)."""

    def __enter__(self) -> _Memory:
        try:  # "5" resets the peak resident set (VmHWM) to the current one
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        self.before = _status_kb("VmRSS")
        self.peak: int | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = _status_kb("VmHWM")

    def to_json(self) -> dict[str, float | None]:
        def mb(kb: int | None) -> float | None:
            return None if kb is None else round(kb / 1024, 1)

        grown = None if self.peak is None or self.before is None else self.peak - self.before
        return {
            "rss_before_mb": mb(self.before),
            "peak_rss_mb": mb(self.peak),
            "grown_mb": mb(grown),
        }


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
                "goal": GOAL_VS_LLAMA_CPP,
                "met": {place: r >= GOAL_VS_LLAMA_CPP for place, r in ratios.items()},
            },
            "notes": self.notes,
        }


Progress = Callable[[str], None]


def run_llm_bench(config: LlmBenchConfig, progress: Progress) -> LlmBenchReport:
    """Measure everything (see the module docstring); raises :class:`BenchmarkError`."""
    from qhybrid.runtime.llm import ModelError, read_model_info
    from qhybrid.runtime.wgpu_thread import GpuJobError

    info = read_model_info(config.model)
    if not info.supported:
        raise BenchmarkError(f"{config.model}: {info.reason}")
    report = LlmBenchReport(model=info.to_json(), device={})
    try:
        asyncio.run(_measure_qhybrid(config, report, progress))
    except (ModelError, GpuJobError, ValueError) as exc:
        raise BenchmarkError(str(exc)) from exc
    if config.llama_cpp:
        _measure_llama_cpp(config, report, progress)
    report.load_after = _load()
    return report


def _prompt(tokenizer: Any, n_vocab: int, count: int) -> list[int]:
    """``count`` ids of ordinary text (the same for every engine), BOS first if the model adds
    one."""
    text = (
        "The little robot walked through the quiet garden and looked at the red flowers. "
        "It wanted to find a friend, so it asked the old cat for help. "
    )
    ids = tokenizer.encode(text * (count // 8 + 4))[:count]
    if len(ids) < count:
        raise BenchmarkError(f"the tokenizer gave only {len(ids)} tokens for the prompt")
    return [min(int(t), n_vocab - 1) for t in ids]


async def _measure_qhybrid(
    config: LlmBenchConfig, report: LlmBenchReport, progress: Progress
) -> None:
    from qhybrid.runtime.llm import GenerationParams, Llm, LlmOptions, SamplingParams
    from qhybrid.runtime.wgpu_thread import GpuDevice

    greedy = SamplingParams(temperature=0.0)
    n_ctx = config.prompt_tokens + config.decode_tokens + 8
    device = GpuDevice()
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
            memory = _Memory().__enter__()
            async with await Llm.open(config.model, options, device=device) as llm:
                n_vocab = llm.model.config.n_vocab
                prompt = _prompt(llm.tokenizer, n_vocab, config.prompt_tokens)
                short = prompt[:8]
                # Warm-up: pipelines compile, weights get cached.
                await llm.complete(prompt, GenerationParams(max_tokens=2, sampling=greedy))
                prefill = decode = 0.0
                for _ in range(config.repeat):
                    result = await llm.complete(
                        prompt, GenerationParams(max_tokens=1, sampling=greedy)
                    )
                    prefill = max(prefill, result.prefill_tok_s)
                    result = await llm.complete(
                        short,
                        GenerationParams(
                            max_tokens=config.decode_tokens, sampling=greedy, ignore_eos=True
                        ),
                    )
                    decode = max(decode, result.decode_tok_s)
                memory.__exit__()
                progress(
                    f"qhybrid {placement}: prefill {prefill:,.1f} tok/s, decode {decode:,.1f} tok/s"
                )
                report.runs.append(
                    {
                        "engine": "qhybrid",
                        "placement": placement,
                        "device": report.device["name"] if placement == "gpu" else "cpu (numpy)",
                        "prompt_tokens": len(prompt),
                        "decode_tokens": config.decode_tokens,
                        "prefill_tok_s": round(prefill, 3),
                        "decode_tok_s": round(decode, 3),
                        **memory.to_json(),
                    }
                )
                if config.streams > 1:
                    report.batching[placement] = await _batching(
                        llm, short, config, placement, progress
                    )
    finally:
        await asyncio.to_thread(device.close)


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


def _measure_llama_cpp(config: LlmBenchConfig, report: LlmBenchReport, progress: Progress) -> None:
    try:
        import llama_cpp  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        report.notes.append(
            "llama-cpp-python is not installed (pip install 'qhybrid[bench]'): no llama.cpp peer"
        )
        return
    n_ctx = config.prompt_tokens + config.decode_tokens + 8
    offload = [("cpu", 0)]
    if bool(getattr(llama_cpp, "llama_supports_gpu_offload", lambda: False)()):
        offload.append(("gpu", -1))
    for placement, layers in offload:
        progress(f"llama.cpp {placement}: loading")
        memory = _Memory().__enter__()
        try:
            model = llama_cpp.Llama(
                model_path=str(config.model),
                n_ctx=n_ctx,
                n_gpu_layers=layers,
                # The threads qhybrid's CPU path uses for large products: half the cores
                # (more threads than idle cores make both engines spin, not compute).
                n_threads=max(1, (os.cpu_count() or 1) // 2),
                # Its prompt batches default to every core, which spin against each other on a
                # loaded machine (prefill 19 tok/s instead of 120 here): the same count.
                n_threads_batch=max(1, (os.cpu_count() or 1) // 2),
                seed=0,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            # llama.cpp says why on its own stderr; its exception only says that it failed.
            report.notes.append(f"llama.cpp could not load the model ({placement}): {exc}")
            continue
        try:
            prompt = _prompt(_LlamaCppTokenizer(model), model.n_vocab(), config.prompt_tokens)
            prefill = decode = 0.0
            for _ in range(config.repeat):
                model.reset()
                started = time.perf_counter()
                model.eval(prompt)
                prefill = max(prefill, len(prompt) / (time.perf_counter() - started))
                model.reset()
                model.eval(prompt[:8])
                started = time.perf_counter()
                for _ in range(config.decode_tokens - 1):
                    token = model.sample(temp=0.0)
                    model.eval([token])
                decode = max(decode, (config.decode_tokens - 1) / (time.perf_counter() - started))
            memory.__exit__()
        finally:
            model.close()
        progress(f"llama.cpp {placement}: prefill {prefill:,.1f} tok/s, decode {decode:,.1f} tok/s")
        report.runs.append(
            {
                "engine": "llama.cpp",
                "placement": placement,
                "device": "cpu" if placement == "cpu" else "llama.cpp GPU backend",
                "version": getattr(llama_cpp, "__version__", "?"),
                "prompt_tokens": len(prompt),
                "decode_tokens": config.decode_tokens,
                "prefill_tok_s": round(prefill, 3),
                "decode_tok_s": round(decode, 3),
                "threads": max(1, (os.cpu_count() or 1) // 2),
                **memory.to_json(),
            }
        )


class _LlamaCppTokenizer:
    """llama.cpp's own tokenizer, so its prompt is tokenized the way it expects."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def encode(self, text: str) -> list[int]:
        return list(self._model.tokenize(text.encode("utf-8"), add_bos=True))
