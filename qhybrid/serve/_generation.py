"""What the OpenAI and Ollama endpoints share: parameters, prompts, tool calls, and jobs.

A :class:`Job` is one HTTP request's sequences (``n`` of them) on one model: each is a
request of the model's :class:`~qhybrid.runtime.llm.Llm`, so concurrent HTTP requests share
every engine step (continuous batching). :meth:`Job.events` merges their text as it comes;
:meth:`Job.cancel` (a client that went away) ends them all at the next engine step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import time
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qhybrid.runtime.llm import (
    ChatTemplateError,
    GenerationParams,
    GenerationResult,
    SamplingParams,
    TokenGrammar,
    TokenStream,
)
from qhybrid.serve._errors import ApiError, bad_param
from qhybrid.serve._registry import ServedModel

logger = logging.getLogger(__name__)

MAX_N = 16
MAX_STOPS = 8


# -- parameters ------------------------------------------------------------------------------
def get_number(
    body: Mapping[str, Any],
    name: str,
    default: float,
    lo: float,
    hi: float,
    *,
    lo_open: bool = False,
    param: str | None = None,
) -> float:
    value = body.get(name)
    if value is None:
        return default
    where = param or name
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad_param(where, f"expected a number, got {json.dumps(value)}")
    if value < lo or value > hi or (lo_open and value == lo):
        span = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise bad_param(where, f"must be in {span}, got {value}")
    return float(value)


def get_int(
    body: Mapping[str, Any],
    name: str,
    default: int | None,
    lo: int,
    hi: int | None = None,
    *,
    param: str | None = None,
) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    where = param or name
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise bad_param(where, f"expected an integer, got {json.dumps(value)}")
    if value < lo or (hi is not None and value > hi):
        span = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise bad_param(where, f"must be {span}, got {value}")
    return int(value)


def get_stop(
    body: Mapping[str, Any], name: str = "stop", param: str | None = None
) -> tuple[str, ...]:
    value = body.get(name)
    where = param or name
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_param(where, "expected a string or a list of strings")
    if len(stops) > MAX_STOPS:
        raise bad_param(where, f"at most {MAX_STOPS} stop strings, got {len(stops)}")
    if any(not s for s in stops):
        raise bad_param(where, "stop strings must not be empty")
    return tuple(stops)


@dataclass
class Sampling:
    """A request's validated generation settings (before the prompt is known)."""

    max_tokens: int | None
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: tuple[str, ...]
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    n: int = 1
    grammar: TokenGrammar | None = None

    def params(self, served: ServedModel, prompt_len: int, index: int) -> GenerationParams:
        room = served.n_ctx - prompt_len
        max_tokens = room if self.max_tokens is None else min(self.max_tokens, room)
        return GenerationParams(
            max_tokens=max(1, max_tokens),
            sampling=SamplingParams(
                temperature=self.temperature,
                top_k=self.top_k,
                top_p=self.top_p,
                repeat_penalty=self.repeat_penalty,
                repeat_last_n=self.repeat_last_n,
            ),
            seed=(self.seed + index) % 2**63,
            stop=self.stop,
            grammar=self.grammar,
        )


def random_seed() -> int:
    return secrets.randbits(63)


# -- prompts ---------------------------------------------------------------------------------
def message_text(content: Any, where: str) -> str:
    """A message's content as text: a string, or OpenAI's list of ``{"type": "text"}`` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and part.get("type") in ("text", "input_text"):
                parts.append(str(part.get("text", "")))
            else:
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise bad_param(f"{where}[{i}]", f"content of type {kind!r} is not supported")
        return "".join(parts)
    raise bad_param(where, "expected a string or a list of text parts")


def tool_instructions(tools: Sequence[Mapping[str, Any]]) -> str:
    """The system text that tells a model without a tools template how to call them (kept
    short: small models have small contexts)."""
    specs = [
        {
            k: v
            for k, v in t.get("function", t).items()
            if k in ("name", "description", "parameters")
        }
        for t in tools
    ]
    listing = json.dumps(specs, ensure_ascii=False, separators=(",", ":"))
    return f'To call a tool, answer {{"name":...,"arguments":{{...}}}}. Tools: {listing}'


def encode_chat(
    served: ServedModel,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None,
    *,
    forced: bool = False,
) -> list[int]:
    """The prompt ids of a conversation through the model's chat template. Tools go to the
    template when it takes them; else a system message describes them, unless the call is
    ``forced`` by a grammar (which already spells the names and arguments, and small models
    have no context to spare)."""
    tokenizer = served.llm.tokenizer
    rendered: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise bad_param(f"messages[{i}].role", f"unknown role {role!r}")
        text = message_text(m.get("content"), f"messages[{i}].content")
        item: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": text}
        calls = m.get("tool_calls")
        if calls:
            item["tool_calls"] = calls
            if not text:
                item["content"] = "\n".join(
                    json.dumps({"name": name, "arguments": args})
                    for name, args in _calls(calls, f"messages[{i}].tool_calls")
                )
        rendered.append(item)
    template = tokenizer.chat_template or ""
    extra: dict[str, Any] = {}
    if tools:
        if "tools" in template:
            extra["tools"] = list(tools)
        elif not forced:
            rendered.insert(0, {"role": "system", "content": tool_instructions(tools)})
    try:
        text = tokenizer.apply_chat_template(rendered, **extra)
    except ChatTemplateError as exc:
        # A model without a template still answers: one message per line, then the answer.
        if tokenizer.chat_template:
            raise ApiError(400, str(exc), param="messages") from None
        text = "".join(f"{m['role']}: {m['content']}\n" for m in rendered) + "assistant:"
    bos = tokenizer.bos_id
    writes_bos = bos is not None and text.startswith(tokenizer.token_text(bos))
    return tokenizer.encode(text, add_bos=None if not writes_bos else False)


def _calls(calls: Any, where: str) -> list[tuple[str, Any]]:
    """``(name, arguments)`` of an assistant message's ``tool_calls`` (400 when malformed)."""
    if not isinstance(calls, list):
        raise bad_param(where, "expected a list")
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise bad_param(f"{where}[{j}]", 'expected {"function": {"name", "arguments"}}')
        out.append((fn["name"], _arguments(fn.get("arguments"))))
    return out


def _arguments(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def check_prompt(served: ServedModel, ids: Sequence[int], param: str) -> None:
    if not ids:
        raise bad_param(param, "the prompt is empty")
    if len(ids) >= served.n_ctx:
        raise ApiError(
            400,
            f"the prompt has {len(ids)} tokens; the model's context holds {served.n_ctx} "
            "(prompt and answer together)",
            param=param,
            code="context_length_exceeded",
        )


# -- tools -----------------------------------------------------------------------------------
def tool_specs(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise bad_param("tools", "expected a list")
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise bad_param(f"tools[{i}]", 'expected {"type": "function", "function": {"name"}}')
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, Mapping):
            raise bad_param(f"tools[{i}].function.parameters", "expected a JSON Schema object")
        out.append({"type": "function", "function": {**fn, "parameters": params}})
    return out


def tool_call_schema(tools: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The JSON Schema of one call of any of ``tools``: ``{"name", "arguments"}``."""
    branches = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t["function"]["name"]},
                "arguments": t["function"]["parameters"],
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


def parse_tool_call(
    text: str, tools: Sequence[Mapping[str, Any]]
) -> tuple[str, dict[str, Any]] | None:
    """``(name, arguments)`` when ``text`` is a call of one of ``tools`` (bare JSON, or inside
    ``<tool_call>`` tags as Hermes-style templates write it), else None."""
    body = text.strip()
    if body.startswith("<tool_call>"):
        body = body.removeprefix("<tool_call>").split("</tool_call>")[0].strip()
    if not body.startswith("{"):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    names = {t["function"]["name"] for t in tools}
    if not isinstance(data, dict) or data.get("name") not in names:
        return None
    args = data.get("arguments", data.get("parameters", {}))
    args = _arguments(args)
    if not isinstance(args, dict):
        return None
    return str(data["name"]), args


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


# -- jobs ------------------------------------------------------------------------------------
@dataclass
class ChoiceEvent:
    """Text for one choice, and its result when it ended."""

    index: int
    text: str
    result: GenerationResult | None = None


@dataclass
class Job:
    """One HTTP request's ``n`` sequences on a model (see the module docstring)."""

    served: ServedModel
    prompt: list[int]
    sampling: Sampling
    started: float = field(default_factory=time.perf_counter)
    streams: list[TokenStream] = field(default_factory=list)
    results: list[GenerationResult | None] = field(default_factory=list)
    _released: bool = False

    def start(self) -> None:
        """Submit (503 when the model's slots and queue are full)."""
        n = self.sampling.n
        self.served.admit(n)
        try:
            for i in range(n):
                params = self.sampling.params(self.served, len(self.prompt), i)
                self.streams.append(self.served.llm.stream(self.prompt, params))
        except (ValueError, RuntimeError) as exc:
            self.cancel()
            raise ApiError(400, str(exc), param="prompt") from None
        self.results = [None] * n

    async def events(self) -> AsyncGenerator[ChoiceEvent, None]:
        """Every choice's text as it comes, then a last event per choice with its result."""
        queue: asyncio.Queue[ChoiceEvent | BaseException] = asyncio.Queue()

        async def pump(index: int, stream: TokenStream) -> None:
            try:
                async for text in stream:
                    queue.put_nowait(ChoiceEvent(index, text))
                queue.put_nowait(ChoiceEvent(index, "", stream.result))
            except Exception as exc:
                queue.put_nowait(exc)

        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(self.streams)]
        try:
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise ApiError(500, f"generation failed: {item}", code="generation_failed")
                if item.result is not None:
                    remaining -= 1
                    self.results[item.index] = item.result
                    self.served.tokens_total += len(item.result.tokens)
                yield item
        finally:
            for t in tasks:
                t.cancel()
            self.cancel()

    async def collect(self) -> list[GenerationResult]:
        async for _ in self.events():
            pass
        return [r for r in self.results if r is not None]

    def cancel(self) -> None:
        """End every sequence still running at the next engine step; thread of the loop."""
        first = not self._released
        self._released = True
        for stream in self.streams:
            if stream.result is None and first:
                self.served.cancelled_total += 1
            stream.cancel()
        if first:
            self.served.release(self.sampling.n)

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt)

    @property
    def completion_tokens(self) -> int:
        return sum(len(r.tokens) for r in self.results if r is not None)


async def until_disconnected(receive: Any) -> None:
    """Return when the client goes away (the body was read already)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def collect_or_cancel(job: Job, receive: Any) -> list[GenerationResult]:
    """Run ``job`` to the end; a client that disconnects first cancels it (``ApiError`` 499)."""
    collect = asyncio.ensure_future(job.collect())
    gone = asyncio.ensure_future(until_disconnected(receive))
    try:
        done, _ = await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
        if collect in done:
            return collect.result()
        job.cancel()
        logger.info("a client disconnected: its request is cancelled")
        raise ApiError(499, "the client closed the request", code="client_closed")
    finally:
        for task in (collect, gone):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        job.cancel()
