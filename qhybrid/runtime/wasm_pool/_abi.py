"""The agent ABI, host side: what a module must export and what it may import.

``docs/agent-abi.md`` documents the ABI (versions 1 and 2) for agent authors; the signatures
come from its one description, ``abi/abi.toml`` (see :mod:`._abi_spec`), and this module
checks a module against them before any worker loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import wasmtime

from qhybrid.runtime.wasm_pool._abi_spec import load_spec

_SPEC = load_spec()

#: The newest ABI version this runtime speaks; every version in ABI_VERSIONS is accepted.
ABI_VERSION = _SPEC.version
ABI_VERSIONS = frozenset(_SPEC.versions)
HOST_MODULE = _SPEC.host_module
WASI_MODULE = "wasi_snapshot_preview1"

#: Message kinds at or above this are reserved for messages the runtime sends.
RESERVED_KIND_BASE = _SPEC.constant("KIND_RESERVED_BASE")
#: Kind of the message an agent listed in a task's ``notify`` receives when it finishes.
KIND_TASK_DONE = _SPEC.kind("TASK_DONE")
#: Kind of the message an agent gets when a GPU job it submitted is done.
KIND_GPU_DONE = _SPEC.kind("GPU_DONE")
#: Kind of the message carrying the answer to an agent's LLM request.
KIND_LLM_DONE = _SPEC.kind("LLM_DONE")
#: v2: the answer to ``llm_chat`` (JSON).
KIND_LLM_CHAT_DONE = _SPEC.kind("LLM_CHAT_DONE")
#: v2: the result of ``tool_call`` (JSON).
KIND_TOOL_DONE = _SPEC.kind("TOOL_DONE")
#: v2: a person's answer to ``ask`` (JSON).
KIND_ANSWER = _SPEC.kind("ANSWER")
#: v2: the answer to ``spawn`` (JSON: the new agent's id and name, or why not).
KIND_SPAWNED = _SPEC.kind("SPAWNED")
#: v2: the wire form of an enveloped message or a timer fire; agents never see it.
KIND_ENVELOPE = _SPEC.kind("ENVELOPE")
#: Sender id of messages that come from the runtime rather than an agent.
RUNTIME_SENDER = _SPEC.constant("FROM_RUNTIME")

SEND_OK = _SPEC.constant("OK")
SEND_UNKNOWN_AGENT = _SPEC.constant("ERR_UNKNOWN_AGENT")
SEND_RESERVED_KIND = _SPEC.constant("ERR_RESERVED_KIND")

#: name -> (params, results) of every host function (as WebAssembly value types).
HOST_FUNCTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    f.name: f.signature for f in _SPEC.imports
}
#: name -> the ABI version that added the host function.
IMPORT_SINCE: dict[str, int] = {f.name: f.since for f in _SPEC.imports}

# Agents' long-term memory (#13): its own module; abi.toml describes its functions too, and
# the two must agree (tests/runtime/test_abi.py).
from qhybrid.runtime.wasm_pool._memory_abi import MEMORY_FUNCTIONS  # noqa: E402

HOST_FUNCTIONS.update(MEMORY_FUNCTIONS)

#: name -> (params, results) of every required export that is a function.
REQUIRED_EXPORTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    f.name: f.signature for f in _SPEC.exports if f.required
}
OPTIONAL_EXPORTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    f.name: f.signature for f in _SPEC.exports if not f.required
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


#: How linear memories are laid out: each exactly as large as it is (no reservation ahead, no
#: guard pages), filled by copying the module's data rather than mapping its image. wasmtime's
#: defaults (a 4 GiB reservation with guards, copy-on-write images) spare compiled code its
#: bounds checks, but cost 3 to 4 memory mappings and 6 GiB of address space per instance:
#: Linux's default limit of 65,530 mappings per process then stops a worker at about 21,000
#: agents. Laid out like this, neighbouring memories merge into one mapping, and one worker
#: hosts hundreds of thousands of agents; the price is a bounds check per memory access, small
#: beside a message's host calls.
MEMORY_RESERVATION = 0
MEMORY_GUARD = 0
#: Room to grow in place, reserved (address space only) behind a memory: without it a memory
#: moves at every ``memory.grow``, and a malloc growing page by page copied the whole memory
#: at every page (quadratic: 256 MiB took 400 s, 0.003 s with the room). The room costs a
#: second mapping per instance (it is not accessible, so it does not merge with its
#: neighbours), so a worker gives it to its first :func:`roomy_instances` agents only; the
#: others' memories can grow all the same, by moving. It is a run-time setting: compiled code
#: does not depend on it (wasmtime's ``check_tunables``, in ``engine/serialization.rs``, skips
#: it: "it's just a runtime setting"), so the same compiled module serves both kinds of engine.
MEMORY_GROWTH_RESERVATION = 256 << 20
#: At most this many instances of a worker have the room (16 TiB of address space).
MAX_ROOMY = 65_536
#: Linux's default ``vm.max_map_count``, used where the system does not say.
DEFAULT_MAX_MAP_COUNT = 65_530


def roomy_instances(max_map_count: int | None = None) -> int:
    """How many of a worker's instances get :data:`MEMORY_GROWTH_RESERVATION`: two mappings
    each, within a quarter of the process's mapping limit (``/proc/sys/vm/max_map_count`` on
    Linux), so that the other agents, the interpreter and the compiled code have the rest.
    With Linux's default limit that is 16,382 instances, 4 TiB of reserved address space; at
    most :data:`MAX_ROOMY` (16 TiB, an eighth of a 47-bit address space), however high the
    limit."""
    if max_map_count is None:
        max_map_count = system_max_map_count() or DEFAULT_MAX_MAP_COUNT
    return max(0, min(max_map_count // 4, MAX_ROOMY))


def system_max_map_count() -> int | None:
    """Linux's ``vm.max_map_count`` (None where the system does not say)."""
    try:
        with open("/proc/sys/vm/max_map_count", encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def out_of_mappings_hint(error: str, mappings: int | None = None, limit: int | None = None) -> str:
    """For an instantiation that failed for want of memory ("os error 12"): what to do about
    it, when the cause is the process's limit of memory mappings (``mappings`` of ``limit``,
    read from ``/proc`` when not given) rather than memory itself; else ""."""
    if "os error 12" not in error:
        return ""
    if limit is None:
        limit = system_max_map_count()
    if mappings is None:
        try:
            with open("/proc/self/maps", "rb") as f:
                mappings = sum(1 for _ in f)
        except OSError:
            return ""
    if limit is None or mappings < limit * 9 // 10:
        return ""
    return (
        f" (this worker has {mappings:,} memory mappings, near the system's limit "
        f"vm.max_map_count = {limit:,}: run more workers, or raise the limit with "
        "sysctl -w vm.max_map_count=N)"
    )


def engine_config_key() -> str:
    """What, besides the module, decides compiled code: part of the disk cache's key."""
    return f"fuel=1;epoch=1;opt=speed;mem={MEMORY_RESERVATION};guard={MEMORY_GUARD};cow=0"


def make_engine(stack_bytes: int | None = None, *, room_to_grow: bool = True) -> wasmtime.Engine:
    """The engine every process uses: identical code generation everywhere, so modules
    compiled once move between processes. Fuel and epoch interruption are always compiled in
    (they are what enforce the per-message limits); the stack size is a run-time setting, and
    so is ``room_to_grow`` (:data:`MEMORY_GROWTH_RESERVATION` behind each memory, or none).
    Linear memories take no more address space than they use (see :data:`MEMORY_RESERVATION`),
    so that a worker can host many agents."""
    config = wasmtime.Config()
    config.cranelift_opt_level = "speed"
    config.consume_fuel = True
    config.epoch_interruption = True
    config.memory_reservation = MEMORY_RESERVATION
    config.memory_guard_size = MEMORY_GUARD
    config.memory_reservation_for_growth = MEMORY_GROWTH_RESERVATION if room_to_grow else 0
    config.memory_init_cow = False
    if stack_bytes is not None:
        config.max_wasm_stack = stack_bytes
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
        if imp.module == WASI_MODULE:
            if not isinstance(imp.type, wasmtime.FuncType):
                raise AgentModuleError(f"{path}: import {where} must be a function")
            if (imp.name or "") not in _wasi_names():
                raise AgentModuleError(f"{path}: imports unknown WASI function {where}")
            imports.append(where)
            continue
        if imp.module != HOST_MODULE:
            raise AgentModuleError(
                f"{path}: imports {where}, but agents may only import from {HOST_MODULE!r} "
                f"and {WASI_MODULE!r}"
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


_WASI_NAMES: frozenset[str] | None = None


def _wasi_names() -> frozenset[str]:
    """The WASI preview-1 functions wasmtime provides."""
    global _WASI_NAMES
    if _WASI_NAMES is None:
        engine = wasmtime.Engine()
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        store = wasmtime.Store(engine)
        names = set()
        for name in _WASI_CANDIDATES:
            try:
                linker.get(store, WASI_MODULE, name)
            except wasmtime.WasmtimeError:
                continue
            names.add(name)
        _WASI_NAMES = frozenset(names)
    return _WASI_NAMES


_WASI_CANDIDATES = [
    "args_get",
    "args_sizes_get",
    "environ_get",
    "environ_sizes_get",
    "clock_res_get",
    "clock_time_get",
    "fd_advise",
    "fd_allocate",
    "fd_close",
    "fd_datasync",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_fdstat_set_rights",
    "fd_filestat_get",
    "fd_filestat_set_size",
    "fd_filestat_set_times",
    "fd_pread",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "fd_pwrite",
    "fd_read",
    "fd_readdir",
    "fd_renumber",
    "fd_seek",
    "fd_sync",
    "fd_tell",
    "fd_write",
    "path_create_directory",
    "path_filestat_get",
    "path_filestat_set_times",
    "path_link",
    "path_open",
    "path_readlink",
    "path_remove_directory",
    "path_rename",
    "path_symlink",
    "path_unlink_file",
    "poll_oneoff",
    "proc_exit",
    "proc_raise",
    "sched_yield",
    "random_get",
    "sock_accept",
    "sock_recv",
    "sock_send",
    "sock_shutdown",
]


def _leb(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def internal_mutable_globals(wasm: bytes) -> int:
    """How many mutable globals a module defines without exporting them.

    Host snapshots (memory plus exported globals) miss those; LLVM's shadow-stack pointer is
    one, and harmless, because it is back at its initial value between calls.
    """
    if not wasm.startswith(b"\0asm"):
        wasm = bytes(wasmtime.wat2wasm(wasm.decode("utf-8")))
    pos = 8
    imported_globals = 0
    mutable: list[bool] = []
    exported: set[int] = set()
    while pos < len(wasm):
        section = wasm[pos]
        size, pos = _leb(wasm, pos + 1)
        body_end = pos + size
        if section == 2:  # imports: count imported globals (they come first in the index space)
            count, p = _leb(wasm, pos)
            for _ in range(count):
                for _name in range(2):
                    n, p = _leb(wasm, p)
                    p += n
                kind = wasm[p]
                p += 1
                if kind == 0:  # func: type index
                    _, p = _leb(wasm, p)
                elif kind == 1:  # table: reftype + limits
                    p += 1
                    flags, p = _leb(wasm, p)
                    _, p = _leb(wasm, p)
                    if flags & 1:
                        _, p = _leb(wasm, p)
                elif kind == 2:  # memory: limits
                    flags, p = _leb(wasm, p)
                    _, p = _leb(wasm, p)
                    if flags & 1:
                        _, p = _leb(wasm, p)
                elif kind == 3:  # global: valtype + mutability
                    p += 2
                    imported_globals += 1
                else:  # tag or unknown: stop counting; be conservative
                    break
        elif section == 6:  # globals: valtype, mutability, init expression
            count, p = _leb(wasm, pos)
            for _ in range(count):
                mutable.append(wasm[p + 1] == 1)
                p += 2
                while wasm[p] != 0x0B:  # skip the constant expression up to `end`
                    op = wasm[p]
                    p += 1
                    if op in (0x41, 0x42, 0x23, 0xD2):  # i32/i64.const, global.get, ref.func
                        _, p = _leb(wasm, p)
                    elif op == 0x43:
                        p += 4
                    elif op == 0x44:
                        p += 8
                    elif op == 0xD0:
                        p += 1
                p += 1
        elif section == 7:  # exports
            count, p = _leb(wasm, pos)
            for _ in range(count):
                n, p = _leb(wasm, p)
                p += n
                kind = wasm[p]
                index, p = _leb(wasm, p + 1)
                if kind == 3:
                    exported.add(index)
        pos = body_end
    return sum(
        1
        for i, is_mutable in enumerate(mutable)
        if is_mutable and (i + imported_globals) not in exported
    )
