"""Joins ABI version 2's services (:mod:`._agent_services`, :mod:`._llm_chat`) to the
orchestrator: what the :class:`~qhybrid.runtime._orchestrator.Runtime` calls from its commit,
on its loop thread. Kept apart so the orchestrator only gains a few hooks."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from qhybrid.runtime._agent_services import AgentServices, answers_from_lines
from qhybrid.runtime._llm_chat import chat_answer, chat_params, chat_prompt_ids, parse_chat_request
from qhybrid.runtime._scenario import ToolSpec
from qhybrid.runtime._seeding import derive_seed
from qhybrid.runtime.wasm_pool import KIND_LLM_CHAT_DONE, RUNTIME_SENDER

if TYPE_CHECKING:
    from qhybrid.runtime._orchestrator import Runtime
    from qhybrid.runtime.llm import GenerationResult


def make_services(rt: Runtime) -> AgentServices:
    tools = {t.name: t for t in getattr(rt.scenario, "tools", ())}
    answer = None
    path = rt.config.answers_path
    if path is not None:
        if str(path) == "-":
            answer = answers_from_lines(iter(sys.stdin))
        else:
            answer = answers_from_lines(iter(path.read_text("utf-8").splitlines()))
    return AgentServices(
        push=rt._push_message,
        record=rt._trace.record,
        stop_agent=rt._stop_agent,
        tools={name: spec for name, spec in tools.items() if isinstance(spec, ToolSpec)},
        answer=answer,
    )


def chat_effect(
    rt: Runtime, agent_id: int, agent_name: str, tick: int, seq: int, effect: tuple[object, ...]
) -> None:
    """``("llm_chat", request, tag, json)`` or ``("llm_cancel", request)`` of an agent."""
    if effect[0] == "llm_cancel":
        request = effect[1]
        for rid, (owner, req, _tag) in [*rt._chat_requests.items(), *rt._llm_requests.items()]:
            if owner == agent_id and req == request and rt._llm is not None:
                rt._trace.record("llm_cancel", tick, seq, rid)
                rt._llm.engine.cancel(rid)
        return
    _, request, tag, data = effect
    assert isinstance(request, int) and isinstance(tag, int) and isinstance(data, bytes)
    rt._trace.record("llm_chat", tick, seq, request)

    def fail(message: str) -> None:
        payload = chat_answer(request, tag, error=message)
        rt._push_message(tick + 1, 0, RUNTIME_SENDER, agent_id, KIND_LLM_CHAT_DONE, payload)

    llm, spec = rt._llm, rt.scenario.llm
    if llm is None or spec is None:
        fail("no LLM model is configured for this scenario")
        return
    try:
        chat = parse_chat_request(data)
        ids = chat_prompt_ids(llm.tokenizer, chat)
        seed = derive_seed(rt.scenario.seed, "llm", agent_name, str(request))
        params = chat_params(chat, spec, llm.runner.n_ctx, seed)
        rid = llm.engine.submit(ids, params, request_id=next(rt._llm_ids))
    except ValueError as exc:
        fail(str(exc))
        return
    rt._chat_requests[rid] = (agent_id, request, tag)


def finish_chat(rt: Runtime, tick: int, rid: int, result: GenerationResult) -> None:
    agent_id, request, tag = rt._chat_requests.pop(rid)
    rt._llm_done += 1
    rt._trace.record("llm_done", tick, rid, result.finish, repr(result.tokens))
    payload = chat_answer(request, tag, result)
    rt._push_message(tick + 1, 0, RUNTIME_SENDER, agent_id, KIND_LLM_CHAT_DONE, payload)
