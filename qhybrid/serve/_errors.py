"""Errors the OpenAI way, request bodies read within a limit, and the API-key check.

Every refusal is an :class:`ApiError`; the app turns it into OpenAI's shape
(``{"error": {"type", "message", "param", "code"}}``) on ``/v1/*`` and into Ollama's
(``{"error": "message"}``) on ``/api/*``.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    500: "server_error",
    503: "server_error",
}


class ApiError(Exception):
    """An HTTP error with OpenAI's fields: ``param`` names the bad parameter, ``code`` is a
    machine-readable reason (``model_not_found``, ``context_length_exceeded``, ...)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self, *, ollama: bool = False) -> dict[str, Any]:
        if ollama:
            return {"error": self.message}
        return {
            "error": {
                "type": _TYPES.get(self.status, "invalid_request_error"),
                "message": self.message,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self, *, ollama: bool = False) -> JSONResponse:
        return JSONResponse(self.body(ollama=ollama), self.status, headers=self.headers)


def bad_param(param: str, message: str) -> ApiError:
    """400 naming the parameter."""
    return ApiError(400, f"{param}: {message}", param=param, code="invalid_value")


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object; 413 past ``limit`` bytes (refused from the Content-Length
    before reading, else as soon as the stream passes it), 400 for bad JSON."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(
            413,
            f"the request body is {length} bytes; the limit is {limit}",
            code="request_too_large",
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(
                413,
                f"the request body is over the limit of {limit} bytes",
                code="request_too_large",
            )
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks) or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    return data


class GuardMiddleware:
    """Before any endpoint runs: the API key (``Authorization: Bearer KEY``, or ``x-api-key``)
    and the declared body size, so a refused body is never read."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body: int) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path: str = scope.get("path", "")
        ollama = path.startswith("/api/")
        error: ApiError | None = None
        if self.api_key is not None and path not in ("/", "/health"):
            given = headers.get("authorization", "")
            token = (
                given[7:].strip()
                if given[:7].lower() == "bearer "
                else headers.get("x-api-key", "")
            )
            if not hmac.compare_digest(token.encode(), self.api_key.encode()):
                error = ApiError(
                    401,
                    "invalid API key"
                    if token
                    else "an API key is required (Authorization: Bearer KEY)",
                    code="invalid_api_key",
                )
        length = headers.get("content-length", "")
        if error is None and length.isdigit() and int(length) > self.max_body:
            error = ApiError(
                413,
                f"the request body is {length} bytes; the limit is {self.max_body}",
                code="request_too_large",
            )
        if error is None:
            await self.app(scope, receive, send)
            return
        response = error.response(ollama=ollama)
        # Say we close the connection: the unread body must not be taken for the next request.
        response.headers["connection"] = "close"
        await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}
