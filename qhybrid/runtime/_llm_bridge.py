"""The bridge to the LLM engine: the scenario's model, agents' requests and their answers.

Owns: the loaded model (opened on the GPU thread, which also runs every engine step), which
agent asked for which engine request (engine id -> ``(agent id, request, tag)``), and the
token and request counts. An agent's ``llm`` effect becomes an engine request; each tick with
requests in flight runs one engine step (one token per running request) alongside the
workers' batches; a finished request answers its agent (kind ``KIND_LLM_DONE``) at the next
tick. Answers are recorded in the trace (the finish reason and the token ids).

Prompts are never tokenised on the orchestrator's loop (issue 12): a request accepted at the
commit of tick ``t`` waits in :attr:`LlmBridge.prepared` (it counts as work in flight), and the
next engine step, on the GPU thread, first tokenises and submits every prepared request in
commit order and then steps, so the engine sees exactly what it saw when they were submitted
at the commit. A request that cannot be made (a prompt longer than the context, a schema that
does not compile) is answered at the commit of that next tick, in commit order: the same
scenario and seed give the same trace. A checkpoint first submits what is prepared
(:meth:`LlmBridge.flush`), keeping the answers to failed ones for that same commit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from qhybrid.runtime._events import LlmRequested, LlmTokens, RuntimeEvents
from qhybrid.runtime._roster import AgentRecord, Roster
from qhybrid.runtime._scenario import Scenario
from qhybrid.runtime._schedule import Schedule
from qhybrid.runtime._seeding import derive_seed
from qhybrid.runtime._trace import TraceRecorder
from qhybrid.runtime.wasm_pool import KIND_LLM_DONE, RUNTIME_SENDER
from qhybrid.runtime.wgpu_thread import GpuDevice

if TYPE_CHECKING:
    from qhybrid.runtime.llm import GenerationParams, LoadedModel, RequestUpdate

__all__ = ["LlmBridge"]

logger = logging.getLogger(__name__)

#: LLM requests one agent may have in flight at once (docs/limits.md).
MAX_LLM_IN_FLIGHT = 4


@dataclass(slots=True)
class Prepared:
    """A request accepted at the commit of ``tick``, to be tokenised and submitted on the GPU
    thread before the next engine step. ``build`` makes its prompt ids and parameters (it
    may raise: the request then fails); ``failed(text)`` is the ``(kind, payload)`` of the
    answer that says so."""

    rid: int
    tick: int
    agent_id: int
    build: Callable[[], tuple[list[int], GenerationParams]]
    failed: Callable[[str], tuple[int, bytes]]
    #: Who the engine shares slots fairly between (the agent, for ``llm_complete``).
    owner: int | None = None
    cancel: bool = False


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
        #: Ids of the requests answered at once (observers' only: neither engine nor trace).
        self._unseen = itertools.count(-1, -1)
        self.tokens = 0
        self.done = 0
        #: Offered each engine update this bridge does not own (ABI v2 chat requests, see
        #: ``_v2_bridge``); returns whether it was taken.
        self.other_updates: Callable[[int, RequestUpdate], bool] | None = None
        #: Requests accepted at the last commit, tokenised by the next step (on the GPU thread).
        self.prepared: list[Prepared] = []
        #: Answers to prepared requests that could not be made: (rid, agent, kind, payload),
        #: pushed at the next commit. Filled on the GPU thread while the loop awaits it.
        self.failed: list[tuple[int, int, int, bytes]] = []
        #: The tick a request being submitted was accepted at (the run store records it).
        self.submit_tick: int | None = None

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
        # The Ray backend's device opens it on a GPU node when the cluster has one (_ray_llm).
        opener = getattr(self.device, "open_engine", open_engine)
        try:
            self.loaded = await asyncio.wrap_future(
                self.device.call(lambda ctx: opener(ctx, spec.model, options))
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
        """Requests are in flight (prepared ones too): the clock must keep moving for them."""
        if self.prepared or self.failed:
            return True
        return self.loaded is not None and self.loaded.engine.has_work()

    @property
    def active(self) -> int:
        return self.loaded.engine.active if self.loaded is not None else 0

    def step(self) -> concurrent.futures.Future[list[RequestUpdate]] | None:
        """Start this tick's engine step on the GPU thread (after the prepared requests'
        tokenising and submission there), if there is work."""
        if self.loaded is None or not self.busy:
            return None
        engine = self.loaded.engine
        prepared, self.prepared = self.prepared, []

        def run(_ctx: Any) -> list[RequestUpdate]:
            self._submit_prepared(prepared)
            return engine.step() if engine.has_work() else []

        return self.device.call(run)

    def prepare(self, item: Prepared) -> None:
        """Accept a request whose prompt the next step tokenises (see the module docstring)."""
        self.prepared.append(item)

    def _submit_prepared(self, prepared: list[Prepared]) -> None:
        """On the GPU thread: tokenise and submit, in commit order."""
        assert self.loaded is not None
        engine = self.loaded.engine
        for item in prepared:
            self.submit_tick = item.tick
            try:
                ids, params = item.build()
                engine.submit(ids, params, request_id=item.rid, owner=item.owner)
            except Exception as exc:  # the request's own failure goes back to its agent
                text = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
                kind, payload = item.failed(text)
                self.failed.append((item.rid, item.agent_id, kind, payload))
                continue
            finally:
                self.submit_tick = None
            if item.cancel:
                engine.cancel(item.rid)

    async def flush(self) -> None:
        """Submit what is prepared now (a checkpoint is due); the step then only steps."""
        if not self.prepared or self.loaded is None:
            return
        prepared, self.prepared = self.prepared, []
        await asyncio.wrap_future(self.device.call(lambda _ctx: self._submit_prepared(prepared)))

    def answer_failed(self, tick: int) -> None:
        """At the commit: answer the prepared requests that could not be made, in order."""
        failed, self.failed = self.failed, []
        for rid, agent_id, kind, payload in failed:
            self._requests.pop(rid, None)
            self.schedule.push_message(tick + 1, 0, RUNTIME_SENDER, agent_id, kind, payload)

    def submit(
        self, agent: AgentRecord, tick: int, request: int, tag: int, prompt: bytes, max_tokens: int
    ) -> None:
        """Queue an agent's request for the next tick's engine step, or answer at once why not."""
        text = prompt.decode("utf-8", "replace")
        llm, spec = self.loaded, self.scenario.llm
        if llm is None or spec is None:
            why = "no LLM model is configured for this scenario"
            self.asked(-1, agent.name, tick, text, max_tokens, "complete", request, why)
            self._answer(agent.agent_id, tick, request, tag, 1, why)
            return
        from qhybrid.runtime.llm import GenerationParams, SamplingParams, encode_prompt

        # One agent must not monopolise the model (issue 12): at most MAX_LLM_IN_FLIGHT of its
        # requests hold engine slots at once; the others are answered at once, with why.
        mine = sum(1 for owner, _, _ in self._requests.values() if owner == agent.agent_id)
        if mine >= MAX_LLM_IN_FLIGHT:
            why = (
                f"quota exceeded: {MAX_LLM_IN_FLIGHT} LLM requests of this agent are in flight "
                "already"
            )
            self.asked(-1, agent.name, tick, text, max_tokens, "complete", request, why)
            self._answer(agent.agent_id, tick, request, tag, 1, why)
            return
        tokenizer, n_ctx, chat = llm.tokenizer, llm.runner.n_ctx, spec.chat
        sampling = SamplingParams(
            temperature=spec.temperature,
            top_k=spec.top_k,
            top_p=spec.top_p,
            repeat_penalty=spec.repeat_penalty,
        )
        seed = derive_seed(self.scenario.seed, "llm", agent.name, str(request))

        def build() -> tuple[list[int], GenerationParams]:  # on the GPU thread
            ids = encode_prompt(tokenizer, prompt.decode("utf-8", "replace"), chat=chat)
            params = GenerationParams(
                max_tokens=max(1, min(max_tokens, n_ctx)),
                sampling=sampling,
                seed=seed,
                stop=spec.stop,
            )
            return list(ids), params

        def failed(text: str) -> tuple[int, bytes]:
            return KIND_LLM_DONE, struct.pack("<iii", request, tag, 1) + text.encode("utf-8")

        # Slots are shared fairly between agents (round-robin by the slots each holds).
        rid = next(self._ids)
        self._requests[rid] = (agent.agent_id, request, tag)
        self.asked(rid, agent.name, tick, text, max_tokens, "complete", request)
        self.prepare(Prepared(rid, tick, agent.agent_id, build, failed, owner=agent.agent_id))

    def asked(
        self,
        rid: int,
        agent: str,
        tick: int,
        prompt: str,
        max_tokens: int,
        kind: str,
        request: int,
        error: str | None = None,
    ) -> None:
        """Tell observers of a request (``rid`` -1: answered at once with ``error``, given
        an id of its own below 0). Never recorded in the trace: observers only."""
        if rid < 0:
            rid = next(self._unseen)
        self.events.llm_requested.emit(
            LlmRequested(rid, agent, tick, prompt, max_tokens, kind, request, error)
        )

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
            emit(tokens_event(update, name))
            if result is None:
                continue
            del self._requests[update.request_id]
            self.done += 1
            ok = result.finish in ("stop", "length")
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


def tokens_event(update: RequestUpdate, agent: str) -> LlmTokens:
    """The observers' event for one engine update of ``agent``'s request (the last one
    carries the result's rate, time to first token, finish and error)."""
    result = update.result
    n = len(update.new_tokens)
    if result is None:
        return LlmTokens(update.request_id, agent, update.text, n, False)
    return LlmTokens(
        update.request_id,
        agent,
        update.text,
        n,
        True,
        result.decode_tok_s,
        result.ttft_s,
        result.finish,
        result.error,
    )
