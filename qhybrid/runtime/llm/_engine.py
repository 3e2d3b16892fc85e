"""The engine: many requests, one model, continuous batching, one step at a time.

:class:`LlmEngine` is the scheduling core. It is not thread-safe by design: every call except
:meth:`LlmEngine.submit` and :meth:`LlmEngine.cancel` (which only touch a locked inbox) happens
on the thread that owns the runner, the GPU device thread. Each :meth:`LlmEngine.step`:

1. takes new requests from the inbox and gives each a free KV-cache slot, in arrival order
   (requests beyond the slots wait);
2. builds one batch: every new request's whole prompt (prefill) and every running request's
   last token (decode), as :class:`SeqInput` items, and runs it through the runner once, which
   samples one token per item on the device (only the token ids come back);
   A step with a grammar-constrained request (:class:`GenerationParams.grammar`, e.g. a JSON
   Schema from :mod:`._grammar`) asks the runner for the logits instead and samples on the
   host, every item the same way the runner would, with the disallowed tokens masked out;
3. turns each request's new token into text, checks end of sequence, stop strings, the token
   budget and the context, and returns what changed as :class:`RequestUpdate` values.

Given the same requests in the same steps, every step gives the same tokens: each request
draws its uniforms from its own seeded stream. That is what lets the orchestrator run LLM
requests inside its deterministic ticks (one engine step per tick).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from qhybrid.runtime.llm._runner import ModelRunner, SamplingParams, SeqInput
from qhybrid.runtime.wgpu_thread import _reference as ref

logger = logging.getLogger(__name__)

Finish = Literal["stop", "length", "cancelled", "error"]


class Constraint(Protocol):
    """One request's token-level constraint (:class:`~._grammar.TokenConstraint`)."""

    def mask(self) -> npt.NDArray[np.bool_]:
        """The tokens allowed next, ``bool[n_vocab]``."""
        ...

    def advance(self, token: int) -> None:
        """Consume the picked token (``ValueError`` if it was not allowed)."""
        ...

    @property
    def finished(self) -> bool:
        """Complete, and nothing may follow: the request ends here."""
        ...


class Grammar(Protocol):
    """What :attr:`GenerationParams.grammar` holds (:class:`~._grammar.TokenGrammar`): one
    fresh :class:`Constraint` per request."""

    def start(self) -> Constraint: ...


@dataclass(frozen=True)
class GenerationParams:
    """What one request asks for: a token budget, sampling, a seed and stop strings.

    ``max_tokens`` counts generated tokens; generation also ends at the model's end-of-sequence
    tokens (unless ``ignore_eos``), at the first stop string (which is left out of the text) or
    when the context is full. ``seed`` fixes the sampling stream: the same prompt, parameters
    and seed give the same tokens on a given device. ``grammar`` constrains every token (the
    request ends when the grammar's document is complete and nothing may follow).
    """

    max_tokens: int = 128
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int = 0
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    grammar: Grammar | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")


@dataclass(frozen=True)
class RequestUpdate:
    """What a step did for one request: new ``text`` (possibly empty while a multi-byte
    character or a possible stop string is held back) from ``new_tokens``; when ``done``, why
    (``finish``) and the whole :class:`GenerationResult`."""

    request_id: int
    text: str
    new_tokens: tuple[int, ...]
    done: bool
    result: GenerationResult | None = None


@dataclass(frozen=True)
class GenerationResult:
    """A finished request: its tokens, text, why it ended and how fast it ran.

    ``prompt_tokens`` are the ids fed (BOS included when the model adds one); ``tokens`` the
    generated ids (an end-of-sequence token included when one ended it). Rates are per wall
    second on the engine's thread: ``prefill_tok_s`` over the step that read the prompt (shared
    with whatever else that step ran), ``decode_tok_s`` over the steps after it.
    """

    request_id: int
    prompt_tokens: tuple[int, ...]
    tokens: tuple[int, ...]
    text: str
    finish: Finish
    error: str | None
    ttft_s: float
    prefill_s: float
    decode_s: float

    @property
    def prefill_tok_s(self) -> float:
        return len(self.prompt_tokens) / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        decoded = max(len(self.tokens) - 1, 0)  # the first token came from the prefill step
        return decoded / self.decode_s if self.decode_s > 0 else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "request_id": self.request_id,
            "prompt_tokens": list(self.prompt_tokens),
            "tokens": list(self.tokens),
            "text": self.text,
            "finish": self.finish,
            "error": self.error,
            "ttft_s": round(self.ttft_s, 6),
            "prefill_tok_s": round(self.prefill_tok_s, 3),
            "decode_tok_s": round(self.decode_tok_s, 3),
        }


class TextDecoder(Protocol):
    """Text of a growing token sequence (a tokenizer's incremental decoder): ``push`` returns
    the text the new token completes (``""`` while a multi-byte character is split across
    tokens), ``flush`` whatever is left at the end."""

    def push(self, token: int) -> str: ...

    def flush(self) -> str: ...


class _Request:
    __slots__ = (
        "cancelled",
        "constraint",
        "detok",
        "emitted",
        "first_token_at",
        "held",
        "params",
        "pos",
        "prefill_s",
        "prompt",
        "recent",
        "request_id",
        "rng",
        "slot",
        "submitted_at",
        "text",
        "tokens",
    )

    def __init__(
        self,
        request_id: int,
        prompt: tuple[int, ...],
        params: GenerationParams,
        detok: TextDecoder,
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.params = params
        self.rng = np.random.Generator(np.random.PCG64(params.seed))
        self.slot = -1
        self.pos = 0
        self.tokens: list[int] = []
        self.detok = detok
        self.text = ""  # all text so far, stop strings not yet cut
        self.emitted = 0  # characters of self.text handed out
        self.held = ""
        self.cancelled = False
        self.submitted_at = time.perf_counter()
        self.first_token_at = 0.0
        self.prefill_s = 0.0
        n = params.sampling.repeat_last_n
        self.recent: deque[int] = deque(prompt[-n:] if n else (), maxlen=max(n, 1))
        self.constraint = params.grammar.start() if params.grammar is not None else None


class LlmEngine:
    """Continuous batching over a :class:`ModelRunner`'s slots (see the module docstring).

    ``eos_ids`` end a sequence; ``new_decoder()`` gives each request its incremental decoder
    (e.g. ``Tokenizer.incremental``).
    ``max_batch_tokens`` bounds the tokens of one step: a prompt that does not fit waits for
    the next step (one prompt alone may always run, up to the context).
    """

    def __init__(
        self,
        runner: ModelRunner,
        new_decoder: Callable[[], TextDecoder],
        eos_ids: Iterable[int],
        *,
        max_batch_tokens: int = 2048,
    ) -> None:
        self.runner = runner
        self._new_decoder = new_decoder
        self._eos = frozenset(int(t) for t in eos_ids)
        self._max_batch_tokens = max_batch_tokens
        self._lock = threading.Lock()
        self._inbox: deque[_Request] = deque()
        self._cancels: set[int] = set()
        self._ids = itertools.count(1)
        self._waiting: deque[_Request] = deque()
        self._running: dict[int, _Request] = {}  # slot -> request, in admission order
        self._free_slots = list(range(runner.n_slots - 1, -1, -1))
        #: Tokens generated and prompt tokens read, since the engine was made.
        self.generated_total = 0
        self.prompt_total = 0
        self.steps = 0

    # -- any thread -------------------------------------------------------------------------
    def submit(
        self, prompt_tokens: Sequence[int], params: GenerationParams, request_id: int | None = None
    ) -> int:
        """Queue a request; thread-safe. Returns its id. Bad input raises ``ValueError``."""
        prompt = tuple(int(t) for t in prompt_tokens)
        n_vocab = self.runner.config.n_vocab
        if not prompt:
            raise ValueError("the prompt has no tokens")
        if min(prompt) < 0 or max(prompt) >= n_vocab:
            raise ValueError(f"a prompt token is outside the vocabulary (0..{n_vocab - 1})")
        if len(prompt) >= self.runner.n_ctx:
            raise ValueError(
                f"the prompt has {len(prompt)} tokens; the context holds {self.runner.n_ctx} "
                "(prompt and answer together)"
            )
        rid = next(self._ids) if request_id is None else request_id
        request = _Request(rid, prompt, params, self._new_decoder())
        with self._lock:
            self._inbox.append(request)
        return rid

    def cancel(self, request_id: int) -> None:
        """Ask for a request to end (``finish == "cancelled"``) at the next step; thread-safe."""
        with self._lock:
            self._cancels.add(request_id)

    def has_work(self) -> bool:
        """True while a request is queued, waiting or running; thread-safe enough to poll."""
        with self._lock:
            inbox = bool(self._inbox) or bool(self._cancels)
        return inbox or bool(self._waiting) or bool(self._running)

    @property
    def active(self) -> int:
        """Requests holding a slot."""
        return len(self._running)

    # -- the runner's thread ------------------------------------------------------------------
    def step(self) -> list[RequestUpdate]:
        """Admit, run one batch, and report every request that produced text or ended."""
        updates: list[RequestUpdate] = []
        self._take_inbox(updates)
        admitted = self._admit()
        if not self._running:
            return updates
        order = list(self._running.values())
        items: list[SeqInput] = []
        for request in order:
            if request in admitted:
                feed = np.asarray(request.prompt, dtype=np.int32)
                start = 0
            else:
                feed = np.asarray(request.tokens[-1:], dtype=np.int32)
                start = request.pos
            sampling = request.params.sampling
            recent = np.fromiter(request.recent, dtype=np.int32, count=len(request.recent))
            if sampling.repeat_penalty == 1.0:
                recent = recent[:0]
            items.append(
                SeqInput(request.slot, feed, start, sampling, recent, float(request.rng.random()))
            )
        started = time.perf_counter()
        try:
            masks = [r.constraint.mask() if r.constraint is not None else None for r in order]
            if any(m is not None for m in masks):
                sampled = sample_host(self.runner.logits(items), items, masks)
            else:
                sampled = self.runner.step(items)
        except Exception as exc:
            # One failed step fails the requests in it, not the engine.
            logger.exception("an LLM step failed")
            message = f"the model step failed: {exc}"
            for request in order:
                updates.append(self._finish(request, "error", message))
            return updates
        now = time.perf_counter()
        self.steps += 1
        for request, item, token in zip(order, items, sampled.tolist(), strict=True):
            request.pos = item.start_pos + len(item.tokens)
            if request in admitted:
                request.first_token_at = now
                request.prefill_s = now - started
                self.prompt_total += len(request.prompt)
            updates.append(self._advance(request, int(token)))
        return updates

    def _take_inbox(self, updates: list[RequestUpdate]) -> None:
        with self._lock:
            new = list(self._inbox)
            self._inbox.clear()
            cancels = set(self._cancels)
            self._cancels.clear()
        self._waiting.extend(new)
        if not cancels:
            return
        for request in list(self._waiting):
            if request.request_id in cancels:
                self._waiting.remove(request)
                updates.append(self._finish(request, "cancelled", None))
        for request in list(self._running.values()):
            if request.request_id in cancels:
                updates.append(self._finish(request, "cancelled", None))

    def _admit(self) -> set[_Request]:
        admitted: set[_Request] = set()
        budget = self._max_batch_tokens - len(self._running)
        while self._waiting and self._free_slots:
            request = self._waiting[0]
            if admitted and len(request.prompt) > budget:
                break  # the next step takes it; a lone prompt always runs
            if not admitted and not self._running and len(request.prompt) > budget:
                budget = len(request.prompt)
            elif len(request.prompt) > budget:
                break
            self._waiting.popleft()
            request.slot = self._free_slots.pop()
            self.runner.reset_slot(request.slot)
            self._running[request.slot] = request
            admitted.add(request)
            budget -= len(request.prompt)
        return admitted

    def _advance(self, request: _Request, token: int) -> RequestUpdate:
        params = request.params
        request.tokens.append(token)
        request.recent.append(token)
        self.generated_total += 1
        new_tokens = (token,)
        constraint = request.constraint
        if constraint is not None:
            try:
                constraint.advance(token)
            except ValueError as exc:
                return self._finish(request, "error", f"constrained sampling: {exc}")
        if token in self._eos and not params.ignore_eos:
            text = self._visible(request, request.detok.flush(), final=True)
            return self._finish(request, "stop", None, text, new_tokens)
        piece = request.detok.push(token)
        request.text += piece
        cut = _find_stop(request.text, params.stop)
        if cut is not None:
            request.text = request.text[:cut]
            text = request.text[request.emitted :]
            request.emitted = len(request.text)
            return self._finish(request, "stop", None, text, new_tokens)
        if constraint is not None and constraint.finished:
            text = self._visible(request, request.detok.flush(), final=True)
            return self._finish(request, "stop", None, text, new_tokens)
        if len(request.tokens) >= params.max_tokens or request.pos >= self.runner.n_ctx:
            text = self._visible(request, request.detok.flush(), final=True)
            return self._finish(request, "length", None, text, new_tokens)
        text = self._visible(request, "", final=False)
        return RequestUpdate(request.request_id, text, new_tokens, False)

    def _visible(self, request: _Request, extra: str, *, final: bool) -> str:
        """New text safe to hand out: all of it at the end, else up to a possible stop start."""
        request.text += extra
        end = len(request.text)
        if not final and request.params.stop:
            end -= _held_back(request.text, request.params.stop)
        text = request.text[request.emitted : end]
        request.emitted = max(request.emitted, end)
        return text

    def _finish(
        self,
        request: _Request,
        finish: Finish,
        error: str | None,
        text: str = "",
        new_tokens: tuple[int, ...] = (),
    ) -> RequestUpdate:
        if request.slot >= 0 and self._running.get(request.slot) is request:
            del self._running[request.slot]
            self._free_slots.append(request.slot)
        now = time.perf_counter()
        ttft = request.first_token_at - request.submitted_at if request.first_token_at else 0.0
        decode_s = now - request.first_token_at if request.first_token_at else 0.0
        result = GenerationResult(
            request.request_id,
            request.prompt,
            tuple(request.tokens),
            request.text,
            finish,
            error,
            ttft,
            request.prefill_s,
            decode_s,
        )
        return RequestUpdate(request.request_id, text, new_tokens, True, result)


def sample_host(
    logits: npt.NDArray[np.float32],
    items: Sequence[SeqInput],
    masks: Sequence[npt.NDArray[np.bool_] | None],
) -> npt.NDArray[np.uint32]:
    """One token per item from its logits row, as the runners sample on their device (the
    repetition penalty, then :func:`~qhybrid.runtime.wgpu_thread._reference.sample`), with
    the tokens outside ``masks[b]`` (when given) excluded."""
    out = np.empty(len(items), dtype=np.uint32)
    for b, item in enumerate(items):
        row = logits[b : b + 1]
        s = item.sampling
        recent = np.asarray(item.recent, dtype=np.int64)
        recent = recent[-s.repeat_last_n :] if s.repeat_last_n else recent[:0]
        if s.repeat_penalty != 1.0 and recent.size:
            row = ref.repeat_penalty(
                row, recent[None, :], np.array([recent.size]), s.repeat_penalty
            )
        mask = masks[b]
        if mask is not None:
            row = np.where(mask[None, :], row, np.float32(-np.inf)).astype(np.float32)
        out[b] = ref.sample(
            row, s.temperature, s.top_k, s.top_p, np.array([item.uniform], np.float32)
        )[0]
    return out


def _find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the first stop string starts in ``text``, or None."""
    best: int | None = None
    for stop in stops:
        i = text.find(stop)
        if i >= 0 and (best is None or i < best):
            best = i
    return best


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could begin a stop string."""
    held = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:n]):
                held = n
                break
    return held
