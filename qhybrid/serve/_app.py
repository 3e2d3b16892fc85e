"""The ASGI app (starlette) and the uvicorn server that runs it.

:func:`create_app` builds the app over a :class:`~._registry.ModelRegistry`: the models load
in the app's lifespan, on the server's event loop, and close with it. :class:`BackgroundServer`
runs the whole server on a thread of its own (tests, benchmarks, the window), bound to an
ephemeral loopback port unless told otherwise, and stops it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from qhybrid.runtime.llm import LlmOptions, RunnerChoice
from qhybrid.serve._errors import ApiError, GuardMiddleware
from qhybrid.serve._ollama import OllamaApi
from qhybrid.serve._openai import OpenAiApi
from qhybrid.serve._registry import ModelRegistry

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8080
DEFAULT_MAX_BODY = 4 * 1024 * 1024


@dataclass(frozen=True)
class ServeOptions:
    """What ``qhybrid serve`` takes: the models (paths or ``qhybrid models`` names; none: the
    shipped tiny-stories model), where to listen (loopback by default), the KV-cache slots per
    model, the queue beyond them (then 503), an API key, the body size limit and the device."""

    models: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    slots: int = 8
    max_queue: int = 64
    api_key: str | None = None
    max_body: int = DEFAULT_MAX_BODY
    n_ctx: int | None = None
    device: str = "auto"
    llm_options: LlmOptions = field(init=False)

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"slots must be >= 1, got {self.slots}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.device not in ("auto", "gpu", "cpu"):
            raise ValueError(f"device must be auto, gpu or cpu, got {self.device!r}")
        runner: RunnerChoice = (
            "auto" if self.device == "auto" else "gpu" if self.device == "gpu" else "cpu"
        )
        object.__setattr__(
            self, "llm_options", LlmOptions(n_slots=self.slots, n_ctx=self.n_ctx, runner=runner)
        )

    def model_specs(self) -> list[str]:
        if self.models:
            return list(self.models)
        from qhybrid._resources import resource_path

        return [str(resource_path("models", "tiny-stories.gguf"))]


def create_app(options: ServeOptions, registry: ModelRegistry | None = None) -> Starlette:
    """The app; its lifespan loads the models (a bad one fails the startup) and closes them."""
    reg = registry or ModelRegistry(options.model_specs(), options.llm_options, options.max_queue)
    openai = OpenAiApi(reg, options.max_body)
    ollama = OllamaApi(reg, options.max_body)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await reg.load()
        try:
            yield
        finally:
            await reg.aclose()

    async def root(request: Request) -> Response:
        # Ollama clients probe "/" for this text.
        return Response(
            "qhybrid is running (Ollama and OpenAI compatible)", media_type="text/plain"
        )

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": reg.names()})

    routes = [
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", openai.models, methods=["GET"]),
        Route("/v1/models/{model:path}", openai.model, methods=["GET"]),
        Route("/v1/chat/completions", openai.chat, methods=["POST"]),
        Route("/v1/completions", openai.completions, methods=["POST"]),
        Route("/v1/embeddings", openai.embeddings, methods=["POST"]),
        Route("/api/version", ollama.version, methods=["GET"]),
        Route("/api/tags", ollama.tags, methods=["GET"]),
        Route("/api/show", ollama.show, methods=["POST"]),
        Route("/api/generate", ollama.generate, methods=["POST"]),
        Route("/api/chat", ollama.chat, methods=["POST"]),
    ]

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return exc.response(ollama=request.url.path.startswith("/api/"))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        err = ApiError(
            exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None
        )
        return err.response(ollama=request.url.path.startswith("/api/"))

    async def server_error(request: Request, exc: Exception) -> Response:
        logger.exception("request %s failed", request.url.path)
        err = ApiError(500, f"internal error: {exc}", code="internal_error")
        return err.response(ollama=request.url.path.startswith("/api/"))

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ApiError: api_error,
            HTTPException: http_error,
            Exception: server_error,
        },
    )
    app.state.registry = reg
    app.add_middleware(GuardMiddleware, api_key=options.api_key, max_body=options.max_body)
    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: an ephemeral one); ``OSError`` when it cannot bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def uvicorn_server(app: Starlette, *, log_level: str = "warning") -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
        limit_concurrency=None,
    )
    return uvicorn.Server(config)


class BackgroundServer:
    """The server on a thread of its own: ``with BackgroundServer(options) as srv: srv.url``.

    Starts within ``timeout`` seconds (the models loaded) or raises ``RuntimeError`` with the
    reason; :meth:`stop` ends the requests in flight, closes the models and joins the thread.
    """

    def __init__(self, options: ServeOptions, *, timeout: float = 60.0) -> None:
        self.options = options
        self.timeout = timeout
        self.app = create_app(options)
        self.server = uvicorn_server(self.app)
        self._sock = bind_socket(options.host, options.port)
        self.port: int = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name="qhybrid-serve", daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.options.host}]" if ":" in self.options.host else self.options.host
        return f"http://{host}:{self.port}"

    @property
    def connections(self) -> int:
        """HTTP connections open now (uvicorn's count; read from any thread)."""
        return len(self.server.server_state.connections)

    @property
    def registry(self) -> ModelRegistry:
        reg: ModelRegistry = self.app.state.registry
        return reg

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve(sockets=[self._sock]))
        except BaseException as exc:
            self._error = exc

    def start(self) -> BackgroundServer:
        self._thread.start()
        deadline = self.timeout
        step = 0.02
        while not self.server.started and self._thread.is_alive() and deadline > 0:
            self._thread.join(step)
            deadline -= step
        if not self.server.started:
            self.stop()
            why = self.registry.error or self._error or "timed out"
            raise RuntimeError(f"the server did not start: {why}")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(30)
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
