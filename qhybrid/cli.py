"""The ``qhybrid`` command.

``qhybrid`` opens the desktop window; ``qhybrid --headless [SCENARIO]`` runs a scenario with
no window (and never imports Qt). Exit codes: 0 success, 1 the scenario ran and failed,
2 bad input (flags, scenario file, agent module), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qhybrid import __version__
from qhybrid._argparse import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Parser,
    positive_int,
)

if TYPE_CHECKING:
    from qhybrid.runtime import RunResult, Runtime

logger = logging.getLogger("qhybrid")


def _seed(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"seed must be in [0, 2**63), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="qhybrid",
        description=(
            "A local-first runtime for multi-agent systems and LLM inference. Without "
            "--headless it opens the desktop window."
        ),
        epilog=(
            "Subcommands: qhybrid generate MODEL PROMPT (text from a GGUF model), "
            "qhybrid models (GGUF files found here), qhybrid bench {dispatch,gpu,llm,ui}, "
            "qhybrid scenario {schema,check} (the scenario format's JSON Schema; check files)."
        ),
    )
    parser.add_argument(
        "scenario",
        nargs="?",
        metavar="SCENARIO",
        help="a scenario file (TOML); default: the built-in demo",
    )
    parser.add_argument("--headless", action="store_true", help="run without a window (no Qt)")
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        metavar="N",
        help="worker processes for agents and CPU tasks (default: 2, or QHYBRID_WORKERS)",
    )
    parser.add_argument(
        "--seed", type=_seed, default=None, metavar="S", help="override the scenario's seed"
    )
    parser.add_argument(
        "--device",
        choices=("auto", "gpu", "cpu"),
        default=os.environ.get("QHYBRID_DEVICE", "auto"),
        help="where GPU tasks run: auto (GPU when there is an adapter), gpu, or cpu (numpy)",
    )
    parser.add_argument(
        "--max-worker-restarts",
        type=int,
        default=3,
        metavar="N",
        help="dead worker processes to replace before the run fails (default 3)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the summary as one JSON object on stdout"
    )
    parser.add_argument(
        "--trace", type=Path, metavar="FILE", help="write the full trace (JSON lines) to FILE"
    )
    parser.add_argument(
        "--answers",
        metavar="FILE",
        help="answers to agents' questions (ABI v2 ask), one line each; '-' reads standard input",
    )
    parser.add_argument(
        "--record",
        metavar="FILE",
        help="tool results and answers (ABI v2): replayed from FILE when there, new ones added",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    from qhybrid.runs_cli import add_store_arguments

    add_store_arguments(parser, run=True)
    parser.add_argument("--version", action="version", version=f"qhybrid {__version__}")
    return parser


def _setup_logging(verbosity: int) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=False)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)
    os.environ.setdefault("QHYBRID_LOG_LEVEL", logging.getLevelName(level))


def _default_scenario() -> Path:
    from qhybrid._resources import resource_path

    return resource_path("scenarios", "demo.toml")


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    if raw[:1] == ["--qhybrid-worker"]:
        # A frozen app starting one of its own worker processes (see wasm_pool.WORKER_FLAG).
        from qhybrid.runtime.wasm_pool import run_worker

        return run_worker()
    if raw[:1] == ["bench"]:
        from qhybrid.bench._cli import main as bench_main

        return bench_main(raw[1:])
    if raw[:1] == ["generate"]:
        from qhybrid.runtime.llm._generate_cli import main as generate_main

        return generate_main(raw[1:])
    if raw[:1] == ["models"]:
        from qhybrid.runtime.llm._models_cli import main as models_main

        return models_main(raw[1:])
    from qhybrid.runs_cli import COMMANDS

    if raw[:1] and raw[0] in COMMANDS:
        from qhybrid.runs_cli import main as runs_main

        return runs_main(raw)
    if raw[:1] == ["scenario"]:
        from qhybrid.runtime._scenario_schema import main as scenario_main

        return scenario_main(raw[1:])
    args = build_parser().parse_args(raw)
    if not args.headless:
        if args.json or args.trace:
            sys.stderr.write("qhybrid: error: --json and --trace need --headless\n")
            return EXIT_BAD_INPUT
        from qhybrid.app import run_app

        return run_app(scenario=args.scenario, workers=args.workers, device=args.device)
    return run_headless(args)


def run_headless(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from qhybrid.runtime import RuntimeConfig, ScenarioError, load_scenario
    from qhybrid.runtime.wasm_pool import WorkerError
    from qhybrid.runtime.wgpu_thread import GpuJobError

    _setup_logging(args.verbose)
    err = Console(stderr=True, highlight=False)
    path = Path(args.scenario) if args.scenario else _default_scenario()
    workers = args.workers or int(os.environ.get("QHYBRID_WORKERS", "2") or 2)
    try:
        scenario = load_scenario(path)
    except ScenarioError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return EXIT_BAD_INPUT
    if args.seed is not None:
        scenario = scenario.with_seed(args.seed)
    if args.max_worker_restarts < 0:
        err.print("[bold red]error:[/] --max-worker-restarts must be >= 0")
        return EXIT_BAD_INPUT
    record = getattr(args, "record", None)
    if record is not None and Path(record).exists():
        try:
            loaded = json.loads(Path(record).read_text("utf-8"))
            if not isinstance(loaded, dict):
                raise ValueError("expected a JSON object")
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            err.print(f"[bold red]error:[/] --record {escape(str(record))}: {escape(str(exc))}")
            return EXIT_BAD_INPUT
    answers = getattr(args, "answers", None)
    if answers not in (None, "-") and not Path(answers).is_file():
        err.print(f"[bold red]error:[/] --answers: no such file: {escape(str(answers))}")
        return EXIT_BAD_INPUT
    config = RuntimeConfig(
        workers=workers,
        device=args.device,
        trace_path=args.trace,
        max_worker_restarts=args.max_worker_restarts,
        answers_path=Path(answers) if answers is not None else None,
        recording_path=Path(record) if record is not None else None,
    )
    err.print(
        f"qhybrid {__version__}: running [bold]{scenario.name}[/] "
        f"({sum(a.count for a in scenario.agents)} agents, {workers} workers, seed {scenario.seed})"
    )
    from qhybrid.runs_cli import BadInput, start_recording

    try:
        recording = start_recording(args, path, scenario, config)
    except BadInput as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return EXIT_BAD_INPUT
    holder: dict[str, Runtime] = {}
    try:
        try:
            result = asyncio.run(_run(scenario, config, err, holder, recording))
        except BaseException as exc:
            if recording is not None:
                status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
                recording.finish(holder.get("runtime"), None, status)
            raise
    except ScenarioError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return EXIT_BAD_INPUT
    except (WorkerError, GpuJobError, OSError) as exc:
        # The run could not start: workers, the GPU device, the trace file.
        err.print(
            f"[bold red]error:[/] could not run {escape(str(path))}: {escape(str(exc))}",
            soft_wrap=True,
        )
        return EXIT_FAILED
    except KeyboardInterrupt:
        runtime = holder.get("runtime")
        if runtime is not None:
            err.print(
                f"[yellow]interrupted[/] at tick {runtime.tick}: {runtime.delivered} messages "
                f"delivered, {runtime.tasks_completed} tasks done; "
                f"trace so far {runtime.trace_hash}"
            )
        else:
            err.print("[yellow]interrupted[/] before the run started")
        return EXIT_INTERRUPTED
    if recording is not None:
        recording.finish(holder.get("runtime"), result)
    _print_summary(err, result)
    if recording is not None:
        err.print(f"run {recording.run_id} recorded in {recording.path}")
    if args.json:
        payload = result.to_json()
        if recording is not None:
            payload["run_id"] = recording.run_id
        sys.stdout.write(json.dumps(payload, sort_keys=True) + "\n")
        sys.stdout.flush()
    return EXIT_OK if result.ok else EXIT_FAILED


async def _run(
    scenario: Any, config: Any, err: Any, holder: dict[str, Runtime], recording: Any = None
) -> RunResult:
    from qhybrid.runtime import Runtime

    runtime = recording.runtime(scenario, config) if recording else Runtime(scenario, config)
    holder["runtime"] = runtime
    progress = _Progress(err, runtime)
    runtime.events.tick_finished.connect(progress.on_tick)
    runtime.events.llm_tokens.connect(progress.on_llm)
    async with runtime:
        info = runtime.device_info
        if info is not None:
            err.print(f"device: {info.name} ({info.kind}, {info.backend})")
        result = await runtime.run()
    return result


class _Progress:
    """Progress on stderr, at most a few lines a second whatever the tick rate."""

    def __init__(self, console: Any, runtime: Runtime) -> None:
        self.console = console
        self.runtime = runtime
        self.interval = 0.5 if console.is_terminal else 2.0
        self.last = time.perf_counter()
        self.answers: dict[int, list[str]] = {}

    def on_llm(self, event: Any) -> None:
        """Each LLM answer, once complete, on one line."""
        from rich.markup import escape

        parts = self.answers.setdefault(event.request_id, [])
        parts.append(event.text)
        if not event.done:
            return
        words = "".join(self.answers.pop(event.request_id)).split()
        text = f"[red]{escape(event.error)}[/]" if event.error else escape(" ".join(words))
        self.console.print(f"  [cyan]{escape(event.agent)}[/] (llm): {text}", soft_wrap=True)

    def on_tick(self, event: Any) -> None:
        now = time.perf_counter()
        if now - self.last < self.interval:
            return
        self.last = now
        rt = self.runtime
        self.console.print(
            f"  tick {event.tick:>6}  messages {rt.delivered:>8}  tasks {rt.tasks_completed:>8}  "
            f"queued {event.queued_messages + event.queued_cpu + event.queued_gpu}",
            highlight=False,
        )


def _print_summary(console: Any, result: RunResult) -> None:
    from rich.markup import escape
    from rich.table import Table

    colour = "green" if result.ok else "red"
    console.print(
        f"[{colour}]{result.status}[/]: {escape(result.reason)} - tick {result.ticks}, "
        f"{result.messages_delivered} messages, {result.tasks_completed} tasks "
        f"({result.cpu_tasks} cpu, {result.gpu_tasks} gpu) in {result.wall_s:.2f} s",
        soft_wrap=True,
    )
    groups: dict[str, list[Any]] = {}
    for agent in result.agents:
        groups.setdefault(
            agent.name.rsplit("-", 1)[0] if "-" in agent.name else agent.name, []
        ).append(agent)
    table = Table(title=None, show_edge=False, pad_edge=False)
    for col in ("agents", "module", "handled", "state"):
        table.add_column(col)
    for group, agents in groups.items():
        states = sorted({a.state for a in agents})
        table.add_row(
            f"{group} x{len(agents)}" if len(agents) > 1 else group,
            agents[0].module,
            str(sum(a.handled for a in agents)),
            ", ".join(states),
        )
    console.print(table)
    for agent in result.agents:
        if agent.error:
            again = f" (restarted {agent.restarts}x)" if agent.restarts else ""
            console.print(f"  [red]{agent.name}[/]{again}: {escape(agent.error)}", soft_wrap=True)
    if result.worker_restarts:
        console.print(f"worker processes replaced after dying: {result.worker_restarts}")
    if result.llm:
        llm = result.llm
        console.print(
            f"llm: {escape(str(llm['model']))} ({llm['arch']}, {llm['placement']}): "
            f"{llm['requests']} answers, {llm['tokens']} tokens"
        )
    device = result.device
    console.print(
        f"device: {device.get('name')} ({device.get('kind')})   trace {result.trace_hash}",
        soft_wrap=True,
    )
