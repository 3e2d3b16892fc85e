"""The worker pool and the agent ABI: module checks, the host functions, faults, tasks, crashes.

What users rely on: a module that breaks the ABI is refused with a message naming the file and
the problem; agents get exactly the host functions the ABI documents; the same seeds give the
same messages; a misbehaving agent fails alone (its worker and its neighbours go on); CPU tasks
compute on shared tensors in the worker; a dead worker is reported as such; closing the pool
leaves no process behind.
"""

from __future__ import annotations

import asyncio
import io
import signal
import struct
from collections.abc import Awaitable, Callable, Sequence
from multiprocessing import resource_tracker
from pathlib import Path
from typing import TypeVar

import numpy as np
import psutil
import pytest
import wasmtime

from qhybrid.runtime.tensors import TensorStore
from qhybrid.runtime.wasm_pool import (
    ABI_VERSION,
    AGENT_USAGE_ROW,
    KIND_TASK_DONE,
    RESERVED_KIND_BASE,
    RUNTIME_SENDER,
    USAGE_ROW,
    AgentLoad,
    AgentModuleError,
    BatchReply,
    Delivery,
    Outcome,
    TaskRun,
    WorkerCrashed,
    WorkerError,
    WorkerPool,
    check_module,
    compile_module,
    make_engine,
    split_usage,
)
from qhybrid.runtime.wasm_pool._abi_spec import load_spec
from qhybrid.runtime.wasm_pool._agent import AgentHost, SplitMix64, WorkerContext
from qhybrid.runtime.wasm_pool._protocol import (
    ProtocolError,
    Request,
    encode,
    outcome_of,
    read_frame,
    read_frame_sync,
)
from qhybrid.runtime.wasm_pool._worker import serve

ROOT = Path(__file__).resolve().parents[2]
AGENTS = ROOT / "resources" / "agents"
MASK64 = (1 << 64) - 1
LCG = 6364136223846793005  # the multiplier relay.wat stirs its accumulator with

T = TypeVar("T")

ALL_IMPORTS = """
  (import "qhybrid" "send" (func $send (param i32 i32 i32 i32) (result i32)))
  (import "qhybrid" "log" (func $log (param i32 i32 i32)))
  (import "qhybrid" "random_u64" (func $random (result i64)))
  (import "qhybrid" "now" (func $now (result i64)))
  (import "qhybrid" "self_id" (func $self_id (result i32)))
  (import "qhybrid" "agent_count" (func $agent_count (result i32)))
  (import "qhybrid" "peer_count" (func $peer_count (result i32)))
  (import "qhybrid" "peer" (func $peer (param i32) (result i32)))
  (import "qhybrid" "lookup" (func $lookup (param i32 i32) (result i32)))
"""


def agent_wat(body: str = "(i32.const 0)", *, version: int = 1, extra: str = "") -> str:
    """A valid agent importing every host function; ``body`` is its qh_on_message."""
    return f"""
(module
  {ALL_IMPORTS}
  (memory (export "memory") 1)
  (data (i32.const 256) "sink")
  (data (i32.const 264) "nope")
  (func (export "qh_abi_version") (result i32) (i32.const {version}))
  (func (export "qh_alloc") (param $size i32) (result i32) (i32.const 1024))
  (func (export "qh_on_message")
    (param $from i32) (param $kind i32) (param $ptr i32) (param $len i32) (result i32)
    {body})
  {extra}
)"""


#: Sends every payload back to its sender with kind + 1.
ECHO = agent_wat(
    "(i32.ne (call $send (local.get $from) (i32.add (local.get $kind) (i32.const 1))"
    " (local.get $ptr) (local.get $len)) (i32.const 0))"
)

#: Misbehaves according to the message kind; kind 0 is handled fine.
BAD = agent_wat(
    """
    (if (i32.eq (local.get $kind) (i32.const 1))  ;; send from past the end of memory
      (then (return (call $send (i32.const 0) (i32.const 1) (i32.const 65530) (i32.const 100)))))
    (if (i32.eq (local.get $kind) (i32.const 2))  ;; log from a negative pointer
      (then (call $log (i32.const 20) (i32.const -5) (i32.const 3)) (return (i32.const 0))))
    (if (i32.eq (local.get $kind) (i32.const 3))
      (then unreachable))
    (if (i32.eq (local.get $kind) (i32.const 4))
      (then (return (i32.const 7))))
    (if (i32.eq (local.get $kind) (i32.const 5))  ;; send and log, then fail
      (then
        (drop (call $send (i32.const 0) (i32.const 9) (i32.const 256) (i32.const 4)))
        (call $log (i32.const 30) (i32.const 256) (i32.const 4))
        (return (i32.const 1))))
    (if (i32.eq (local.get $kind) (i32.const 6))  ;; a log longer than the host accepts
      (then (call $log (i32.const 20) (i32.const 0) (i32.const 5000)) (return (i32.const 0))))
    (i32.const 0)
    """
)

#: Reports what every host function returns, as 13 little-endian i64 values sent to itself.
PROBE = agent_wat(
    """
    (i64.store (i32.const 512) (call $now))
    (i64.store (i32.const 520) (i64.extend_i32_s (call $self_id)))
    (i64.store (i32.const 528) (i64.extend_i32_s (call $agent_count)))
    (i64.store (i32.const 536) (i64.extend_i32_s (call $peer_count)))
    (i64.store (i32.const 544) (i64.extend_i32_s (call $peer (i32.const 0))))
    (i64.store (i32.const 552) (i64.extend_i32_s (call $peer (i32.const 99))))
    (i64.store (i32.const 560) (i64.extend_i32_s (call $lookup (i32.const 256) (i32.const 4))))
    (i64.store (i32.const 568) (i64.extend_i32_s (call $lookup (i32.const 264) (i32.const 4))))
    (i64.store (i32.const 576) (call $random))
    (i64.store (i32.const 584) (call $random))
    (i64.store (i32.const 592) (i64.extend_i32_s
      (call $send (call $agent_count) (i32.const 1) (i32.const 0) (i32.const 0))))
    (i64.store (i32.const 600) (i64.extend_i32_s
      (call $send (i32.const 0) (i32.const 0x7F000000) (i32.const 0) (i32.const 0))))
    (i64.store (i32.const 608) (i64.extend_i32_s
      (call $send (i32.const 0) (i32.const -1) (i32.const 0) (i32.const 0))))
    (call $log (i32.const 30) (i32.const 256) (i32.const 4))
    (i32.ne (call $send (call $self_id) (i32.const 5) (i32.const 512) (i32.const 104))
            (i32.const 0))
    """
)

#: qh_init copies its config to 2048 (length at 2040); kind 1 sends it back to the sender.
CONFIGURED = agent_wat(
    """
    (i32.ne (call $send (local.get $from) (i32.const 1) (i32.const 2048)
                        (i32.load (i32.const 2040)))
            (i32.const 0))
    """,
    extra="""
  (func (export "qh_init") (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 2040) (local.get $len))
    (memory.copy (i32.const 2048) (local.get $ptr) (local.get $len))
    (i32.const 0))
""",
)

#: qh_init refuses to start.
INIT_FAILS = agent_wat(
    extra="""
  (func (export "qh_init") (param i32 i32) (result i32) (i32.const 3))
"""
)


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def compile_text(tmp_path: Path, name: str, wat: str) -> wasmtime.Module:
    path = write(tmp_path, f"{name}.wat", wat)
    module = compile_module(ENGINE, path)
    check_module(module, path)
    return module


ENGINE = make_engine()


def load(
    agent_id: int,
    key: str,
    *,
    name: str | None = None,
    peers: Sequence[int] = (),
    agent_count: int = 8,
    seed: int = 1,
    config: bytes = b"{}",
) -> AgentLoad:
    return AgentLoad(
        agent_id, name or f"{key}-{agent_id}", key, tuple(peers), agent_count, seed, config
    )


async def in_pool(body: Callable[[WorkerPool], Awaitable[T]], size: int = 2) -> T:
    """Await ``body`` with a started pool of ``size`` workers; the pool is always closed."""
    pool = WorkerPool(size)
    await pool.start()
    try:
        return await body(pool)
    finally:
        await pool.aclose()


def with_pool(body: Callable[[WorkerPool], Awaitable[T]], size: int = 2) -> T:
    return asyncio.run(in_pool(body, size))


# -- SplitMix64 ------------------------------------------------------------------------------


def test_splitmix64_known_values() -> None:
    rng = SplitMix64(0)
    assert [rng.next() for _ in range(3)] == [
        0xE220A8397B1DCDAF,
        0x6E789E6AA1B965F4,
        0x06C45D188009454F,
    ]


def test_splitmix64_is_a_pure_function_of_its_seed() -> None:
    a, b, c = SplitMix64(1234), SplitMix64(1234), SplitMix64(1235)
    first = [a.next() for _ in range(5)]
    assert first == [b.next() for _ in range(5)]
    assert first != [c.next() for _ in range(5)]
    assert all(0 <= v <= MASK64 for v in first)
    # Seeds are taken modulo 2**64, so negative seeds are fine and well defined.
    assert SplitMix64(-1).next() == SplitMix64(MASK64).next()


# -- module checks ---------------------------------------------------------------------------


def test_sample_agents_pass_the_checks() -> None:
    relay = AGENTS / "relay.wat"
    info = check_module(compile_module(ENGINE, relay), relay)
    assert info.path == relay
    assert set(info.imports) == {"send", "random_u64", "peer_count", "peer", "lookup", "log"}
    assert not info.has_init
    sink = AGENTS / "sink.wat"
    info = check_module(compile_module(ENGINE, sink), sink)
    assert info.imports == ("log",)
    assert not info.has_init


def test_optional_init_is_detected(tmp_path: Path) -> None:
    path = write(tmp_path, "configured.wat", CONFIGURED)
    info = check_module(compile_module(ENGINE, path), path)
    assert info.has_init
    assert len(info.imports) == 9


_VALID_EXPORTS = """
  (memory (export "memory") 1)
  (func (export "qh_abi_version") (result i32) (i32.const 1))
  (func (export "qh_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "qh_on_message") (param i32 i32 i32 i32) (result i32) (i32.const 0))
"""


@pytest.mark.parametrize(
    ("wat", "problem"),
    [
        pytest.param(
            """(module
              (memory (export "memory") 1)
              (func (export "qh_abi_version") (result i32) (i32.const 1))
              (func (export "qh_alloc") (param i32) (result i32) (i32.const 1024)))""",
            "missing required export qh_on_message (i32, i32, i32, i32) -> (i32)",
            id="missing-on-message",
        ),
        pytest.param(
            """(module
              (memory (export "memory") 1)
              (func (export "qh_abi_version") (result i32) (i32.const 1))
              (func (export "qh_alloc") (param i64) (result i32) (i32.const 1024))
              (func (export "qh_on_message") (param i32 i32 i32 i32) (result i32)
                (i32.const 0)))""",
            "export qh_alloc must have type (i32) -> (i32)",
            id="export-wrong-signature",
        ),
        pytest.param(
            """(module
              (memory (export "memory") 1)
              (func (export "qh_abi_version") (result i32) (i32.const 1))
              (func (export "qh_alloc") (param i32) (result i32) (i32.const 1024))
              (global (export "qh_on_message") i32 (i32.const 0)))""",
            "export qh_on_message must have type (i32, i32, i32, i32) -> (i32)",
            id="export-not-a-function",
        ),
        pytest.param(
            f"""(module
              {_VALID_EXPORTS}
              (func (export "qh_init") (param i32) (result i32) (i32.const 0)))""",
            "export qh_init must have type (i32, i32) -> (i32)",
            id="init-wrong-signature",
        ),
        pytest.param(
            f"""(module
              (import "wasi_snapshot_preview1" "open_the_pod_bay_doors"
                (func (param i32 i32 i32 i32) (result i32)))
              {_VALID_EXPORTS})""",
            "imports unknown WASI function wasi_snapshot_preview1.open_the_pod_bay_doors",
            id="wasi-import",
        ),
        pytest.param(
            f"""(module
              (import "qhybrid" "open_file" (func (param i32 i32) (result i32)))
              {_VALID_EXPORTS})""",
            # Every function abi.toml describes, sorted (the list grows with the ABI).
            "imports unknown host function qhybrid.open_file (ABI has: "
            + ", ".join(sorted(imp.name for imp in load_spec().imports))
            + ")",
            id="unknown-host-function",
        ),
        pytest.param(
            f"""(module
              (import "qhybrid" "send" (func (param i32 i32) (result i32)))
              {_VALID_EXPORTS})""",
            "import qhybrid.send must have type (i32, i32, i32, i32) -> (i32)",
            id="import-wrong-signature",
        ),
        pytest.param(
            f"""(module
              (import "qhybrid" "random_u64" (func (result i32)))
              {_VALID_EXPORTS})""",
            "import qhybrid.random_u64 must have type () -> (i64)",
            id="import-wrong-result",
        ),
        pytest.param(
            f"""(module
              (import "qhybrid" "now" (global i64))
              {_VALID_EXPORTS})""",
            "import qhybrid.now must have type () -> (i64)",
            id="import-not-a-function",
        ),
        pytest.param(
            """(module
              (memory 1)
              (func (export "qh_abi_version") (result i32) (i32.const 1))
              (func (export "qh_alloc") (param i32) (result i32) (i32.const 1024))
              (func (export "qh_on_message") (param i32 i32 i32 i32) (result i32)
                (i32.const 0)))""",
            "must export its linear memory as 'memory'",
            id="memory-not-exported",
        ),
    ],
)
def test_check_module_refuses_abi_violations(tmp_path: Path, wat: str, problem: str) -> None:
    path = write(tmp_path, "agent.wat", wat)
    module = compile_module(ENGINE, path)  # valid WebAssembly, just not a valid agent
    with pytest.raises(AgentModuleError) as err:
        check_module(module, path)
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    assert problem in message


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("agent.wasm", b"this is not wasm", "not a WebAssembly module (no \\0asm header)"),
        ("agent.wasm", b"(module)", "not a WebAssembly module"),
        ("agent.wasm", b"\0asm\x01\0\0\0\xff\xff", "invalid module"),
        ("agent.wat", "(module (func", "invalid module"),
        ("agent.wat", b"(module \xff\xfe)", "must be UTF-8 text"),
    ],
)
def test_compile_module_refuses_files_that_are_not_modules(
    tmp_path: Path, name: str, content: str | bytes, problem: str
) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(AgentModuleError) as err:
        compile_module(ENGINE, path)
    assert str(err.value).startswith(f"{path}: ")
    assert problem in str(err.value)


def test_compile_module_names_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.wasm"
    with pytest.raises(AgentModuleError, match="cannot read module") as err:
        compile_module(ENGINE, path)
    assert str(path) in str(err.value)


def test_binary_wasm_compiles_like_its_text(tmp_path: Path) -> None:
    binary = wasmtime.wat2wasm((AGENTS / "sink.wat").read_text())
    path = write(tmp_path, "sink.wasm", bytes(binary))
    info = check_module(compile_module(ENGINE, path), path)
    assert info.imports == ("log",)


# -- the host side of one agent (in this process) --------------------------------------------


def host(
    tmp_path: Path, wat: str, agent_load: AgentLoad, directory: dict[str, int] | None = None
) -> AgentHost:
    module = compile_text(tmp_path, agent_load.module_key, wat)
    return make_host(module, wat.encode(), agent_load, directory)


def make_host(
    module: wasmtime.Module,
    source: bytes,
    agent_load: AgentLoad,
    directory: dict[str, int] | None = None,
) -> AgentHost:
    """An agent hosted in this process the way a worker hosts it."""
    ctx = WorkerContext()
    ctx.add_module(agent_load.module_key, bytes(module.serialize()), source)
    ctx.directory.update(directory or {})
    return AgentHost(ctx, agent_load)


def test_host_functions_report_what_the_abi_promises(tmp_path: Path) -> None:
    agent = host(
        tmp_path,
        PROBE,
        load(3, "probe", peers=(3, 4, 6), agent_count=7, seed=42),
        {"sink": 5, "probe-3": 3},
    )
    outcome = agent.deliver(11, RUNTIME_SENDER, 0, b"")
    assert outcome.ok, outcome.error
    assert outcome.logs == ((30, "sink"),)
    assert len(outcome.sent) == 1
    to, kind, payload = outcome.sent[0]
    assert (to, kind) == (3, 5)
    values = struct.unpack("<13q", payload)
    rng = SplitMix64(42)
    r1, r2 = rng.next(), rng.next()
    assert values == (
        11,  # now(): the batch's tick
        3,  # self_id()
        7,  # agent_count()
        3,  # peer_count()
        3,  # peer(0)
        -1,  # peer(99): out of range
        5,  # lookup("sink")
        -1,  # lookup("nope")
        struct.unpack("<q", struct.pack("<Q", r1))[0],  # random_u64(): the agent's SplitMix64
        struct.unpack("<q", struct.pack("<Q", r2))[0],
        -1,  # send to agent_count(): unknown agent
        -2,  # send with kind RESERVED_KIND_BASE: reserved
        -2,  # send with a negative kind: reserved
    )
    assert RESERVED_KIND_BASE == 0x7F000000


def test_payloads_arrive_intact_and_sends_leave_in_order(tmp_path: Path) -> None:
    agent = host(tmp_path, ECHO, load(0, "echo"))
    payload = bytes(range(256)) * 40
    first = agent.deliver(1, 2, 40, payload)
    second = agent.deliver(2, 6, 0, b"")
    assert first == Outcome(True, ((2, 41, payload),), (), None, first.elapsed_ns)
    assert second.ok
    assert second.sent == ((6, 1, b""),)
    assert agent.handled == 2


def test_config_reaches_qh_init(tmp_path: Path) -> None:
    config = b'{"hops": 5, "name": "h\xc3\xa9"}'
    agent = host(tmp_path, CONFIGURED, load(0, "configured", config=config))
    outcome = agent.deliver(0, 1, 1, b"")
    assert outcome.ok, outcome.error
    assert outcome.sent == ((1, 1, config),)


def test_failing_qh_init_refuses_the_agent(tmp_path: Path) -> None:
    with pytest.raises(AgentModuleError, match="init-fails-0: qh_init failed: handler returned"):
        host(tmp_path, INIT_FAILS, load(0, "init-fails"))


def test_wrong_abi_version_refuses_the_agent(tmp_path: Path) -> None:
    with pytest.raises(AgentModuleError) as err:
        host(tmp_path, agent_wat(version=3), load(0, "future", name="future-0"))
    assert str(err.value) == (
        "future-0: module speaks agent ABI version 3, this runtime speaks 1, 2"
    )
    assert ABI_VERSION == 2


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        (1, "fault: send: range [65530, 65630) is outside guest memory of 65536 bytes"),
        (2, "fault: log: range [-5, -2) is outside guest memory of 65536 bytes"),
        (3, "trap (unreachable): "),
        (4, "handler returned error code 7"),
        (6, "fault: log: 5000 bytes exceeds the limit of 4096"),
    ],
)
def test_a_misbehaving_handler_fails_its_agent(tmp_path: Path, kind: int, error: str) -> None:
    agent = host(tmp_path, BAD, load(0, "bad"))
    outcome = agent.deliver(0, 1, kind, b"x")
    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith(error)
    assert outcome.sent == ()
    # A failed agent stays failed; it is not run again.
    later = agent.deliver(1, 1, 0, b"")
    assert not later.ok
    assert later.error == f"agent already failed: {outcome.error}"
    assert agent.handled == 0


def test_a_failed_message_sends_nothing_but_keeps_its_logs(tmp_path: Path) -> None:
    agent = host(tmp_path, BAD, load(0, "bad"))
    outcome = agent.deliver(0, 1, 5, b"")
    assert not outcome.ok
    assert outcome.error == "handler returned error code 1"
    assert outcome.sent == ()  # applied whole or not at all
    assert outcome.logs == ((30, "sink"),)


def test_a_payload_that_qh_alloc_cannot_hold_is_a_fault(tmp_path: Path) -> None:
    agent = host(tmp_path, ECHO, load(0, "echo"))  # one page; qh_alloc always answers 1024
    outcome = agent.deliver(0, 1, 0, bytes(65536))
    assert not outcome.ok
    assert outcome.error == (
        "fault: qh_alloc(65536) returned 1024, outside guest memory of 65536 bytes"
    )


def test_relay_grows_its_memory_for_a_large_payload() -> None:
    relay = AGENTS / "relay.wat"
    agent = make_host(
        compile_module(ENGINE, relay),
        relay.read_bytes(),
        load(0, "relay", peers=(0,), agent_count=2),
    )
    payload = struct.pack("<qq", 1, 0) + bytes(200_000)
    outcome = agent.deliver(0, 1, 1, payload)
    assert outcome.ok, outcome.error
    assert len(outcome.sent) == 1


# -- the wire protocol and the worker loop (in this process) ---------------------------------


def test_frames_round_trip_and_a_truncated_stream_is_reported() -> None:
    frames = encode(Request("load", ([1, 2],))) + encode(("ok", None))
    stream = io.BytesIO(frames)
    assert read_frame_sync(stream) == Request("load", ([1, 2],))
    assert read_frame_sync(stream) == ("ok", None)
    assert read_frame_sync(stream) is None  # a clean end
    with pytest.raises(ProtocolError, match="inside a frame header"):
        read_frame_sync(io.BytesIO(b"\x05\x00"))
    with pytest.raises(ProtocolError, match="inside a frame"):
        read_frame_sync(io.BytesIO(encode("hello")[:-1]))

    async def read_async(data: bytes) -> object:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await read_frame(reader)

    assert asyncio.run(read_async(encode({"a": 1}))) == {"a": 1}
    with pytest.raises(ProtocolError, match="the stream ended"):
        asyncio.run(read_async(encode({"a": 1})[:-2]))
    with pytest.raises(ProtocolError, match="too large"):
        asyncio.run(read_async(struct.pack("<I", (1 << 30) + 1)))


def test_worker_loop_answers_each_request_and_survives_errors(tmp_path: Path) -> None:
    future = compile_text(tmp_path, "future", agent_wat(version=3))
    echo = compile_text(tmp_path, "echo", ECHO)
    requests = [
        Request("directory", (("echo-0",),)),
        Request("module", ("future", bytes(future.serialize()))),
        Request("module", ("echo", bytes(echo.serialize()))),
        Request("load", ([load(0, "future")],)),
        Request("load", ([load(1, "missing")],)),
        Request("frobnicate"),
        Request("load", ([load(0, "echo")],)),
        Request("batch", (3, [Delivery(0, 2, 7, b"hi"), Delivery(5, 2, 7, b"")], [])),
        # Without the usage rows (the parent asks for them only while someone reads them):
        Request("batch", (4, [Delivery(0, 2, 7, b"ho")], [], [], False)),
        Request("batch", (5, [Delivery(0, 2, 7, b"hu")], [], [], False)),
        Request("usage"),
        Request("usage"),
        Request("shutdown"),
        Request("directory", ((),)),  # never read: the worker stopped at shutdown
    ]
    stdin = io.BytesIO(b"".join(encode(r) for r in requests))
    stdout = io.BytesIO()
    assert serve(stdin, stdout) == 0
    stdout.seek(0)
    replies = []
    while (frame := read_frame_sync(stdout)) is not None:
        replies.append(frame)
    assert replies[0][0] == "ready"
    assert replies[1:4] == [("ok", None)] * 3
    assert replies[4][0] == "module-error"
    assert "ABI version 3" in replies[4][1]
    assert replies[5] == ("error", "KeyError: 'missing'")
    assert replies[6] == ("error", "ValueError: unknown request 'frobnicate'")
    assert replies[7] == ("ok", None)
    status, batch = replies[8]
    assert status == "ok"
    # On the wire a batch reply's outcomes are compact: what a plain handled message sent (a
    # tuple), or an Outcome's fields in a list (outcome_of turns either into an Outcome).
    outcomes, tasks, busy_ns, usage = batch
    assert tasks == () and busy_ns > 0
    # The usage report: the batch's totals, each delivery's fuel and memory (agent 5 is not
    # here: -1, -1), then one row per agent of the batch: fuel so far, memory, fuel in its
    # last tick.
    (total, worker_memory), pairs, rows = split_usage(usage)
    ((agent, fuel, memory, last),) = AGENT_USAGE_ROW.iter_unpack(rows)
    assert agent == 0 and fuel > 0 and memory >= 65536 and last == fuel
    assert total == fuel and worker_memory == memory
    assert list(struct.iter_unpack("<qq", pairs)) == [(fuel, memory), (-1, -1)]
    assert outcomes[0] == ((2, 8, b"hi"),) and isinstance(outcomes[1], list)
    first, second = (outcome_of(o) for o in outcomes)
    assert first.ok
    assert first.sent == ((2, 8, b"hi"),)
    assert second == Outcome(False, error="agent 5 is not on this worker")
    # Batches that do not ask for the rows carry the totals alone; a usage request then
    # gives each agent's row once (its totals since start, its last tick's fuel).
    totals = [USAGE_ROW.unpack(reply[1][3]) for reply in replies[9:11]]
    assert [t[1] for t in totals] == [fuel, fuel]  # the same handler, the same payload size
    ((agent, fuel_now, _, last),) = AGENT_USAGE_ROW.iter_unpack(replies[11][1])
    assert agent == 0 and fuel_now == 3 * fuel and last == fuel
    assert replies[12] == ("ok", b"")
    assert len(replies) == 13


# -- the pool --------------------------------------------------------------------------------


def test_pool_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        WorkerPool(0)


def _relay_model(
    rngs: dict[int, SplitMix64], agent: int, hops: int, acc: int, peers: Sequence[int], sink: int
) -> tuple[int, int, bytes]:
    """What relay.wat sends for a kind-1 message, computed in Python."""
    rng = rngs[agent]
    acc = (acc * LCG + rng.next()) & MASK64
    if hops > 0:
        to = peers[rng.next() % len(peers)]
        return to, 1, struct.pack("<qQ", hops - 1, acc)
    return sink, 2, struct.pack("<Q", acc)


RELAY_NAMES = ["relay-0", "relay-1", "sink", "relay-3"]
RELAY_PEERS = (0, 1, 3)
SINK = 2


async def _install_samples(pool: WorkerPool) -> None:
    await pool.set_directory(RELAY_NAMES)
    for key in ("relay", "sink"):
        module = compile_module(ENGINE, AGENTS / f"{key}.wat")
        await pool.install_module(key, bytes(module.serialize()))
    count = len(RELAY_NAMES)
    worker_of = {0: 0, 1: 1, SINK: 0, 3: 1}
    loads: list[list[AgentLoad]] = [[], []]
    for agent_id, name in enumerate(RELAY_NAMES):
        key = "sink" if agent_id == SINK else "relay"
        peers = (SINK,) if agent_id == SINK else RELAY_PEERS
        loads[worker_of[agent_id]].append(
            AgentLoad(agent_id, name, key, peers, count, 1000 + agent_id, b"{}")
        )
    for index, batch in enumerate(loads):
        await pool.load_agents(index, batch)


async def _relay_chain(pool: WorkerPool, hops: int, acc: int) -> list[tuple[int, Outcome]]:
    """Deliver one token to relay-0 and follow the messages tick by tick until none are left."""
    worker_of = {0: 0, 1: 1, SINK: 0, 3: 1}
    pending = [Delivery(0, RUNTIME_SENDER, 1, struct.pack("<qQ", hops, acc))]
    trace: list[tuple[int, Outcome]] = []
    tick = 0
    while pending:
        by_worker: dict[int, list[Delivery]] = {}
        for d in pending:
            by_worker.setdefault(worker_of[d.agent_id], []).append(d)
        workers = sorted(by_worker)
        replies = await asyncio.gather(*(pool.run_batch(w, tick, by_worker[w]) for w in workers))
        pending = []
        for w, reply in zip(workers, replies, strict=True):
            for d, outcome in zip(by_worker[w], reply.outcomes, strict=True):
                trace.append((d.agent_id, outcome))
                pending.extend(Delivery(to, d.agent_id, k, p) for to, k, p in outcome.sent)
        tick += 1
    return trace


def test_relay_chain_across_two_workers_matches_the_model() -> None:
    hops, acc = 4, 77

    async def body(pool: WorkerPool) -> list[tuple[int, Outcome]]:
        await _install_samples(pool)
        return await _relay_chain(pool, hops, acc)

    trace = with_pool(body)
    rngs = {i: SplitMix64(1000 + i) for i in range(len(RELAY_NAMES))}
    # hops+1 relay steps, then the sink.
    assert len(trace) == hops + 2
    agent, cur_hops, cur_acc = 0, hops, acc
    for step, (agent_id, outcome) in enumerate(trace[:-1]):
        assert agent_id == agent
        assert outcome.ok, outcome.error
        expected = _relay_model(rngs, agent, cur_hops, cur_acc, RELAY_PEERS, SINK)
        assert outcome.sent == (expected,)
        to, kind, payload = expected
        if step < hops:
            assert kind == 1
            assert to in RELAY_PEERS
            assert outcome.logs == ()
            cur_hops, cur_acc = struct.unpack("<qQ", payload)
            assert cur_hops == hops - step - 1
        else:
            assert (to, kind, len(payload)) == (SINK, 2, 8)
            assert outcome.logs == ((20, "relay: chain finished"),)
        agent = to
    sink_id, sink_outcome = trace[-1]
    assert sink_id == SINK
    assert sink_outcome.ok
    assert sink_outcome.sent == ()


def test_same_seeds_give_the_same_messages_and_other_seeds_do_not() -> None:
    async def run(seed_offset: int) -> list[tuple[int, tuple[tuple[int, int, bytes], ...]]]:
        async def body(pool: WorkerPool) -> list[tuple[int, tuple[tuple[int, int, bytes], ...]]]:
            await pool.set_directory(RELAY_NAMES)
            for key in ("relay", "sink"):
                module = compile_module(ENGINE, AGENTS / f"{key}.wat")
                await pool.install_module(key, bytes(module.serialize()))
            await pool.load_agents(
                0,
                [
                    AgentLoad(0, "relay-0", "relay", RELAY_PEERS, 4, seed_offset, b"{}"),
                    AgentLoad(SINK, "sink", "sink", (SINK,), 4, seed_offset + 2, b"{}"),
                ],
            )
            await pool.load_agents(
                1,
                [
                    AgentLoad(1, "relay-1", "relay", RELAY_PEERS, 4, seed_offset + 1, b"{}"),
                    AgentLoad(3, "relay-3", "relay", RELAY_PEERS, 4, seed_offset + 3, b"{}"),
                ],
            )
            trace = await _relay_chain(pool, 6, 1)
            return [(agent, outcome.sent) for agent, outcome in trace]

        return await in_pool(body)

    async def both() -> list[list[tuple[int, tuple[tuple[int, int, bytes], ...]]]]:
        # Three independent pools side by side: two with one seed, one with another.
        return list(await asyncio.gather(run(5), run(5), run(6)))

    first, again, other = asyncio.run(both())
    assert first == again
    assert first != other
    assert first[-1][0] == SINK
    assert other[-1][0] == SINK


def test_sink_counts_results_and_task_notices_and_relay_refuses_short_tokens() -> None:
    async def body(pool: WorkerPool) -> BatchReply:
        await _install_samples(pool)
        return await pool.run_batch(
            0,
            9,
            [
                Delivery(SINK, 0, 2, struct.pack("<q", 42)),
                Delivery(SINK, RUNTIME_SENDER, KIND_TASK_DONE, b""),
                Delivery(SINK, 0, 99, b"ignored"),
                Delivery(0, RUNTIME_SENDER, 1, b"short"),
            ],
        )

    reply = with_pool(body)
    sink_result, notice, other, short = reply.outcomes
    assert sink_result.ok and sink_result.sent == () and sink_result.logs == ()
    assert notice.ok and notice.logs == ((20, "sink: a task finished"),)
    assert other.ok and other.sent == ()
    assert not short.ok
    assert short.error == "handler returned error code 1"
    assert reply.tasks == ()


def test_faulting_agents_fail_alone_and_their_worker_goes_on(tmp_path: Path) -> None:
    bad = compile_text(tmp_path, "bad", BAD)
    echo = compile_text(tmp_path, "echo", ECHO)

    async def body(pool: WorkerPool) -> tuple[BatchReply, BatchReply]:
        await pool.set_directory([f"agent-{i}" for i in range(6)])
        await pool.install_module("bad", bytes(bad.serialize()))
        await pool.install_module("echo", bytes(echo.serialize()))
        await pool.load_agents(
            0, [load(i, "bad", agent_count=6) for i in range(4)] + [load(4, "echo", agent_count=6)]
        )
        first = await pool.run_batch(
            0,
            1,
            [
                Delivery(0, 4, 1, b"x"),  # send from outside memory
                Delivery(4, 5, 10, b"still here"),
                Delivery(1, 4, 2, b"x"),  # log from outside memory
                Delivery(2, 4, 3, b"x"),  # unreachable
                Delivery(3, 4, 4, b"x"),  # returns 7
                Delivery(4, 5, 20, b"and here"),
            ],
        )
        second = await pool.run_batch(
            0,
            2,
            [
                Delivery(0, 4, 0, b""),
                Delivery(4, 5, 30, b"later too"),
            ],
        )
        return first, second

    first, second = with_pool(body, size=1)
    send_fault, echo1, log_fault, trap, code, echo2 = first.outcomes
    assert not send_fault.ok
    assert send_fault.error is not None and send_fault.error.startswith("fault: send:")
    assert not log_fault.ok
    assert log_fault.error is not None and log_fault.error.startswith("fault: log:")
    assert not trap.ok
    assert trap.error is not None and "trap" in trap.error and "unreachable" in trap.error
    assert not code.ok and code.error == "handler returned error code 7"
    assert echo1.ok and echo1.sent == ((5, 11, b"still here"),)
    assert echo2.ok and echo2.sent == ((5, 21, b"and here"),)
    again, echo3 = second.outcomes
    assert not again.ok and again.error is not None
    assert again.error.startswith("agent already failed: fault: send:")
    assert echo3.ok and echo3.sent == ((5, 31, b"later too"),)


def test_loading_an_agent_of_another_abi_version_fails_cleanly(tmp_path: Path) -> None:
    future = compile_text(tmp_path, "future", agent_wat(version=3))
    echo = compile_text(tmp_path, "echo", ECHO)

    async def body(pool: WorkerPool) -> tuple[str, str, BatchReply]:
        await pool.set_directory(["future-0", "echo-1"])
        await pool.install_module("future", bytes(future.serialize()))
        await pool.install_module("echo", bytes(echo.serialize()))
        with pytest.raises(AgentModuleError) as version_err:
            await pool.load_agents(0, [load(0, "future", agent_count=2)])
        with pytest.raises(WorkerError) as key_err:
            await pool.load_agents(1, [load(0, "never-installed", agent_count=2)])
        assert not isinstance(key_err.value, WorkerCrashed)
        # Both workers are still there and take more work.
        await pool.load_agents(1, [load(1, "echo", agent_count=2)])
        reply = await pool.run_batch(1, 0, [Delivery(1, 0, 1, b"ok?")])
        return str(version_err.value), str(key_err.value), reply

    version_msg, key_msg, reply = with_pool(body)
    assert "module speaks agent ABI version 3" in version_msg
    assert "this runtime speaks 1, 2" in version_msg
    assert key_msg.startswith("worker 1: KeyError")
    assert reply.outcomes[0].ok
    assert reply.outcomes[0].sent == ((0, 2, b"ok?"),)


@pytest.fixture(scope="module")
def _resource_tracker() -> None:
    # TensorStore's segments register with multiprocessing's resource tracker, a child process
    # that lives for the session; start it before the per-test leak check sees it appear.
    resource_tracker.ensure_running()


@pytest.mark.usefixtures("_resource_tracker")
def test_cpu_tasks_compute_on_shared_tensors_in_the_worker() -> None:
    rng = np.random.default_rng(12)
    a_src = rng.standard_normal((5, 3)).astype(np.float32)
    b_src = rng.standard_normal((3, 4)).astype(np.float32)
    with TensorStore() as store:
        a = store.from_array(a_src)
        b = store.from_array(b_src)
        out = store.create((5, 4), np.float32)
        scaled = store.create((5, 3), np.float32)
        gone = store.create((5, 4), np.float32)
        gone_handle = gone.handle
        gone.close()
        tasks = [
            TaskRun(1, "matmul", (a.handle, b.handle), out.handle),
            TaskRun(2, "scale", (a.handle,), scaled.handle, (("factor", -2.0),)),
            TaskRun(3, "matmul", (a.handle, a.handle), out.handle),
            TaskRun(4, "conv2d", (a.handle,), scaled.handle),
            TaskRun(5, "matmul", (a.handle, b.handle), gone_handle),
        ]

        async def body(pool: WorkerPool) -> BatchReply:
            return await pool.run_batch(1, 0, [], tasks)

        reply = with_pool(body)
        ok_mm, ok_scale, bad_shape, bad_op, bad_out = reply.tasks
        assert ok_mm.ok and ok_mm.error is None
        np.testing.assert_allclose(out.array, a_src @ b_src, rtol=1e-5, atol=1e-6)
        assert ok_scale.ok
        np.testing.assert_array_equal(scaled.array, a_src * np.float32(-2.0))
        assert not bad_shape.ok
        assert bad_shape.error == "OpError: matmul inner dimensions differ: [5, 3] @ [5, 3]"
        assert not bad_op.ok
        assert bad_op.error is not None and bad_op.error.startswith("OpError: unknown op 'conv2d'")
        assert not bad_out.ok
        assert bad_out.error is not None and bad_out.error.startswith("FileNotFoundError")
        # The failed tasks did not touch the results of the good ones.
        np.testing.assert_allclose(out.array, a_src @ b_src, rtol=1e-5, atol=1e-6)
        # The worker mapped the tensors but the store still owns them.
        assert store.stats().tensors == 4
        for t in (a, b, out, scaled):
            t.close()


def test_a_killed_worker_is_reported_and_the_pool_closes_cleanly() -> None:
    async def main() -> None:
        pool = WorkerPool(2)
        await pool.start()
        pids = pool.pids
        try:
            assert len(pids) == 2
            assert all(psutil.pid_exists(p) for p in pids)
            pool.kill_worker(0)
            with pytest.raises(WorkerCrashed) as err:
                await pool.run_batch(0, 0, [])
            assert err.value.index == 0
            assert err.value.pid == pids[0]
            assert err.value.returncode == -signal.SIGKILL
            assert str(err.value) == f"worker 0 (pid {pids[0]}) died: killed by SIGKILL"
            assert isinstance(err.value, WorkerError)
            # The other worker is unaffected.
            reply = await pool.run_batch(1, 0, [])
            assert reply.outcomes == () and reply.tasks == ()
        finally:
            await pool.aclose()
        await pool.aclose()  # idempotent
        mine = {p.pid for p in psutil.Process().children(recursive=True)}
        assert not mine & set(pids)
        with pytest.raises(WorkerError, match="closed"):
            await pool.run_batch(1, 0, [])

    asyncio.run(main())


def test_aclose_stops_every_worker() -> None:
    async def main() -> list[int]:
        pool = WorkerPool(3)
        await pool.start()
        pids = pool.pids
        await pool.aclose()
        assert pool.pids == []
        await pool.aclose()
        return pids

    pids = asyncio.run(main())
    assert len(set(pids)) == 3
    mine = {p.pid for p in psutil.Process().children(recursive=True)}
    assert not mine & set(pids)


def test_a_new_directory_reaches_agents_already_loaded() -> None:
    async def body(pool: WorkerPool) -> Outcome:
        await pool.set_directory(["relay-0"])
        module = compile_module(ENGINE, AGENTS / "relay.wat")
        await pool.install_module("relay", bytes(module.serialize()))
        await pool.load_agents(0, [load(0, "relay", name="relay-0", peers=(0,), agent_count=3)])
        await pool.set_directory(["relay-0", "other", "sink"])
        reply = await pool.run_batch(0, 0, [Delivery(0, RUNTIME_SENDER, 1, bytes(16))])
        return reply.outcomes[0]

    outcome = with_pool(body, size=1)
    assert outcome.ok, outcome.error
    assert [(to, kind) for to, kind, _ in outcome.sent] == [(SINK, 2)]
