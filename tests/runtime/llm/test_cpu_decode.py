"""The fused decode step (the engine's default CPU path) against the float64 reference graph
of test_archs for every architecture (and against the float32 numpy graph for the rope
variants that reference leaves out), one sequence and several at once."""

from __future__ import annotations

import numpy as np
import pytest
from test_archs import CASES, ModelFactory, reference_logits

from qhybrid.runtime.llm import NumpyRunner, SeqInput, load_model
from qhybrid.runtime.llm._cpu_decode import FusedDecode

TOKENS = [256, 5, 77, 190, 3, 42, 9, 250, 101, 17]
#: Extra cases: llama with Llama 3's rope factors and linear rope scaling, q4_k weights.
EXTRA = {
    "llama-rope": ("llama", {"rope_freqs": True, "rope_linear_factor": 2.0}),
    "llama-q4_k": ("llama", {"qtype": "q4_k", "n_embd": 256, "n_ff": 512}),
}
ALL = {**{a: (a, f) for a, f in CASES.items()}, **EXTRA}


def _close(got: np.ndarray, want: np.ndarray) -> float:
    """The largest difference relative to the logits' scale (int8 activations round x to
    about 1/127 of each block's largest value, as llama.cpp's do)."""
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("case", list(ALL))
def test_fused_decode_matches_the_reference(random_model: ModelFactory, case: str) -> None:
    arch, fields = ALL[case]
    shape = {"n_embd": 128, "n_head": 4, "n_head_kv": 2, "n_ff": 256, **fields}
    model = load_model(random_model(arch=arch, **shape))
    runner = NumpyRunner(model, n_slots=2, n_ctx=32, exact=False)
    assert runner._fused is not None
    unfused = NumpyRunner(model, n_slots=2, n_ctx=32, exact=False)
    unfused._fused = None  # the numpy graph on the same int8 products, as before the fusion
    window = int(fields.get("sliding_window", 0))
    caps = (float(fields.get("attn_softcap", 0)), float(fields.get("final_softcap", 0)))
    start = 4
    for r in (runner, unfused):
        r.logits([SeqInput(0, np.array(TOKENS[:start], dtype=np.int32), 0)])
    for p in range(start, len(TOKENS)):
        step = [SeqInput(0, np.array([TOKENS[p]], dtype=np.int32), p)]
        got = runner.logits(step)[0]
        assert _close(got, unfused.logits(step)[0].astype(np.float64)) < 1e-3, (case, p)
        if case in EXTRA:  # (the float64 reference has no rope factors or scaling)
            exact = NumpyRunner(model, n_slots=1, n_ctx=32, exact=True)
            ids = np.array(TOKENS[: p + 1], dtype=np.int32)
            want = exact.logits([SeqInput(0, ids, 0)])[0].astype(np.float64)
        else:
            want = reference_logits(model, TOKENS[: p + 1], window=window, softcaps=caps)
        # Random weights make the activations' int8 rounding loud: 1-4% of the logits' scale
        # here, for the numpy graph on int8 products too.
        assert _close(got, want) < 6e-2, (case, p)
    if caps[1]:
        assert float(np.abs(got).max()) <= caps[1]


def test_sequences_decoded_together_give_what_each_gives_alone(
    random_model: ModelFactory,
) -> None:
    model = load_model(random_model(arch="gemma3", sliding_window=3, n_layer=3, tied=True))
    prompts = [TOKENS[:5], TOKENS[3:9]]

    def run(together: bool) -> list[np.ndarray]:
        runner = NumpyRunner(model, n_slots=2, n_ctx=32, exact=False)
        for slot, ids in enumerate(prompts):
            runner.logits([SeqInput(slot, np.array(ids, dtype=np.int32), 0)])
        items = [
            SeqInput(s, np.array([7 + s], dtype=np.int32), len(ids))
            for s, ids in enumerate(prompts)
        ]
        assert runner._fused is not None and runner._fused.applies(items)
        if together:
            return list(runner.logits(items))
        return [runner.logits([item])[0] for item in items]

    for a, b in zip(run(True), run(False), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_fused_step_is_used_only_where_it_applies(random_model: ModelFactory) -> None:
    model = load_model(random_model())
    assert NumpyRunner(model, exact=True)._fused is None  # the reference graph stays numpy
    fused = NumpyRunner(model, n_slots=4, exact=False)._fused
    assert fused is not None
    one = SeqInput(0, np.array([1], dtype=np.int32), 0)
    assert fused.applies([one])
    assert not fused.applies([SeqInput(0, np.array([1, 2], dtype=np.int32), 0)])  # prefill
    assert not fused.applies([one] * (FusedDecode.MAX_ROWS + 1))


def test_exp32_and_tanh32_are_within_a_few_ulp() -> None:
    import numba as nb

    from qhybrid.runtime.llm import _jit
    from qhybrid.runtime.llm._cpu_ops import exp32, tanh32

    if _jit.mode() == "aot":  # the compiled module has the kernels; helpers from the JIT twin
        exp32 = _jit.jit_twin("qhybrid.runtime.llm._cpu_ops", "exp32")
        tanh32 = _jit.jit_twin("qhybrid.runtime.llm._cpu_ops", "tanh32")

    @nb.njit
    def both(x: np.ndarray, e: np.ndarray, t: np.ndarray) -> None:
        for i in range(x.shape[0]):
            e[i] = exp32(x[i])
            t[i] = tanh32(x[i])

    x = np.linspace(-100.0, 88.0, 100_001).astype(np.float32)
    e, t = np.empty_like(x), np.empty_like(x)
    both(x, e, t)
    want = np.exp(x.astype(np.float64))
    normal = want > 2.0**-126
    assert float(np.max(np.abs(e[normal] - want[normal]) / want[normal])) < 3e-7
    assert float(e[~normal].max()) < 2.0**-125
    assert float(np.max(np.abs(t - np.tanh(x.astype(np.float64))))) < 3e-7
