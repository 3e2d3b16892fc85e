"""Large string arrays of GGUF metadata (vocabularies, merges) in one buffer each.

A vocabulary of 262,144 pieces as a ``list[str]`` costs ~22 MB of string objects (and the same
again as ``bytes``, and a list of ints for the stock reader's indices); here it is its UTF-8
bytes back to back (~2 MB for Gemma 3) and an int64 offset per string (2 MB). Strings are
decoded when asked for. :class:`StringIndex` finds a string's index from its bytes (an open
addressing table of CRC-32s, ~6 MB for Gemma 3, against ~30 MB for a ``dict[bytes, int]``).
"""

from __future__ import annotations

import struct
import zlib
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

import numpy as np
import numpy.typing as npt

_U64 = struct.Struct("<Q")


class StringArray(Sequence[str]):
    """``n`` strings: string ``i`` is ``data[offsets[i]:offsets[i + 1]]``, UTF-8 (decoded with
    U+FFFD for invalid bytes, as the GGUF reader always did)."""

    __slots__ = ("_off", "data", "offsets")

    def __init__(self, data: bytes, offsets: npt.NDArray[np.int64]) -> None:
        self.data = data
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        self._off = self.offsets.data  # indexing gives Python ints, fast

    @classmethod
    def from_strings(cls, strings: Iterable[str]) -> StringArray:
        raw = [s.encode("utf-8", errors="surrogatepass") for s in strings]
        offsets = np.zeros(len(raw) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in raw], out=offsets[1:])
        return cls(b"".join(raw), offsets)

    @classmethod
    def from_gguf(cls, buf: Any, offset: int, count: int) -> tuple[StringArray, int]:
        """The ``count`` length-prefixed strings (little-endian u64 length, then the bytes) at
        ``offset`` of ``buf`` (the mapped file), and the offset just past them."""
        starts = array("q")
        unpack = _U64.unpack_from
        pos = offset
        try:
            for _ in range(count):
                (size,) = unpack(buf, pos)
                pos += 8
                starts.append(pos)
                pos += size
        except struct.error:
            raise ValueError(f"string array runs past the end of the file (at {pos})") from None
        if pos > len(buf):
            raise ValueError(f"string array runs past the end of the file ({pos} > {len(buf)})")
        begin = np.frombuffer(starts, dtype=np.int64)
        ends = np.empty_like(begin)
        ends[:-1] = begin[1:] - 8
        if count:
            ends[-1] = pos
        lengths = ends - begin
        offsets = np.zeros(count + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # The text bytes are the region less each 8-byte length prefix.
        region = np.frombuffer(buf, dtype=np.uint8, count=pos - offset, offset=offset)
        edge = np.zeros(region.size + 1, dtype=np.int8)
        edge[begin - 8 - offset] += 1  # each index once per line (an empty string's end is
        edge[begin - offset] -= 1  # the next prefix's start: two lines, not one)
        in_prefix = np.cumsum(edge[:-1], dtype=np.int8).astype(bool)
        return cls(region[~in_prefix].tobytes(), offsets), pos

    def __reduce__(self) -> tuple[Any, ...]:
        return (StringArray, (self.data, self.offsets))

    def __len__(self) -> int:
        return len(self._off) - 1

    def raw(self, i: int) -> bytes:
        """String ``i``'s bytes."""
        off = self._off
        return self.data[off[i] : off[i + 1]]

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"string index {i} out of range ({n} strings)")
        return self.raw(i).decode("utf-8", errors="replace")

    def __iter__(self) -> Iterator[str]:
        data, off = self.data, self._off
        for i in range(len(self)):
            yield data[off[i] : off[i + 1]].decode("utf-8", errors="replace")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StringArray):
            return self.data == other.data and bool(np.array_equal(self.offsets, other.offsets))
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"StringArray({len(self)} strings, {len(self.data)} bytes)"

    def lengths(self) -> npt.NDArray[np.int64]:
        return np.diff(self.offsets)

    def find(self, text: str) -> int | None:
        """The first index of ``text``, or None (a scan: for one-off questions)."""
        want = text.encode("utf-8", errors="surrogatepass")
        for i in np.flatnonzero(self.lengths() == len(want)).tolist():
            if self.raw(i) == want:
                return int(i)
        return None

    def with_empty_named(self) -> StringArray:
        """The same strings with each empty one named ``[EMPTY_i]``, as llama.cpp names them."""
        empty = np.flatnonzero(self.lengths() == 0)
        if not empty.size:
            return self
        names = {int(i): f"[EMPTY_{i}]" for i in empty.tolist()}
        return StringArray.from_strings(names.get(i, s) for i, s in enumerate(self))


def _crc(data: bytes) -> int:
    return zlib.crc32(data)


def _crc_table() -> npt.NDArray[np.uint32]:
    c = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        c = np.where(c & 1, np.uint32(0xEDB88320) ^ (c >> 1), c >> 1).astype(np.uint32)
    return c


def crc32_all(strings: StringArray) -> npt.NDArray[np.uint32]:
    """``zlib.crc32`` of every string, vectorized over the strings (one table step per byte
    position, the strings sorted by length so that each step is a prefix): 40 ms for Gemma
    3's 262k pieces, against 100 ms for a loop over ``zlib.crc32``."""
    n = len(strings)
    lengths = strings.lengths()
    order = np.argsort(-lengths, kind="stable")
    starts = strings.offsets[:-1][order]
    longest = lengths[order]
    raw = np.frombuffer(strings.data, dtype=np.uint8)
    table = _crc_table()
    crc = np.full(n, 0xFFFFFFFF, dtype=np.uint32)
    # active[j]: how many strings are longer than j (a prefix of the sorted order).
    active = np.searchsorted(-longest, -np.arange(int(longest[0]) if n else 0), side="left")
    for j, k in enumerate(active.tolist()):
        c = crc[:k]
        crc[:k] = table[(c ^ raw[starts[:k] + j]) & 0xFF] ^ (c >> 8)
    out = np.empty(n, dtype=np.uint32)
    out[order] = crc ^ np.uint32(0xFFFFFFFF)
    return out


class StringIndex:
    """Index of a :class:`StringArray`'s strings by their bytes (the first index for a string
    that appears twice): linear probing over CRC-32 keys, each hit checked byte for byte."""

    def __init__(self, strings: StringArray) -> None:
        n = len(strings)
        cap = 1 << max(4, (2 * n - 1).bit_length())
        crcs = crc32_all(strings)
        mask = cap - 1
        keys = np.zeros(cap, dtype=np.uint32)
        ids = np.full(cap, -1, dtype=np.int32)
        slot = crcs.astype(np.int64) & mask
        pending = np.arange(n, dtype=np.int64)
        while pending.size:
            s = slot[pending]
            free = ids[s] < 0
            cand, cs = pending[free], s[free]
            # One string per free slot, the lowest index first (so duplicates keep the first).
            taken, first = np.unique(cs, return_index=True)
            won = cand[first]
            ids[taken] = won
            keys[taken] = crcs[won]
            placed = np.zeros(n, dtype=bool)
            placed[won] = True
            pending = pending[~placed[pending]]
            slot[pending] = (slot[pending] + 1) & mask
        self._strings = strings
        self._mask = mask
        self._keys_np, self._ids_np = keys, ids
        self._keys = keys.data
        self._ids = ids.data

    def __reduce__(self) -> tuple[Any, ...]:
        return (StringIndex, (self._strings,))

    def get(self, text: bytes) -> int:
        """The index of ``text``, or -1."""
        key = _crc(text)
        i = key & self._mask
        keys, ids = self._keys, self._ids
        data, off = self._strings.data, self._strings._off
        while True:
            k = ids[i]
            if k < 0:
                return -1
            if keys[i] == key and data[off[k] : off[k + 1]] == text:
                return int(k)
            i = (i + 1) & self._mask

    @property
    def nbytes(self) -> int:
        return int(self._keys_np.nbytes + self._ids_np.nbytes)


def as_string_array(value: Sequence[str] | StringArray) -> StringArray:
    """``value`` as a :class:`StringArray` (metadata built by hand is a list)."""
    return value if isinstance(value, StringArray) else StringArray.from_strings(value)
