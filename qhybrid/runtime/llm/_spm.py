"""SentencePiece encoding as llama.cpp does it (``llm_tokenizer_spm`` in src/llama-vocab.cpp).

The text is cut at the special tokens written in it (longest token first, as
``tokenizer_st_partition``); each piece of plain text gets a space prefix when it follows a
special token (and at the start), its spaces become ``▁``, and is split into UTF-8 characters;
then, as long as two neighbouring symbols together spell a token (any token of the
vocabulary), the pair whose token scores highest (the leftmost on a tie) becomes one symbol.
A symbol that is not a token falls back to its bytes' ``<0xXX>`` tokens.

This replaces a ``tokenizers`` BPE model fed every split of every piece (half a million merges
for Gemma 3: ~70 MB in Rust, 3.6 s to build) by the vocabulary's own bytes, a CRC index and
the scores (~10 MB, 0.2 s), with llama.cpp's exact order of merges.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from qhybrid.runtime.llm._strings import StringArray, StringIndex

# llama_token_type, as GGUF stores it in tokenizer.ggml.token_type.
_UNKNOWN, _CONTROL, _USER_DEFINED = 2, 3, 4
_SPACE = "\u2581"


class TokenizerError(Exception):
    """The metadata does not describe a tokenizer qhybrid can build (or a text it cannot
    encode with it)."""


class SpecialTokens:
    """The control, user-defined and unknown tokens of a vocabulary, matched in text as
    llama.cpp's ``tokenizer_st_partition`` does."""

    def __init__(self, texts: StringArray, types: npt.NDArray[np.int32]) -> None:
        # Longest first (stable: the lower id first among equal lengths).
        special = np.flatnonzero(np.isin(types, (_UNKNOWN, _CONTROL, _USER_DEFINED))).tolist()
        entries = [(texts[i], i, int(types[i])) for i in special]
        entries.sort(key=lambda e: -len(e[0].encode("utf-8", errors="surrogatepass")))
        self._tokens: Sequence[tuple[str, int, bool]] = [
            (t, i, kind != _USER_DEFINED) for t, i, kind in entries if t
        ]

    def partition(self, text: str, parse_special: bool) -> list[str | int]:
        """``text`` cut at its special tokens (ids), as llama.cpp's tokenizer_st_partition:
        each token in turn, longest first, splits every piece of text left (user-defined
        tokens always; control and unknown ones only when ``parse_special``)."""
        frags: list[str | int] = [text] if text else []
        for token, tid, control in self._tokens:
            if (control and not parse_special) or token not in text:
                continue
            cut: list[str | int] = []
            for frag in frags:
                if isinstance(frag, int) or token not in frag:
                    cut.append(frag)
                    continue
                for k, part in enumerate(frag.split(token)):
                    if k:
                        cut.append(tid)
                    if part:
                        cut.append(part)
            frags = cut
        return frags


class SpmEncoder:
    """Text to token ids for a SentencePiece (``tokenizer.ggml.model = "llama"``) vocabulary."""

    def __init__(
        self,
        texts: StringArray,
        types: npt.NDArray[np.int32],
        scores: npt.NDArray[np.float32],
        *,
        unk: int | None,
        add_space_prefix: bool,
    ) -> None:
        self._args = (texts, types, scores, unk, add_space_prefix)
        self._index = StringIndex(texts)
        self._scores = np.ascontiguousarray(scores, dtype=np.float32).data
        self._prefix = add_space_prefix
        get = self._index.get
        byte_ids: list[int] = []
        missing: list[int] = []
        for b in range(256):
            tid = get(b"<0x%02X>" % b)
            if tid < 0:
                tid = get(bytes([b]))
            if tid < 0:
                missing.append(b)
                tid = -1 if unk is None else unk
            byte_ids.append(tid)
        self._byte_ids = byte_ids
        #: Bytes with neither a ``<0xXX>`` token nor a one-byte token (llama.cpp would fail on
        #: them; here they become the unknown token, when there is one).
        self.missing_bytes = tuple(missing)
        self._special = SpecialTokens(texts, types)

    def __reduce__(self) -> tuple[Any, ...]:
        texts, types, scores, unk, prefix = self._args
        return (_rebuild, (texts, types, scores, unk, prefix))

    def encode(self, text: str, *, parse_special: bool = True) -> list[int]:
        out: list[int] = []
        prev_special = True
        for frag in self._special.partition(text, parse_special):
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
                continue
            if self._prefix and prev_special:
                frag = " " + frag
            self._tokenize(frag.replace(" ", _SPACE).encode("utf-8", errors="surrogatepass"), out)
            prev_special = False
        return out

    def _tokenize(self, text: bytes, out: list[int]) -> None:
        """llm_tokenizer_spm_session::tokenize on one piece of escaped text."""
        if not text:
            return
        starts, size, prev, nxt = utf8_symbols(text)
        m = len(starts)
        get = self._index.get
        score = self._scores
        heap: list[tuple[float, int, int, int]] = []
        push = heapq.heappush

        # (-score, left): the best score first, then the leftmost, as llama.cpp's comparator.
        for i in range(1, m):
            n = size[i - 1] + size[i]
            tid = get(text[starts[i - 1] : starts[i - 1] + n])
            if tid >= 0:
                heap.append((-score[tid], i - 1, i, n))
        heapq.heapify(heap)
        pop = heapq.heappop
        while heap:
            _, left, right, n = pop(heap)
            if size[left] == 0 or size[right] == 0 or size[left] + size[right] != n:
                continue  # one of them was merged since
            size[left] = n
            size[right] = 0
            after = nxt[right]
            nxt[left] = after
            if after >= 0:
                prev[after] = left
            before = prev[left]
            if before >= 0:
                k = size[before] + n
                tid = get(text[starts[before] : starts[before] + k])
                if tid >= 0:
                    push(heap, (-score[tid], before, left, k))
            if after >= 0:
                k = n + size[after]
                tid = get(text[starts[left] : starts[left] + k])
                if tid >= 0:
                    push(heap, (-score[tid], left, after, k))
        i = 0
        byte_ids = self._byte_ids
        while i != -1:
            piece = text[starts[i] : starts[i] + size[i]]
            tid = get(piece)
            if tid >= 0:
                out.append(tid)
            else:  # not a token: its bytes
                for b in piece:
                    if byte_ids[b] < 0:
                        raise TokenizerError(
                            f"the vocabulary has no token for byte 0x{b:02X} (no <0x{b:02X}> "
                            "byte token and no unknown token)"
                        )
                    out.append(byte_ids[b])
            i = nxt[i]


def _rebuild(
    texts: StringArray,
    types: npt.NDArray[np.int32],
    scores: npt.NDArray[np.float32],
    unk: int | None,
    prefix: bool,
) -> SpmEncoder:
    return SpmEncoder(texts, types, scores, unk=unk, add_space_prefix=prefix)


def utf8_symbols(text: bytes) -> tuple[list[int], list[int], list[int], list[int]]:
    """The symbols llama.cpp's tokenizers start from, one per UTF-8 character of ``text`` (a
    lead byte and its continuations; the text is valid UTF-8), as a linked list: each one's
    byte offset and size, and its previous and next symbol (-1: none)."""
    raw = np.frombuffer(text, dtype=np.uint8)
    starts: list[int] = np.flatnonzero((raw & 0xC0) != 0x80).tolist()
    m = len(starts)
    size: list[int] = np.diff(np.append(starts, len(text))).tolist()
    prev = list(range(-1, m - 1))
    nxt = list(range(1, m + 1))
    nxt[-1] = -1
    return starts, size, prev, nxt
