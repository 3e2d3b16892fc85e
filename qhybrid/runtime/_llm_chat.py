"""ABI v2's ``llm_chat``: an agent's JSON chat request, checked and turned into the engine's
prompt ids and :class:`~qhybrid.runtime.llm.GenerationParams`, and the JSON answer.

The request (``docs/agent-abi.md``)::

    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...],
     "max_tokens": 64, "temperature": 0.2, "top_k": 40, "top_p": 0.9, "seed": 7,
     "stop": ["\\n\\n"], "json_schema": {...}}

Unset sampling keys come from the scenario's ``[llm]``; the seed, when not given, from the
scenario's seed, the agent and the request, as for ``llm_complete``. ``json_schema`` asks for
output that follows the schema: the engine constrains every token with a grammar compiled
from it (``llm._grammar``), so the answer always parses.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qhybrid.runtime._scenario import LlmSpec
    from qhybrid.runtime.llm import GenerationParams, GenerationResult, Tokenizer

_ROLES = ("system", "user", "assistant", "tool")
_KEYS = {"messages", "max_tokens", "temperature", "top_k", "top_p", "seed", "stop", "json_schema"}


@dataclass(frozen=True, slots=True)
class ChatRequest:
    messages: tuple[dict[str, str], ...]
    max_tokens: int
    temperature: float | None
    top_k: int | None
    top_p: float | None
    seed: int | None
    stop: tuple[str, ...] | None
    json_schema: dict[str, Any] | None


def _number(raw: dict[str, Any], key: str, kind: type) -> Any:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number, got {json.dumps(value)[:40]}")
    if kind is int and not (isinstance(value, int) or float(value).is_integer()):
        raise ValueError(f"{key} must be an integer, got {value}")
    return kind(value)


def parse_chat_request(data: bytes) -> ChatRequest:
    """The request, or a ``ValueError`` that says what is wrong with it."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the chat request is not UTF-8 JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError("the chat request must be a JSON object")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ValueError(f"unknown keys in the chat request: {', '.join(unknown)}")
    messages = raw.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError('"messages" must be a non-empty list of {"role", "content"}')
    checked = []
    for i, msg in enumerate(messages):
        if (
            not isinstance(msg, dict)
            or msg.get("role") not in _ROLES
            or not isinstance(msg.get("content"), str)
        ):
            raise ValueError(
                f'messages[{i}] must be {{"role": one of {", ".join(_ROLES)}, "content": text}}'
            )
        checked.append({"role": str(msg["role"]), "content": str(msg["content"])})
    max_tokens = _number(raw, "max_tokens", int)
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    stop = raw.get("stop")
    if stop is not None and (
        not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop)
    ):
        raise ValueError('"stop" must be a list of non-empty strings')
    schema = raw.get("json_schema")
    if schema is not None and not isinstance(schema, dict):
        raise ValueError('"json_schema" must be a JSON Schema object')
    return ChatRequest(
        messages=tuple(checked),
        max_tokens=max_tokens or 128,
        temperature=_number(raw, "temperature", float),
        top_k=_number(raw, "top_k", int),
        top_p=_number(raw, "top_p", float),
        seed=_number(raw, "seed", int),
        stop=tuple(stop) if stop is not None else None,
        json_schema=schema,
    )


def chat_transcript(request: ChatRequest) -> str:
    """The request's messages as ``role: content`` lines: what observers show as its prompt
    (the window's agent detail, the run store), not what the engine is given."""
    text = "\n".join(f"{m['role']}: {m['content']}" for m in request.messages)
    if request.json_schema is not None:
        schema = json.dumps(request.json_schema, sort_keys=True, ensure_ascii=False)
        text += f"\n(answer as JSON following {schema})"
    return text


def chat_prompt_ids(tokenizer: Tokenizer, request: ChatRequest) -> list[int]:
    """The messages rendered with the model's chat template; without one, a plain
    ``role: content`` transcript ending in ``assistant:``."""
    from qhybrid.runtime.llm import ChatTemplateError

    messages = [dict(m) for m in request.messages]
    if tokenizer.chat_template:
        try:
            text = tokenizer.apply_chat_template(messages)
        except ChatTemplateError as exc:
            raise ValueError(str(exc)) from None
        bos = tokenizer.bos_id
        writes_bos = bos is not None and text.startswith(tokenizer.token_text(bos))
        return tokenizer.encode(text, add_bos=None if not writes_bos else False)
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    return tokenizer.encode(text)


_VOCABS: dict[int, Any] = {}  # id(tokenizer) -> its TokenVocabulary (one model per run)


def chat_params(
    request: ChatRequest,
    spec: LlmSpec,
    n_ctx: int,
    default_seed: int,
    tokenizer: Tokenizer | None = None,
) -> GenerationParams:
    """The engine's parameters; a ``json_schema`` becomes a grammar bound to the model's
    tokens (``ValueError`` for a schema it cannot compile)."""
    from qhybrid.runtime.llm import GenerationParams, GrammarError, SamplingParams

    sampling = SamplingParams(
        temperature=spec.temperature if request.temperature is None else request.temperature,
        top_k=spec.top_k if request.top_k is None else request.top_k,
        top_p=spec.top_p if request.top_p is None else request.top_p,
        repeat_penalty=spec.repeat_penalty,
    )
    params = GenerationParams(
        max_tokens=max(1, min(request.max_tokens, n_ctx)),
        sampling=sampling,
        seed=default_seed if request.seed is None else request.seed & ((1 << 63) - 1),
        stop=spec.stop if request.stop is None else request.stop,
    )
    if request.json_schema is not None:
        from qhybrid.runtime.llm import TokenVocabulary, compile_json_schema

        if tokenizer is None:
            raise ValueError("json_schema: no tokenizer to bind the grammar to")
        try:
            grammar = compile_json_schema(request.json_schema)
        except GrammarError as exc:
            raise ValueError(f"json_schema: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"json_schema: not a usable JSON Schema: {exc}") from None
        vocab = _VOCABS.get(id(tokenizer))
        if vocab is None:
            _VOCABS.clear()
            vocab = _VOCABS[id(tokenizer)] = TokenVocabulary.from_tokenizer(tokenizer)
        params = dataclasses.replace(params, grammar=grammar.for_vocabulary(vocab))
    return params


def chat_answer(
    request: int, tag: int, result: GenerationResult | None = None, error: str | None = None
) -> bytes:
    """The ``LLM_CHAT_DONE`` payload."""
    if result is None:
        body: dict[str, Any] = {
            "request": request,
            "tag": tag,
            "status": 1,
            "text": "",
            "finish": "error",
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "error": error,
        }
    else:
        ok = result.finish in ("stop", "length", "cancelled")
        body = {
            "request": request,
            "tag": tag,
            "status": 0 if ok else 1,
            "text": result.text,
            "finish": result.finish,
            "prompt_tokens": len(result.prompt_tokens),
            "completion_tokens": len(result.tokens),
            "error": None if ok else (result.error or f"the request ended: {result.finish}"),
        }
    return json.dumps(body, sort_keys=True, ensure_ascii=False).encode("utf-8")
