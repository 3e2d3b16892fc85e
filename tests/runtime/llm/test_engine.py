"""LlmEngine: continuous batching, stop conditions, streaming text, cancellation, failures.

A scripted runner stands in for the model: the next token is the last fed token + 1 (mod the
vocabulary), so every expectation is exact.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pytest

from qhybrid.runtime.llm._engine import GenerationParams, LlmEngine, RequestUpdate
from qhybrid.runtime.llm._runner import SamplingParams, SeqInput, check_items


@dataclass(frozen=True)
class _Config:
    n_vocab: int


class CountingRunner:
    """Next token = last fed token + 1; records every step's items."""

    def __init__(self, n_slots: int = 2, n_ctx: int = 64, n_vocab: int = 50) -> None:
        self.config = _Config(n_vocab)
        self.n_slots = n_slots
        self.n_ctx = n_ctx
        self.steps: list[list[tuple[int, tuple[int, ...], int]]] = []
        self.fail_next = False
        self.resets: list[int] = []

    def step(self, items: Sequence[SeqInput]) -> np.ndarray:
        check_items(items, self.n_slots, self.n_ctx, self.config.n_vocab)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("device exploded")
        self.steps.append([(i.slot, tuple(i.tokens.tolist()), i.start_pos) for i in items])
        return np.array(
            [(int(i.tokens[-1]) + 1) % self.config.n_vocab for i in items], dtype=np.uint32
        )

    def logits(self, items: Sequence[SeqInput]) -> np.ndarray:  # pragma: no cover - unused
        raise NotImplementedError

    def reset_slot(self, slot: int) -> None:
        self.resets.append(slot)


class _Utf8Decoder:
    """An incremental decoder over per-token bytes, as a tokenizer's would be."""

    def __init__(self, piece: Callable[[int], bytes]) -> None:
        self._piece = piece
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self._utf8.decode(self._piece(token))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


def _letters() -> _Utf8Decoder:
    """Token i spells the letter a + i mod 26."""
    return _Utf8Decoder(lambda i: chr(ord("a") + i % 26).encode())


def _run(engine: LlmEngine, limit: int = 200) -> list[RequestUpdate]:
    updates: list[RequestUpdate] = []
    for _ in range(limit):
        if not engine.has_work():
            return updates
        updates.extend(engine.step())
    raise AssertionError("the engine did not finish")


def _results(updates: list[RequestUpdate]) -> dict[int, object]:
    return {u.request_id: u.result for u in updates if u.done}


def test_one_request_runs_to_its_token_budget() -> None:
    runner = CountingRunner()
    engine = LlmEngine(runner, _letters, eos_ids=[49])
    rid = engine.submit([3, 4], GenerationParams(max_tokens=4))
    updates = _run(engine)
    result = _results(updates)[rid]
    assert result.tokens == (5, 6, 7, 8)
    assert result.finish == "length"
    assert result.text == "fghi"
    assert "".join(u.text for u in updates) == "fghi"
    # Prefill feeds the prompt at 0, then one token per step at the next position.
    assert runner.steps[0] == [(0, (3, 4), 0)]
    assert runner.steps[1] == [(0, (5,), 2)]
    assert runner.steps[3] == [(0, (7,), 4)]


def test_end_of_sequence_stops_and_frees_the_slot() -> None:
    runner = CountingRunner(n_slots=1)
    engine = LlmEngine(runner, _letters, eos_ids=[10])
    first = engine.submit([7], GenerationParams(max_tokens=50))
    second = engine.submit([20], GenerationParams(max_tokens=2))
    results = _results(_run(engine))
    assert results[first].tokens == (8, 9, 10)
    assert results[first].finish == "stop"
    assert results[first].text == "ij"  # the end-of-sequence token has no text
    assert results[second].tokens == (21, 22)
    assert runner.resets == [0, 0]


def test_ignore_eos_goes_on() -> None:
    engine = LlmEngine(CountingRunner(), _letters, eos_ids=[10])
    rid = engine.submit([8], GenerationParams(max_tokens=4, ignore_eos=True))
    assert _results(_run(engine))[rid].tokens == (9, 10, 11, 12)


def test_requests_share_steps_and_wait_for_slots() -> None:
    runner = CountingRunner(n_slots=2)
    engine = LlmEngine(runner, _letters, eos_ids=[])
    ids = [engine.submit([i * 10], GenerationParams(max_tokens=3)) for i in range(3)]
    results = _results(_run(engine))
    for i, rid in enumerate(ids):
        assert results[rid].tokens == tuple(i * 10 + k for k in (1, 2, 3))
    # Two slots: the first two requests run together; the third starts when one ends,
    # together with nothing else left of the first two.
    assert [len(s) for s in runner.steps] == [2, 2, 2, 1, 1, 1]
    assert max(len(s) for s in runner.steps) <= runner.n_slots


def test_a_new_request_joins_a_running_batch() -> None:
    runner = CountingRunner(n_slots=4)
    engine = LlmEngine(runner, _letters, eos_ids=[])
    engine.submit([1], GenerationParams(max_tokens=5))
    engine.step()
    engine.step()
    engine.submit([30, 31, 32], GenerationParams(max_tokens=2))
    engine.step()
    # The running request decodes while the new one prefills, in one step.
    assert runner.steps[-1] == [(0, (3,), 2), (1, (30, 31, 32), 0)]


def test_stop_strings_are_cut_and_never_streamed() -> None:
    engine = LlmEngine(CountingRunner(), _letters, eos_ids=[])
    # Tokens 1, 2, 3, ... spell "bcdefgh..."; stop at "efg".
    rid = engine.submit([0], GenerationParams(max_tokens=20, stop=("efg", "zzz")))
    updates = _run(engine)
    result = _results(updates)[rid]
    assert result.finish == "stop"
    assert result.text == "bcd"
    streamed = "".join(u.text for u in updates)
    assert streamed == "bcd"
    # "e" could start the stop string, so it was held back rather than streamed then retracted.
    assert all("e" not in u.text for u in updates)


def test_multibyte_characters_split_across_tokens_stream_whole() -> None:
    pieces = {1: b"\xe2", 2: b"\x82", 3: b"\xac", 4: b"!"}  # the euro sign in three tokens

    def decoder() -> _Utf8Decoder:
        return _Utf8Decoder(lambda i: pieces.get(i, b"?"))

    engine = LlmEngine(CountingRunner(), decoder, eos_ids=[])
    rid = engine.submit([0], GenerationParams(max_tokens=4))
    updates = _run(engine)
    assert [u.text for u in updates] == ["", "", "\u20ac", "!"]
    assert _results(updates)[rid].text == "\u20ac!"


def test_cancel_ends_a_running_and_a_waiting_request() -> None:
    runner = CountingRunner(n_slots=1)
    engine = LlmEngine(runner, _letters, eos_ids=[])
    running = engine.submit([1], GenerationParams(max_tokens=30))
    waiting = engine.submit([2], GenerationParams(max_tokens=30))
    engine.step()
    engine.cancel(waiting)
    engine.cancel(running)
    updates = _run(engine)
    results = _results(updates)
    assert results[running].finish == "cancelled"
    assert results[running].tokens == (2,)
    assert results[waiting].finish == "cancelled"
    assert results[waiting].tokens == ()
    assert not engine.has_work()


def test_a_failed_step_fails_its_requests_and_the_engine_goes_on() -> None:
    runner = CountingRunner()
    engine = LlmEngine(runner, _letters, eos_ids=[])
    doomed = engine.submit([1], GenerationParams(max_tokens=3))
    runner.fail_next = True
    results = _results(_run(engine))
    assert results[doomed].finish == "error"
    assert "device exploded" in (results[doomed].error or "")
    later = engine.submit([1], GenerationParams(max_tokens=3))
    assert _results(_run(engine))[later].tokens == (2, 3, 4)


def test_the_context_ends_a_sequence() -> None:
    engine = LlmEngine(CountingRunner(n_ctx=6), _letters, eos_ids=[])
    rid = engine.submit([1, 2, 3], GenerationParams(max_tokens=100))
    result = _results(_run(engine))[rid]
    assert result.finish == "length"
    # Prompt 3 + generated 3 fill the context of 6 (the last sampled token is not fed back).
    assert len(result.tokens) == 4


def test_bad_requests_are_refused() -> None:
    engine = LlmEngine(CountingRunner(n_ctx=4, n_vocab=50), _letters, eos_ids=[])
    with pytest.raises(ValueError, match="no tokens"):
        engine.submit([], GenerationParams())
    with pytest.raises(ValueError, match="vocabulary"):
        engine.submit([50], GenerationParams())
    with pytest.raises(ValueError, match="context holds 4"):
        engine.submit([1, 2, 3, 4], GenerationParams())
    with pytest.raises(ValueError, match="max_tokens"):
        GenerationParams(max_tokens=0)


def test_the_seed_fixes_the_uniform_draws() -> None:
    seen: list[list[float]] = []

    class Recording(CountingRunner):
        def step(self, items: Sequence[SeqInput]) -> np.ndarray:
            seen.append([i.uniform for i in items])
            return super().step(items)

    sampling = SamplingParams(temperature=0.7)
    for _ in range(2):
        engine = LlmEngine(Recording(), _letters, eos_ids=[])
        engine.submit([1], GenerationParams(max_tokens=3, seed=7, sampling=sampling))
        _run(engine)
    assert seen[:3] == seen[3:]
    assert len({u for row in seen for u in row}) == 3
