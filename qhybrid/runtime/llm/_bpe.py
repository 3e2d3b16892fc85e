"""Byte-level BPE encoding as llama.cpp does it (``llm_tokenizer_bpe_session``).

The text is cut at its special tokens (as for SentencePiece, :class:`~._spm.SpecialTokens`),
each piece is split by the pre-tokenizer's regexes and its bytes written as GPT-2's byte
symbols (the ``tokenizers`` library's ``Split`` and ``ByteLevel`` pre-tokenizers, which hold
no vocabulary), and each word is merged: as long as two neighbouring symbols form a merge of
``tokenizer.ggml.merges``, the pair of the lowest rank (the leftmost on a tie) becomes one
symbol. With ``ignore_merges`` (llama3, tekken) a word that is a token is taken whole.

The vocabulary and the merges stay in the metadata's string arrays, each with a CRC index
(:class:`~._strings.StringIndex`): for SmolLM2's 49k tokens and merges ~2 MB, against ~10 MB
of Rust hash maps in a ``tokenizers`` BPE model (and five times that for the 150k-token
vocabularies of Llama 3 and Qwen).
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np
import numpy.typing as npt

from qhybrid.runtime.llm._spm import SpecialTokens, TokenizerError, utf8_symbols
from qhybrid.runtime.llm._strings import StringArray, StringIndex

#: Words whose ids are remembered (prompts repeat words: chat markers, spaces, common words).
CACHE_WORDS = 20_000


class BpeEncoder:
    """Text to token ids for a byte-level BPE (``tokenizer.ggml.model = "gpt2"``) vocabulary."""

    def __init__(
        self,
        texts: StringArray,
        types: npt.NDArray[np.int32],
        merges: StringArray,
        regexes: tuple[str, ...],
        *,
        ignore_merges: bool,
    ) -> None:
        from tokenizers import Regex, pre_tokenizers

        self._args = (texts, types, merges, regexes, ignore_merges)
        self._vocab = StringIndex(texts)
        self._ranks = StringIndex(merges)  # "left right" -> its rank
        _check_merges(merges, self._vocab)
        self._ignore_merges = ignore_merges
        self._special = SpecialTokens(texts, types)
        splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
        #: The regex splits and GPT-2's byte symbols (``pre_tokenize_str`` shows the words).
        self.pre_tokenizer = pre_tokenizers.Sequence(
            [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        self._cache: dict[str, tuple[int, ...]] = {}

    def __reduce__(self) -> tuple[Any, ...]:
        texts, types, merges, regexes, ignore = self._args
        return (_rebuild, (texts, types, merges, regexes, ignore))

    def encode(self, text: str, *, parse_special: bool = True) -> list[int]:
        out: list[int] = []
        cache = self._cache
        for frag in self._special.partition(text, parse_special):
            if isinstance(frag, int):
                out.append(frag)
                continue
            for word, _ in self.pre_tokenizer.pre_tokenize_str(frag):
                ids = cache.get(word)
                if ids is None:
                    ids = self._word(word.encode("utf-8"))
                    if len(cache) >= CACHE_WORDS:
                        cache.clear()
                    cache[word] = ids
                out.extend(ids)
        return out

    def _word(self, word: bytes) -> tuple[int, ...]:
        """llm_tokenizer_bpe_session::tokenize on one word (its byte symbols, UTF-8)."""
        get = self._vocab.get
        if self._ignore_merges:
            tid = get(word)
            if tid >= 0:
                return (tid,)
        starts, size, prev, nxt = utf8_symbols(word)
        m = len(starts)
        rank = self._ranks.get
        heap: list[tuple[int, int, int, int]] = []
        for i in range(1, m):
            a, b = starts[i - 1], starts[i]
            r = rank(word[a:b] + b" " + word[b : b + size[i]])
            if r >= 0:
                heap.append((r, i - 1, i, size[i - 1] + size[i]))
        heapq.heapify(heap)
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            _, left, right, n = pop(heap)
            if size[left] == 0 or size[right] == 0 or size[left] + size[right] != n:
                continue  # outdated: one of them was merged since
            size[left] = n
            size[right] = 0
            after = nxt[right]
            nxt[left] = after
            if after >= 0:
                prev[after] = left
            before = prev[left]
            s = starts[left]
            if before >= 0:
                b0 = starts[before]
                r = rank(word[b0:s] + b" " + word[s : s + n])
                if r >= 0:
                    push(heap, (r, before, left, size[before] + n))
            if after >= 0:
                r = rank(word[s : s + n] + b" " + word[s + n : s + n + size[after]])
                if r >= 0:
                    push(heap, (r, left, after, n + size[after]))
        ids: list[int] = []
        i = 0
        while i != -1:
            piece = word[starts[i] : starts[i] + size[i]]
            tid = get(piece)
            if tid >= 0:
                ids.append(tid)
            else:  # llama.cpp: each byte that is a token, the others are dropped
                ids.extend(t for t in (get(bytes([c])) for c in piece) if t >= 0)
            i = nxt[i]
        return tuple(ids)


def _check_merges(merges: StringArray, vocab: StringIndex) -> None:
    """Each merge is two tokens and a space, and the two tokens and their join are in the
    vocabulary (as the ``tokenizers`` library checked; llama.cpp trusts the file)."""
    get = vocab.get
    for i in range(len(merges)):
        m = merges.raw(i)
        left, sep, right = m.partition(b" ")
        if not sep or not left or not right:
            text = m.decode("utf-8", errors="replace")
            raise TokenizerError(f"bad merge {text!r} (expected two tokens and a space)")
        for piece in (left, right, left + right):
            if get(piece) < 0:
                text = m.decode("utf-8", errors="replace")
                shown = piece.decode("utf-8", errors="replace")
                raise TokenizerError(f"merge {text!r}: token {shown!r} out of vocabulary")


def _rebuild(
    texts: StringArray,
    types: npt.NDArray[np.int32],
    merges: StringArray,
    regexes: tuple[str, ...],
    ignore_merges: bool,
) -> BpeEncoder:
    return BpeEncoder(texts, types, merges, regexes, ignore_merges=ignore_merges)
