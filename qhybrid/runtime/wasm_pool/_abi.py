"""The agent ABI, host side: what a module must export and what it may import.

ABI version 1 (preliminary; ``docs/agent-abi.md`` documents it for agent authors).

Exports a module must provide:

- ``memory``: its linear memory;
- ``qh_abi_version() -> i32``: returns :data:`ABI_VERSION`;
- ``qh_alloc(size: i32) -> i32``: a pointer to ``size`` writable bytes; the host writes each
  incoming payload there, valid until the handler returns;
- ``qh_on_message(from: i32, kind: i32, ptr: i32, len: i32) -> i32``: handle one message;
  0 means handled, any other value is an error the agent reports.

Optional: ``qh_init(ptr: i32, len: i32) -> i32``, called once with the agent's config as JSON.

Imports, all from module ``qhybrid`` (a module may import any subset):

- ``send(to: i32, kind: i32, ptr: i32, len: i32) -> i32``: queue a message for the next tick;
  0 sent, -1 unknown agent, -2 reserved kind;
- ``log(level: i32, ptr: i32, len: i32)``: 10 debug, 20 info, 30 warning, 40 error;
- ``random_u64() -> i64``: the agent's own deterministic random stream;
- ``now() -> i64``: the logical clock (the current tick);
- ``self_id() -> i32``, ``agent_count() -> i32``: this agent's id and how many agents exist;
- ``peer_count() -> i32``, ``peer(index: i32) -> i32``: the instances of this agent's group;
- ``lookup(ptr: i32, len: i32) -> i32``: the id of the agent instance with that UTF-8 name, or -1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import wasmtime

ABI_VERSION = 1
HOST_MODULE = "qhybrid"

#: Message kinds at or above this are reserved for messages the runtime sends.
RESERVED_KIND_BASE = 0x7F000000
#: Kind of the message an agent listed in a task's ``notify`` receives when it finishes.
KIND_TASK_DONE = RESERVED_KIND_BASE + 1
#: Sender id of messages that come from the runtime rather than an agent.
RUNTIME_SENDER = -1

SEND_OK = 0
SEND_UNKNOWN_AGENT = -1
SEND_RESERVED_KIND = -2

_I32 = "i32"
_I64 = "i64"

#: name -> (params, results) of every host function.
HOST_FUNCTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "send": ((_I32, _I32, _I32, _I32), (_I32,)),
    "log": ((_I32, _I32, _I32), ()),
    "random_u64": ((), (_I64,)),
    "now": ((), (_I64,)),
    "self_id": ((), (_I32,)),
    "agent_count": ((), (_I32,)),
    "peer_count": ((), (_I32,)),
    "peer": ((_I32,), (_I32,)),
    "lookup": ((_I32, _I32), (_I32,)),
}

#: name -> (params, results) of every required export that is a function.
REQUIRED_EXPORTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "qh_abi_version": ((), (_I32,)),
    "qh_alloc": ((_I32,), (_I32,)),
    "qh_on_message": ((_I32, _I32, _I32, _I32), (_I32,)),
}
OPTIONAL_EXPORTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "qh_init": ((_I32, _I32), (_I32,)),
}


class AgentModuleError(ValueError):
    """A module that is not a valid qhybrid agent; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class ModuleInfo:
    """What validation learned about a module."""

    path: Path
    imports: tuple[str, ...]
    has_init: bool


def _valtype_name(vt: object) -> str:
    return str(vt)


def _signature(ft: wasmtime.FuncType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return (
        tuple(_valtype_name(p) for p in ft.params),
        tuple(_valtype_name(r) for r in ft.results),
    )


def _fmt(sig: tuple[tuple[str, ...], tuple[str, ...]]) -> str:
    params, results = sig
    return f"({', '.join(params)}) -> ({', '.join(results)})"


def make_engine() -> wasmtime.Engine:
    """The engine every process uses; identical config so serialized modules move between them."""
    config = wasmtime.Config()
    config.cranelift_opt_level = "speed"
    return wasmtime.Engine(config)


def compile_module(engine: wasmtime.Engine, path: Path) -> wasmtime.Module:
    """Compile a ``.wasm`` or ``.wat`` file, with errors that name the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AgentModuleError(f"{path}: cannot read module: {exc.strerror or exc}") from None
    try:
        if path.suffix == ".wat":
            return wasmtime.Module(engine, data.decode("utf-8"))
        if not data.startswith(b"\0asm"):
            raise AgentModuleError(
                f"{path}: not a WebAssembly module (no \\0asm header); use .wat for text modules"
            )
        return wasmtime.Module(engine, data)
    except UnicodeDecodeError:
        raise AgentModuleError(f"{path}: a .wat module must be UTF-8 text") from None
    except wasmtime.WasmtimeError as exc:
        first = str(exc).strip().splitlines()
        raise AgentModuleError(f"{path}: invalid module: {' '.join(first[:3])}") from None


def check_module(module: wasmtime.Module, path: Path) -> ModuleInfo:
    """Check a compiled module against the ABI: its imports and exports."""
    imports: list[str] = []
    for imp in module.imports:
        where = f"{imp.module}.{imp.name}"
        if imp.module != HOST_MODULE:
            raise AgentModuleError(
                f"{path}: imports {where}, but agents may only import from module "
                f"{HOST_MODULE!r} (no WASI: files, clock and randomness come from the host)"
            )
        expected = HOST_FUNCTIONS.get(imp.name or "")
        if expected is None:
            known = ", ".join(sorted(HOST_FUNCTIONS))
            raise AgentModuleError(
                f"{path}: imports unknown host function {where} (ABI has: {known})"
            )
        if not isinstance(imp.type, wasmtime.FuncType) or _signature(imp.type) != expected:
            raise AgentModuleError(f"{path}: import {where} must have type {_fmt(expected)}")
        imports.append(imp.name or "")
    exports = {exp.name: exp.type for exp in module.exports}
    mem = exports.get("memory")
    if not isinstance(mem, wasmtime.MemoryType):
        raise AgentModuleError(f"{path}: must export its linear memory as 'memory'")
    for name, expected in REQUIRED_EXPORTS.items():
        ty = exports.get(name)
        if ty is None:
            raise AgentModuleError(f"{path}: missing required export {name} {_fmt(expected)}")
        if not isinstance(ty, wasmtime.FuncType) or _signature(ty) != expected:
            raise AgentModuleError(f"{path}: export {name} must have type {_fmt(expected)}")
    has_init = False
    for name, expected in OPTIONAL_EXPORTS.items():
        ty = exports.get(name)
        if ty is None:
            continue
        if not isinstance(ty, wasmtime.FuncType) or _signature(ty) != expected:
            raise AgentModuleError(f"{path}: export {name} must have type {_fmt(expected)}")
        has_init = True
    return ModuleInfo(path=path, imports=tuple(imports), has_init=has_init)
