"""A checkpoint's state as data, never as code: tagged JSON, and a check for agent snapshots.

A checkpoint comes back from a file that anyone with write access to the store can change, so
reading one must not be able to run code (``pickle.loads`` can: a pickle names callables).
:func:`encode` writes the few shapes a checkpoint holds as JSON: ``None``, booleans, numbers
and strings as themselves, lists as arrays, and the rest as one-key objects: ``{"b": base64}``
bytes, ``{"t": [...]}`` a tuple, ``{"d": [[key, value], ...]}`` a dict (its keys may be any of
these), ``{"f": [...]}`` a frozenset, ``{"c": NAME, "v": {"d": ...}}`` one of the dataclasses
named in :data:`_CLASSES` (built by keyword from its own fields). :func:`decode` accepts nothing
else: an unknown tag, class or field is an error, not a guess.

Agent snapshots are made by the worker process (``AgentHost.snapshot``) with ``pickle`` and
restored there; :func:`plain_pickle` loads one with an unpickler that resolves no global at
all, so a snapshot that would call anything is refused in this process before any worker
sees it, and one that passes holds only plain values (the same bytes cannot do more in the
worker's ``pickle.loads``: every callable a pickle can reach goes through ``find_class``).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import pickle
from collections.abc import Mapping
from typing import Any

from qhybrid.runtime._scenario_specs import TaskSpec

#: What a checkpoint's state starts with (then JSON, UTF-8). Format 1 was a pickle.
MAGIC = b"QHCK2\n"

#: The only classes a checkpoint may name.
_CLASSES: dict[str, type[Any]] = {"TaskSpec": TaskSpec}


class CodecError(ValueError):
    """The data is not a checkpoint this code wrote (or it was altered); the message says how."""


def _enc(obj: Any) -> Any:
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, bytes | bytearray | memoryview):
        return {"b": base64.b64encode(bytes(obj)).decode("ascii")}
    if isinstance(obj, list):
        return [_enc(v) for v in obj]
    if isinstance(obj, tuple):
        return {"t": [_enc(v) for v in obj]}
    if isinstance(obj, frozenset | set):
        return {"f": [_enc(v) for v in obj]}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        name = type(obj).__name__
        if _CLASSES.get(name) is not type(obj):
            raise TypeError(f"a checkpoint cannot hold a {type(obj).__qualname__}")
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return {"c": name, "v": _enc(fields)}  # (a "d": JSON hooks run inner objects first)
    if isinstance(obj, Mapping):
        return {"d": [[_enc(k), _enc(v)] for k, v in obj.items()]}
    raise TypeError(f"a checkpoint cannot hold a {type(obj).__qualname__}")


def encode(state: Any) -> bytes:
    """``state`` as checkpoint bytes (a ``TypeError`` names a value it cannot hold)."""
    return MAGIC + json.dumps(_enc(state), separators=(",", ":")).encode("utf-8")


def _hook(obj: dict[str, Any]) -> Any:
    keys = obj.keys()
    if keys == {"b"} and isinstance(obj["b"], str):
        return base64.b64decode(obj["b"], validate=True)
    if keys == {"t"} and isinstance(obj["t"], list):
        return tuple(obj["t"])
    if keys == {"f"} and isinstance(obj["f"], list):
        return frozenset(obj["f"])
    if keys == {"d"} and isinstance(obj["d"], list):
        out = {}
        for pair in obj["d"]:
            if not isinstance(pair, list) or len(pair) != 2:
                raise CodecError("a dict entry is not a [key, value] pair")
            out[pair[0]] = pair[1]
        return out
    if keys == {"c", "v"} and isinstance(obj["v"], dict):
        cls = _CLASSES.get(obj["c"]) if isinstance(obj["c"], str) else None
        if cls is None:
            raise CodecError(f"it names a class this code does not restore: {obj['c']!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        extra = {str(k) for k in obj["v"]} - names
        if extra:
            raise CodecError(f"{obj['c']} has no field(s) {', '.join(sorted(extra))}")
        return cls(**obj["v"])
    raise CodecError(f"an object with keys {sorted(keys)!r} is not one this code writes")


def decode(data: bytes) -> Any:
    """What :func:`encode` wrote; :class:`CodecError` for anything else (never runs code)."""
    if not data.startswith(MAGIC):
        if data[:1] == b"\x80":
            raise CodecError(
                "it is a pickle, the format of older qhybrid versions, which this version "
                "no longer loads because a changed store file could make it run code"
            )
        raise CodecError("it is not a qhybrid checkpoint (an unknown format)")
    try:
        return json.loads(data[len(MAGIC) :].decode("utf-8"), object_hook=_hook)
    except CodecError:
        raise
    except (ValueError, TypeError, RecursionError) as exc:
        raise CodecError(f"it is corrupt ({type(exc).__name__}: {exc})") from None


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it names {module}.{name}; a snapshot holds only values")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("it holds a persistent reference")


def plain_pickle(data: bytes) -> Any:
    """An agent snapshot's contents, loaded without resolving any class or function;
    :class:`CodecError` when it would need one (a hostile or corrupt snapshot)."""
    try:
        return _PlainUnpickler(io.BytesIO(data)).load()
    except Exception as exc:
        raise CodecError(f"the agent snapshot is refused: {exc}") from None
