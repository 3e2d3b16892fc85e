"""SentencePiece and byte-level BPE as llama.cpp encodes them, and the compact string arrays
the vocabulary lives in.

The real vocabularies (Gemma 3, SmolLM2) are checked against llama.cpp's own ids in
test_real_models.py, BPE against the ``tokenizers`` library's in test_tokenizer.py; these
cases pin the rules of llama.cpp's ``llm_tokenizer_spm``, ``llm_tokenizer_bpe_session`` and
``tokenizer_st_partition`` that a small vocabulary can show, with ids worked out by hand.
"""

from __future__ import annotations

import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGUFWriter, TokenType

from qhybrid.runtime.llm import Tokenizer, read_metadata
from qhybrid.runtime.llm._strings import StringArray, StringIndex, crc32_all


def _spm(
    pieces: dict[str, tuple[float, int]], *, prefix: bool = False
) -> tuple[Tokenizer, dict[str, int]]:
    """A SentencePiece tokenizer: <unk>, <s>, </s>, 256 byte tokens, then ``pieces``
    (text -> (score, token type)); no space prefix unless ``prefix``."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    scores = [0.0] * len(tokens)
    for text, (score, kind) in pieces.items():
        tokens.append(text)
        scores.append(score)
        types.append(kind)
    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [int(t) for t in types],
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_space_prefix": prefix,
    }
    return Tokenizer.from_metadata(meta), {t: i for i, t in enumerate(tokens)}


N = TokenType.NORMAL


def test_the_best_scoring_pair_merges_first_and_the_leftmost_on_a_tie() -> None:
    tok, ids = _spm({"a": (-1.0, N), "aa": (-2.0, N), "b": (-1.0, N), "ab": (-1.5, N)})
    # "aab": "ab" (-1.5) beats "aa" (-2.0), even though "aa" comes first.
    assert tok.encode("aab", add_bos=False) == [ids["a"], ids["ab"]]
    # "aaa": both pairs score the same; the left one merges.
    assert tok.encode("aaa", add_bos=False) == [ids["aa"], ids["a"]]


def test_a_pair_merges_into_any_token_type_as_llama_cpp() -> None:
    # llama.cpp looks the pair up in the whole vocabulary: "<0x41>" typed as text becomes the
    # byte token once its halves are tokens (a BPE of the normal pieces would not do this).
    tok, ids = _spm({"<0": (-1.0, N), "x4": (-1.1, N), "1>": (-1.2, N), "x41>": (-1.3, N)})
    assert tok.encode("<0x41>", add_bos=False) == [ids["<0x41>"]]


def test_special_tokens_longest_first_and_user_defined_always() -> None:
    u, c = TokenType.USER_DEFINED, TokenType.CONTROL
    tok, ids = _spm(
        {"<x>": (0.0, u), "<x>y": (0.0, c), "y": (-1.0, N), "▁": (-1.0, N), "▁y": (-0.5, N)},
        prefix=True,
    )
    # The longer control token wins over the user-defined one inside it.
    assert tok.encode("<x>y", add_bos=False) == [ids["<x>y"]]
    # Without parse_special, control (and unknown) tokens are text; user-defined ones are not.
    # After a special token, the text gets its space prefix.
    assert tok.encode("<x>y", add_bos=False, parse_special=False) == [ids["<x>"], ids["▁y"]]
    # The unknown token's text, written in a prompt, is that token (llama.cpp's partition).
    assert tok.encode("<unk>", add_bos=False) == [0]
    assert 0 not in tok.encode("<unk>", add_bos=False, parse_special=False)


def test_bytes_of_a_character_out_of_the_vocabulary() -> None:
    tok, ids = _spm({"▁": (-1.0, N)}, prefix=True)
    assert tok.encode("🙂", add_bos=False) == [ids["▁"]] + [3 + b for b in "🙂".encode()]
    assert tok.decode(tok.encode("🙂")) == "🙂"


def test_token_bytes_and_texts_come_from_the_vocabulary() -> None:
    tok, ids = _spm({"▁hi": (-1.0, N)}, prefix=True)
    assert tok.n_vocab == len(ids)
    assert tok.token_text(ids["▁hi"]) == "▁hi"
    assert tok.token_bytes(ids["▁hi"]) == b" hi"
    assert tok.token_bytes(3 + 0xC3) == b"\xc3"
    assert tok.token_bytes(1) == b""  # control: no text


def _write_strings(path: Path, strings: list[str]) -> Path:
    w = GGUFWriter(path, "llama")
    w.add_array("test.strings", strings)
    w.add_string("test.after", "still here")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_string_arrays_read_from_a_file_in_one_buffer(tmp_path: Path) -> None:
    strings = ["", "a", "▁the", "東京🙂", "", "x" * 300, "<0x41>"]
    meta = read_metadata(_write_strings(tmp_path / "s.gguf", strings))
    got = meta["test.strings"]
    assert isinstance(got, StringArray)
    assert list(got) == strings and got == strings and len(got) == len(strings)
    assert got[3] == "東京🙂" and got[-1] == "<0x41>" and got[1:3] == ["a", "▁the"]
    assert got.raw(3) == "東京🙂".encode()
    assert len(got.data) == sum(len(s.encode()) for s in strings)
    assert meta["test.after"] == "still here"  # the fields after it are where they should be
    assert got.find("▁the") == 2 and got.find("nope") is None
    named = got.with_empty_named()
    assert named[0] == "[EMPTY_0]" and named[4] == "[EMPTY_4]" and named[3] == "東京🙂"


def test_string_index_finds_each_string_and_keeps_the_first_duplicate() -> None:
    rng = np.random.default_rng(0)
    strings = [
        bytes(rng.integers(97, 100, size=int(rng.integers(1, 6)))).decode() for _ in range(3000)
    ]
    arr = StringArray.from_strings(strings)
    index = StringIndex(arr)
    first: dict[str, int] = {}
    for i, s in enumerate(strings):
        first.setdefault(s, i)
    for s, i in first.items():
        assert index.get(s.encode()) == i
    assert index.get(b"zzz") == -1 and index.get(b"") == -1
    # The index's keys, computed for all strings at once, are zlib's CRC-32 (queries use zlib).
    mixed = StringArray.from_strings(["", "a", "東京🙂", "x" * 200, *strings[:50]])
    want = [zlib.crc32(mixed.raw(i)) for i in range(len(mixed))]
    assert crc32_all(mixed).tolist() == want


@pytest.mark.parametrize("text", ["", " ", "  two  spaces ", "a\nb\tc", "ÆØÅ 東京"])
def test_decode_inverts_encode(text: str) -> None:
    tok, _ = _spm({"▁": (-1.0, N), "a": (-1.0, N), "b": (-1.0, N)}, prefix=True)
    assert tok.decode(tok.encode(text)) == text


def test_a_tokenizer_survives_pickling() -> None:
    tok, _ = _spm({"▁": (-1.0, N), "a": (-1.0, N), "▁a": (-0.5, N)}, prefix=True)
    copy = pickle.loads(pickle.dumps(tok))
    assert copy.encode("a a</s>a") == tok.encode("a a</s>a")
    assert copy.decode(tok.encode("a a")) == "a a"


def _bpe(merges: list[str], ignore_merges: bool = False) -> tuple[Tokenizer, dict[str, int]]:
    tokens = ["<|x|>", "a", "b", "aa", "ab", "aab", "Ġ"]
    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe" if ignore_merges else "gpt-2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [int(TokenType.CONTROL)] + [int(N)] * (len(tokens) - 1),
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.add_bos_token": False,
    }
    return Tokenizer.from_metadata(meta), {t: i for i, t in enumerate(tokens)}


def test_bpe_merges_the_lowest_rank_first_and_the_leftmost_on_a_tie() -> None:
    tok, ids = _bpe(["a a", "a b"])
    assert tok.encode("aab") == [ids["aa"], ids["b"]]
    assert tok.encode("aaa") == [ids["aa"], ids["a"]]  # the left pair first
    tok, ids = _bpe(["a b", "a a"])
    assert tok.encode("aab") == [ids["a"], ids["ab"]]
    # Special tokens are cut out before the words are split; a space is its byte symbol.
    assert tok.encode("a<|x|>b a") == [ids["a"], 0, ids["b"], ids["Ġ"], ids["a"]]


def test_bpe_with_ignore_merges_takes_a_word_that_is_a_token_whole() -> None:
    tok, ids = _bpe(["a a", "a b"], ignore_merges=True)  # llama3: "aab" is a token
    assert tok.encode("aab") == [ids["aab"]]
    tok, ids = _bpe(["a a", "a b"])
    assert tok.encode("aab") == [ids["aa"], ids["b"]]
    copy = pickle.loads(pickle.dumps(tok))
    assert copy.encode("aab aa") == tok.encode("aab aa")
