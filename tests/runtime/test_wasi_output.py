"""WASI ``fd_write`` on stdout and stderr as the host's own function (``_wasi_output``): the
bytes of every iovec in order, WASI's errors for bad ranges and other descriptors. (Agents
with a granted directory keep wasmtime's own: tests/runtime/test_sandbox.py writes files.)"""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

import wasmtime

from qhybrid.runtime.wasm_pool._wasi_output import EBADF, EFAULT, EINVAL, console_fd_write

WAT = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "w") (param i32 i32 i32 i32) (result i32)
    (call $w (local.get 0) (local.get 1) (local.get 2) (local.get 3))))"""


def _instance(tmp_path: Path) -> tuple[wasmtime.Store, wasmtime.Instance, list[tuple[int, bytes]]]:
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    linker.allow_shadowing = True
    got: list[tuple[int, bytes]] = []
    box: dict[str, wasmtime.Memory] = {}

    def memory() -> tuple[int, int]:
        mem = box["memory"]
        return ctypes.addressof(mem.data_ptr(store).contents), mem.data_len(store)

    func = console_fd_write(store, memory, lambda level, data: got.append((level, data)))
    linker.define(store, "wasi_snapshot_preview1", "fd_write", func)
    instance = linker.instantiate(store, wasmtime.Module(engine, WAT))
    mem = instance.exports(store)["memory"]
    assert isinstance(mem, wasmtime.Memory)
    box["memory"] = mem
    return store, instance, got


def _poke(store: wasmtime.Store, instance: wasmtime.Instance, at: int, data: bytes) -> None:
    mem = instance.exports(store)["memory"]
    assert isinstance(mem, wasmtime.Memory)
    mem.write(store, data, at)


def test_stdout_and_stderr_get_every_iovec_in_order_and_the_count(tmp_path: Path) -> None:
    store, instance, got = _instance(tmp_path)
    w = instance.exports(store)["w"]
    _poke(store, instance, 100, b"hello, ")
    _poke(store, instance, 200, b"world\n")
    _poke(store, instance, 1000, struct.pack("<IIII", 100, 7, 200, 6))
    assert w(store, 1, 1000, 2, 2000) == 0
    assert w(store, 2, 1000, 1, 2004) == 0
    assert got == [(20, b"hello, world\n"), (30, b"hello, ")]
    mem = instance.exports(store)["memory"]
    assert isinstance(mem, wasmtime.Memory)
    assert struct.unpack("<II", mem.read(store, 2000, 2008)) == (13, 7)
    assert w(store, 1, 1000, 0, 2000) == 0 and len(got) == 2  # nothing written, no line


def test_bad_ranges_are_wasi_errors_not_traps(tmp_path: Path) -> None:
    store, instance, got = _instance(tmp_path)
    w = instance.exports(store)["w"]
    page = 65536
    assert w(store, 1, page - 4, 1, 0) == EFAULT  # the iovec runs off the memory
    _poke(store, instance, 0, struct.pack("<II", page - 2, 8))
    assert w(store, 1, 0, 1, 16) == EFAULT  # its bytes do
    _poke(store, instance, 0, struct.pack("<II", 8, 1))
    assert w(store, 1, 0, 1, -1) == EFAULT  # 0xFFFFFFFF for the count written
    assert w(store, 1, 0, 5000, 16) == EINVAL  # more iovecs than IOV_MAX
    assert got == []


def test_any_other_descriptor_is_ebadf(tmp_path: Path) -> None:
    store, instance, got = _instance(tmp_path)
    _poke(store, instance, 400, b"to a file\n")
    _poke(store, instance, 500, struct.pack("<II", 400, 10))
    w = instance.exports(store)["w"]
    assert [w(store, fd, 500, 1, 600) for fd in (0, 3, 99, -1)] == [EBADF] * 4
    assert got == []
