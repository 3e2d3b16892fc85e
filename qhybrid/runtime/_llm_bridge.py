"""The bridge to the LLM engine: the scenario's model, agents' requests and their answers.

Owns: the loaded model (opened on the GPU thread, which also runs every engine step), which
agent asked for which engine request (engine id -> ``(agent id, request, tag)``), and the
token and request counts. An agent's ``llm`` effect becomes an engine request; each tick with
requests in flight runs one engine step (one token per running request) alongside the
workers' batches; a finished request answers its agent (kind ``KIND_LLM_DONE``) at the next
tick. Answers are recorded in the trace (the finish reason and the token ids).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from qhybrid.runtime._events import LlmRequested, LlmTokens, RuntimeEvents
from qhybrid.runtime._roster import AgentRecord, Roster
from qhybrid.runtime._scenario import Scenario
from qhybrid.runtime._schedule import Schedule
from qhybrid.runtime._seeding import derive_seed
from qhybrid.runtime._trace import TraceRecorder
from qhybrid.runtime.wasm_pool import KIND_LLM_DONE, RUNTIME_SENDER
from qhybrid.runtime.wgpu_thread import GpuDevice

if TYPE_CHECKING:
    from qhybrid.runtime.llm import LoadedModel, RequestUpdate

__all__ = ["LlmBridge"]

logger = logging.getLogger(__name__)

#: LLM requests one agent may have in flight at once (docs/limits.md).
MAX_LLM_IN_FLIGHT = 4


class LlmBridge:
    def __init__(
        self,
        scenario: Scenario,
        device: GpuDevice,
        schedule: Schedule,
        roster: Roster,
        trace: TraceRecorder,
        events: RuntimeEvents,
    ) -> None:
        self.scenario = scenario
        self.device = device
        self.schedule = schedule
        self.roster = roster
        self.trace = trace
        self.events = events
        self.loaded: LoadedModel | None = None
        self._requests: dict[int, tuple[int, int, int]] = {}  # id -> (agent, request, tag)
        self._ids = itertools.count(1)
        self.tokens = 0
        self.done = 0
        #: Offered each engine update this bridge does not own (ABI v2 chat requests, see
        #: ``_v2_bridge``); returns whether it was taken.
        self.other_updates: Callable[[int, RequestUpdate], bool] | None = None

    @property
    def requests(self) -> dict[int, tuple[int, int, int]]:
        """Agents' ``llm_complete`` requests in flight: engine id -> (agent, request, tag)."""
        return self._requests

    def new_id(self) -> int:
        """A fresh engine request id (for other requests on the same engine)."""
        return next(self._ids)

    async def open(self) -> None:
        """Open the scenario's model on the GPU thread (if it has one)."""
        spec = self.scenario.llm
        if spec is None:
            return
        # Imported here: the tokenizer and GGUF libraries cost start-up time that scenarios
        # without a model should not pay.
        from qhybrid.runtime.llm import LlmOptions, ModelError, RunnerChoice, open_engine

        options = LlmOptions(
            n_slots=spec.slots,
            n_ctx=spec.n_ctx or None,
            runner=cast("RunnerChoice", spec.device),
        )
        try:
            self.loaded = await asyncio.wrap_future(
                self.device.call(lambda ctx: open_engine(ctx, spec.model, options))
            )
        except ModelError as exc:
            raise self.scenario.error("llm.model", str(exc)) from None
        loaded = self.loaded
        assert loaded is not None
        self.trace.record(
            "llm_model", 0, 0, loaded.model.name, loaded.model.config.arch, loaded.placement
        )

    async def close(self) -> None:
        llm, self.loaded = self.loaded, None
        if llm is None:
            return
        try:
            await asyncio.wrap_future(self.device.call(lambda _ctx: llm.close()))
        except Exception:
            logger.debug("releasing the LLM failed", exc_info=True)

    @property
    def busy(self) -> bool:
        """Requests are in flight: the clock must keep moving for them."""
        return self.loaded is not None and self.loaded.engine.has_work()

    @property
    def active(self) -> int:
        return self.loaded.engine.active if self.loaded is not None else 0

    def step(self) -> concurrent.futures.Future[list[RequestUpdate]] | None:
        """Start this tick's engine step on the GPU thread, if there is work."""
        if not self.busy:
            return None
        assert self.loaded is not None
        engine = self.loaded.engine
        return self.device.call(lambda _ctx: engine.step())

    def submit(
        self, agent: AgentRecord, tick: int, request: int, tag: int, prompt: bytes, max_tokens: int
    ) -> None:
        """Queue an agent's request for the next tick's engine step, or answer at once why not."""
        self.events.llm_requested.emit(
            LlmRequested(request, agent.name, tick, prompt.decode("utf-8", "replace"), max_tokens)
        )
        llm, spec = self.loaded, self.scenario.llm
        if llm is None or spec is None:
            self._answer(
                agent.agent_id,
                tick,
                request,
                tag,
                1,
                "no LLM model is configured for this scenario",
            )
            return
        from qhybrid.runtime.llm import GenerationParams, SamplingParams, encode_prompt

        # One agent must not monopolise the model (issue 12): at most MAX_LLM_IN_FLIGHT of its
        # requests hold engine slots at once; the others are answered at once, with why.
        mine = sum(1 for owner, _, _ in self._requests.values() if owner == agent.agent_id)
        if mine >= MAX_LLM_IN_FLIGHT:
            self._answer(
                agent.agent_id,
                tick,
                request,
                tag,
                1,
                f"quota exceeded: {MAX_LLM_IN_FLIGHT} LLM requests of this agent are in flight "
                "already",
            )
            return
        try:
            ids = encode_prompt(llm.tokenizer, prompt.decode("utf-8", "replace"), chat=spec.chat)
            params = GenerationParams(
                max_tokens=max(1, min(max_tokens, llm.runner.n_ctx)),
                sampling=SamplingParams(
                    temperature=spec.temperature,
                    top_k=spec.top_k,
                    top_p=spec.top_p,
                    repeat_penalty=spec.repeat_penalty,
                ),
                seed=derive_seed(self.scenario.seed, "llm", agent.name, str(request)),
                stop=spec.stop,
            )
            # Slots are shared fairly between agents (round-robin by the slots each holds).
            rid = llm.engine.submit(ids, params, request_id=next(self._ids), owner=agent.agent_id)
        except ValueError as exc:
            self._answer(agent.agent_id, tick, request, tag, 1, str(exc))
            return
        self._requests[rid] = (agent.agent_id, request, tag)

    def commit(self, tick: int, updates: list[RequestUpdate]) -> None:
        """Stream what the engine step made; a finished request answers at the next tick."""
        emit = self.events.llm_tokens.emit
        agents = self.roster.agents
        for update in updates:
            owner = self._requests.get(update.request_id)
            if owner is None:
                if self.other_updates is not None:
                    self.other_updates(tick, update)
                continue
            agent_id, request, tag = owner
            self.tokens += len(update.new_tokens)
            result = update.result
            name = agents[agent_id].name
            if result is None:
                emit(LlmTokens(update.request_id, name, update.text, len(update.new_tokens), False))
                continue
            del self._requests[update.request_id]
            self.done += 1
            ok = result.finish in ("stop", "length")
            emit(
                LlmTokens(
                    update.request_id,
                    name,
                    update.text,
                    len(update.new_tokens),
                    True,
                    result.decode_tok_s,
                    result.ttft_s,
                    result.finish,
                    result.error,
                )
            )
            text = result.text if ok else (result.error or f"the request was {result.finish}")
            self.trace.record(
                "llm_done", tick, update.request_id, result.finish, repr(result.tokens)
            )
            self._answer(agent_id, tick, request, tag, 0 if ok else 1, text)

    def summary(self) -> dict[str, object] | None:
        llm = self.loaded
        if llm is None:
            return None
        return {
            "model": llm.model.name,
            "arch": llm.model.config.arch,
            "placement": llm.placement,
            "requests": self.done,
            "tokens": self.tokens,
        }

    def _answer(
        self, agent_id: int, tick: int, request: int, tag: int, status: int, text: str
    ) -> None:
        payload = struct.pack("<iii", request, tag, status) + text.encode("utf-8")
        self.schedule.push_message(tick + 1, 0, RUNTIME_SENDER, agent_id, KIND_LLM_DONE, payload)
