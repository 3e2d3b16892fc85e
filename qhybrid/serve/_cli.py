"""``qhybrid serve [MODEL ...]``: the OpenAI- and Ollama-compatible HTTP API over the engine.

Exit codes: 0 stopped (Ctrl-C or SIGTERM), 1 the server failed, 2 bad input (a flag, a model
that does not exist or cannot be served, an address that cannot be bound).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from qhybrid._argparse import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, Parser, positive_int

logger = logging.getLogger(__name__)
PROG = "qhybrid serve"


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value < 65536:
        raise argparse.ArgumentTypeError(f"expected a port in 0..65535, got {value}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description=(
            "Serve GGUF models over HTTP with the OpenAI API (/v1/chat/completions, "
            "/v1/completions, /v1/models) and the Ollama API (/api/chat, /api/generate, "
            "/api/tags). Concurrent requests share the model by continuous batching."
        ),
    )
    parser.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="GGUF files, or names as `qhybrid models` lists them (default: the shipped "
        "tiny-stories model)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8080, help="port (default 8080; 0: any)")
    parser.add_argument(
        "--slots",
        type=positive_int,
        default=8,
        metavar="N",
        help="concurrent sequences per model (KV-cache slots; default 8)",
    )
    parser.add_argument(
        "--max-queue",
        type=_non_negative,
        default=64,
        metavar="N",
        help="sequences that may wait for a slot; beyond them: HTTP 503 (default 64)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("QHYBRID_API_KEY"),
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' (default: $QHYBRID_API_KEY, or none)",
    )
    parser.add_argument(
        "--ctx",
        type=positive_int,
        default=None,
        metavar="N",
        help="context positions per slot (default: the model's, at most 2048)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "gpu", "cpu"),
        default=os.environ.get("QHYBRID_DEVICE", "auto"),
        help="where the model runs (default auto: a hardware GPU, else numpy)",
    )
    parser.add_argument(
        "--max-body",
        type=positive_int,
        default=4 * 1024 * 1024,
        metavar="BYTES",
        help="largest request body (default 4 MiB)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    return parser


def _check_models(specs: list[str]) -> str | None:
    """Why a model cannot be served (the first one), or None."""
    from qhybrid.runtime.llm import read_model_info
    from qhybrid.serve._registry import ModelNotFound, resolve_model

    for spec in specs:
        try:
            found = resolve_model(spec)
        except ModelNotFound as exc:
            return str(exc)
        info = read_model_info(found.path)
        if not info.supported:
            return f"{found.path}: {info.reason}"
    return None


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from qhybrid.runtime.llm import _aot_cache

    try:  # before the kernels load: where none are compiled yet, build them for next time
        if note := _aot_cache.prepare():
            sys.stderr.write(f"{PROG}: {note}\n")
    except _aot_cache.BadChoice as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return EXIT_BAD_INPUT
    from qhybrid.serve._app import ServeOptions, bind_socket, create_app, uvicorn_server

    levels = (logging.WARNING, logging.INFO, logging.DEBUG)
    level = levels[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        options = ServeOptions(
            models=tuple(args.models),
            host=args.host,
            port=args.port,
            slots=args.slots,
            max_queue=args.max_queue,
            api_key=args.api_key or None,
            max_body=args.max_body,
            n_ctx=args.ctx,
            device=args.device,
        )
    except ValueError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return EXIT_BAD_INPUT
    problem = _check_models(options.model_specs())
    if problem is not None:
        sys.stderr.write(f"{PROG}: error: {problem}\n")
        return EXIT_BAD_INPUT
    try:
        sock = bind_socket(options.host, options.port)
    except OSError as exc:
        sys.stderr.write(f"{PROG}: error: cannot listen on {options.host}:{options.port}: {exc}\n")
        return EXIT_BAD_INPUT
    app = create_app(options)
    server = uvicorn_server(app, log_level="info" if args.verbose else "warning")
    host, port = sock.getsockname()[:2]
    sys.stderr.write(
        f"{PROG}: listening on http://{host}:{port} (OpenAI: /v1, Ollama: /api); Ctrl-C stops\n"
    )
    try:
        asyncio.run(server.serve(sockets=[sock]))
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        sock.close()
    error = app.state.registry.error
    if error is not None:
        sys.stderr.write(f"{PROG}: error: {error}\n")
        return EXIT_FAILED
    return EXIT_OK
