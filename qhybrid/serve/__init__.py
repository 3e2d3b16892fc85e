"""``qhybrid serve``: an OpenAI- and Ollama-compatible HTTP API over the LLM engine.

- :class:`ServeOptions`: the models, the address (loopback by default), slots, queue, API key.
- :func:`create_app`: the ASGI app (starlette); its lifespan loads the models.
- :class:`BackgroundServer`: the app under uvicorn on a thread of its own (tests, benchmarks,
  the window's Server panel): ``with BackgroundServer(options) as srv: srv.url``.
- :func:`resolve_model`: a path, or a name as ``qhybrid models`` lists it, to the file.

Never imports Qt. See docs/serve.md.
"""

from __future__ import annotations

from qhybrid.serve._app import BackgroundServer, ServeOptions, create_app
from qhybrid.serve._errors import ApiError
from qhybrid.serve._registry import ModelNotFound, ModelRegistry, ServedModel, resolve_model

__all__ = [
    "ApiError",
    "BackgroundServer",
    "ModelNotFound",
    "ModelRegistry",
    "ServeOptions",
    "ServedModel",
    "create_app",
    "resolve_model",
]
