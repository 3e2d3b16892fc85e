"""The part that joins ABI version 2's services to the orchestrator's other parts.

Owns: the run's :class:`~qhybrid.runtime._agent_services.AgentServices` (topics, timers,
tools, questions) and agents' chat requests in flight (engine id -> ``(agent, request,
tag)``). It registers an effect kind with the commit for each v2 effect
(``wasm_pool.V2_EFFECTS``), so they are applied in queue order like every other effect, and
answers chat requests from the LLM bridge's engine steps (kind ``LLM_CHAT_DONE``). Runs on
the orchestrator's loop thread.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from qhybrid.runtime._agent_services import AgentServices, answers_from_lines
from qhybrid.runtime._commit import EffectKind
from qhybrid.runtime._events import AgentStateChanged
from qhybrid.runtime._llm_bridge import Prepared, tokens_event
from qhybrid.runtime._llm_chat import (
    chat_answer,
    chat_params,
    chat_prompt_ids,
    chat_transcript,
    parse_chat_request,
)
from qhybrid.runtime._roster import LOADED, SKIPPED, AgentRecord
from qhybrid.runtime._seeding import derive_seed
from qhybrid.runtime.wasm_pool import KIND_LLM_CHAT_DONE, RUNTIME_SENDER, V2_EFFECTS

if TYPE_CHECKING:
    from qhybrid.runtime._parts import Parts
    from qhybrid.runtime._schedule import Item
    from qhybrid.runtime._trace import TraceRecorder
    from qhybrid.runtime.llm import GenerationParams, RequestUpdate

__all__ = ["V2Bridge"]


class V2Bridge:
    def __init__(
        self,
        parts: Parts,
        trace: TraceRecorder,
        answers_path: Path | None,
        recording_path: Path | None = None,
    ) -> None:
        self.parts = parts
        self.recording_path = recording_path
        recording: dict[str, str] = {}
        if recording_path is not None and recording_path.is_file():
            try:
                loaded = json.loads(recording_path.read_text("utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(
                    f"{recording_path}: not a recording of tool results: {exc}"
                ) from None
            if not isinstance(loaded, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in loaded.items()
            ):
                raise ValueError(f"{recording_path}: expected a JSON object of strings")
            recording = loaded
        self._saved = len(recording)
        self.trace = trace
        scenario = parts.llm.scenario
        answer = None
        if answers_path is not None:
            lines = (
                iter(sys.stdin)
                if str(answers_path) == "-"
                else iter(answers_path.read_text("utf-8").splitlines())
            )
            answer = answers_from_lines(lines)
        self.services = AgentServices(
            push=parts.schedule.push_message,
            record=trace.record,
            stop_agent=self.stop_agent,
            tools={t.name: t for t in scenario.tools},
            answer=answer,
            recording=recording,
        )
        self.chats: dict[int, tuple[int, int, int]] = {}
        for kind in V2_EFFECTS - {"spawn", "stop_run", "stop_run_refused"}:  # see _lifecycle
            apply = self._chat if kind in ("llm_chat", "llm_cancel") else self._service
            parts.commit.register_effect(kind, EffectKind(apply))
        parts.llm.other_updates = self.llm_updates

    def save_recording(self, tick: int, records: object) -> None:
        """A tick hook: write the recording when the tick added results to it."""
        recording = self.services.recording
        if self.recording_path is None or len(recording) == self._saved:
            return
        tmp = self.recording_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(recording, sort_keys=True, indent=1), "utf-8")
        tmp.replace(self.recording_path)
        self._saved = len(recording)

    def _service(
        self, agent: AgentRecord, tick: int, item: Item, effect: tuple[object, ...]
    ) -> None:
        self.services.apply(agent.agent_id, agent.name, tick, item.seq, -item.neg_priority, effect)

    def stop_agent(self, agent_id: int, tick: int) -> None:
        """``stop_self``: the agent stops; later messages to it are dropped and recorded."""
        agent = self.parts.roster.agents[agent_id]
        if agent.state != LOADED:
            return
        agent.state = SKIPPED
        self.parts.llm.events.agent_state.emit(
            AgentStateChanged(agent.name, agent.agent_id, agent.worker, SKIPPED, tick, "stopped")
        )

    # -- chat -----------------------------------------------------------------------------
    def _chat(self, agent: AgentRecord, tick: int, item: Item, effect: tuple[object, ...]) -> None:
        llm = self.parts.llm
        loaded, spec = llm.loaded, llm.scenario.llm
        if effect[0] == "llm_cancel":
            request = effect[1]
            owned = [*self.chats.items(), *llm.requests.items()]
            for rid, (owner, req, _tag) in owned:
                if owner == agent.agent_id and req == request and loaded is not None:
                    self.trace.record("llm_cancel", tick, item.seq, rid)
                    waiting = [p for p in llm.prepared if p.rid == rid]
                    if waiting:  # not submitted yet: cancelled right after its submission
                        waiting[0].cancel = True
                    else:
                        loaded.engine.cancel(rid)
            return
        _, request, tag, data = effect
        assert isinstance(request, int) and isinstance(tag, int) and isinstance(data, bytes)
        self.trace.record("llm_chat", tick, item.seq, request)

        def fail(message: str, prompt: str, max_tokens: int = 0) -> None:
            llm.asked(-1, agent.name, tick, prompt, max_tokens, "chat", request, message)
            payload = chat_answer(request, tag, error=message)
            self.parts.schedule.push_message(
                tick + 1, 0, RUNTIME_SENDER, agent.agent_id, KIND_LLM_CHAT_DONE, payload
            )

        if loaded is None or spec is None:  # (checked first: the answer says this)
            fail("no LLM model is configured for this scenario", data.decode("utf-8", "replace"))
            return
        try:
            chat = parse_chat_request(data)
        except ValueError as exc:
            fail(str(exc), data.decode("utf-8", "replace"))
            return
        seed = derive_seed(llm.scenario.seed, "llm", agent.name, str(request))
        tokenizer, n_ctx = loaded.tokenizer, loaded.runner.n_ctx

        def build() -> tuple[list[int], GenerationParams]:
            # On the GPU thread (the LLM bridge's step): tokenising and compiling a schema
            # into a grammar never hold up the orchestrator's loop.
            ids = chat_prompt_ids(tokenizer, chat)
            return ids, chat_params(chat, spec, n_ctx, seed, tokenizer)

        def failed(message: str) -> tuple[int, bytes]:
            return KIND_LLM_CHAT_DONE, chat_answer(request, tag, error=message)

        rid = llm.new_id()
        self.chats[rid] = (agent.agent_id, request, tag)
        llm.asked(rid, agent.name, tick, chat_transcript(chat), chat.max_tokens, "chat", request)
        llm.prepare(Prepared(rid, tick, agent.agent_id, build, failed))

    def llm_updates(self, tick: int, update: RequestUpdate) -> bool:
        """An engine update the LLM bridge does not own: a chat request's (True), or not."""
        owner = self.chats.get(update.request_id)
        if owner is None:
            return False
        llm = self.parts.llm
        llm.tokens += len(update.new_tokens)
        result = update.result
        agent_id, request, tag = owner
        name = self.parts.roster.agents[agent_id].name
        emit = llm.events.llm_tokens.emit  # observers only, as for llm_complete
        emit(tokens_event(update, name))
        if result is None:
            return True
        del self.chats[update.request_id]
        llm.done += 1
        self.trace.record("llm_done", tick, update.request_id, result.finish, repr(result.tokens))
        payload = chat_answer(request, tag, result)
        self.parts.schedule.push_message(
            tick + 1, 0, RUNTIME_SENDER, agent_id, KIND_LLM_CHAT_DONE, payload
        )
        return True
