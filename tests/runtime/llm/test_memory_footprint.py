"""What the CPU path keeps resident: the KV cache as far as it is used, the header's pages not
at all once read. Measured with ``mincore`` on the arrays' pages (Linux)."""

from __future__ import annotations

import ctypes
import mmap
import sys

import numpy as np
import pytest

from qhybrid.runtime.llm import NumpyRunner, SeqInput, Tokenizer, load_model, read_metadata

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="mincore is Linux's")


def _resident_bytes(arrays: list[np.ndarray]) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    page = mmap.PAGESIZE
    total = 0
    for a in arrays:
        start = a.ctypes.data // page * page
        end = a.ctypes.data + a.nbytes
        n = (end - start + page - 1) // page
        vec = (ctypes.c_ubyte * n)()
        assert libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(end - start), vec) == 0
        total += sum(v & 1 for v in vec) * page
    return total


def test_the_kv_cache_is_resident_only_where_written(random_model) -> None:
    model = load_model(random_model(arch="llama", qtype="q8_0"))
    runner = NumpyRunner(model, n_slots=4, n_ctx=2048, exact=False)
    caches = [*runner.k_cache, *runner.v_cache]
    size = sum(a.nbytes for a in caches)
    assert _resident_bytes(caches) == 0
    tokens = np.arange(1, 9, dtype=np.int32)
    for slot in range(4):
        runner.reset_slot(slot)  # as the engine does for each request
        runner.step([SeqInput(slot=slot, tokens=tokens, start_pos=0)])
        runner.step([SeqInput(slot=slot, tokens=tokens[:1], start_pos=8)])
    # 9 positions of 2048 in each slot: a page or two per slot and layer, not the whole cache.
    assert _resident_bytes(caches) <= len(caches) * 4 * 2 * mmap.PAGESIZE < size // 10
    # A reused slot gives the same logits as a fresh runner (nothing stale is read).
    runner.reset_slot(0)
    again = runner.logits([SeqInput(slot=0, tokens=tokens[::-1].copy(), start_pos=0)])
    fresh = NumpyRunner(model, n_slots=1, n_ctx=16, exact=False)
    want = fresh.logits([SeqInput(slot=0, tokens=tokens[::-1].copy(), start_pos=0)])
    np.testing.assert_allclose(again, want, rtol=1e-5, atol=1e-5)


def test_metadata_reads_the_same_after_the_header_pages_are_released(random_model) -> None:
    path = random_model(arch="llama", qtype="q8_0")
    model = load_model(path)
    tok = Tokenizer.from_metadata(model.metadata)
    model.release_header_pages()
    fresh = read_metadata(path)
    assert "tokenizer.ggml.tokens" in fresh
    for key in fresh:
        got, want = model.metadata[key], fresh[key]
        if isinstance(want, np.ndarray):
            np.testing.assert_array_equal(got, want)
        else:
            assert got == want, key
    text = "Hello, wörld! 🙂"
    assert tok.decode(tok.encode(text)) == text
