"""``qhybrid bench serve``: concurrent streaming clients against ``qhybrid serve`` and against
llama.cpp's own server (llama-cpp-python's ``[server]`` extra) on the same model file.

Each server runs in a process of its own (so the clients, in this process, share no GIL with
it), on a loopback port. ``clients`` streaming clients each send ``/v1/completions`` requests
back to back for ``seconds`` (the requests in flight then finish); the report gives requests/s,
time to first token (p50, p99), generated tokens/s and errors, for each server, and the ratios
qhybrid / llama.cpp.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Progress = Callable[[str], None]


class ServeBenchError(RuntimeError):
    """A server that did not start, or a benchmark that could not run."""


@dataclass(frozen=True)
class ServeBenchConfig:
    model: str | None = None  # a path or a `qhybrid models` name; None: the shipped model
    clients: int = 32
    seconds: float = 10.0
    max_tokens: int = 32
    slots: int = 8
    prompt: str = "Once upon a time"
    llama_cpp: bool = True
    repeat: int = 1
    device: str = "auto"
    n_ctx: int | None = None  # context per sequence, both servers (default: the model's, <= 2048)
    llama_threads: int | None = None  # llama.cpp's threads (default: every core)
    startup_s: float = 120.0


@dataclass
class ServerRun:
    """One server's figures."""

    server: str
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    ttft_s: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.wall_s if self.wall_s else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    def ttft(self, q: float) -> float:
        if not self.ttft_s:
            return 0.0
        values = sorted(self.ttft_s)
        return values[min(len(values) - 1, int(q * len(values)))]

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "requests": self.requests,
            "errors": self.errors,
            "tokens": self.tokens,
            "wall_s": round(self.wall_s, 3),
            "requests_per_s": round(self.requests_per_s, 3),
            "tokens_per_s": round(self.tokens_per_s, 2),
            "ttft_p50_ms": round(self.ttft(0.5) * 1e3, 2),
            "ttft_p99_ms": round(self.ttft(0.99) * 1e3, 2),
            "error_samples": self.error_samples[:5],
            **self.detail,
        }


@dataclass
class ServeBenchReport:
    config: ServeBenchConfig
    model_path: str
    runs: list[ServerRun] = field(default_factory=list)
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)
    n_ctx: int = 0
    llama_cpp_skipped: str | None = None

    def best(self, server: str) -> ServerRun | None:
        runs = [r for r in self.runs if r.server == server]
        return max(runs, key=lambda r: r.tokens_per_s) if runs else None

    def to_json(self) -> dict[str, Any]:
        c = self.config
        out: dict[str, Any] = {
            "model": self.model_path,
            "clients": c.clients,
            "seconds": c.seconds,
            "max_tokens": c.max_tokens,
            "slots": c.slots,
            "n_ctx": self.n_ctx,
            "repeat": c.repeat,
            "load_average": [round(x, 2) for x in self.load_average],
            "runs": [r.to_json() for r in self.runs],
        }
        q, ll = self.best("qhybrid"), self.best("llama.cpp")
        if q is not None:
            out["qhybrid"] = q.to_json()
        if ll is not None:
            out["llama_cpp"] = ll.to_json()
        if q is not None and ll is not None:

            def ratio(a: float, b: float) -> float | None:
                return round(a / b, 3) if b else None

            out["ratios"] = {
                "requests_per_s": ratio(q.requests_per_s, ll.requests_per_s),
                "tokens_per_s": ratio(q.tokens_per_s, ll.tokens_per_s),
                "ttft_p50": ratio(q.ttft(0.5), ll.ttft(0.5)),
                "ttft_p99": ratio(q.ttft(0.99), ll.ttft(0.99)),
            }
        if self.llama_cpp_skipped:
            out["llama_cpp_skipped"] = self.llama_cpp_skipped
        return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Process:
    """A server process, its log in a temporary file, stopped with SIGINT then SIGKILL."""

    def __init__(self, argv: list[str], name: str) -> None:
        self.name = name
        # Closed in stop(): the log outlives this method.
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix=f"qhybrid-bench-{name}-", suffix=".log"
        )
        env = dict(os.environ)
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )

    def log_tail(self) -> str:
        try:
            return Path(self._log.name).read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


async def _wait_ready(url: str, proc: _Process, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2.0) as http:
        while time.monotonic() < deadline:
            if proc.proc.poll() is not None:
                raise ServeBenchError(f"{proc.name} exited at startup:\n{proc.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(url + "/v1/models")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise ServeBenchError(f"{proc.name} did not answer within {timeout:.0f} s:\n{proc.log_tail()}")


async def _load(url: str, model: str, config: ServeBenchConfig, run: ServerRun) -> None:
    """``clients`` streaming clients, back to back, for ``seconds``."""
    import httpx

    body = {
        "model": model,
        "prompt": config.prompt,
        "max_tokens": config.max_tokens,
        "temperature": 0.8,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    limits = httpx.Limits(max_connections=config.clients + 4)
    ends: list[float] = []

    async def one(http: httpx.AsyncClient, seed: int) -> None:
        sent = time.perf_counter()
        first = 0.0
        chunks = 0
        usage: int | None = None
        try:
            async with http.stream(
                "POST", url + "/v1/completions", json={**body, "seed": seed}
            ) as r:
                if r.status_code != 200:
                    text = (await r.aread()).decode(errors="replace")[:200]
                    raise ServeBenchError(f"HTTP {r.status_code}: {text}")
                done = False
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        done = True
                        break
                    event = json.loads(data)
                    if "error" in event:
                        raise ServeBenchError(f"error event: {event['error']}")
                    if event.get("usage"):
                        usage = int(event["usage"]["completion_tokens"])
                    for choice in event.get("choices") or []:
                        if choice.get("text"):
                            chunks += 1
                            if not first:
                                first = time.perf_counter()
                if not done:
                    raise ServeBenchError("the stream ended without [DONE]")
        except (httpx.HTTPError, ServeBenchError, ValueError) as exc:
            run.errors += 1
            run.error_samples.append(f"{type(exc).__name__}: {exc}")
            return
        run.requests += 1
        run.tokens += usage if usage is not None else chunks
        if first:
            run.ttft_s.append(first - sent)
        ends.append(time.perf_counter())

    async def client(http: httpx.AsyncClient, index: int) -> None:
        seed = index * 100_000
        while True:  # at least one request each
            await one(http, seed)
            seed += 1
            if time.perf_counter() >= stop_at:
                return

    # One client object for all (each makes its own TLS context, tens of ms of CPU), with a
    # connection per concurrent stream.
    async with httpx.AsyncClient(timeout=120.0, limits=limits) as http:
        start = time.perf_counter()
        stop_at = start + config.seconds
        await asyncio.gather(*(client(http, i) for i in range(config.clients)))
    run.wall_s = (max(ends) if ends else time.perf_counter()) - start


def _qhybrid_argv(config: ServeBenchConfig, model: str, port: int, n_ctx: int) -> list[str]:
    return [
        sys.executable, "-m", "qhybrid", "serve", model, "--port", str(port),
        "--slots", str(config.slots), "--max-queue", str(config.clients * 2),
        "--device", config.device, "--ctx", str(n_ctx),
    ]  # fmt: skip


def _llama_cpp_argv(config: ServeBenchConfig, model: str, port: int, n_ctx: int) -> list[str]:
    threads = str(config.llama_threads or max(1, (os.cpu_count() or 2)))
    return [
        sys.executable, "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1",
        "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", threads,
        "--n_threads_batch", threads,
        # By default its server cuts the request in flight short when a new one comes in (one
        # model, one sequence at a time): every client would get about one token. Queue them.
        "--interrupt_requests", "False",
    ]  # fmt: skip


async def _measure(
    name: str, argv: list[str], port: int, model_name: str, config: ServeBenchConfig
) -> ServerRun:
    proc = _Process(argv, name)
    try:
        url = f"http://127.0.0.1:{port}"
        await _wait_ready(url, proc, config.startup_s)
        # One round of short requests first, outside the figures, from every client at once:
        # a server's first requests pay one-time costs (weights prepared on first use, kernels
        # compiled for each batch shape, caches), on both servers alike.
        warm = ServerRun(name)
        warm_config = ServeBenchConfig(
            clients=config.clients, seconds=0.0, max_tokens=4, prompt=config.prompt
        )
        await _load(url, model_name, warm_config, warm)
        if warm.errors:
            raise ServeBenchError(f"{name} failed its first request: {warm.error_samples[0]}")
        run = ServerRun(name)
        await _load(url, model_name, config, run)
        return run
    finally:
        proc.stop()


def run_serve_bench(config: ServeBenchConfig, progress: Progress) -> ServeBenchReport:
    from qhybrid.runtime.llm import load_model
    from qhybrid.serve import resolve_model

    spec = config.model
    if spec is None:
        from qhybrid._resources import resource_path

        spec = str(resource_path("models", "tiny-stories.gguf"))
    path = resolve_model(spec).path
    model = load_model(path)
    n_ctx = config.n_ctx or min(model.config.n_ctx_train or 2048, 2048)
    model.close()
    report = ServeBenchReport(config, str(path), n_ctx=n_ctx)
    have_llama = False
    if config.llama_cpp:
        try:
            import llama_cpp.server  # type: ignore[import-not-found,import-untyped,unused-ignore]  # noqa: F401

            have_llama = True
        except ImportError as exc:
            report.llama_cpp_skipped = f"llama-cpp-python[server] is not installed ({exc})"
    for i in range(config.repeat):
        port = _free_port()
        progress(f"qhybrid serve, run {i + 1}/{config.repeat}: {config.clients} clients")
        run = asyncio.run(
            _measure("qhybrid", _qhybrid_argv(config, str(path), port, n_ctx), port, spec, config)
        )
        run.detail["slots"] = config.slots
        report.runs.append(run)
        if have_llama:
            port = _free_port()
            progress(f"llama.cpp server, run {i + 1}/{config.repeat}: {config.clients} clients")
            argv = _llama_cpp_argv(config, str(path), port, n_ctx)
            ll = asyncio.run(_measure("llama.cpp", argv, port, str(path), config))
            ll.detail["version"] = _llama_version()
            ll.detail["threads"] = int(argv[argv.index("--n_threads") + 1])
            report.runs.append(ll)
    with contextlib.suppress(OSError):
        report.load_average = os.getloadavg()
    return report


def _llama_version() -> str:
    try:
        import llama_cpp  # type: ignore[import-not-found,import-untyped,unused-ignore]

        return str(getattr(llama_cpp, "__version__", "?"))
    except ImportError:
        return "?"


def add_parser(commands: Any) -> None:
    """``qhybrid bench serve``'s flags."""
    from qhybrid._argparse import positive_int

    serve = commands.add_parser(
        "serve",
        help="concurrent streaming clients against qhybrid serve and llama.cpp's server",
        description=(
            "C streaming clients send /v1/completions requests back to back for S seconds to "
            "qhybrid serve, then to llama.cpp's server (llama-cpp-python[server]) on the same "
            "model file, each server in its own process on loopback: requests/s, time to first "
            "token p50/p99, tokens/s, errors, and the ratios."
        ),
    )
    serve.add_argument(
        "model",
        nargs="?",
        default=None,
        metavar="MODEL",
        help="a GGUF file or a `qhybrid models` name (default: the shipped model)",
    )
    serve.add_argument("--clients", type=positive_int, default=32, metavar="C", help="(32)")
    serve.add_argument("--seconds", type=float, default=10.0, metavar="S", help="(10)")
    serve.add_argument("--max-tokens", type=positive_int, default=32, metavar="N", help="(32)")
    serve.add_argument(
        "--slots", type=positive_int, default=8, metavar="N", help="qhybrid's KV-cache slots (8)"
    )
    serve.add_argument(
        "--repeat",
        type=positive_int,
        default=1,
        metavar="R",
        help="runs of each server, taking turns; the best counts (1)",
    )
    serve.add_argument("--device", choices=("auto", "gpu", "cpu"), default="auto")
    serve.add_argument(
        "--ctx",
        type=positive_int,
        default=None,
        metavar="N",
        help="context per sequence on both servers (default: the model's, <= 2048)",
    )
    serve.add_argument(
        "--llama-threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="llama.cpp's threads (default: every core; 1 on a busy machine, where spinning "
        "threads slow it down)",
    )
    serve.add_argument(
        "--no-llama-cpp", dest="llama_cpp", action="store_false", help="skip the llama.cpp server"
    )
    serve.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    serve.set_defaults(parser=serve)


def config_from_args(args: Any) -> ServeBenchConfig:
    if not args.seconds > 0:
        raise ValueError(f"--seconds must be positive, got {args.seconds:g}")
    return ServeBenchConfig(
        model=args.model,
        clients=args.clients,
        seconds=args.seconds,
        max_tokens=args.max_tokens,
        slots=args.slots,
        llama_cpp=args.llama_cpp,
        repeat=args.repeat,
        device=args.device,
        n_ctx=args.ctx,
        llama_threads=args.llama_threads,
    )


def show(console: Any, report: ServeBenchReport) -> None:
    from rich.table import Table

    data = report.to_json()
    table = Table(
        title=f"qhybrid bench serve: {report.config.clients} streaming clients, "
        f"{report.config.seconds:g} s, {report.config.max_tokens} tokens each"
    )
    for col in ("server", "requests/s", "tokens/s", "TTFT p50 ms", "TTFT p99 ms", "errors"):
        table.add_column(col)
    for run in report.runs:
        j = run.to_json()
        table.add_row(
            run.server,
            f"{j['requests_per_s']:.2f}",
            f"{j['tokens_per_s']:.1f}",
            f"{j['ttft_p50_ms']:.1f}",
            f"{j['ttft_p99_ms']:.1f}",
            str(run.errors),
        )
    console.print(table)
    if "ratios" in data:
        console.print(f"qhybrid / llama.cpp: {data['ratios']}")
    if report.llama_cpp_skipped:
        console.print(f"llama.cpp skipped: {report.llama_cpp_skipped}")
    console.print(f"model {report.model_path}; load average {data['load_average']}")
