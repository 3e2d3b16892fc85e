"""The OpenAI endpoints: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``,
``/v1/embeddings``.

Wire formats as OpenAI's API reference gives them: a streamed answer is server-sent events,
one ``chat.completion.chunk`` (or ``text_completion``) object per ``data:`` line, the usage in
a last chunk with no choices when ``stream_options.include_usage``, and ``data: [DONE]``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from qhybrid.runtime.llm import GenerationResult
from qhybrid.serve._errors import ApiError, bad_param, read_json
from qhybrid.serve._generation import (
    MAX_N,
    Job,
    Sampling,
    check_prompt,
    collect_or_cancel,
    encode_chat,
    get_int,
    get_number,
    get_stop,
    new_call_id,
    parse_tool_call,
    random_seed,
    tool_call_schema,
    tool_specs,
)
from qhybrid.serve._registry import ModelRegistry, ServedModel

logger = logging.getLogger(__name__)

_FINISH = {"stop": "stop", "length": "length", "cancelled": "stop", "error": "stop"}


def _sampling(body: Mapping[str, Any], *, chat: bool) -> Sampling:
    for name in ("presence_penalty", "frequency_penalty"):
        get_number(body, name, 0.0, -2.0, 2.0)  # accepted for compatibility, not applied
    if body.get("logprobs") not in (None, False) and chat:
        raise bad_param("logprobs", "log probabilities are not supported")
    if body.get("logprobs") not in (None, 0) and not chat:
        raise bad_param("logprobs", "log probabilities are not supported")
    if chat and body.get("max_completion_tokens") is not None:
        max_tokens = get_int(body, "max_completion_tokens", None, 1)
    else:
        max_tokens = get_int(body, "max_tokens", None if chat else 16, 1)
    seed = get_int(body, "seed", None, -(2**63), 2**64 - 1)
    return Sampling(
        max_tokens=max_tokens,
        temperature=get_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=get_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        top_k=int(get_int(body, "top_k", 0, 0) or 0),
        seed=random_seed() if seed is None else seed % 2**63,
        stop=get_stop(body),
        repeat_penalty=get_number(body, "repeat_penalty", 1.0, 0.0, 10.0, lo_open=True),
        n=int(get_int(body, "n", 1, 1, MAX_N) or 1),
    )


def _stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise bad_param("stream", "expected a boolean")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, Mapping):
        raise bad_param("stream_options", "expected an object")
    return bool(stream), bool(opts.get("include_usage", False))


def _usage(job: Job) -> dict[str, int]:
    return {
        "prompt_tokens": job.prompt_tokens,
        "completion_tokens": job.completion_tokens,
        "total_tokens": job.prompt_tokens + job.completion_tokens,
    }


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def _failed(result: GenerationResult) -> ApiError | None:
    if result.finish == "error":
        return ApiError(500, result.error or "generation failed", code="generation_failed")
    return None


class OpenAiApi:
    """The handlers, over a :class:`ModelRegistry`."""

    def __init__(self, registry: ModelRegistry, max_body: int) -> None:
        self.registry = registry
        self.max_body = max_body

    async def models(self, request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": m.name,
                        "object": "model",
                        "created": m.created,
                        "owned_by": "qhybrid",
                        "meta": m.describe(),
                    }
                    for m in self.registry.models
                ],
            }
        )

    async def model(self, request: Request) -> Response:
        m = self.registry.get(request.path_params["model"])
        return JSONResponse(
            {"id": m.name, "object": "model", "created": m.created, "owned_by": "qhybrid"}
        )

    # -- chat ----------------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        body = await read_json(request, self.max_body)
        served = self.registry.get(body.get("model"))
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad_param("messages", "expected a non-empty list of messages")
        if not all(isinstance(m, Mapping) for m in messages):
            raise bad_param("messages", "each message must be an object")
        stream, include_usage = _stream_flags(body)
        sampling = _sampling(body, chat=True)
        tools = tool_specs(body)
        choice = body.get("tool_choice", "auto" if tools else "none")
        forced = self._tool_grammar(served, tools, choice)
        if forced is not None:
            sampling.grammar = forced
        elif body.get("response_format") is not None:
            sampling.grammar = self._response_format(served, body["response_format"])
        use_tools = tools if choice != "none" else []
        ids = encode_chat(served, messages, use_tools or None, forced=forced is not None)
        check_prompt(served, ids, "messages")
        job = Job(served, ids, sampling)
        job.start()
        ident = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        head = {
            "id": ident,
            "created": created,
            "model": served.name,
            "system_fingerprint": "qhybrid",
        }
        if stream:
            return self._sse_response(self._chat_chunks(job, head, use_tools, include_usage), job)
        results = await collect_or_cancel(job, request.receive)
        choices = []
        for i, result in enumerate(results):
            if (err := _failed(result)) is not None:
                raise err
            message: dict[str, Any] = {"role": "assistant", "content": result.text}
            finish = _FINISH[result.finish]
            call = parse_tool_call(result.text, use_tools) if use_tools else None
            if call is not None:
                message["content"] = None
                message["tool_calls"] = [self._tool_call(call)]
                finish = "tool_calls"
            choices.append(
                {"index": i, "message": message, "finish_reason": finish, "logprobs": None}
            )
        return JSONResponse(
            {**head, "object": "chat.completion", "choices": choices, "usage": _usage(job)}
        )

    @staticmethod
    def _tool_call(call: tuple[str, dict[str, Any]], index: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": new_call_id(),
            "type": "function",
            "function": {"name": call[0], "arguments": json.dumps(call[1], ensure_ascii=False)},
        }
        if index is not None:
            out["index"] = index
        return out

    def _tool_grammar(self, served: ServedModel, tools: list[dict[str, Any]], choice: Any) -> Any:
        """The grammar that forces a tool call (``required`` or a named function), else None."""
        if choice in ("none", "auto"):
            return None
        if choice == "required":
            if not tools:
                raise bad_param("tool_choice", "'required' needs tools")
            chosen = tools
        elif isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
            name = choice["function"].get("name")
            chosen = [t for t in tools if t["function"]["name"] == name]
            if not chosen:
                raise bad_param("tool_choice", f"no tool named {name!r} in tools")
        else:
            raise bad_param("tool_choice", "expected none, auto, required or a function")
        return served.grammar(tool_call_schema(chosen), root_object=True, param="tools")

    def _response_format(self, served: ServedModel, fmt: Any) -> Any:
        if not isinstance(fmt, Mapping):
            raise bad_param("response_format", "expected an object")
        kind = fmt.get("type")
        if kind == "text":
            return None
        if kind == "json_object":
            return served.grammar(None, root_object=True, param="response_format")
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, Mapping) or "schema" not in spec:
                raise bad_param("response_format.json_schema", "expected {name, schema}")
            return served.grammar(
                spec["schema"], root_object=False, param="response_format.json_schema.schema"
            )
        raise bad_param(
            "response_format.type", f"expected text, json_object or json_schema, got {kind!r}"
        )

    async def _chat_chunks(
        self, job: Job, head: dict[str, Any], tools: list[dict[str, Any]], include_usage: bool
    ) -> AsyncIterator[bytes]:
        base = {**head, "object": "chat.completion.chunk"}
        n = job.sampling.n
        for i in range(n):
            yield _sse(
                {
                    **base,
                    "choices": [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None,
                            "logprobs": None,
                        }
                    ],
                }
            )
        # With tools, the text is held until it is known whether it is a call.
        held = [""] * n
        async for ev in job.events():
            if ev.result is None:
                if tools:
                    held[ev.index] += ev.text
                elif ev.text:
                    yield _sse(
                        {
                            **base,
                            "choices": [
                                {
                                    "index": ev.index,
                                    "delta": {"content": ev.text},
                                    "finish_reason": None,
                                    "logprobs": None,
                                }
                            ],
                        }
                    )
                continue
            if (err := _failed(ev.result)) is not None:
                yield _sse(err.body())
                continue
            finish = _FINISH[ev.result.finish]
            delta: dict[str, Any] = {}
            if tools:
                call = parse_tool_call(ev.result.text, tools)
                if call is not None:
                    delta = {"tool_calls": [self._tool_call(call, 0)]}
                    finish = "tool_calls"
                elif held[ev.index]:
                    delta = {"content": held[ev.index]}
            yield _sse(
                {
                    **base,
                    "choices": [
                        {
                            "index": ev.index,
                            "delta": delta,
                            "finish_reason": finish,
                            "logprobs": None,
                        }
                    ],
                }
            )
        if include_usage:
            yield _sse({**base, "choices": [], "usage": _usage(job)})
        yield b"data: [DONE]\n\n"

    # -- completions -----------------------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        body = await read_json(request, self.max_body)
        served = self.registry.get(body.get("model"))
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        tokenizer = served.llm.tokenizer
        if isinstance(prompt, str):
            ids = tokenizer.encode(prompt)
        elif (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
        ):
            if min(prompt) < 0 or max(prompt) >= tokenizer.n_vocab:
                raise bad_param("prompt", f"token ids must be in [0, {tokenizer.n_vocab})")
            ids = list(prompt)
        else:
            raise bad_param("prompt", "expected a string, one string in a list, or token ids")
        if (
            body.get("echo")
            or body.get("suffix") is not None
            or body.get("best_of") not in (None, 1)
        ):
            raise bad_param(
                "echo"
                if body.get("echo")
                else "suffix"
                if body.get("suffix") is not None
                else "best_of",
                "not supported",
            )
        stream, include_usage = _stream_flags(body)
        sampling = _sampling(body, chat=False)
        if body.get("response_format") is not None:
            sampling.grammar = self._response_format(served, body["response_format"])
        check_prompt(served, ids, "prompt")
        job = Job(served, ids, sampling)
        job.start()
        head = {
            "id": "cmpl-" + uuid.uuid4().hex[:24],
            "object": "text_completion",
            "created": int(time.time()),
            "model": served.name,
            "system_fingerprint": "qhybrid",
        }
        if stream:
            return self._sse_response(self._completion_chunks(job, head, include_usage), job)
        results = await collect_or_cancel(job, request.receive)
        choices = []
        for i, result in enumerate(results):
            if (err := _failed(result)) is not None:
                raise err
            choices.append(
                {
                    "index": i,
                    "text": result.text,
                    "logprobs": None,
                    "finish_reason": _FINISH[result.finish],
                }
            )
        return JSONResponse({**head, "choices": choices, "usage": _usage(job)})

    async def _completion_chunks(
        self, job: Job, head: dict[str, Any], include_usage: bool
    ) -> AsyncIterator[bytes]:
        async for ev in job.events():
            if ev.result is not None and (err := _failed(ev.result)) is not None:
                yield _sse(err.body())
                continue
            finish = None if ev.result is None else _FINISH[ev.result.finish]
            if ev.text or finish:
                yield _sse(
                    {
                        **head,
                        "choices": [
                            {
                                "index": ev.index,
                                "text": ev.text,
                                "logprobs": None,
                                "finish_reason": finish,
                            }
                        ],
                    }
                )
        if include_usage:
            yield _sse({**head, "choices": [], "usage": _usage(job)})
        yield b"data: [DONE]\n\n"

    @staticmethod
    def _sse_response(chunks: AsyncIterator[bytes], job: Job) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in chunks:
                    yield chunk
            finally:
                job.cancel()  # a client that went away: its sequences end at the next step
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()

        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # -- embeddings ------------------------------------------------------------------------------
    async def embeddings(self, request: Request) -> Response:
        body = await read_json(request, self.max_body)
        served = self.registry.get(body.get("model"))
        raise ApiError(
            400,
            f"the model {served.name!r} does not support embeddings: it is a generative model "
            "and qhybrid's runners give no hidden states",
            param="model",
            code="embeddings_not_supported",
        )
