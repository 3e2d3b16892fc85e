"""The Ollama endpoints: ``/api/tags``, ``/api/generate``, ``/api/chat``, ``/api/version``,
``/api/show``.

As Ollama's ``api/types.go`` has them: streaming is on unless ``"stream": false``, one JSON
object per line (NDJSON), the last with ``done: true``, ``done_reason`` and the counts and
durations (nanoseconds); sampling settings come in ``options`` (``num_predict``,
``temperature``, ``top_k``, ``top_p``, ``seed``, ``stop``, ``repeat_penalty``, ...);
``format`` is ``"json"`` or a JSON Schema; errors are ``{"error": "..."}``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from qhybrid.serve._errors import ApiError, bad_param, read_json
from qhybrid.serve._generation import (
    Job,
    Sampling,
    check_prompt,
    collect_or_cancel,
    encode_chat,
    get_int,
    get_number,
    get_stop,
    parse_tool_call,
    random_seed,
    tool_call_schema,
    tool_specs,
)
from qhybrid.serve._registry import ModelRegistry, ServedModel

logger = logging.getLogger(__name__)

VERSION = "0.6.0"  # the Ollama API version this follows, for clients that check


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def _sampling(body: Mapping[str, Any]) -> Sampling:
    options = body.get("options") or {}
    if not isinstance(options, Mapping):
        raise bad_param("options", "expected an object")
    num_predict = get_int(options, "num_predict", -1, -2, param="options.num_predict")
    seed = get_int(options, "seed", None, -(2**63), 2**64 - 1, param="options.seed")
    return Sampling(
        max_tokens=None if num_predict is None or num_predict < 0 else max(1, num_predict),
        temperature=get_number(
            options, "temperature", 0.8, 0.0, 100.0, param="options.temperature"
        ),
        top_p=get_number(options, "top_p", 0.9, 0.0, 1.0, lo_open=True, param="options.top_p"),
        top_k=int(get_int(options, "top_k", 40, 0, param="options.top_k") or 0),
        seed=random_seed() if seed is None else seed % 2**63,
        stop=get_stop(options, param="options.stop"),
        repeat_penalty=get_number(
            options, "repeat_penalty", 1.1, 0.0, 10.0, lo_open=True, param="options.repeat_penalty"
        ),
        repeat_last_n=int(
            get_int(options, "repeat_last_n", 64, 0, param="options.repeat_last_n") or 0
        ),
    )


class OllamaApi:
    """The handlers, over a :class:`ModelRegistry`."""

    def __init__(self, registry: ModelRegistry, max_body: int) -> None:
        self.registry = registry
        self.max_body = max_body

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": VERSION})

    def _entry(self, m: ServedModel) -> dict[str, Any]:
        model = m.llm.model
        modified = datetime.datetime.fromtimestamp(m.created, datetime.UTC).isoformat()
        quant = model.metadata.get("general.file_type")
        return {
            "name": m.name,
            "model": m.name,
            "modified_at": modified.replace("+00:00", "Z"),
            "size": m.size,
            "digest": m.digest,
            "details": {
                "format": "gguf",
                "family": model.config.arch,
                "families": [model.config.arch],
                "parameter_size": f"{model.n_params / 1e6:.1f}M",
                "quantization_level": str(quant) if quant is not None else "",
            },
        }

    async def tags(self, request: Request) -> Response:
        return JSONResponse({"models": [self._entry(m) for m in self.registry.models]})

    async def show(self, request: Request) -> Response:
        body = await read_json(request, self.max_body)
        served = self.registry.get(body.get("model") or body.get("name"))
        entry = self._entry(served)
        return JSONResponse(
            {
                "details": entry["details"],
                "modified_at": entry["modified_at"],
                "template": served.llm.tokenizer.chat_template or "",
                "model_info": served.describe(),
            }
        )

    def _format(self, served: ServedModel, fmt: Any) -> Any:
        if fmt in (None, ""):
            return None
        if fmt == "json":
            return served.grammar(None, root_object=True, param="format")
        if isinstance(fmt, Mapping):
            return served.grammar(fmt, root_object=False, param="format")
        raise bad_param("format", 'expected "json" or a JSON Schema')

    # -- generate ------------------------------------------------------------------------------
    async def generate(self, request: Request) -> Response:
        body = await read_json(request, self.max_body)
        served = self.registry.get(body.get("model"))
        prompt = body.get("prompt")
        if prompt is None or prompt == "":
            # Ollama: no prompt loads the model and answers at once.
            return JSONResponse(
                {
                    "model": served.name,
                    "created_at": _now(),
                    "response": "",
                    "done": True,
                    "done_reason": "load",
                }
            )
        if not isinstance(prompt, str):
            raise bad_param("prompt", "expected a string")
        sampling = _sampling(body)
        sampling.grammar = self._format(served, body.get("format"))
        system = body.get("system")
        if body.get("raw") or not served.llm.tokenizer.chat_template:
            text = f"{system}\n{prompt}" if isinstance(system, str) and system else prompt
            ids = served.llm.tokenizer.encode(text)
        else:
            messages = [{"role": "system", "content": system}] if system else []
            ids = encode_chat(served, [*messages, {"role": "user", "content": prompt}], None)
        check_prompt(served, ids, "prompt")
        return await self._run(request, body, served, ids, sampling, chat=False, tools=[])

    # -- chat ------------------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        body = await read_json(request, self.max_body)
        served = self.registry.get(body.get("model"))
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise bad_param("messages", "expected a list of messages")
        if not messages:
            return JSONResponse(
                {
                    "model": served.name,
                    "created_at": _now(),
                    "message": {"role": "assistant", "content": ""},
                    "done": True,
                    "done_reason": "load",
                }
            )
        if not all(isinstance(m, Mapping) for m in messages):
            raise bad_param("messages", "each message must be an object")
        sampling = _sampling(body)
        tools = tool_specs(body)
        sampling.grammar = self._format(served, body.get("format"))
        ids = encode_chat(served, messages, tools or None)
        check_prompt(served, ids, "messages")
        return await self._run(request, body, served, ids, sampling, chat=True, tools=tools)

    async def _run(
        self,
        request: Request,
        body: Mapping[str, Any],
        served: ServedModel,
        ids: list[int],
        sampling: Sampling,
        *,
        chat: bool,
        tools: list[dict[str, Any]],
    ) -> Response:
        stream = body.get("stream", True)
        if not isinstance(stream, bool):
            raise bad_param("stream", "expected a boolean")
        job = Job(served, ids, sampling)
        job.start()
        started = time.perf_counter_ns()
        if not stream:
            results = await collect_or_cancel(job, request.receive)
            result = results[0]
            if result.finish == "error":
                raise ApiError(500, result.error or "generation failed")
            return JSONResponse(self._final(served, job, result, started, chat, tools, result.text))
        return StreamingResponse(
            self._lines(job, served, started, chat, tools), media_type="application/x-ndjson"
        )

    async def _lines(
        self,
        job: Job,
        served: ServedModel,
        started: int,
        chat: bool,
        tools: list[dict[str, Any]],
    ) -> AsyncIterator[bytes]:
        events = job.events()
        try:
            async for ev in events:
                if ev.result is not None:
                    if ev.result.finish == "error":
                        yield _line({"error": ev.result.error or "generation failed"})
                        return
                    text = ev.text if not tools else ev.result.text
                    yield _line(self._final(served, job, ev.result, started, chat, tools, text))
                    return
                if not ev.text or tools:
                    continue  # with tools, the text waits until it is known to be no call
                piece = (
                    {"message": {"role": "assistant", "content": ev.text}}
                    if chat
                    else {"response": ev.text}
                )
                yield _line({"model": served.name, "created_at": _now(), **piece, "done": False})
        finally:
            job.cancel()
            with contextlib.suppress(Exception):
                await events.aclose()

    def _final(
        self,
        served: ServedModel,
        job: Job,
        result: Any,
        started: int,
        chat: bool,
        tools: list[dict[str, Any]],
        text: str,
    ) -> dict[str, Any]:
        total = time.perf_counter_ns() - started
        prefill = int(result.prefill_s * 1e9)
        out: dict[str, Any] = {"model": served.name, "created_at": _now()}
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            call = parse_tool_call(result.text, tools) if tools else None
            if call is not None:
                message = {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": call[0], "arguments": call[1]}}],
                }
            out["message"] = message
        else:
            out["response"] = text
        out.update(
            done=True,
            done_reason="length" if result.finish == "length" else "stop",
            total_duration=total,
            load_duration=0,
            prompt_eval_count=len(result.prompt_tokens),
            prompt_eval_duration=prefill,
            eval_count=len(result.tokens),
            eval_duration=int(result.decode_s * 1e9),
        )
        return out


def _line(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


__all__ = ["OllamaApi", "tool_call_schema"]
