"""A recorded run's LLM requests as a person reads them: who asked, the prompt, the answer,
its tokens and its time, for the window's per-agent detail.

The engine's side of each request is recorded anyway (``llm_requests``: prompt ids and
parameters; ``llm_updates``: each step's text and tokens, the result at the end). What it
lacks, the asking agent and the prompt as text, comes from the runtime's
:class:`~qhybrid.runtime.LlmRequested` observer event, which :class:`RunRecorder` keeps in the
``effects`` table under :data:`LLM_KEY` (no new table, so no new store format). Like every
observer's record it is outside the trace: the trace hash is the same with it or without it.
A replay ignores these rows (they answer nothing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qhybrid.runtime._events import LlmRequested
    from qhybrid.runtime.store._store import RunStore

__all__ = ["LLM_KEY", "RecordedLlmCall", "ask_row", "llm_calls"]

#: The ``effects`` key prefix of an LLM request's observer record.
LLM_KEY = "(llm) "


@dataclass(frozen=True, slots=True)
class RecordedLlmCall:
    """One request of a recorded run. ``request_id`` is the engine's (below 0: answered at
    once, never reaching the engine); ``agent`` is a name, or ``agent N`` when only its id
    was recorded; ``prompt`` is None when only its token ids were (a run recorded before
    the prompts were). ``elapsed_s`` is the engine's prefill and decode time."""

    request_id: int
    agent: str
    tick: int
    kind: str
    prompt: str | None
    prompt_tokens: int
    max_tokens: int | None
    answer: str
    tokens: int
    done: bool
    done_tick: int | None
    finish: str | None
    error: str | None
    ttft_s: float
    tok_s: float
    elapsed_s: float


def ask_row(event: LlmRequested) -> tuple[str, int, str]:
    """The ``effects`` row (key, tick, text) that records ``event``. Keyed by tick, agent and
    the agent's request number, so that a resumed run (whose ids below 0 start again) never
    overwrites an earlier row."""
    key = f"{LLM_KEY}{event.tick:08d} {event.agent} {event.request} {event.request_id}"
    text = json.dumps(
        {
            "request_id": event.request_id,
            "agent": event.agent,
            "tick": event.tick,
            "kind": event.kind,
            "request": event.request,
            "prompt": event.prompt,
            "max_tokens": event.max_tokens,
            "error": event.error,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return key, event.tick, text


def llm_calls(
    store: RunStore, run_id: str, names: list[str] | None = None
) -> list[RecordedLlmCall]:
    """The run's requests in the order they were asked. ``names`` (agent id -> name) names
    the agent of a request recorded with its owner's id only."""
    asks: dict[int, dict[str, Any]] = {}
    at_once: list[dict[str, Any]] = []
    for key, text in store.effects(run_id).items():
        if not key.startswith(LLM_KEY):
            continue
        try:
            ask = json.loads(text)
            rid = int(ask["request_id"])
        except (ValueError, KeyError, TypeError):
            continue
        if rid < 0:
            at_once.append(ask)
        else:
            asks[rid] = ask
    answers: dict[int, list[str]] = {}
    tokens: dict[int, int] = {}
    results: dict[int, tuple[int, dict[str, Any] | None]] = {}
    for u in store.llm_updates(run_id):
        rid = int(u["request_id"])
        answers.setdefault(rid, []).append(str(u["text"]))
        tokens[rid] = tokens.get(rid, 0) + len(u["new_tokens"])
        if u["done"]:
            results[rid] = (int(u["tick"]), u["result"])
    calls: list[RecordedLlmCall] = []
    requests = {int(r["request_id"]): r for r in store.llm_requests(run_id)}
    for rid in sorted(set(requests) | set(asks)):
        req, ask = requests.get(rid), asks.get(rid, {})
        params = (req or {}).get("params") or {}
        owner = params.get("owner")
        agent = ask.get("agent")
        if agent is None:
            if isinstance(owner, int) and names and 0 <= owner < len(names):
                agent = names[owner]
            else:
                agent = f"agent {owner}" if owner is not None else "?"
        done_tick, result = results.get(rid, (None, None))
        result = result or {}
        prefill_tok_s = float(result.get("prefill_tok_s") or 0.0)
        decode_tok_s = float(result.get("decode_tok_s") or 0.0)
        n_prompt = len((req or {}).get("prompt_ids") or ())
        n_out = tokens.get(rid, 0)
        elapsed = float(result.get("prefill_s") or 0.0) + float(result.get("decode_s") or 0.0)
        if not elapsed and (prefill_tok_s or decode_tok_s):  # (older rows: from the rates)
            elapsed = (n_prompt / prefill_tok_s if prefill_tok_s else 0.0) + (
                n_out / decode_tok_s if decode_tok_s else 0.0
            )
        calls.append(
            RecordedLlmCall(
                request_id=rid,
                agent=str(agent),
                tick=int(ask.get("tick", (req or {}).get("tick", 0))),
                kind=str(ask.get("kind") or ("complete" if isinstance(owner, int) else "chat")),
                prompt=ask.get("prompt"),
                prompt_tokens=n_prompt,
                max_tokens=ask.get("max_tokens", params.get("max_tokens")),
                answer="".join(answers.get(rid, ())),
                tokens=n_out,
                done=done_tick is not None,
                done_tick=done_tick,
                finish=result.get("finish"),
                error=result.get("error"),
                ttft_s=float(result.get("ttft_s") or 0.0),
                tok_s=decode_tok_s,
                elapsed_s=elapsed,
            )
        )
    for ask in at_once:
        calls.append(
            RecordedLlmCall(
                request_id=int(ask["request_id"]),
                agent=str(ask.get("agent", "?")),
                tick=int(ask.get("tick", 0)),
                kind=str(ask.get("kind", "complete")),
                prompt=ask.get("prompt"),
                prompt_tokens=0,
                max_tokens=ask.get("max_tokens"),
                answer="",
                tokens=0,
                done=True,
                done_tick=int(ask.get("tick", 0)),
                finish="error",
                error=ask.get("error"),
                ttft_s=0.0,
                tok_s=0.0,
                elapsed_s=0.0,
            )
        )
    calls.sort(key=lambda c: (c.tick, c.request_id < 0, abs(c.request_id)))
    return calls
