"""Deterministic seeds: every random stream in a run derives from the scenario's seed."""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, *labels: str) -> int:
    """A 64-bit seed for the stream named by ``labels`` (e.g. an agent's name).

    Streams with different labels are independent, and the mapping never changes between
    versions of Python or numpy (it is SHA-256), so traces stay comparable.
    """
    text = "\x1f".join([str(seed), *labels]).encode("utf-8")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little")
