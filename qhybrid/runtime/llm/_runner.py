"""The interface between the LLM engine and a forward pass: :class:`ModelRunner`.

A runner owns a loaded model and a KV cache of ``n_slots`` sequences of ``n_ctx`` positions
each. The engine feeds it :class:`SeqInput` items, at most one per slot per step; one step runs
every item's new tokens through the model together (continuous batching: different slots,
different lengths, prefill and decode mixed) and samples one token per item from the logits of
the item's last position. The CPU runner (:class:`~._numpy_model.NumpyRunner`) and the GPU
runner implement the same protocol and sample the same way (:func:`~._reference.sample`), so a
request with a given seed gives the same tokens on either, up to floating-point differences
that change an argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from qhybrid.runtime.llm._gguf import ModelConfig


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens. ``temperature <= 0`` is greedy; ``top_k`` 0 (or more
    than the kernel's 64) keeps 64 candidates; ``repeat_penalty`` 1.0 is off."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64

    def __post_init__(self) -> None:
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.repeat_penalty <= 0.0:
            raise ValueError(f"repeat_penalty must be > 0, got {self.repeat_penalty}")
        if self.repeat_last_n < 0:
            raise ValueError(f"repeat_last_n must be >= 0, got {self.repeat_last_n}")


GREEDY = SamplingParams(temperature=0.0)


@dataclass
class SeqInput:
    """One sequence's part of a step.

    ``tokens``: the tokens to feed now (the whole prompt on the first step, the last sampled
    token after), written at positions ``start_pos ..`` of ``slot``'s cache; ``recent``: the
    last ``repeat_last_n`` tokens of the sequence, for the repetition penalty; ``uniform``: the
    draw in [0, 1) that picks the token (from the request's seeded stream).
    """

    slot: int
    tokens: npt.NDArray[np.int32]
    start_pos: int
    sampling: SamplingParams = GREEDY
    recent: npt.NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    uniform: float = 0.0


class ModelRunner(Protocol):
    """A forward pass with a KV cache of ``n_slots`` sequences of ``n_ctx`` positions."""

    config: ModelConfig
    n_slots: int
    n_ctx: int

    def step(self, items: Sequence[SeqInput]) -> npt.NDArray[np.uint32]:
        """Feed every item's tokens, then one sampled token per item (``uint32[B]``): the
        repetition penalty, then :func:`~._reference.sample`, on the item's last position."""
        ...

    def logits(self, items: Sequence[SeqInput]) -> npt.NDArray[np.float32]:
        """Feed every item's tokens (as :meth:`step` does, cache included) and return the last
        position's logits per item, ``float32[B, n_vocab]`` (tests, benchmarks)."""
        ...

    def reset_slot(self, slot: int) -> None:
        """Forget the slot's sequence (the next item for it starts at position 0)."""
        ...


def check_items(items: Sequence[SeqInput], n_slots: int, n_ctx: int, n_vocab: int) -> None:
    """Raise ``ValueError`` with a clear message for a step no runner can run."""
    if not items:
        raise ValueError("a step needs at least one item")
    seen: set[int] = set()
    for i, item in enumerate(items):
        if not 0 <= item.slot < n_slots:
            raise ValueError(f"item {i}: slot {item.slot} out of range 0..{n_slots - 1}")
        if item.slot in seen:
            raise ValueError(f"item {i}: slot {item.slot} appears twice in one step")
        seen.add(item.slot)
        tokens = np.asarray(item.tokens)
        if tokens.ndim != 1 or tokens.size == 0:
            raise ValueError(f"item {i}: tokens must be a non-empty 1-D array")
        if item.start_pos < 0 or item.start_pos + tokens.size > n_ctx:
            raise ValueError(
                f"item {i}: positions {item.start_pos}..{item.start_pos + tokens.size - 1} "
                f"do not fit the context of {n_ctx}"
            )
        if tokens.min() < 0 or tokens.max() >= n_vocab:
            raise ValueError(f"item {i}: token id out of range 0..{n_vocab - 1}")
        if not 0.0 <= item.uniform < 1.0:
            raise ValueError(f"item {i}: uniform must be in [0, 1), got {item.uniform}")
