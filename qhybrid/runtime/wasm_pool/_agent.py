"""One agent instance inside a worker: its wasmtime store, its host functions, its RNG.

The host functions implement the ABI in ``docs/agent-abi.md``. Everything a handler asks of
the world (messages, tensor writes and creations, GPU jobs, LLM requests) is collected in the
:class:`~qhybrid.runtime.wasm_pool._protocol.Outcome` and applied by the orchestrator at the
end of the tick, so a failed message has no effect and the order never depends on timing.
"""

from __future__ import annotations

import ctypes
import logging
import math
import pickle
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import wasmtime

from qhybrid.runtime.tensors import get_op
from qhybrid.runtime.wasm_pool._abi import (
    ABI_VERSIONS,
    HOST_FUNCTIONS,
    HOST_MODULE,
    IMPORT_SINCE,
    RESERVED_KIND_BASE,
    SEND_OK,
    SEND_RESERVED_KIND,
    SEND_UNKNOWN_AGENT,
    WASI_MODULE,
    AgentModuleError,
    out_of_mappings_hint,
)
from qhybrid.runtime.wasm_pool._agent_v2 import V2Calls
from qhybrid.runtime.wasm_pool._fastcall import fuel_gauge, host_func, i32_caller
from qhybrid.runtime.wasm_pool._limits import effective_limits
from qhybrid.runtime.wasm_pool._memory_abi import AgentMemory, MemoryHost
from qhybrid.runtime.wasm_pool._protocol import AgentLoad, Effect, Outcome, TensorEntry
from qhybrid.runtime.wasm_pool._quotas import (
    QuotaExceeded,
    Quotas,
)
from qhybrid.runtime.wasm_pool._ticker import EPOCH_S
from qhybrid.runtime.wasm_pool._wasi_output import console_fd_write
from qhybrid.runtime.wasm_pool._wasi_poll import EINVAL, SUBSCRIPTION_SIZE, poll_events
from qhybrid.runtime.wasm_pool._worker_context import EngineKind, WorkerContext

__all__ = ["DTYPE_CODES", "EPOCH_S", "AgentHost", "GuestFault", "SplitMix64", "WorkerContext"]

logger = logging.getLogger(__name__)

_MASK64 = (1 << 64) - 1
_VALTYPES = {
    "i32": wasmtime.ValType.i32(),
    "i64": wasmtime.ValType.i64(),
    "f32": wasmtime.ValType.f32(),
}
_MAX_LOG = 4096
_MAX_PAYLOAD = 16 << 20
_MAX_NAME = 256
_NO_FUEL_LIMIT = 1 << 62
_NO_DEADLINE = 1 << 62

#: ABI dtype codes.
DTYPE_CODES: dict[int, np.dtype[Any]] = {
    0: np.dtype(np.float32),
    1: np.dtype(np.float16),
    2: np.dtype(np.int32),
    3: np.dtype(np.uint8),
}
_CODE_OF = {dt.str: code for code, dt in DTYPE_CODES.items()}

# Return codes of the tensor functions.
_BAD_HANDLE, _OUT_OF_RANGE, _NOT_YET, _READ_ONLY, _NAME_TAKEN, _BAD_SHAPE, _BAD_OP = (
    -1,
    -2,
    -3,
    -4,
    -5,
    -6,
    -7,
)


class GuestFault(Exception):
    """The guest passed the host something invalid (a pointer out of range, ...)."""


class SplitMix64:
    """The agent's random stream: small, fast, and the same on every platform."""

    __slots__ = ("state",)

    def __init__(self, seed: int) -> None:
        self.state = seed & _MASK64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)


def _amount(nbytes: int) -> str:
    """A quota in bytes as the messages say it: whole MiB as MiB, else bytes."""
    if nbytes >= 1 << 20 and not nbytes % (1 << 20):
        return f"{nbytes >> 20} MiB"
    return f"{nbytes} bytes"


def _to_i64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


class _Call:
    """The per-message scratch state: what the handler has asked for so far."""

    __slots__ = (
        "created",
        "effects",
        "llm_requests",
        "log_bytes",
        "log_dropped",
        "logs",
        "mem",
        "outbox",
        "quotas",
        "reads",
        "sent_bytes",
        "snapshot",
        "tensor_bytes",
    )

    def __init__(self, quotas: Quotas) -> None:
        self.quotas = quotas
        self.outbox: list[tuple[int, int, bytes]] = []
        self.logs: list[tuple[int, str]] = []
        self.effects: list[Effect] = []
        self.reads: list[str] = []
        self.created: dict[str, tuple[np.dtype[Any], tuple[int, ...]]] = {}
        self.snapshot: bytes | None = None
        self.mem: list[tuple[bytes, bytes | None]] | None = None
        # What the quotas count (_quotas.py).
        self.sent_bytes = 0
        self.log_bytes = 0
        self.log_dropped = 0
        self.tensor_bytes = 0
        self.llm_requests = 0

    def log(self, level: int, text: str) -> None:
        """Keep a log line within the message's log quota; count what is dropped."""
        size = len(text.encode("utf-8", "replace")) if not text.isascii() else len(text)
        if self.log_bytes + size > self.quotas.log_bytes:
            if not self.log_dropped:
                self.logs.append(
                    (30, f"log quota of {self.quotas.log_bytes} bytes per message reached: "
                     "the rest of this message's log output is dropped")
                )  # fmt: skip
            self.log_dropped += size
            return
        self.log_bytes += size
        self.logs.append((level, text))

    def tensor(self, nbytes: int, what: str) -> None:
        self.tensor_bytes += nbytes
        if self.tensor_bytes > self.quotas.tensor_bytes:
            raise QuotaExceeded(
                f"{what}: more than {_amount(self.quotas.tensor_bytes)} of tensor bytes created or "
                "written by one message"
            )


class AgentHost(MemoryHost):
    """Owns one instance; :meth:`deliver` runs its handler for one message."""

    #: The fuel its handlers burnt, every message's (failed ones too); -1: not metered (a
    #: subclass that runs no wasm handler of its own, a Python agent). Not part of the trace.
    fuel_used = -1
    #: Of that, what its handlers burnt in the last tick it had messages in (-1: not metered).
    fuel_last = -1
    _fuel_tick = -1  # the tick fuel_last is of
    # The counters of jobs and requests an agent started (most start none): set on an
    # instance only once it does. CPython (3.11) shares one key table among the instances'
    # dicts while the keys they use together stay under 30 (past that, every new instance has
    # a dict of its own, 1.3 KiB more an agent), so a plain agent keeps 27 attributes of its
    # own, leaving room for the few other kinds add (tests/runtime/test_memory_room.py).
    _next_job = 0
    _next_request = 0
    # Every handler runs under a time limit and fuel or time (``effective_limits`` gives each
    # unset limit its default), so these are the same for every agent.
    _timed = True
    _limited = True

    def __init__(self, ctx: WorkerContext, load: AgentLoad) -> None:
        self._set_up(ctx, load)
        limits = self.limits
        self._deadline = (
            math.ceil(limits.timeout_ms / 1000 / EPOCH_S) + 1
            if limits.timeout_ms is not None
            else _NO_DEADLINE
        )
        kind = ctx.engine_kind(load.agent_id, limits.stack_bytes)
        module = ctx.module(load.module_key, kind)
        self._store = wasmtime.Store(ctx.engine(kind))
        self._fuel_left = fuel_gauge(self._store)
        self.fuel_used = 0
        self.fuel_last = 0
        self._limit_memory()
        wanted = ctx.imports(load.module_key, module)
        if any(where == WASI_MODULE for where, _ in wanted):
            self._store.set_wasi(self._wasi_config())
        imports = [self._import(ctx, kind, where, name) for where, name in wanted]
        # Start-up runs under the limits too: the start function (here), _initialize,
        # qh_abi_version and qh_init each get a fresh budget.
        self._arm()
        try:
            instance = wasmtime.Instance(self._store, module, imports)
        except wasmtime.Trap as exc:
            raise AgentModuleError(
                f"{load.name}: instantiation trapped (the start function): "
                f"{self._describe_trap(exc)}"
            ) from None
        except wasmtime.WasmtimeError as exc:
            raise AgentModuleError(
                f"{load.name}: instantiation failed: {exc}{out_of_mappings_hint(str(exc))}"
            ) from None
        finally:
            self._count_memory()
        exports = instance.exports(self._store)
        memory = exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        self._memory = memory
        self._memory_size = -1
        self._count_memory(ended=False)
        self._exports = exports
        alloc = exports["qh_alloc"]
        on_message = exports["qh_on_message"]
        version = exports["qh_abi_version"]
        assert isinstance(alloc, wasmtime.Func) and isinstance(on_message, wasmtime.Func)
        assert isinstance(version, wasmtime.Func)
        self._alloc = i32_caller(self._store, alloc, 1)
        self._on_message = i32_caller(self._store, on_message, 4)
        initialize = exports.get("_initialize")
        if isinstance(initialize, wasmtime.Func):  # the WASI reactor convention
            outcome = self._call(lambda: int(initialize(self._store) or 0))
            if not outcome.ok:
                raise AgentModuleError(f"{load.name}: _initialize failed: {outcome.error}")
        self._arm()
        try:
            got = i32_caller(self._store, version, 0)()
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise AgentModuleError(
                f"{load.name}: qh_abi_version failed: {self._error_of(exc)}"
            ) from None
        finally:
            self._count_memory()
        if got not in ABI_VERSIONS:
            raise AgentModuleError(
                f"{load.name}: module speaks agent ABI version {got}, this runtime speaks "
                f"{', '.join(map(str, sorted(ABI_VERSIONS)))}"
            )
        newer = sorted(
            imp.name or ""
            for imp in module.imports
            if imp.module == HOST_MODULE and IMPORT_SINCE.get(imp.name or "", 1) > got
        )
        if newer:
            raise AgentModuleError(
                f"{load.name}: module says ABI version {got} but imports {', '.join(newer)} "
                f"of version {max(IMPORT_SINCE[n] for n in newer)}: return that version from "
                "qh_abi_version"
            )
        init = exports.get("qh_init")
        if isinstance(init, wasmtime.Func):
            outcome = self._call(lambda: self._run_init(init))
            if not outcome.ok:
                raise AgentModuleError(f"{load.name}: qh_init failed: {outcome.error}")

    # -- set-up ---------------------------------------------------------------------------
    def _set_up(self, ctx: WorkerContext, load: AgentLoad) -> None:
        """The host's state for one agent, whatever runs it (a Python agent's host too):
        names, the random stream, handles, counters, the v2 calls, the limits."""
        self.ctx = ctx
        self.load = load
        if load.worker_memory_bytes is not None:  # the scenario's [workers] memory_mb
            ctx.memory_limit = load.worker_memory_bytes
        self.name = load.name
        self.agent_id = load.agent_id
        self.failed: str | None = None
        self.handled = 0
        self._rng = SplitMix64(load.rng_seed)
        self._now = 0
        self._handles: list[str] = []
        self._handle_of: dict[str, int] = {}
        self._call_state = _Call(self.load.quotas)
        self._v2 = V2Calls(self, load.tools)
        # Every limit the scenario leaves unset takes its default (_limits.py, docs/limits.md).
        limits, _ = effective_limits(load.limits)
        self.limits = limits
        self._fuel = limits.fuel if limits.fuel is not None else _NO_FUEL_LIMIT
        self._memory_cap = limits.memory_bytes if limits.memory_bytes is not None else 1 << 32
        self._memory_set = -1  # the store's memory limit now
        self._memory_size = 0

    def host_state(self) -> tuple[object, ...]:
        """What a snapshot keeps of the host's side: the random stream, handles, counters."""
        return (
            self._rng.state,
            self.handled,
            tuple(self._handles),
            self._next_job,
            self._next_request,
            self.memory.state() if self._mem is not None else (),
            self._v2.state(),
        )

    def set_host_state(self, host: tuple[Any, ...]) -> None:
        """Restore what :meth:`host_state` kept (older snapshots have fewer fields)."""
        rng, self.handled, handles, self._next_job, self._next_request = host[:5]
        if len(host) > 5 and host[5]:
            mem = self.memory
            self._mem = AgentMemory(host[5], mem.max_keys, mem.max_bytes)
        if len(host) > 6:
            self._v2.set_state(host[6])
        self._rng.state = rng
        self._handles = list(handles)
        self._handle_of = {name: i for i, name in enumerate(self._handles)}

    def _wasi_config(self) -> wasmtime.WasiConfig:
        config = wasmtime.WasiConfig()
        config.env = [(k, v) for k, v in self.load.env]
        for host, guest, writable in self.load.dirs:
            config.preopen_dir(host, guest, writable)
        config.stdout_custom = self._stdout
        config.stderr_custom = self._stderr
        return config

    def _stdout(self, data: bytes) -> None:
        self._output(20, data)

    def _stderr(self, data: bytes) -> None:
        self._output(30, data)

    def _output(self, level: int, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            if line:
                self._call_state.log(level, line[:_MAX_LOG])

    def _import(self, ctx: WorkerContext, kind: EngineKind, where: str, name: str) -> wasmtime.Func:
        if where == HOST_MODULE:
            params, results = HOST_FUNCTIONS[name]
            impl: Callable[..., Any] = (
                getattr(self, f"_h_{name}") if IMPORT_SINCE[name] == 1 else self._v2.function(name)
            )
            return host_func(self._store, params, results, impl)
        # WASI: the clock and randomness are the run's own, everything else is wasmtime's
        # (with nothing granted unless the scenario says so).
        if name == "clock_time_get":
            return wasmtime.Func(
                self._store,
                wasmtime.FuncType(
                    [_VALTYPES["i32"], _VALTYPES["i64"], _VALTYPES["i32"]], [_VALTYPES["i32"]]
                ),
                self._wasi_clock_time_get,
            )
        if name == "clock_res_get":
            return wasmtime.Func(
                self._store,
                wasmtime.FuncType([_VALTYPES["i32"], _VALTYPES["i32"]], [_VALTYPES["i32"]]),
                self._wasi_clock_res_get,
            )
        if name == "random_get":
            return wasmtime.Func(
                self._store,
                wasmtime.FuncType([_VALTYPES["i32"], _VALTYPES["i32"]], [_VALTYPES["i32"]]),
                self._wasi_random_get,
            )
        if name == "poll_oneoff":  # a sleep on the logical clock: at once (_wasi_poll)
            return wasmtime.Func(
                self._store,
                wasmtime.FuncType([_VALTYPES["i32"]] * 4, [_VALTYPES["i32"]]),
                self._wasi_poll_oneoff,
            )
        found = ctx.linker(kind).get(self._store, WASI_MODULE, name)
        if not isinstance(found, wasmtime.Func):
            raise AgentModuleError(f"{self.name}: unknown WASI import {name}")
        if name == "fd_write" and not self.load.dirs:  # the log, fast (see _wasi_output)
            return console_fd_write(self._store, self._memory_now, self._output)
        return found

    # -- guest memory ---------------------------------------------------------------------
    def _base(self) -> int:
        return ctypes.addressof(self._memory.data_ptr(self._store).contents)

    def _memory_now(self) -> tuple[int, int]:
        return self._base(), self._memory.data_len(self._store)

    def _check(self, what: str, ptr: int, length: int) -> None:
        size = self._memory.data_len(self._store)
        if ptr < 0 or length < 0 or ptr + length > size:
            raise GuestFault(
                f"{what}: range [{ptr}, {ptr + length}) is outside guest memory of {size} bytes"
            )

    def _read(self, what: str, ptr: int, length: int, limit: int) -> bytes:
        if length > limit:
            raise GuestFault(f"{what}: {length} bytes exceeds the limit of {limit}")
        self._check(what, ptr, length)
        return ctypes.string_at(self._base() + ptr, length) if length else b""

    def _write(self, what: str, ptr: int, data: bytes) -> None:
        self._check(what, ptr, len(data))
        if data:
            ctypes.memmove(self._base() + ptr, data, len(data))

    # For the version 2 calls (``_agent_v2``).
    def read_guest(self, what: str, ptr: int, length: int, limit: int) -> bytes:
        return self._read(what, ptr, length, limit)

    def write_guest(self, what: str, ptr: int, data: bytes) -> None:
        self._write(what, ptr, data)

    @property
    def call_state(self) -> _Call:
        return self._call_state

    def new_request(self) -> int:
        request = self._next_request
        self._next_request += 1
        return request

    def requests_made(self) -> int:
        return self._next_request

    def _name(self, what: str, ptr: int, length: int) -> str:
        return self._read(what, ptr, length, _MAX_NAME).decode("utf-8", "replace")

    # -- host functions: messages ---------------------------------------------------------
    def _h_send(self, to: int, kind: int, ptr: int, length: int) -> int:
        state = self._call_state
        quotas = state.quotas
        if len(state.outbox) >= quotas.sends:
            raise QuotaExceeded(f"send: more than {quotas.sends} messages sent by one message")
        if state.sent_bytes + length > quotas.send_bytes:
            raise QuotaExceeded(
                f"send: more than {_amount(quotas.send_bytes)} of payload sent by one message"
            )
        payload = self._read("send", ptr, length, _MAX_PAYLOAD)
        if not 0 <= to < max(self.load.agent_count, self.ctx.agent_count):
            return SEND_UNKNOWN_AGENT
        if kind < 0 or kind >= RESERVED_KIND_BASE:
            return SEND_RESERVED_KIND
        state.sent_bytes += length
        state.outbox.append((to, kind, payload))
        return SEND_OK

    def _h_log(self, level: int, ptr: int, length: int) -> None:
        text = self._read("log", ptr, length, _MAX_LOG).decode("utf-8", "replace")
        self._call_state.log(level, text)

    def _h_random_u64(self) -> int:
        return _to_i64(self._rng.next())

    def _h_now(self) -> int:
        return self._now

    def _h_self_id(self) -> int:
        return self.agent_id

    def _h_agent_count(self) -> int:
        # Spawned agents (ABI v2) grow the directory after this agent was loaded.
        return max(self.load.agent_count, self.ctx.agent_count)

    def _h_peer_count(self) -> int:
        return len(self.load.peers)

    def _h_peer(self, index: int) -> int:
        peers = self.load.peers
        return peers[index] if 0 <= index < len(peers) else -1

    def _h_lookup(self, ptr: int, length: int) -> int:
        return self.ctx.directory.get(self._name("lookup", ptr, length), -1)

    def _h_snapshot_put(self, ptr: int, length: int) -> None:
        self._call_state.snapshot = self._read("snapshot_put", ptr, length, 1 << 30)

    # -- host functions: tensors ----------------------------------------------------------
    def _visible(self, name: str) -> TensorEntry | None:
        entry = self.ctx.tensors.get(name)
        return entry if entry is not None and entry.visible_from <= self._now else None

    def _handle(self, name: str) -> int:
        handle = self._handle_of.get(name)
        if handle is None:
            handle = len(self._handles)
            self._handles.append(name)
            self._handle_of[name] = handle
        return handle

    def _resolve(self, h: int) -> str | None:
        return self._handles[h] if 0 <= h < len(self._handles) else None

    def _meta(self, name: str) -> tuple[np.dtype[Any], tuple[int, ...]] | None:
        created = self._call_state.created.get(name)
        if created is not None:
            return created
        entry = self._visible(name)
        if entry is None:
            return None
        return np.dtype(entry.handle.dtype), entry.handle.shape

    def _h_tensor_open(self, ptr: int, length: int) -> int:
        name = self._name("tensor_open", ptr, length)
        if self._visible(name) is None and name not in self._call_state.created:
            return _BAD_HANDLE
        return self._handle(name)

    def _h_tensor_info(self, h: int, out_ptr: int) -> int:
        name = self._resolve(h)
        meta = None if name is None else self._meta(name)
        if meta is None:
            self._check("tensor_info", out_ptr, 24)
            return _BAD_HANDLE
        dtype, shape = meta
        dims = list(shape) + [0] * (4 - len(shape))
        code = _CODE_OF.get(dtype.str, -1)
        self._write("tensor_info", out_ptr, np.array([code, len(shape), *dims], "<i4").tobytes())
        return 0

    def _h_tensor_read(self, h: int, offset: int, dst: int, length: int) -> int:
        self._check("tensor_read", dst, length)
        name = self._resolve(h)
        if name is None:
            return _BAD_HANDLE
        if name in self._call_state.created:
            return _NOT_YET
        entry = self._visible(name)
        if entry is None:
            return _BAD_HANDLE
        if offset < 0 or length < 0 or offset + length > entry.handle.nbytes:
            return _OUT_OF_RANGE
        if length:
            src = self.ctx.tensor_bytes(entry)
            # One copy: shared memory straight into guest memory.
            ctypes.memmove(self._base() + dst, src.ctypes.data + offset, length)
        self._call_state.reads.append(name)
        return length

    def _h_tensor_write(self, h: int, offset: int, src: int, length: int) -> int:
        if length > 0:
            self._call_state.tensor(length, "tensor_write")
        data = self._read("tensor_write", src, length, 1 << 30)
        name = self._resolve(h)
        if name is None:
            return _BAD_HANDLE
        created = self._call_state.created.get(name)
        if created is not None:
            nbytes = created[0].itemsize * math.prod(created[1])
        else:
            entry = self._visible(name)
            if entry is None:
                return _BAD_HANDLE
            if not entry.writable_by(self.agent_id):
                return _READ_ONLY
            nbytes = entry.handle.nbytes
        if offset < 0 or offset + length > nbytes:
            return _OUT_OF_RANGE
        self._call_state.effects.append(("write", name, offset, data))
        return 0

    def _h_tensor_create(
        self, name_ptr: int, name_len: int, dtype: int, ndim: int, shape_ptr: int
    ) -> int:
        name = self._name("tensor_create", name_ptr, name_len)
        if not 1 <= ndim <= 4:
            self._check("tensor_create", shape_ptr, 0)
            return _BAD_SHAPE
        raw = self._read("tensor_create", shape_ptr, 4 * ndim, 16)
        shape = tuple(int(d) for d in np.frombuffer(raw, "<i4"))
        # Names as of this tick (a replay after a crash runs at an earlier tick than now).
        if self._visible(name) is not None or name in self._call_state.created or not name:
            return _NAME_TAKEN
        dt = DTYPE_CODES.get(dtype)
        if dt is None or any(d < 1 for d in shape) or math.prod(shape) > 1 << 28:
            return _BAD_SHAPE
        self._call_state.tensor(dt.itemsize * math.prod(shape), "tensor_create")
        self._call_state.created[name] = (dt, shape)
        self._call_state.effects.append(("create", name, dt.str, shape))
        return self._handle(name)

    # -- host functions: GPU jobs and the LLM ---------------------------------------------
    def _h_gpu_submit(
        self,
        op_ptr: int,
        op_len: int,
        inputs_ptr: int,
        n_inputs: int,
        out_ptr: int,
        out_len: int,
        param: float,
    ) -> int:
        op = self._name("gpu_submit", op_ptr, op_len)
        if not 0 <= n_inputs <= 8:
            self._check("gpu_submit", inputs_ptr, 0)
            return _BAD_OP
        raw = self._read("gpu_submit", inputs_ptr, 4 * n_inputs, 32)
        out_name = self._name("gpu_submit", out_ptr, out_len)
        names: list[str] = []
        metas = []
        for h in np.frombuffer(raw, "<i4"):
            name = self._resolve(int(h))
            meta = None if name is None else self._meta(name)
            if name is None or meta is None:
                return _BAD_HANDLE
            names.append(name)
            metas.append(meta)
        taken = self._visible(out_name) is not None or out_name in self._call_state.created
        if not out_name or taken:
            return _NAME_TAKEN
        params = {"factor": float(param)} if op == "scale" else {}
        try:
            spec = get_op(op)
            out_shape, out_dtype = spec.check(
                [m[1] for m in metas], [m[0].str for m in metas], params
            )
        except ValueError:
            return _BAD_OP
        self._call_state.tensor(np.dtype(out_dtype).itemsize * math.prod(out_shape), "gpu_submit")
        job = self._next_job
        self._next_job += 1
        self._call_state.effects.append(("gpu", job, op, tuple(names), out_name, float(param)))
        # Later calls in this handler may use the output's name, though not read it yet.
        self._call_state.created[out_name] = (np.dtype(out_dtype), out_shape)
        self._handle(out_name)
        return job

    def _h_llm_complete(self, ptr: int, length: int, max_tokens: int, tag: int) -> int:
        state = self._call_state
        quotas = state.quotas
        if state.llm_requests >= quotas.llm_requests:
            raise QuotaExceeded(
                f"llm_complete: more than {quotas.llm_requests} LLM requests made by one message"
            )
        if length > quotas.llm_prompt_bytes:
            raise QuotaExceeded(
                f"llm_complete: a prompt of {length} bytes, more than the "
                f"{quotas.llm_prompt_bytes} a request may have"
            )
        prompt = self._read("llm_complete", ptr, length, quotas.llm_prompt_bytes)
        state.llm_requests += 1
        request = self._next_request
        self._next_request += 1
        self._call_state.effects.append(("llm", request, tag, prompt, max_tokens))
        return request

    # -- WASI overrides: deterministic time and randomness --------------------------------
    def _wasi_clock_time_get(self, clock_id: int, precision: int, out_ptr: int) -> int:
        self._write("clock_time_get", out_ptr, (self._now * 1_000_000).to_bytes(8, "little"))
        return 0

    def _wasi_clock_res_get(self, clock_id: int, out_ptr: int) -> int:
        self._write("clock_res_get", out_ptr, (1_000_000).to_bytes(8, "little"))
        return 0

    def _wasi_random_get(self, ptr: int, length: int) -> int:
        self._check("random_get", ptr, length)
        words = (length + 7) // 8
        data = b"".join(self._rng.next().to_bytes(8, "little") for _ in range(words))
        self._write("random_get", ptr, data[:length])
        return 0

    def _wasi_poll_oneoff(self, subs: int, events: int, n: int, out: int) -> int:
        if n <= 0:
            return EINVAL
        raw = self._read("poll_oneoff", subs, SUBSCRIPTION_SIZE * n, SUBSCRIPTION_SIZE * 4096)
        self._write("poll_oneoff", events, poll_events(raw, n))
        self._write("poll_oneoff", out, n.to_bytes(4, "little"))
        return 0

    # -- calls ----------------------------------------------------------------------------
    def _arm(self) -> None:
        """Reset the per-call budgets: fuel, the wall-clock deadline, the memory it may reach."""
        self._store.set_fuel(self._fuel)
        self._store.set_epoch_deadline(self._deadline)
        self._limit_memory()
        if self._timed:
            self.ctx.ticker.call_started()

    def _limit_memory(self) -> None:
        """The store's memory limit: its own, or less when the worker's total says so."""
        cap = min(self._memory_cap, max(self.ctx.memory_room(self.agent_id), self._memory_size))
        if cap != self._memory_set:
            self._store.set_limits(memory_size=cap)
            self._memory_set = cap

    def _count_memory(self, ended: bool = True) -> None:
        """After a call: the memory it left, into the worker's total; the ticker may rest."""
        if self._timed and ended:
            self.ctx.ticker.call_ended()
        memory: wasmtime.Memory | None = getattr(self, "_memory", None)
        if memory is not None:
            size = memory.data_len(self._store)
            if size != self._memory_size:
                self._memory_size = size
                self.ctx.set_memory(self.agent_id, size)

    def _write_payload(self, payload: bytes) -> int:
        ptr = self._alloc(len(payload))
        size = self._memory.data_len(self._store)
        if ptr < 0 or ptr + len(payload) > size:
            raise GuestFault(
                f"qh_alloc({len(payload)}) returned {ptr}, outside guest memory of {size} bytes"
            )
        if payload:
            ctypes.memmove(self._base() + ptr, payload, len(payload))
        return ptr

    def _run_init(self, init: wasmtime.Func) -> int:
        config = self.load.config_json
        ptr = self._write_payload(config)
        return int(init(self._store, ptr, len(config)))

    def _call(self, body: Callable[[], int]) -> Outcome:
        self._call_state = state = _Call(self.load.quotas)
        self._v2.begin()
        self._arm()
        start = time.perf_counter_ns()
        try:
            code = body()
        except (GuestFault, QuotaExceeded, wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            return self._fail(self._error_of(exc), start)
        finally:
            self._count_memory()
        return self._finish(state, code, start)

    def _finish(self, state: _Call, code: int, start: int) -> Outcome:
        if code != 0:
            return self._fail(self._v2.error_text or f"handler returned error code {code}", start)
        self._v2.commit()
        return Outcome(
            True,
            tuple(state.outbox),
            tuple(state.logs),
            None,
            time.perf_counter_ns() - start,
            tuple(state.effects),
            tuple(dict.fromkeys(state.reads)) if state.reads else (),
        )

    def _error_of(self, exc: BaseException) -> str:
        if isinstance(exc, GuestFault):
            return f"fault: {exc}"
        if isinstance(exc, QuotaExceeded):
            return f"quota exceeded: {exc}"
        if isinstance(exc, wasmtime.ExitTrap):
            return f"exited with code {exc.code}"
        if isinstance(exc, wasmtime.Trap):
            return self._describe_trap(exc)
        return f"error: {str(exc).splitlines()[0]}"

    def _describe_trap(self, exc: wasmtime.Trap) -> str:
        code = exc.trap_code
        limits = self.limits
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            return f"out of fuel (limit {limits.fuel} per message{self._default('fuel')})"
        if code == wasmtime.TrapCode.INTERRUPT:
            default = self._default("timeout_ms")
            return f"timeout (limit {limits.timeout_ms} ms per message{default})"
        if code == wasmtime.TrapCode.STACK_OVERFLOW:
            return "stack overflow" + (
                f" (limit {limits.stack_bytes // 1024} KiB)" if limits.stack_bytes else ""
            )
        reason = code.name.lower() if code is not None else "trap"
        text = f"trap ({reason}): {exc.message.splitlines()[0] if exc.message else ''}"
        memory: wasmtime.Memory | None = getattr(self, "_memory", None)  # None: instantiating
        if memory is not None and self._memory_set > 0:
            # wasmtime refuses memory.grow past the limit with -1 rather than a trap, and
            # the guest then traps in its own way (malloc returning NULL, abort). A trap with
            # memory within a quarter of the limit (or 1 MiB) of it is taken for running out.
            cap = self._memory_set
            size = memory.data_len(self._store)
            margin = max(65536, min(cap // 4, 1 << 20))
            if size + margin >= cap:
                return self._out_of_memory(size, text)
        return text

    def _out_of_memory(self, size: int, text: str) -> str:
        """A failure at the memory limit, saying which limit: the instance's own, or the
        worker's total (the store's limit is then below the instance's)."""
        cap = self._memory_set
        if cap < self._memory_cap:
            total = self.ctx.memory_limit / (1 << 20)
            why = f"the worker's total of {total:g} MiB across its agents is reached"
        else:
            why = f"limit {cap / (1 << 20):g} MiB{self._default('memory')}"
        return f"out of memory ({why}, using {size >> 10} KiB): {text}"

    def _default(self, limit: str) -> str:
        return ", the default" if limit in effective_limits(self.load.limits)[1] else ""

    def _fail(self, error: str, start: int) -> Outcome:
        self.failed = error
        # What it asked for before failing is dropped: a message is applied whole or not at all.
        return Outcome(
            False, (), tuple(self._call_state.logs), error, time.perf_counter_ns() - start
        )

    def deliver(self, now: int, sender: int, kind: int, payload: bytes) -> Outcome:
        """Run the handler for one message at logical time ``now`` (the hot path)."""
        if self.failed is not None:
            return Outcome(False, error=f"agent already failed: {self.failed}")
        self._now = now
        if self._mem is not None:
            self._mem.at_tick(now)
        self._call_state = state = _Call(self.load.quotas)
        unwrapped = self._v2.unwrap(sender, kind, payload)
        if unwrapped is None:  # a fire of a timer cancelled since
            return Outcome(True)
        sender, kind, payload = unwrapped
        if self._limited:
            self._arm()
        start = time.perf_counter_ns()
        try:
            ptr = self._write_payload(payload)
            code = self._on_message(sender, kind, ptr, len(payload))
        except (GuestFault, QuotaExceeded, wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            return self._fail(self._error_of(exc), start)
        finally:
            self._count_memory()
            if self._limited:  # (always, unless a runtime without default limits)
                burnt = self._fuel - self._fuel_left()
                self.fuel_used += burnt
                self.ctx.fuel_burnt += burnt
                if self._fuel_tick == now:
                    self.fuel_last += burnt
                else:
                    self._fuel_tick = now
                    self.fuel_last = burnt
        outcome = self._finish(state, code, start)
        if outcome.ok:
            self.handled += 1
            if state.mem:
                self.mem_commit(now, state)
        return outcome

    @property
    def memory_size(self) -> int:
        """The bytes of linear memory the instance has now."""
        return max(self._memory_size, 0)

    def close(self) -> None:
        """Release what the instance holds beyond its store (nothing, for a compiled agent)."""

    # -- snapshots ------------------------------------------------------------------------
    def unrecoverable(self) -> str | None:
        """Why this agent's state cannot be brought back in a fresh instance, or None."""
        if isinstance(self._exports.get("qh_snapshot"), wasmtime.Func):
            return None
        if self.ctx.host_snapshot_ok(self.load.module_key):
            return None
        return (
            f"{self.name}: its module keeps state in non-exported mutable globals and has no "
            "qh_snapshot/qh_restore, so it cannot be restored"
        )

    def snapshot(self) -> bytes:
        """The agent's committed state: its own snapshot or its memory and globals, plus the
        host's state for it (random stream, handles, counters)."""
        host = self.host_state()
        snap = self._exports.get("qh_snapshot")
        if isinstance(snap, wasmtime.Func):
            outcome = self._call(lambda: int(snap(self._store)))
            if not outcome.ok or self._call_state.snapshot is None:
                raise AgentModuleError(
                    f"{self.name}: qh_snapshot failed: {outcome.error or 'no snapshot_put call'}"
                )
            return pickle.dumps(("agent", host, self._call_state.snapshot))
        if not self.ctx.host_snapshot_ok(self.load.module_key):
            raise AgentModuleError(
                f"{self.name}: cannot be snapshotted: its module keeps state in non-exported "
                "mutable globals and has no qh_snapshot/qh_restore"
            )
        size = self._memory.data_len(self._store)
        memory = _sparse(ctypes.string_at(self._base(), size))
        globals_ = {}
        for name in self._exports:
            ext = self._exports[name]
            if isinstance(ext, wasmtime.Global) and ext.type(self._store).mutable:
                globals_[name] = ext.value(self._store)
        return pickle.dumps(("host", host, (memory, globals_)))

    def restore(self, data: bytes) -> None:
        """Restore a state made by :meth:`snapshot` into this fresh instance."""
        how, host, state = pickle.loads(data)
        self.set_host_state(host)
        if how == "agent":
            restore = self._exports.get("qh_restore")
            if not isinstance(restore, wasmtime.Func):
                raise AgentModuleError(f"{self.name}: qh_restore is missing")

            def body() -> int:
                ptr = self._write_payload(state)
                return int(restore(self._store, ptr, len(state)))

            outcome = self._call(body)
            if not outcome.ok:
                raise AgentModuleError(f"{self.name}: qh_restore failed: {outcome.error}")
            return
        (length, chunks), globals_ = state
        size = self._memory.data_len(self._store)
        if length > size:
            self._memory.grow(self._store, (length - size) // 65536)
        base = self._base()
        ctypes.memset(base, 0, length)
        for offset, data in chunks:
            ctypes.memmove(base + offset, data, len(data))
        for name, value in globals_.items():
            ext = self._exports.get(name)
            if isinstance(ext, wasmtime.Global):
                ext.set_value(self._store, value)


_CHUNK = 4096


def _sparse(memory: bytes) -> tuple[int, list[tuple[int, bytes]]]:
    """Linear memory as its length and its non-zero 4 KiB chunks: agents' memories are
    mostly zeros, and snapshots travel to the orchestrator."""
    n = len(memory) // _CHUNK
    words = np.frombuffer(memory, dtype=np.uint64, count=n * _CHUNK // 8).reshape(n, -1)
    live = np.flatnonzero(words.any(axis=1))
    chunks = [(int(i) * _CHUNK, memory[int(i) * _CHUNK : (int(i) + 1) * _CHUNK]) for i in live]
    tail = n * _CHUNK
    if tail < len(memory):
        chunks.append((tail, memory[tail:]))
    return len(memory), chunks
