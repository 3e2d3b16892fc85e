"""The ``qhybrid bench`` subcommand: ``qhybrid bench dispatch|llm|gpu|ui|scale|store [options]``.

A human-readable table goes to stderr; ``--json`` prints one JSON object on stdout (nothing
else is ever written there, not even by Ray or a worker process). Exit codes: 0 measured,
1 a measurement failed, 2 bad flags, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from qhybrid._argparse import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Parser,
    positive_int,
)

PROG = "qhybrid bench"


def build_parser() -> argparse.ArgumentParser:
    from qhybrid.bench._dispatch import DispatchConfig

    defaults = DispatchConfig()
    parser = Parser(
        prog=PROG,
        description=(
            "Benchmarks of the qhybrid runtime, measured as ratios against peers run side by "
            "side on this machine (see docs/benchmarks.md)."
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="BENCHMARK", required=True)
    dispatch = commands.add_parser(
        "dispatch",
        help="messages per second through the worker pool, against in-process and Ray",
        description=(
            "Ping agents count down by messaging themselves: the runtime's cost per message. "
            "The same work runs through the worker pool, in a plain in-process loop, and on "
            "Ray actors (when Ray is installed)."
        ),
    )
    dispatch.add_argument(
        "--workers",
        type=positive_int,
        default=defaults.workers,
        metavar="N",
        help=f"worker processes, and Ray actors (default {defaults.workers})",
    )
    dispatch.add_argument(
        "--agents",
        type=positive_int,
        default=defaults.agents,
        metavar="A",
        help=f"ping agents (default {defaults.agents})",
    )
    dispatch.add_argument(
        "--steps",
        type=positive_int,
        default=defaults.steps,
        metavar="S",
        help=(
            f"messages in all, rounded down to a multiple of --agents (default {defaults.steps})"
        ),
    )
    dispatch.add_argument(
        "--repeat",
        type=positive_int,
        default=defaults.repeat,
        metavar="R",
        help="take each measurement R times and keep the best (default 1)",
    )
    dispatch.set_defaults(parser=dispatch)
    dispatch.add_argument(
        "--json", action="store_true", help="print the figures as one JSON object on stdout"
    )
    dispatch.add_argument(
        "--no-ray", dest="ray", action="store_false", help="skip the Ray peer even if installed"
    )
    dispatch.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="ray: also run the runtime on the Ray backend (worker actors) against the local "
        "pool (pip install 'qhybrid[ray]')",
    )
    dispatch.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="with --backend ray: the cluster to run on (default: a local Ray instance)",
    )
    _add_llm_parser(commands)
    _add_gpu_parser(commands)
    _add_ui_parser(commands)
    _add_scale_parser(commands)
    _add_store_parser(commands)
    from qhybrid.bench._serve import add_parser as add_serve_parser

    add_serve_parser(commands)
    return parser


def _add_scale_parser(commands: Any) -> None:
    scale = commands.add_parser(
        "scale",
        help="start-up time, memory per agent and steps/s at 1k, 10k and 100k agents",
        description=(
            "Relay agents (relay.wat, and hop.wasm, the same agent in C) pass tokens to random "
            "peers: how long the runtime takes to start that many, the resident memory of all "
            "its processes per agent, and messages per second."
        ),
    )
    scale.add_argument(
        "--agents",
        type=positive_int,
        action="append",
        metavar="N",
        help="an agent count to measure; repeat for several (default 1000, 10000, 100000)",
    )
    scale.add_argument(
        "--module",
        choices=("wat", "c", "both"),
        default="both",
        help="which relay agent: the WAT one, the C one or both (default both)",
    )
    scale.add_argument(
        "--workers", type=positive_int, default=2, metavar="N", help="worker processes (2)"
    )
    scale.add_argument(
        "--hops", type=positive_int, default=3, metavar="H", help="hops per token (3)"
    )
    scale.add_argument(
        "--json", action="store_true", help="print the figures as one JSON object on stdout"
    )
    scale.set_defaults(parser=scale)


def _add_store_parser(commands: Any) -> None:
    store = commands.add_parser(
        "store",
        help="what recording into the run store costs, against recording off",
        description=(
            "A heavy scenario (ping agents, one trace record per message) with recording off "
            "and on (every record, tick and a checkpoint every N ticks), taking turns."
        ),
    )
    store.add_argument("--workers", type=positive_int, default=2, metavar="N")
    store.add_argument("--agents", type=positive_int, default=64, metavar="A")
    store.add_argument("--steps", type=positive_int, default=64_000, metavar="S")
    store.add_argument("--repeat", type=positive_int, default=3, metavar="R")
    store.add_argument("--checkpoint-every", type=positive_int, default=100, metavar="N")
    store.add_argument(
        "--json", action="store_true", help="print the figures as one JSON object on stdout"
    )
    store.set_defaults(parser=store)


def _store(args: argparse.Namespace) -> int:
    from qhybrid.bench._dispatch import BenchmarkError
    from qhybrid.bench._store import StoreBenchConfig, run_store_bench, show

    config = StoreBenchConfig(
        args.workers, args.agents, args.steps, args.repeat, args.checkpoint_every
    )
    return _measure(
        args,
        "store",
        lambda progress: run_store_bench(config, progress),
        (BenchmarkError, OSError, RuntimeError),
        show,
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value:g}")
    return value


def _add_ui_parser(commands: Any) -> None:
    ui = commands.add_parser(
        "ui",
        help="the window's frame rate, GUI stalls and cost to the runtime (offscreen)",
        description=(
            "The real main window on Qt's offscreen platform over a heavy scenario (relay "
            "agents): frames per second (refresh + full repaint), the GUI event loop's longest "
            "stall, and the runtime's messages/s with and without the window, side by side."
        ),
    )
    ui.add_argument(
        "--agents", type=positive_int, default=1000, metavar="A", help="relay agents (1000)"
    )
    ui.add_argument(
        "--workers", type=positive_int, default=2, metavar="N", help="worker processes (2)"
    )
    ui.add_argument(
        "--seconds",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="throughput and stalls measured over S seconds per run (5)",
    )
    ui.add_argument(
        "--fps-seconds",
        type=_positive_float,
        default=3.0,
        metavar="S",
        help="back-to-back frames for S seconds in the watched run (3)",
    )
    ui.add_argument(
        "--warmup", type=float, default=1.0, metavar="S", help="seconds before measuring (1)"
    )
    ui.add_argument(
        "--repeat",
        type=positive_int,
        default=2,
        metavar="R",
        help="headless and watched runs, R of each, taking turns; the best counts (2)",
    )
    ui.add_argument(
        "--view",
        choices=("charts", "graph"),
        default="charts",
        help="what the watched window shows: the live charts and agents table, or the agent "
        "graph and one agent's detail (charts)",
    )
    ui.add_argument(
        "--json", action="store_true", help="print the figures as one JSON object on stdout"
    )
    ui.set_defaults(parser=ui)


def _add_gpu_parser(commands: Any) -> None:
    gpu = commands.add_parser(
        "gpu",
        help="the WGSL kernels' GFLOP/s and GB/s against numpy, and the fraction of peak",
        description=(
            "Every kernel family on the GPU device (timestamp queries where the adapter has "
            "them) and its numpy reference on this CPU, side by side."
        ),
    )
    gpu.add_argument("--quick", action="store_true", help="small shapes: a smoke run")
    gpu.add_argument(
        "--json", action="store_true", help="print the figures as one JSON object on stdout"
    )
    gpu.set_defaults(parser=gpu)


def _add_llm_parser(commands: Any) -> None:
    llm = commands.add_parser(
        "llm",
        help="LLM prefill and decode tokens/s, GPU and CPU paths, against llama.cpp",
        description=(
            "Prefill and decode tokens/s of a GGUF model on qhybrid's GPU and CPU paths, "
            "continuous batching (N streams against one), and llama.cpp on the same file "
            "when llama-cpp-python is installed."
        ),
    )
    llm.add_argument(
        "model",
        nargs="?",
        default=None,
        metavar="MODEL",
        help=(
            "a GGUF file or a model name as `qhybrid models` lists it, e.g. smollm2 or "
            "gemma3-270m (default: the model shipped in resources/models)"
        ),
    )
    llm.add_argument("--prompt-tokens", type=positive_int, default=128, metavar="N")
    llm.add_argument("--decode-tokens", type=positive_int, default=64, metavar="N")
    llm.add_argument(
        "--streams", type=positive_int, default=8, metavar="S", help="concurrent streams (8)"
    )
    llm.add_argument("--repeat", type=positive_int, default=2, metavar="R")
    llm.add_argument(
        "--path",
        dest="paths",
        action="append",
        choices=("gpu", "cpu"),
        default=None,
        help="measure only this path (repeatable; default both)",
    )
    llm.add_argument(
        "--no-llama-cpp", dest="llama_cpp", action="store_false", help="skip the llama.cpp peer"
    )
    llm.add_argument(
        "--json", action="store_true", help="print the figures as one JSON object on stdout"
    )
    llm.set_defaults(parser=llm)


def main(argv: list[str]) -> int:
    """``qhybrid bench ARGV...``; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad flag (2): returned, not raised
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    if args.command == "dispatch":
        return _dispatch(args)
    if args.command == "llm":
        return _llm(args)
    if args.command == "gpu":
        return _gpu(args)
    if args.command == "ui":
        return _ui(args)
    if args.command == "scale":
        return _scale(args)
    if args.command == "store":
        return _store(args)
    if args.command == "serve":
        return _serve(args)
    return _bad_input(parser, f"unknown benchmark {args.command!r}")


def _measure(
    args: argparse.Namespace,
    what: str,
    run: Callable[[Callable[[str], None]], Any],
    errors: tuple[type[BaseException], ...],
    show: Callable[[Any, Any], None],
) -> int:
    """Run one benchmark (``run(progress)`` returns a report with ``to_json()``), print it on
    stderr (``show(console, report)``) and, with ``--json``, its JSON on stdout. A failure
    named in ``errors`` is exit 1 with its message, Ctrl-C exit 130."""
    from rich.console import Console
    from rich.markup import escape

    _setup_logging()
    err = Console(stderr=True, highlight=False)
    try:
        with _stdout_kept_for_json():
            report = run(lambda text: err.print(f"[dim]{escape(text)}[/]"))
    except errors as exc:
        err.print(
            f"[bold red]error:[/] the {what} benchmark failed: {escape(str(exc))}", soft_wrap=True
        )
        return EXIT_FAILED
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        return EXIT_INTERRUPTED
    show(err, report)
    if args.json:
        sys.stdout.write(json.dumps(report.to_json(), sort_keys=True) + "\n")
        sys.stdout.flush()
    return EXIT_OK


def _bad_input(parser: argparse.ArgumentParser, message: str) -> int:
    """What argparse does for a bad flag (usage and message on stderr), returned as exit 2."""
    parser.print_usage(sys.stderr)
    sys.stderr.write(f"{parser.prog}: error: {message}\n")
    return EXIT_BAD_INPUT


def _dispatch(args: argparse.Namespace) -> int:

    from qhybrid.bench._dispatch import BenchmarkError, DispatchConfig, run_dispatch
    from qhybrid.runtime import ScenarioError
    from qhybrid.runtime.wasm_pool import AgentModuleError, WorkerError

    if args.steps < args.agents:
        return _bad_input(
            args.parser,
            f"--steps ({args.steps}) must be at least --agents ({args.agents}): "
            "every agent takes at least one step",
        )
    if args.ray_address is not None and args.backend != "ray":
        return _bad_input(args.parser, "--ray-address needs --backend ray")
    if args.backend == "ray":
        from qhybrid.runtime.wasm_pool import RayNotInstalled, import_ray

        try:
            import_ray()
        except RayNotInstalled as exc:
            return _bad_input(args.parser, f"--backend ray: {exc}")
    config = DispatchConfig(
        workers=args.workers,
        agents=args.agents,
        steps=args.steps,
        repeat=args.repeat,
        ray=args.ray,
        backend=args.backend,
        ray_address=args.ray_address,
    )
    return _measure(
        args,
        "dispatch",
        lambda progress: run_dispatch(config, progress=progress),
        (BenchmarkError, WorkerError, AgentModuleError, ScenarioError, OSError),
        lambda console, report: _print_table(console, report.to_json()),
    )


def _scale(args: argparse.Namespace) -> int:
    from qhybrid.bench._dispatch import BenchmarkError
    from qhybrid.bench._scale import DEFAULT_AGENTS, MODULES, ScaleConfig, run_scale
    from qhybrid.runtime import ScenarioError
    from qhybrid.runtime.wasm_pool import AgentModuleError, WorkerError

    config = ScaleConfig(
        agents=tuple(args.agents or DEFAULT_AGENTS),
        modules=tuple(MODULES) if args.module == "both" else (args.module,),
        workers=args.workers,
        hops=args.hops,
    )
    return _measure(
        args,
        "scale",
        lambda progress: run_scale(config, progress=progress),
        (BenchmarkError, WorkerError, AgentModuleError, ScenarioError, OSError),
        _print_scale,
    )


def _print_scale(console: Any, report: Any) -> None:
    from rich.table import Table

    from qhybrid.bench._scale import format_runs

    data = report.to_json()
    machine = data["machine"]
    console.print(
        f"[bold]scale[/]: relay agents, {data['workers']} workers, {data['hops']} hops - "
        f"{machine['cpu_count']} CPUs, load average {machine['load_avg_1m']}",
        soft_wrap=True,
    )
    table = Table(show_edge=False, pad_edge=False)
    for col in ("agents", "module", "start-up", "KiB/agent", "steps/s"):
        table.add_column(col, justify="left" if col == "module" else "right")
    for row in format_runs(report.runs):
        table.add_row(*row)
    console.print(table)


def _gpu(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from qhybrid.bench._gpu import format_report, run_gpu_bench
    from qhybrid.runtime.wgpu_thread import GpuJobError

    return _measure(
        args,
        "GPU",
        lambda _progress: run_gpu_bench(quick=args.quick),
        (GpuJobError, RuntimeError, OSError),
        lambda console, report: console.print(escape(format_report(report)), soft_wrap=True),
    )


def _serve(args: argparse.Namespace) -> int:
    from qhybrid.bench._serve import ServeBenchError, config_from_args, run_serve_bench, show
    from qhybrid.runtime.llm import ModelError
    from qhybrid.serve import ModelNotFound

    try:
        config = config_from_args(args)
    except ValueError as exc:
        return _bad_input(args.parser, str(exc))
    return _measure(
        args,
        "serve",
        lambda progress: run_serve_bench(config, progress),
        (ServeBenchError, ModelNotFound, ModelError, OSError),
        show,
    )


def _ui(args: argparse.Namespace) -> int:

    if args.warmup < 0:
        return _bad_input(args.parser, f"--warmup must not be negative, got {args.warmup:g}")
    # Qt from here on: the one import of the window layers in qhybrid.bench, made only when
    # this benchmark runs (pyproject.toml's import-linter contract names this exact import).
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qhybrid.views._bench_ui import UiBenchConfig, UiBenchError, run_ui_bench

    config = UiBenchConfig(
        agents=args.agents,
        workers=args.workers,
        seconds=args.seconds,
        warmup_s=args.warmup,
        fps_seconds=args.fps_seconds,
        repeat=args.repeat,
        view=args.view,
    )
    return _measure(
        args,
        "UI",
        lambda progress: run_ui_bench(config, progress=progress),
        (UiBenchError, OSError),
        lambda console, report: _print_ui_table(console, report.to_json()),
    )


def _print_ui_table(console: Any, data: dict[str, Any]) -> None:
    from rich.table import Table

    machine = data["machine"]
    console.print(
        f"[bold]ui[/]: {data['agents']} relay agents, {data['workers']} workers, "
        f"{data['seconds']:g} s per run, best of {data['repeat']} - {machine['cpu_count']} CPUs "
        f"({machine['cpu_model']}), Qt platform {data['platform']}",
        soft_wrap=True,
    )
    table = Table(show_edge=False, pad_edge=False)
    for col, justify in (("measurement", "left"), ("value", "right"), ("goal", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    met = data["met"]

    def mark(key: str) -> str:
        return "[green]met[/]" if met[key] else "[red]missed[/]"

    table.add_row(
        f"frames/s the window made ({data['view']})",
        f"{data['fps']:,.1f}",
        f">= {data['goals']['fps']:g} {mark('fps')}",
    )
    table.add_row(
        "frames/s back to back (refresh + repaint)",
        f"{data['fps_capacity']:,.1f}  (p50 {data['frame_ms_p50']:.1f} ms)",
        "-",
    )
    table.add_row(
        "longest GUI stall, watched",
        f"{data['max_stall_ms']:,.1f} ms",
        f"< {data['goals']['max_stall_ms']:g} ms {mark('max_stall_ms')}",
    )
    table.add_row("longest GUI stall, headless (floor)", f"{data['floor_stall_ms']:,.1f} ms", "-")
    table.add_row(
        "stall over the floor",
        f"{data['stall_over_floor_ms']:,.1f} ms",
        f"<= {data['goals']['stall_over_floor_ms']:g} ms {mark('stall_over_floor_ms')}",
    )
    table.add_row("runtime msgs/s, headless", f"{data['headless_msgs_per_s']:,.0f}", "-")
    table.add_row("runtime msgs/s, watched", f"{data['watched_msgs_per_s']:,.0f}", "-")
    table.add_row(
        "window overhead",
        f"{data['overhead_pct']:.1f} %",
        f"< {data['goals']['overhead_pct']:g} % {mark('overhead_pct')}",
    )
    console.print(table)


def _llm(args: argparse.Namespace) -> int:

    from qhybrid._resources import resource_path
    from qhybrid.bench._llm import BenchmarkError, LlmBenchConfig, run_llm_bench
    from qhybrid.runtime.llm._models_cli import ModelNameError, resolve_model

    model = args.model or resource_path("models", "tiny-stories.gguf")
    try:
        model = resolve_model(str(model))
    except ModelNameError as exc:
        if not exc.candidates and str(model).lower().endswith(".gguf"):
            return _bad_input(args.parser, f"{model}: no such model file")
        names = ", ".join(m.name or m.path.name for m in exc.candidates)
        return _bad_input(args.parser, f"{exc}{': ' + names if names else ''}")
    config = LlmBenchConfig(
        model=Path(model),
        prompt_tokens=args.prompt_tokens,
        decode_tokens=args.decode_tokens,
        streams=args.streams,
        repeat=args.repeat,
        paths=tuple(args.paths or ("gpu", "cpu")),
        llama_cpp=args.llama_cpp,
    )
    return _measure(
        args,
        "LLM",
        lambda progress: run_llm_bench(config, progress=progress),
        (BenchmarkError,),
        lambda console, report: _print_llm_table(console, report.to_json()),
    )


def _print_llm_table(console: Any, data: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    model = escape(str(data["model"].get("name")))
    table = Table(title=f"LLM: {model} on {escape(str(data['device'].get('name')))}")
    for column in ("engine", "path", "prefill tok/s", "decode tok/s", "peak RSS MB", "grown MB"):
        table.add_column(column)
    for run in data["runs"]:
        table.add_row(
            run["engine"],
            run["placement"],
            f"{run['prefill_tok_s']:,.1f}",
            f"{run['decode_tok_s']:,.1f}",
            str(run.get("peak_rss_mb", "-")),
            str(run.get("grown_mb", "-")),
        )
    console.print(table)
    m = data.get("machine") or {}
    load = data.get("load_average") or {}
    console.print(
        f"machine: {escape(str(m.get('cpu')))}, {m.get('cores')} cores, "
        f"{m.get('memory_gib')} GiB; load average before {load.get('before')}, "
        f"after {load.get('after')}"
    )
    for batching in (data.get("batching") or {}).values():
        console.print(
            f"batching ({batching['placement']}): {batching['streams']} streams give "
            f"{batching['ratio']:.2f}x one stream's tokens/s (goal {batching['goal']:g}x: "
            f"{'met' if batching['met'] else 'missed'})"
        )
    vs = data["vs_llama_cpp"]
    for place, goals in vs.get("goal", {}).items():
        # The CPU path's goals are per CPU second (llama.cpp on one thread), a GPU's in time.
        how = "per CPU second" if place == "cpu" else "tokens/s"
        key = "_per_cpu_s" if place == "cpu" else ""
        parts = []
        for what in ("decode", "prefill"):
            got = vs.get(f"{what}_ratio{key}", {}).get(place)
            if got is not None:
                goal = goals.get(what)
                parts.append(f"{what} {got:.2f}x" + (f" (goal {goal:g}x)" if goal else ""))
        verdict = "met" if vs["met"].get(place) else "missed"
        console.print(f"vs llama.cpp ({place}, {how}): {', '.join(parts)}: {verdict}")
    for note in data.get("notes", []):
        console.print(f"[dim]note: {escape(note)}[/]")


def _setup_logging() -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=False)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler], force=True)
    # The benchmark asks for device="cpu" on purpose: the "GPU disabled" warning is noise here.
    logging.getLogger("qhybrid.runtime.wgpu_thread").setLevel(logging.ERROR)


@contextlib.contextmanager
def _stdout_kept_for_json() -> Iterator[None]:
    """Point file descriptor 1 at stderr while measuring, so that nothing a library or a child
    process prints (Ray's start-up, say) can get into the JSON on stdout."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no real stdout (an embedding host): nothing to protect
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _rate(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:,.0f} {unit}"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} µs"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _print_table(console: Any, data: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from qhybrid.bench._dispatch import (
        GOAL_RUNTIME_US_PER_MSG,
        GOAL_VS_INPROCESS_PER_WORKER,
        GOAL_VS_RAY,
    )

    machine = data["machine"]
    console.print(
        f"[bold]dispatch[/]: {data['agents']} ping agents, {data['steps']} steps, "
        f"{data['workers']} workers, best of {data['repeat']} - "
        f"{machine['cpu_count']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
        f"wasmtime {machine['wasmtime']}",
        soft_wrap=True,
    )
    table = Table(show_edge=False, pad_edge=False)
    for col, justify in (
        ("measurement", "left"),
        ("throughput", "right"),
        ("p50 latency", "right"),
        ("p99 latency", "right"),
        ("start-up", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    table.add_row(
        f"pool ({data['workers']} workers)",
        _rate(data["steps_per_s"], "steps/s"),
        _us(data["p50_us"]),
        _us(data["p99_us"]),
        _seconds(data["startup_s"]),
    )
    table.add_row(
        "in process (1 core)", _rate(data["inprocess_steps_per_s"], "steps/s"), "-", "-", "-"
    )
    if data["ray_calls_per_s"] is None:
        table.add_row("ray", "[dim]not run[/]", "-", "-", "-")
    else:
        table.add_row(
            f"ray {data['ray_version']} ({data['workers']} actors)",
            _rate(data["ray_calls_per_s"], "calls/s"),
            _us(data["ray_p50_us"]),
            _us(data["ray_p99_us"]),
            _seconds(data["ray_startup_s"]),
        )
    if data.get("ray_backend_steps_per_s") is not None:
        table.add_row(
            f"runtime on Ray ({data['workers']} worker actors)",
            _rate(data["ray_backend_steps_per_s"], "steps/s"),
            _us(data["ray_backend_p50_us"]),
            _us(data["ray_backend_p99_us"]),
            _seconds(data["ray_backend_startup_s"]),
        )
    console.print(table)
    if data.get("ray_backend_vs_local") is not None:
        console.print(f"Ray backend vs local pool: {data['ray_backend_vs_local']:.2f}x throughput")
    if data["ray_note"]:
        console.print(f"[dim]ray {escape(data['ray_note'])}[/]", soft_wrap=True)
    console.print(
        f"vs ray: {_ratio(data['vs_ray'], GOAL_VS_RAY)}   "
        f"vs in-process per worker: "
        f"{_ratio(data['vs_inprocess_per_worker'], GOAL_VS_INPROCESS_PER_WORKER)}   "
        f"runtime cost: {_cost(data['runtime_us_per_msg'], GOAL_RUNTIME_US_PER_MSG)}",
        soft_wrap=True,
    )


def _cost(value: float, goal: float) -> str:
    mark = "[green]met[/]" if value < goal else "[red]missed[/]"
    return f"{value:.2f} us/message (goal < {goal:g}: {mark})"


def _ratio(value: float | None, goal: float) -> str:
    if value is None:
        return f"- (goal >= {goal:g})"
    mark = "[green]met[/]" if value >= goal else "[red]missed[/]"
    return f"{value:.2f} (goal >= {goal:g}: {mark})"
