"""The ``qhybrid`` command.

``qhybrid`` opens the desktop window; ``qhybrid --headless [SCENARIO]`` runs a scenario with
no window (and never imports Qt). Exit codes: 0 success, 1 the scenario ran and failed,
2 bad input (flags, scenario file, agent module), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
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


DEVICE_CHOICES = ("auto", "gpu", "cpu")


def _environment(args: argparse.Namespace) -> str | None:
    """Fill ``--workers`` and ``--device`` from ``QHYBRID_WORKERS`` and ``QHYBRID_DEVICE``,
    checked as the flags are; the message when one is bad, else None. A flag wins over its
    variable, except that the GPU thread itself reads ``QHYBRID_DEVICE`` under ``auto``."""
    if args.workers is None:
        text = os.environ.get("QHYBRID_WORKERS", "").strip()
        try:
            args.workers = positive_int(text) if text else 2
        except argparse.ArgumentTypeError as exc:
            return f"environment variable QHYBRID_WORKERS: {exc}"
    env_device = os.environ.get("QHYBRID_DEVICE", "").strip().lower()
    if args.device in (None, "auto") and env_device and env_device not in DEVICE_CHOICES:
        return (
            f"environment variable QHYBRID_DEVICE must be one of {', '.join(DEVICE_CHOICES)}; "
            f"got {env_device!r}"
        )
    if args.device is None:
        args.device = env_device or "auto"
    return None


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
            "qhybrid models (GGUF files found here), "
            "qhybrid serve [MODEL...] (OpenAI/Ollama HTTP API), "
            "qhybrid bench {dispatch,gpu,llm,ui,serve}, "
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
        "--start", action="store_true", help="window: start the scenario as soon as it opens"
    )
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
        choices=DEVICE_CHOICES,
        default=None,
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

    parser.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="where agents run: local worker processes (default) or Ray actors "
        "(pip install 'qhybrid[ray]'; see docs/scale-out.md)",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="with --backend ray: the cluster to join (auto, HOST:6379, ray://HOST:10001); "
        "default: start Ray on this machine",
    )
    add_store_arguments(parser, run=True)
    parser.add_argument("--version", action="version", version=f"qhybrid {__version__}")
    return parser


class _PrintableFormatter(logging.Formatter):
    """Log messages with control characters escaped: agent text cannot drive the terminal."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        from qhybrid.runtime import printable

        return printable(super().formatMessage(record))


def _setup_logging(verbosity: int) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=False)
    handler.setFormatter(_PrintableFormatter("%(message)s"))
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)
    os.environ.setdefault("QHYBRID_LOG_LEVEL", logging.getLevelName(level))


def _shown(text: str, *, lines: bool = False) -> str:
    """``text`` for the console: control characters escaped, then rich markup escaped."""
    from rich.markup import escape

    from qhybrid.runtime import printable, printable_lines

    return escape(printable_lines(text) if lines else printable(text))


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
    if raw[:1] == ["serve"]:
        from qhybrid.serve._cli import main as serve_main

        return serve_main(raw[1:])
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
    problem = _environment(args)
    if problem is not None:
        sys.stderr.write(f"qhybrid: error: {problem}\n")
        return EXIT_BAD_INPUT
    if not args.headless:
        if args.json or args.trace:
            sys.stderr.write("qhybrid: error: --json and --trace need --headless\n")
            return EXIT_BAD_INPUT
        from qhybrid.app import run_app

        return run_app(
            scenario=args.scenario, workers=args.workers, device=args.device, start=args.start
        )
    return run_headless(args)


def run_headless(args: argparse.Namespace) -> int:
    from rich.console import Console

    from qhybrid.runtime import RuntimeConfig, ScenarioError, load_scenario
    from qhybrid.runtime.wasm_pool import WorkerError
    from qhybrid.runtime.wgpu_thread import GpuJobError

    _setup_logging(args.verbose)
    err = Console(stderr=True, highlight=False)
    path = Path(args.scenario) if args.scenario else _default_scenario()
    workers = args.workers
    try:
        scenario = load_scenario(path)
    except ScenarioError as exc:
        err.print(f"[bold red]error:[/] {_shown(str(exc), lines=True)}", soft_wrap=True)
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
            err.print(f"[bold red]error:[/] --record {_shown(str(record))}: {_shown(str(exc))}")
            return EXIT_BAD_INPUT
    answers = getattr(args, "answers", None)
    if answers not in (None, "-") and not Path(answers).is_file():
        err.print(f"[bold red]error:[/] --answers: no such file: {_shown(str(answers))}")
        return EXIT_BAD_INPUT
    if args.ray_address is not None and args.backend != "ray":
        err.print("[bold red]error:[/] --ray-address needs --backend ray")
        return EXIT_BAD_INPUT
    if args.backend == "ray":
        from qhybrid.runtime.wasm_pool import WorkerError, import_ray, ray_tensor_path

        try:
            import_ray()
            ray_tensor_path()  # $QHYBRID_RAY_TENSORS, checked before anything runs
        except WorkerError as exc:
            from rich.markup import escape

            err.print(f"[bold red]error:[/] --backend ray: {escape(str(exc))}", soft_wrap=True)
            return EXIT_BAD_INPUT
    config = RuntimeConfig(
        workers=workers,
        device=args.device,
        trace_path=args.trace,
        max_worker_restarts=args.max_worker_restarts,
        answers_path=Path(answers) if answers is not None else None,
        recording_path=Path(record) if record is not None else None,
        backend=args.backend,
        ray_address=args.ray_address,
    )
    err.print(
        f"qhybrid {__version__}: running [bold]{scenario.name}[/] "
        f"({sum(a.count for a in scenario.agents)} agents, {workers} workers, seed {scenario.seed})"
    )
    from qhybrid.runs_cli import BadInput, start_recording

    try:
        recording = start_recording(args, path, scenario, config)
    except BadInput as exc:
        err.print(f"[bold red]error:[/] {_shown(str(exc), lines=True)}", soft_wrap=True)
        return EXIT_BAD_INPUT
    holder: dict[str, Runtime] = {}
    stopped_by: list[int] = []
    restore = _stop_on_hangup_and_term(stopped_by)
    try:
        try:
            result = asyncio.run(_run(scenario, config, err, holder, recording))
        except BaseException as exc:
            if recording is not None:
                status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
                recording.finish(holder.get("runtime"), None, status)
            raise
    except ScenarioError as exc:
        err.print(f"[bold red]error:[/] {_shown(str(exc), lines=True)}", soft_wrap=True)
        return EXIT_BAD_INPUT
    except (WorkerError, GpuJobError, OSError) as exc:
        # The run could not start: workers, the GPU device, the trace file.
        err.print(
            f"[bold red]error:[/] could not run {_shown(str(path))}: "
            f"{_shown(str(exc), lines=True)}",
            soft_wrap=True,
        )
        return EXIT_FAILED
    except KeyboardInterrupt:
        runtime = holder.get("runtime")
        how = f" by {signal.Signals(stopped_by[0]).name}" if stopped_by else ""
        # After a hangup the terminal may be gone: the cleanup is done, a lost line is not.
        with contextlib.suppress(OSError):
            if runtime is not None:
                err.print(
                    f"[yellow]interrupted{how}[/] at tick {runtime.tick}: {runtime.delivered} "
                    f"messages delivered, {runtime.tasks_completed} tasks done; "
                    f"trace so far {runtime.trace_hash}"
                )
            else:
                err.print(f"[yellow]interrupted{how}[/] before the run started")
        return 128 + stopped_by[0] if stopped_by else EXIT_INTERRUPTED
    finally:
        restore()
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


def _stop_on_hangup_and_term(stopped_by: list[int]) -> Callable[[], None]:
    """Handle SIGHUP (the terminal closed) and SIGTERM (``kill``) as Ctrl-C is handled: the
    run is cancelled and cleans up (workers, shared memory), a partial summary is printed and
    the exit code is 128 + the signal's number. Returns what puts the old handlers back."""
    wanted = [getattr(signal, n) for n in ("SIGHUP", "SIGTERM") if hasattr(signal, n)]
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not stopped_by:
            stopped_by.append(signum)
        handler = signal.getsignal(signal.SIGINT)  # asyncio.run's own while it runs
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    if hasattr(signal, "SIGHUP"):
        # The resource tracker (the helper that unlinks this process's segments should it be
        # SIGKILLed) ignores SIGINT and SIGTERM but not SIGHUP: started with SIGHUP ignored,
        # it inherits that and survives the hangup of the whole process group.
        from multiprocessing import resource_tracker

        previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            resource_tracker.ensure_running()
        finally:
            signal.signal(signal.SIGHUP, previous)
    old = {sig: signal.signal(sig, on_signal) for sig in wanted}

    def restore() -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)

    return restore


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
        parts = self.answers.setdefault(event.request_id, [])
        parts.append(event.text)
        if not event.done:
            return
        words = "".join(self.answers.pop(event.request_id)).split()
        text = f"[red]{_shown(event.error)}[/]" if event.error else _shown(" ".join(words))
        self.console.print(f"  [cyan]{_shown(event.agent)}[/] (llm): {text}", soft_wrap=True)

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
    from rich.table import Table

    colour = "green" if result.ok else "red"
    console.print(
        f"[{colour}]{result.status}[/]: {_shown(result.reason)} - tick {result.ticks}, "
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
            _shown(f"{group} x{len(agents)}" if len(agents) > 1 else group),
            _shown(agents[0].module),
            str(sum(a.handled for a in agents)),
            ", ".join(states),
        )
    console.print(table)
    for agent in result.agents:
        if agent.error:
            again = f" (restarted {agent.restarts}x)" if agent.restarts else ""
            console.print(
                f"  [red]{_shown(agent.name)}[/]{again}: {_shown(agent.error)}", soft_wrap=True
            )
    if result.worker_restarts:
        console.print(f"worker processes replaced after dying: {result.worker_restarts}")
    if result.llm:
        llm = result.llm
        console.print(
            f"llm: {_shown(str(llm['model']))} ({llm['arch']}, {llm['placement']}): "
            f"{llm['requests']} answers, {llm['tokens']} tokens"
        )
    device = result.device
    console.print(
        f"device: {_shown(str(device.get('name')))} ({device.get('kind')})   "
        f"trace {result.trace_hash}",
        soft_wrap=True,
    )
