"""Agents' long-term memory, host side: a key-value store per agent (``mem_*`` imports).

Keys and values are bytes. Reads (``mem_get``, ``mem_list``) see the memory as it was when the
tick began; writes (``mem_put``, ``mem_delete``) of a handler that succeeds take effect at the
end of its tick, like every other effect, in the order they were made (a failed handler's
writes are dropped). Each write is also an effect the orchestrator records in the trace. The
memory is part of the agent's snapshot (so crash recovery and the run store's checkpoints keep
it), and a scenario's persistent namespace carries it from one run to the next.

Quotas bound each agent's memory (``AgentLoad.memory_keys`` keys and ``memory_bytes`` bytes of
keys plus values, counted with the writes of the tick so far); a write past them is refused
with an error code, never a trap. Return codes (i32):

- ``mem_get(key, key_len, out, out_cap)``: the value's length (copying at most ``out_cap``
  bytes of it), or ``MEM_NOT_FOUND`` (-1);
- ``mem_put(key, key_len, value, value_len)``: 0, or ``MEM_QUOTA_KEYS`` (-2),
  ``MEM_QUOTA_BYTES`` (-3), ``MEM_BAD_KEY`` (-4: empty or longer than 256 bytes);
- ``mem_delete(key, key_len)``: 1 if the key was there, else 0;
- ``mem_list(prefix, prefix_len, out, out_cap)``: the bytes the sorted list of keys with that
  prefix takes (each as a little-endian u32 length and the key); written only if it fits.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qhybrid.runtime.wasm_pool._protocol import AgentLoad, Effect

_I32 = "i32"

#: name -> (params, results); registered with the ABI's host functions.
MEMORY_FUNCTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "mem_get": ((_I32, _I32, _I32, _I32), (_I32,)),
    "mem_put": ((_I32, _I32, _I32, _I32), (_I32,)),
    "mem_delete": ((_I32, _I32), (_I32,)),
    "mem_list": ((_I32, _I32, _I32, _I32), (_I32,)),
}

MEM_NOT_FOUND = -1
MEM_QUOTA_KEYS = -2
MEM_QUOTA_BYTES = -3
MEM_BAD_KEY = -4
MAX_KEY = 256
MAX_VALUE = 1 << 20
DEFAULT_KEYS = 1024
DEFAULT_BYTES = 1 << 20


class AgentMemory:
    """One agent's committed memory and the writes of its current tick."""

    __slots__ = ("bytes", "committed", "max_bytes", "max_keys", "pending", "pending_tick")

    def __init__(
        self, initial: tuple[tuple[bytes, bytes], ...], max_keys: int, max_bytes: int
    ) -> None:
        self.committed: dict[bytes, bytes] = dict(initial)
        self.bytes = sum(len(k) + len(v) for k, v in self.committed.items())
        self.max_keys = max_keys
        self.max_bytes = max_bytes
        #: Successful handlers' writes of ``pending_tick``: (key, value or None to delete).
        self.pending: list[tuple[bytes, bytes | None]] = []
        self.pending_tick = -1

    def flush(self) -> None:
        """Apply the pending writes (their tick is over)."""
        for key, value in self.pending:
            old = self.committed.pop(key, None)
            if old is not None:
                self.bytes -= len(key) + len(old)
            if value is not None:
                self.committed[key] = value
                self.bytes += len(key) + len(value)
        self.pending.clear()

    def at_tick(self, tick: int) -> None:
        if self.pending and tick > self.pending_tick:
            self.flush()

    def stage(self, tick: int, writes: list[tuple[bytes, bytes | None]]) -> None:
        """A successful handler's writes, applied when its tick is over."""
        self.pending.extend(writes)
        self.pending_tick = tick

    def view(self, writes: list[tuple[bytes, bytes | None]]) -> tuple[int, int]:
        """(keys, bytes) once the tick's pending writes and ``writes`` are applied."""
        keys = dict.fromkeys(self.committed, 0)
        total = self.bytes
        for key, value in [*self.pending, *writes]:
            if key in keys:
                old = self.committed.get(key)
                total -= len(key) + (len(old) if old is not None else keys[key])
                del keys[key]
            if value is not None:
                keys[key] = len(value)
                total += len(key) + len(value)
        return len(keys), total

    def state(self) -> tuple[tuple[bytes, bytes], ...]:
        """For a snapshot: the memory as of the end of the last tick handled."""
        self.flush()
        return tuple(sorted(self.committed.items()))


class MemoryHost:
    """The ``mem_*`` host functions, mixed into ``AgentHost`` (which provides ``load``,
    ``_read``, ``_write`` and ``_call_state``)."""

    load: AgentLoad
    _mem: AgentMemory | None = None

    def _state(self) -> Any:
        """The handler's per-call state (``AgentHost._call_state``)."""
        return getattr(self, "_call_state")  # noqa: B009 (typed on the host, not here)

    def _read(self, what: str, ptr: int, length: int, limit: int) -> bytes:
        raise NotImplementedError

    def _write(self, what: str, ptr: int, data: bytes) -> None:
        raise NotImplementedError

    @property
    def memory(self) -> AgentMemory:
        mem = self._mem
        if mem is None:
            load = self.load
            mem = self._mem = AgentMemory(load.memory, load.memory_keys, load.memory_bytes)
        return mem

    def _mem_writes(self) -> list[tuple[bytes, bytes | None]]:
        state = self._state()
        writes: list[tuple[bytes, bytes | None]] | None = getattr(state, "mem", None)
        if writes is None:
            writes = []
            state.mem = writes
        return writes

    def mem_commit(self, tick: int, state: Any) -> None:
        """After a successful handler: stage its writes for the end of ``tick``."""
        writes = getattr(state, "mem", None)
        if writes:
            self.memory.stage(tick, writes)

    def _key(self, what: str, ptr: int, length: int) -> bytes | None:
        if length <= 0 or length > MAX_KEY:
            return None
        return self._read(what, ptr, length, MAX_KEY)

    def _h_mem_get(self, key_ptr: int, key_len: int, out_ptr: int, out_cap: int) -> int:
        key = self._key("mem_get", key_ptr, key_len)
        if key is None:
            return MEM_BAD_KEY
        value = self.memory.committed.get(key)
        if value is None:
            return MEM_NOT_FOUND
        if out_cap > 0:
            self._write("mem_get", out_ptr, value[:out_cap])
        return len(value)

    def _h_mem_put(self, key_ptr: int, key_len: int, val_ptr: int, val_len: int) -> int:
        key = self._key("mem_put", key_ptr, key_len)
        if key is None:
            return MEM_BAD_KEY
        value = self._read("mem_put", val_ptr, val_len, MAX_VALUE)
        writes = self._mem_writes()
        mem = self.memory
        keys, total = mem.view([*writes, (key, value)])
        if keys > mem.max_keys:
            return MEM_QUOTA_KEYS
        if total > mem.max_bytes:
            return MEM_QUOTA_BYTES
        writes.append((key, value))
        effects: list[Effect] = self._state().effects
        effects.append(("mem_put", key, value))
        return 0

    def _h_mem_delete(self, key_ptr: int, key_len: int) -> int:
        key = self._key("mem_delete", key_ptr, key_len)
        if key is None:
            return MEM_BAD_KEY
        writes = self._mem_writes()
        present = key in self.memory.committed  # as the tick began, like every read
        writes.append((key, None))
        effects: list[Effect] = self._state().effects
        effects.append(("mem_del", key))
        return int(present)

    def _h_mem_list(self, prefix_ptr: int, prefix_len: int, out_ptr: int, out_cap: int) -> int:
        prefix = self._read("mem_list", prefix_ptr, prefix_len, MAX_KEY) if prefix_len else b""
        keys = sorted(k for k in self.memory.committed if k.startswith(prefix))
        data = b"".join(struct.pack("<I", len(k)) + k for k in keys)
        if len(data) <= out_cap:
            self._write("mem_list", out_ptr, data)
        return len(data)
