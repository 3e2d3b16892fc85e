"""The agent ABI's one machine-readable description, ``abi/abi.toml``, as Python objects.

The host's import check (:mod:`._abi`) and the generators of the docs' tables, the C header
and the Rust and AssemblyScript bindings (``sdk/abi.py``) all read the same file. Standard
library only, so ``sdk/abi.py`` can load this module by path without wasmtime.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

SPEC_PATH = Path(__file__).with_name("abi") / "abi.toml"

#: Parameter types of the description -> their WebAssembly value type.
WASM_TYPES = {
    "i32": "i32",
    "i64": "i64",
    "u64": "i64",
    "f32": "f32",
    "ptr": "i32",
    "out": "i32",
    "len": "i32",
    "str": "i32",
}


class AbiSpecError(ValueError):
    """abi.toml does not describe an ABI; the message says where."""


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    type: str
    c: str | None = None

    @property
    def wasm(self) -> str:
        return WASM_TYPES[self.type]


@dataclass(frozen=True, slots=True)
class Function:
    """An import (host function) or an export of the agent."""

    name: str
    params: tuple[Param, ...]
    results: tuple[str, ...]
    doc: str
    since: int = 1
    section: str = ""
    required: bool = False
    c_result: str | None = None

    @property
    def signature(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """``(params, results)`` as WebAssembly value types."""
        return tuple(p.wasm for p in self.params), tuple(WASM_TYPES[r] for r in self.results)


@dataclass(frozen=True, slots=True)
class Constant:
    name: str
    value: int
    doc: str = ""
    hex: bool = False


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    value: int
    since: int
    payload: str


@dataclass(frozen=True, slots=True)
class AbiSpec:
    version: int
    versions: tuple[int, ...]
    host_module: str
    constants: tuple[Constant, ...]
    kinds: tuple[Kind, ...]
    exports: tuple[Function, ...]
    imports: tuple[Function, ...]

    def constant(self, name: str) -> int:
        for c in self.constants:
            if c.name == name:
                return c.value
        raise KeyError(name)

    def kind(self, name: str) -> int:
        for k in self.kinds:
            if k.name == name:
                return k.value
        raise KeyError(name)


def _function(raw: dict[str, Any], where: str) -> Function:
    try:
        params = tuple(
            Param(str(p["name"]), str(p["type"]), p.get("c")) for p in raw.get("params", [])
        )
        for p in params:
            if p.type not in WASM_TYPES:
                raise AbiSpecError(f"{SPEC_PATH}: {where}: parameter {p.name}: type {p.type!r}")
        results = tuple(str(r) for r in raw.get("results", []))
        for r in results:
            if r not in WASM_TYPES:
                raise AbiSpecError(f"{SPEC_PATH}: {where}: result type {r!r}")
        return Function(
            name=str(raw["name"]),
            params=params,
            results=results,
            doc=str(raw.get("doc", "")),
            since=int(raw.get("since", 1)),
            section=str(raw.get("section", "")),
            required=bool(raw.get("required", False)),
            c_result=raw.get("c_result"),
        )
    except KeyError as exc:
        raise AbiSpecError(f"{SPEC_PATH}: {where}: missing {exc.args[0]!r}") from None


@cache
def load_spec(path: Path = SPEC_PATH) -> AbiSpec:
    """Read and check the description (once per process)."""
    try:
        raw = tomllib.loads(path.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AbiSpecError(f"{path}: {exc}") from None
    abi = raw["abi"]
    spec = AbiSpec(
        version=int(abi["version"]),
        versions=tuple(int(v) for v in abi["versions"]),
        host_module=str(abi["host_module"]),
        constants=tuple(
            Constant(str(c["name"]), int(c["value"]), str(c.get("doc", "")), bool(c.get("hex")))
            for c in raw.get("constants", [])
        ),
        kinds=tuple(
            Kind(str(k["name"]), int(k["value"]), int(k["since"]), str(k["payload"]))
            for k in raw.get("kinds", [])
        ),
        exports=tuple(_function(e, f"exports[{i}]") for i, e in enumerate(raw.get("exports", []))),
        imports=tuple(_function(e, f"imports[{i}]") for i, e in enumerate(raw.get("imports", []))),
    )
    names = [f.name for f in spec.imports] + [f.name for f in spec.exports]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise AbiSpecError(f"{path}: functions described twice: {', '.join(dupes)}")
    for f in spec.imports:
        if f.since not in spec.versions:
            raise AbiSpecError(f"{path}: import {f.name}: since = {f.since} is no ABI version")
    return spec
