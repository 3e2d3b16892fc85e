"""A worker reply over the frame bound names its agent (issue 12, item 4).

What users rely on: when the outcomes of one worker's batch are too large for a reply, the
worker does not die of it (a crash that named nobody); the agent whose outcome is too large
gets a failed message that names it, so its ``on_error`` policy applies, and the other agents'
outcomes come back as usual.
"""

from __future__ import annotations

import io

import pytest
import wasmtime

from qhybrid.runtime.wasm_pool import _frames, make_engine
from qhybrid.runtime.wasm_pool._protocol import (
    AgentLoad,
    Request,
    encode,
    outcome_of,
    read_frame_sync,
)
from qhybrid.runtime.wasm_pool._worker import serve

# Kind 1 from the runtime: send 2 MiB to itself; kind 2: send 5 bytes to itself.
SENDER = """
(module
  (import "qhybrid" "send" (func $send (param i32 i32 i32 i32) (result i32)))
  (import "qhybrid" "self_id" (func $self (result i32)))
  (memory (export "memory") 64)
  (func (export "qh_abi_version") (result i32) (i32.const 1))
  (func (export "qh_alloc") (param i32) (result i32) (i32.const 512))
  (func (export "qh_on_message") (param $from i32) (param $kind i32) (param i32) (param i32)
    (result i32)
    (if (i32.ne (local.get $from) (i32.const -1)) (then (return (i32.const 0))))
    (if (i32.eq (local.get $kind) (i32.const 1)) (then
      (drop (call $send (call $self) (i32.const 9) (i32.const 4096) (i32.const 2097152)))))
    (if (i32.eq (local.get $kind) (i32.const 2)) (then
      (drop (call $send (call $self) (i32.const 9) (i32.const 4096) (i32.const 5)))))
    (i32.const 0)))
"""


def _worker_replies(requests: list[Request]) -> list[object]:
    stdin = io.BytesIO(b"".join(encode(r) for r in requests))
    stdout = io.BytesIO()
    assert serve(stdin, stdout) == 0
    stdout.seek(0)
    replies = []
    while (reply := read_frame_sync(stdout)) is not None:
        replies.append(reply)
    return replies


def test_an_outcome_over_the_bound_fails_its_agent_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A bound of 1 MiB instead of 5 GiB: the same code path, without gigabytes in a test.
    monkeypatch.setattr(_frames, "CHUNK_BYTES", 1 << 16)
    monkeypatch.setattr(_frames, "MAX_MESSAGE_BYTES", 1 << 20)
    serialized = wasmtime.Module(make_engine(), SENDER).serialize()
    loads = [
        AgentLoad(0, "bulky", "sender", (0, 1), 2, 1, b"{}"),
        AgentLoad(1, "small", "sender", (0, 1), 2, 2, b"{}"),
    ]
    deliveries = [(0, -1, 1, b""), (1, -1, 2, b"")]
    replies = _worker_replies(
        [
            Request("module", ("sender", bytes(serialized), bytes(wasmtime.wat2wasm(SENDER)))),
            Request("load", (loads,)),
            Request("batch", (0, deliveries, [])),
            Request("snapshot", ([0, 1],)),
        ]
    )
    ready, module, load, batch, snapshot = replies
    assert ready[0] == "ready" and module == ("ok", None) and load == ("ok", None)
    status, (outcomes, *_rest) = batch  # then the tasks, the busy time, the usage report
    assert status == "ok"
    bulky, small = (outcome_of(o) for o in outcomes)  # the wire's forms
    assert not bulky.ok and bulky.sent == ()
    assert bulky.error is not None and bulky.error.startswith("agent bulky: ")
    assert "larger than the 1048576 bytes" in bulky.error
    assert small.ok and small.sent == ((1, 9, b"\0" * 5),)
    # The worker went on: the next request was answered.
    status, snaps = snapshot
    assert status == "ok" and set(snaps) == {0, 1}


def test_a_snapshot_over_the_bound_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from qhybrid.runtime.wasm_pool._reply_bound import bound_reply

    monkeypatch.setattr(_frames, "MAX_MESSAGE_BYTES", 1 << 20)
    reply = ("ok", {0: b"x" * (2 << 20), 1: b"small"})
    status, snaps = bound_reply(Request("snapshot", ([0, 1],)), reply, {0: "big", 1: "tiny"}.get)
    assert status == "ok" and snaps[1] == b"small"
    assert isinstance(snaps[0], str) and snaps[0].startswith("agent big: its snapshot of ")
