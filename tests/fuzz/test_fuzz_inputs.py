"""Fuzzing hostile files (issue 12, item 12): mutated GGUF models and mutated agent modules.

What users rely on: whatever the bytes, loading a model gives a model or a ``ModelError`` that
names the file (exit 2 in the CLI), and loading an agent module gives a module or an
``AgentModuleError``; a module that loads runs its handler to an outcome (ok, or a failure
with a reason) under the default limits. Never another exception, a hang or a crash signal.
(Mutated scenario files are fuzzed in tests/runtime/test_scenario.py.)

Bounded in time for CI: a fixed number of examples each (``QHYBRID_FUZZ_EXAMPLES``, default
25), derandomized so that a failure is reproducible, and the per-test timeout as a backstop.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT

EXAMPLES = int(os.environ.get("QHYBRID_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TINY = ROOT / "resources" / "models" / "tiny-stories.gguf"
AGENTS = ROOT / "resources" / "agents"
MODULES = sorted(p.name for p in AGENTS.glob("*.wasm"))


def _header_end(data: bytes) -> int:
    """Where the GGUF metadata and tensor infos end (the mutations aim there)."""
    return data.index(b"token_embd.weight") + 64


GGUF = TINY.read_bytes()
GGUF_HEAD = _header_end(GGUF)

#: One mutation: (offset, how, value); how 0 sets a byte, 1 flips a bit, 2 writes 4 bytes,
#: 3 deletes a byte, 4 truncates the file there.
_mutation = st.tuples(st.integers(0, GGUF_HEAD - 1), st.integers(0, 4), st.integers(0, 2**32 - 1))


def _mutate(data: bytes, mutations: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(data)
    for at, how, value in mutations:
        if not out:
            break
        at %= len(out)
        if how == 0:
            out[at] = value & 0xFF
        elif how == 1:
            out[at] ^= 1 << (value % 8)
        elif how == 2:
            out[at : at + 4] = value.to_bytes(4, "little")
        elif how == 3:
            del out[at]
        else:
            del out[at:]
    return bytes(out)


@FUZZ
@given(mutations=st.lists(_mutation, min_size=1, max_size=4))
def test_a_mutated_gguf_model_loads_or_is_refused_cleanly(
    tmp_path: Path, mutations: list[tuple[int, int, int]]
) -> None:
    from qhybrid.runtime.llm import LlmOptions, ModelError
    from qhybrid.runtime.llm._service import open_engine

    path = tmp_path / "mutant.gguf"
    path.write_bytes(_mutate(GGUF, mutations))
    logging.disable(logging.WARNING)
    try:
        loaded = open_engine(None, path, LlmOptions(n_slots=1, n_ctx=64, runner="cpu"))
    except ModelError as exc:
        message = str(exc)
        assert "mutant.gguf" in message
        return
    finally:
        logging.disable(logging.NOTSET)
    try:
        tokens = loaded.tokenizer.encode("Once upon a time, there was a dog.")
        loaded.tokenizer.decode(tokens)
    finally:
        loaded.close()


def _run_module(path: Path) -> None:
    """Load ``path`` as the runtime does and, if it loads, deliver it one message."""
    from qhybrid.runtime.wasm_pool import AgentLoad, AgentModuleError, load_module, make_engine
    from qhybrid.runtime.wasm_pool._agent import AgentHost, WorkerContext

    try:
        module, _, original, _ = load_module(make_engine(), path, None)
    except AgentModuleError as exc:
        message = str(exc)
        assert path.name in message
        return
    ctx = WorkerContext()
    try:
        ctx.add_module("m", bytes(module.serialize()), original)
        try:
            host = AgentHost(ctx, AgentLoad(0, "mutant", "m", (0,), 1, 7, b"{}"))
        except AgentModuleError as exc:
            message = str(exc)
            assert "mutant" in message
            return
        outcome = host.deliver(1, -1, 1, b"\x05\x00\x00\x00\x00\x00\x00\x00")
        assert outcome.ok or outcome.error
    finally:
        ctx.close()


@FUZZ
@given(
    name=st.sampled_from(MODULES),
    mutations=st.lists(
        st.tuples(st.integers(0, 1 << 20), st.integers(0, 4), st.integers(0, 2**32 - 1)),
        min_size=1,
        max_size=4,
    ),
)
def test_a_mutated_agent_module_loads_or_is_refused_cleanly(
    tmp_path: Path, name: str, mutations: list[tuple[int, int, int]]
) -> None:
    path = tmp_path / f"mutant-{name}"
    path.write_bytes(_mutate((AGENTS / name).read_bytes(), mutations))
    _run_module(path)


@pytest.mark.parametrize("name", MODULES)
def test_every_truncation_point_class_of_a_module_is_refused_cleanly(
    tmp_path: Path, name: str
) -> None:
    data = (AGENTS / name).read_bytes()
    for cut in (0, 3, 4, 8, 9, len(data) // 3, len(data) // 2, len(data) - 1):
        path = tmp_path / f"cut{cut}-{name}"
        path.write_bytes(data[:cut])
        _run_module(path)
