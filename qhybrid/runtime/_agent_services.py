"""The orchestrator's side of agent ABI version 2: timers, topics, lifecycle, tools and
questions (``docs/agent-abi.md``, "Version 2").

Handlers in the workers turn these calls into effects (``wasm_pool._agent_v2``); the
orchestrator hands each one, at commit time and in commit order, to :meth:`AgentServices.apply`,
which queues the messages they lead to. Everything here runs on the orchestrator's loop thread,
so the order, and the trace, never depend on timing. Tool results and people's answers come
from outside the deterministic core: they are recorded in the trace (their digests) and, when a
recording is given, read from it instead of being asked again.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from qhybrid.runtime._scenario import ToolSpec
from qhybrid.runtime._trace import digest
from qhybrid.runtime.wasm_pool import (
    KIND_ANSWER,
    KIND_ENVELOPE,
    KIND_TOOL_DONE,
)

logger = logging.getLogger(__name__)


class Push(Protocol):
    def __call__(
        self, tick: int, priority: int, sender: int, dst: int, kind: int, payload: bytes
    ) -> None: ...


class Record(Protocol):
    def __call__(self, *fields: str | int | float | bool | bytes | None) -> None: ...


class ToolError(Exception):
    """A tool call that failed; the message goes back to the agent."""


def _call_python(spec: ToolSpec, args: Any) -> Any:
    module_name, _, func_name = spec.function.rpartition(":")
    try:
        if module_name.endswith(".py"):
            loader = importlib.util.spec_from_file_location(f"qh_tool_{spec.name}", module_name)
            if loader is None or loader.loader is None:
                raise ImportError(f"cannot load {module_name}")
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        func = getattr(module, func_name)
    except (ImportError, AttributeError, OSError, SyntaxError) as exc:
        raise ToolError(f"tool {spec.name}: cannot import {spec.function}: {exc}") from None
    try:
        return func(**args) if isinstance(args, dict) else func(args)
    except Exception as exc:  # the tool's own failure goes back to the agent
        raise ToolError(f"tool {spec.name}: {type(exc).__name__}: {exc}") from None


def _call_http(spec: ToolSpec, args: Any) -> Any:
    if not isinstance(args, dict) or not isinstance(args.get("url"), str):
        raise ToolError(f'tool {spec.name}: arguments must be {{"url": ..., "body"?: ...}}')
    url = urllib.parse.urlsplit(args["url"])
    if url.scheme not in ("http", "https") or url.hostname not in spec.hosts:
        allowed = ", ".join(spec.hosts) or "none"
        raise ToolError(f"tool {spec.name}: host {url.hostname!r} is not allowed ({allowed})")
    body = args.get("body")
    data = None if body is None else json.dumps(body).encode("utf-8")
    req = urllib.request.Request(args["url"], data=data, method="POST" if data else "GET")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=spec.timeout_s) as resp:
            raw = resp.read(spec.max_bytes + 1)
            status = int(resp.status)
    except OSError as exc:
        raise ToolError(f"tool {spec.name}: {exc}") from None
    if len(raw) > spec.max_bytes:
        raise ToolError(f"tool {spec.name}: response over the limit of {spec.max_bytes} bytes")
    return {"status": status, "body": raw.decode("utf-8", "replace")}


@dataclass
class AgentServices:
    """Topics, timers, lifecycle, tools and questions for one run."""

    push: Push
    record: Record
    stop_agent: Callable[[int, int], None]
    tools: Mapping[str, ToolSpec] = field(default_factory=dict)
    #: Answers a question; ``None`` means no person is there (the agent is told so).
    answer: Callable[[str, str], str | None] | None = None
    #: (agent name, "tool"|"ask", id) -> recorded result text, used instead of calling again.
    recording: dict[str, str] = field(default_factory=dict)
    topics: dict[str, set[int]] = field(default_factory=dict)

    def apply(
        self,
        agent_id: int,
        agent_name: str,
        tick: int,
        seq: int,
        priority: int,
        effect: tuple[Any, ...],
    ) -> None:
        what = effect[0]
        if what == "delay":
            _, delay, wire = effect
            self.record("timer", tick, seq, agent_id, delay, digest(wire))
            self.push(tick + delay, priority, agent_id, agent_id, KIND_ENVELOPE, wire)
        elif what == "subscribe":
            self.topics.setdefault(effect[1], set()).add(agent_id)
            self.record("subscribe", tick, seq, agent_id, effect[1])
        elif what == "unsubscribe":
            self.topics.get(effect[1], set()).discard(agent_id)
            self.record("unsubscribe", tick, seq, agent_id, effect[1])
        elif what == "publish":
            _, topic, kind, payload = effect
            subscribers = sorted(self.topics.get(topic, ()))
            self.record("publish", tick, seq, agent_id, topic, kind, len(subscribers))
            for dst in subscribers:
                self.push(tick + 1, priority, agent_id, dst, kind, payload)
        elif what == "stop_self":
            self.record("stop", tick, seq, agent_id)
            self.stop_agent(agent_id, tick)
        elif what == "tool":
            _, call, tag, name, args = effect
            self._tool(agent_id, agent_name, tick, seq, call, tag, name, args)
        elif what == "ask":
            _, question, tag, text = effect
            self._ask(agent_id, agent_name, tick, seq, question, tag, text)
        else:
            raise ValueError(f"unknown agent effect {what!r}")

    def _recorded(self, key: str, produce: Callable[[], str]) -> str:
        text = self.recording.get(key)
        if text is None:
            text = produce()
            self.recording[key] = text
        return text

    def _tool(
        self,
        agent_id: int,
        agent: str,
        tick: int,
        seq: int,
        call: int,
        tag: int,
        name: str,
        args: bytes,
    ) -> None:
        def run() -> str:
            spec = self.tools.get(name)
            answer: dict[str, Any] = {"call": call, "tag": tag, "tool": name}
            try:
                if spec is None:
                    raise ToolError(f"no tool named {name!r}")
                try:
                    parsed = json.loads(args.decode("utf-8")) if args.strip() else {}
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    raise ToolError(f"tool {name}: arguments are not JSON: {exc}") from None
                result = (_call_http if spec.kind == "http" else _call_python)(spec, parsed)
                text = json.dumps(result, sort_keys=True)
                if len(text) > spec.max_bytes:
                    raise ToolError(f"tool {name}: result over the limit of {spec.max_bytes}")
                answer.update(status=0, result=result, error=None)
            except (ToolError, TypeError, ValueError) as exc:
                answer.update(status=1, result=None, error=str(exc))
            return json.dumps(answer, sort_keys=True)

        text = self._recorded(f"{agent}/tool/{call}", run)
        payload = text.encode("utf-8")
        self.record("tool", tick, seq, agent_id, name, digest(args), digest(payload))
        self.push(tick + 1, 0, -1, agent_id, KIND_TOOL_DONE, payload)

    def _ask(
        self, agent_id: int, agent: str, tick: int, seq: int, question: int, tag: int, text: str
    ) -> None:
        def run() -> str:
            got = self.answer(agent, text) if self.answer is not None else None
            return json.dumps(
                {"question": question, "tag": tag, "text": text, "answer": got}, sort_keys=True
            )

        answer = self._recorded(f"{agent}/ask/{question}", run)
        payload = answer.encode("utf-8")
        self.record("answer", tick, seq, agent_id, digest(payload))
        self.push(tick + 1, 0, -1, agent_id, KIND_ANSWER, payload)


def answers_from_lines(lines: Iterator[str]) -> Callable[[str, str], str | None]:
    """Answers read one line per question (from stdin or an answers file); ``None`` once
    they run out."""

    def answer(agent: str, question: str) -> str | None:
        logger.info("%s asks: %s", agent, question)
        for line in lines:
            return line.rstrip("\n")
        return None

    return answer
