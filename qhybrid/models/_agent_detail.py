"""The per-agent detail's model: one agent's state, limits and usage, log, messages in and
out, LLM requests (prompt, answer, tokens, time) and its error in full, as plain text.

Qt-free. :class:`LlmCalls` pairs the runtime's :class:`~qhybrid.runtime.LlmRequested` with
the :class:`~qhybrid.runtime.LlmTokens` that answer it; :func:`agent_report` puts together
what a :class:`~qhybrid.models.MessageHistory` keeps of one agent with its summary.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qhybrid.models._messages import decode_payload
from qhybrid.runtime import AgentSummary, LlmRequested, LlmTokens, printable, printable_lines
from qhybrid.runtime.store import RecordedLlmCall
from qhybrid.runtime.wasm_pool import Limits, effective_limits

__all__ = ["AgentReport", "LlmCall", "LlmCalls", "agent_report", "limits_text"]

_LEVEL_NAMES = {10: "debug", 20: "info", 30: "warning", 40: "error", 50: "critical"}


@dataclass(slots=True)
class LlmCall:
    request_id: int
    agent: str
    tick: int | None
    prompt: str | None  # None: asked outside the runtime's view (the chat's "user")
    max_tokens: int | None
    answer: str = ""
    tokens: int = 0
    tok_s: float = 0.0
    ttft_s: float = 0.0
    done: bool = False
    finish: str | None = None
    error: str | None = None
    started: float = field(default_factory=time.perf_counter)
    elapsed_s: float = 0.0
    kind: str = "complete"  # "complete" (ABI v1 llm_complete) or "chat" (ABI v2 llm_chat)
    prompt_tokens: int = 0
    done_tick: int | None = None


class LlmCalls:
    """LLM requests by id, as they are asked and answered (the last ``keep`` of them)."""

    def __init__(self, keep: int = 2000) -> None:
        self.keep = keep
        self.calls: dict[int, LlmCall] = {}

    def clear(self) -> None:
        self.calls.clear()

    def apply(self, requests: Iterable[LlmRequested], tokens: Iterable[LlmTokens]) -> None:
        for r in requests:
            call = self.calls[r.request_id] = LlmCall(
                r.request_id, r.agent, r.tick, r.prompt, r.max_tokens, kind=r.kind
            )
            if r.error is not None:  # answered at once: no tokens follow
                call.done, call.finish, call.error = True, "error", r.error
        for t in tokens:
            call = self.calls.get(t.request_id)
            if call is None:
                call = self.calls[t.request_id] = LlmCall(t.request_id, t.agent, None, None, None)
            call.answer += t.text
            call.tokens += t.tokens
            call.tok_s = t.tok_s or call.tok_s
            call.ttft_s = t.ttft_s or call.ttft_s
            call.elapsed_s = time.perf_counter() - call.started
            if t.done:
                call.done, call.finish, call.error = True, t.finish, t.error
        while len(self.calls) > self.keep:
            self.calls.pop(next(iter(self.calls)))

    def load_recorded(self, calls: Iterable[RecordedLlmCall]) -> None:
        """A recorded run's requests (from the run store), in place of the live ones."""
        self.calls.clear()
        for c in calls:
            self.calls[c.request_id] = LlmCall(
                c.request_id,
                c.agent,
                c.tick,
                c.prompt,
                c.max_tokens,
                answer=c.answer,
                tokens=c.tokens,
                tok_s=c.tok_s,
                ttft_s=c.ttft_s,
                done=c.done,
                finish=c.finish,
                error=c.error,
                elapsed_s=c.elapsed_s,
                kind=c.kind,
                prompt_tokens=c.prompt_tokens,
                done_tick=c.done_tick,
            )

    def of_agent(self, name: str) -> list[LlmCall]:
        return [c for c in self.calls.values() if c.agent == name]


@dataclass(frozen=True, slots=True)
class AgentReport:
    """What the detail panel shows, one text per tab."""

    title: str
    overview: str
    log: str
    messages: str
    llm: str
    error: str
    counts: Mapping[str, int]


def limits_text(limits: Any) -> str:
    """An agent's limits per message, the defaults named (``AgentLimits`` or ``Limits``)."""
    given = Limits(limits.fuel, limits.memory_bytes, limits.timeout_ms, limits.stack_bytes)
    full, defaulted = effective_limits(given)

    def mark(name: str) -> str:
        return " (default)" if name in defaulted else ""

    parts = [
        f"fuel {full.fuel:,}{mark('fuel')}" if full.fuel is not None else "fuel unlimited",
        f"memory {full.memory_bytes / (1 << 20):g} MiB{mark('memory')}"
        if full.memory_bytes is not None
        else "memory unlimited",
        f"time {full.timeout_ms:,} ms{mark('timeout_ms')}"
        if full.timeout_ms is not None
        else "no time limit",
    ]
    if full.stack_bytes:
        parts.append(f"stack {full.stack_bytes // 1024} KiB")
    return ", ".join(parts) + " per message"


def _summary_dict(summary: AgentSummary | Mapping[str, Any] | None) -> dict[str, Any]:
    if summary is None:
        return {}
    if isinstance(summary, AgentSummary):
        return {name: getattr(summary, name) for name in AgentSummary.__dataclass_fields__}
    return dict(summary)


def usage_text(fuel: int, memory: int) -> str:
    """A handled message's fuel and its agent's memory after it, short."""
    burnt = "fuel -" if fuel < 0 else f"fuel {fuel:,}"
    return f"[{burnt}, mem {memory / 1024:,.0f} KiB]" if memory >= 0 else f"[{burnt}]"


def agent_report(
    agent: int,
    names: Sequence[str],
    *,
    summary: AgentSummary | Mapping[str, Any] | None = None,
    limits: str = "",
    messages: Sequence[tuple[Any, ...]] = (),
    log: Iterable[tuple[int | None, int, str]] = (),
    errors: Sequence[tuple[int, str]] = (),
    llm: Sequence[LlmCall] = (),
    max_messages: int = 300,
    usage: Mapping[tuple[int, int], tuple[int, int]] | None = None,
) -> AgentReport:
    """The texts of agent ``agent`` (an id into ``names``)."""

    def name(i: int) -> str:
        if i == -1:
            return "(runtime)"
        return names[i] if 0 <= i < len(names) else f"agent {i}"

    me = name(agent)
    s = _summary_dict(summary)
    fuel, fuel_last, memory = s.get("fuel_used"), s.get("fuel_last"), s.get("memory_bytes")
    lines = [
        f"{me}  ({s.get('module', '?')}, group {s.get('group') or '-'})",
        f"state {s.get('state', '?')}, worker {s.get('worker', '?')}, "
        f"handled {s.get('handled', 0):,}, restarts {s.get('restarts', 0)}",
        "fuel used: "
        + (
            "not metered"
            if fuel is None
            else f"{fuel:,} in all, {fuel_last or 0:,} in its last tick"
            + (f", {fuel / max(1, s.get('handled') or 1):,.0f} per message" if fuel else "")
        ),
        "memory: " + ("-" if memory is None else f"{memory:,} bytes ({memory / 1024:,.0f} KiB)"),
    ]
    if limits:
        lines.append(f"limits: {limits}")
    sent = sum(1 for m in messages if m[3] == agent)
    received = sum(1 for m in messages if m[4] == agent)
    lines.append(f"messages kept: {received:,} in, {sent:,} out (the last {len(messages):,})")
    if llm:
        lines.append(f"LLM requests: {len(llm)}, {sum(c.tokens for c in llm):,} tokens")
    error = s.get("error")
    if error:
        lines.append(f"error: {printable(str(error))}")
    overview = printable_lines("\n".join(lines))

    msg_lines = []
    for m in list(messages)[-max_messages:]:
        status, tick, seq, sender, receiver, kind, payload = m[:7]
        incoming = receiver == agent
        other = name(sender) if incoming else name(receiver)
        how, text = decode_payload(payload)
        arrow = "\N{LEFTWARDS ARROW}" if incoming else "\N{RIGHTWARDS ARROW}"
        extra = f" ({m[7]})" if status == "drop" and len(m) > 7 else ""
        used = usage.get((tick, seq)) if usage and incoming else None
        cost = "" if used is None else " " + usage_text(*used)
        msg_lines.append(
            f"t{tick:<5} #{seq:<6} {'in ' if incoming else 'out'} {arrow} {printable(other):<12} "
            f"k{kind:<3} {status}{extra}{cost} {how}: {text}"
        )
    log_lines = [
        f"tick {'-' if t is None else t:>6}  {_LEVEL_NAMES.get(level, str(level)):<8} {text}"
        for t, level, text in log
    ]
    llm_lines: list[str] = []
    for c in llm:
        state = c.finish or ("done" if c.done else "streaming")
        what = "chat" if c.kind == "chat" else "completion"
        ticks = f"tick {'-' if c.tick is None else c.tick}"
        if c.done_tick is not None and c.tick is not None and c.done_tick != c.tick:
            ticks = f"ticks {c.tick}\N{EN DASH}{c.done_tick}"
        if c.request_id < 0:  # answered at once, never reaching the engine
            head = f"{what} at {ticks}: refused"
        else:
            head = (
                f"{what} {c.request_id} at {ticks}: {state}; {c.tokens} tokens"
                + (f" from {c.prompt_tokens} prompt tokens" if c.prompt_tokens else "")
                + f", {c.elapsed_s:.2f} s, first token {c.ttft_s * 1000:.0f} ms, "
                f"{c.tok_s:.1f} tok/s" + (f"; max {c.max_tokens}" if c.max_tokens else "")
            )
        if c.prompt is None:
            prompt = "(not seen)" if not c.prompt_tokens else "(only its token ids were recorded)"
        else:
            prompt = c.prompt.replace("\n", "\n          ")
        llm_lines += [head, "  prompt: " + prompt, "  answer: " + c.answer]
        if c.error:
            llm_lines.append(f"  error: {c.error}")
        llm_lines.append("")
    error_lines = [f"tick {t}: {e}" for t, e in errors]
    if error and not any(str(error) in e for _, e in errors):
        error_lines.append(str(error))
    return AgentReport(
        title=me,
        overview=overview,
        log=printable_lines("\n".join(log_lines)) or "(no log lines kept)",
        messages=printable_lines("\n".join(msg_lines)) or "(no messages kept)",
        llm=printable_lines("\n".join(llm_lines)) or "(no LLM requests)",
        error=printable_lines("\n".join(error_lines)) or "(no error)",
        counts={
            "log": len(log_lines),
            "messages": len(msg_lines),
            "llm": len(llm),
            "errors": len(error_lines),
        },
    )
