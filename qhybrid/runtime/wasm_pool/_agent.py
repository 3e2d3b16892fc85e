"""One agent instance inside a worker: its wasmtime store, its host functions, its RNG."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import wasmtime

from qhybrid.runtime.wasm_pool._abi import (
    ABI_VERSION,
    HOST_FUNCTIONS,
    RESERVED_KIND_BASE,
    SEND_OK,
    SEND_RESERVED_KIND,
    SEND_UNKNOWN_AGENT,
    AgentModuleError,
)
from qhybrid.runtime.wasm_pool._protocol import AgentLoad, Outcome

logger = logging.getLogger(__name__)

_MASK64 = (1 << 64) - 1
_VALTYPES = {"i32": wasmtime.ValType.i32(), "i64": wasmtime.ValType.i64()}
_MAX_LOG = 4096
_MAX_PAYLOAD = 16 << 20


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


def _to_i64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


class AgentHost:
    """Owns one instance; :meth:`deliver` runs its handler for one message."""

    def __init__(
        self,
        engine: wasmtime.Engine,
        module: wasmtime.Module,
        load: AgentLoad,
        directory: Mapping[str, int],
    ) -> None:
        self.load = load
        self._directory = directory
        self.name = load.name
        self.agent_id = load.agent_id
        self.failed: str | None = None
        self.handled = 0
        self._rng = SplitMix64(load.rng_seed)
        self._now = 0
        self._outbox: list[tuple[int, int, bytes]] = []
        self._logs: list[tuple[int, str]] = []
        self._store = wasmtime.Store(engine)
        imports = [self._host_func(imp.name or "") for imp in module.imports]
        try:
            self._instance = wasmtime.Instance(self._store, module, imports)
        except wasmtime.WasmtimeError as exc:
            raise AgentModuleError(f"{load.name}: instantiation failed: {exc}") from None
        exports = self._instance.exports(self._store)
        memory = exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        self._memory = memory
        self._alloc = exports["qh_alloc"]
        self._on_message = exports["qh_on_message"]
        version = exports["qh_abi_version"]
        assert isinstance(version, wasmtime.Func)
        got = version(self._store)
        if got != ABI_VERSION:
            raise AgentModuleError(
                f"{load.name}: module speaks agent ABI version {got}, this runtime speaks "
                f"{ABI_VERSION}"
            )
        init = exports.get("qh_init")
        if isinstance(init, wasmtime.Func):
            outcome = self._call(lambda: self._run_init(init))
            if not outcome.ok:
                raise AgentModuleError(f"{load.name}: qh_init failed: {outcome.error}")

    # -- host functions -------------------------------------------------------------------
    def _host_func(self, name: str) -> wasmtime.Func:
        params, results = HOST_FUNCTIONS[name]
        ty = wasmtime.FuncType([_VALTYPES[p] for p in params], [_VALTYPES[r] for r in results])
        impl: Callable[..., Any] = getattr(self, f"_h_{name}")
        return wasmtime.Func(self._store, ty, impl)

    def _read(self, what: str, ptr: int, length: int, limit: int) -> bytes:
        size = self._memory.data_len(self._store)
        if ptr < 0 or length < 0 or ptr + length > size:
            raise GuestFault(
                f"{what}: range [{ptr}, {ptr + length}) is outside guest memory of {size} bytes"
            )
        if length > limit:
            raise GuestFault(f"{what}: {length} bytes exceeds the limit of {limit}")
        return bytes(self._memory.read(self._store, ptr, ptr + length))

    def _h_send(self, to: int, kind: int, ptr: int, length: int) -> int:
        payload = self._read("send", ptr, length, _MAX_PAYLOAD)
        if not 0 <= to < self.load.agent_count:
            return SEND_UNKNOWN_AGENT
        if kind < 0 or kind >= RESERVED_KIND_BASE:
            return SEND_RESERVED_KIND
        self._outbox.append((to, kind, payload))
        return SEND_OK

    def _h_log(self, level: int, ptr: int, length: int) -> None:
        text = self._read("log", ptr, length, _MAX_LOG).decode("utf-8", "replace")
        self._logs.append((level, text))

    def _h_random_u64(self) -> int:
        return _to_i64(self._rng.next())

    def _h_now(self) -> int:
        return self._now

    def _h_self_id(self) -> int:
        return self.agent_id

    def _h_agent_count(self) -> int:
        return self.load.agent_count

    def _h_peer_count(self) -> int:
        return len(self.load.peers)

    def _h_peer(self, index: int) -> int:
        peers = self.load.peers
        return peers[index] if 0 <= index < len(peers) else -1

    def _h_lookup(self, ptr: int, length: int) -> int:
        name = self._read("lookup", ptr, length, _MAX_LOG).decode("utf-8", "replace")
        return self._directory.get(name, -1)

    # -- calls ------------------------------------------------------------------------------
    def _write_payload(self, payload: bytes) -> int:
        assert isinstance(self._alloc, wasmtime.Func)
        ptr = self._alloc(self._store, len(payload))
        if not isinstance(ptr, int):
            raise GuestFault("qh_alloc returned no pointer")
        size = self._memory.data_len(self._store)
        if ptr < 0 or ptr + len(payload) > size:
            raise GuestFault(
                f"qh_alloc({len(payload)}) returned {ptr}, outside guest memory of {size} bytes"
            )
        if payload:
            self._memory.write(self._store, payload, ptr)
        return ptr

    def _run_init(self, init: wasmtime.Func) -> int:
        config = self.load.config_json
        ptr = self._write_payload(config)
        result = init(self._store, ptr, len(config))
        return int(result)

    def _call(self, body: Callable[[], int]) -> Outcome:
        self._outbox = []
        self._logs = []
        start = time.perf_counter_ns()
        try:
            code = body()
        except GuestFault as exc:
            return self._fail(f"fault: {exc}", start)
        except wasmtime.Trap as exc:
            trap = exc.trap_code
            reason = trap.name.lower() if trap is not None else "trap"
            return self._fail(f"trap ({reason}): {exc.message}", start)
        except wasmtime.WasmtimeError as exc:
            return self._fail(f"error: {str(exc).splitlines()[0]}", start)
        elapsed = time.perf_counter_ns() - start
        if code != 0:
            return self._fail(f"handler returned error code {code}", start)
        return Outcome(True, tuple(self._outbox), tuple(self._logs), None, elapsed)

    def _fail(self, error: str, start: int) -> Outcome:
        self.failed = error
        # What it sent before failing is dropped: a message is applied whole or not at all.
        return Outcome(False, (), tuple(self._logs), error, time.perf_counter_ns() - start)

    def deliver(self, now: int, sender: int, kind: int, payload: bytes) -> Outcome:
        """Run the handler for one message at logical time ``now``."""
        if self.failed is not None:
            return Outcome(False, error=f"agent already failed: {self.failed}")
        self._now = now
        on_message = self._on_message
        assert isinstance(on_message, wasmtime.Func)

        def body() -> int:
            ptr = self._write_payload(payload)
            return int(on_message(self._store, sender, kind, ptr, len(payload)))

        outcome = self._call(body)
        if outcome.ok:
            self.handled += 1
        return outcome
