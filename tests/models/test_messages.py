"""Payloads decoded as a user reads them; the trace's message records parsed."""

from __future__ import annotations

from qhybrid.models import MessagesFilterModel, MessagesModel, decode_payload, parse_messages


def test_payloads_decode_as_text_json_hex_or_digest() -> None:
    assert decode_payload(b"hello there") == ("text", "hello there")
    how, text = decode_payload(b'{"a": [1, 2], "b": "x"}', pretty=True)
    assert how == "json" and text == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": "x"\n}'
    assert decode_payload(b'{"a":1}') == ("json", '{"a": 1}')
    assert decode_payload(b"\x00\x01\xff") == ("hex", "0001ff")
    assert decode_payload(b"\x00\x01\xff", pretty=True) == ("hex", "00 01 ff")
    how, text = decode_payload("0123456789abcdef")
    assert how == "digest" and "0123456789abcdef" in text
    assert decode_payload(b"line\nbreak", pretty=True) == ("text", "line\nbreak")


def test_message_records_parse_and_filter_by_tick_agent_and_text() -> None:
    records = [
        (0, 0, "('llm_model', 0, 0, 'm', 'llama', 'cpu')"),
        (1, 0, "('ok', 0, 5, -1, 0, 1, b'hi', 1)"),
        (2, 1, "('ok', 1, 6, 0, 1, 1, b'\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00', 0)"),
        (3, 1, "('log', 1, 6, 20, 'a line')"),
        (4, 2, "('fail', 2, 7, 1, 2, 3, 'deadbeefdeadbeef')"),
        (5, 3, "('drop', 3, 8, 0, 2, 1, b'', 'failed')"),
    ]
    messages = parse_messages(records)
    assert [(m.n, m.status, m.sender, m.receiver) for m in messages] == [
        (1, "ok", -1, 0),
        (2, "ok", 0, 1),
        (4, "fail", 1, 2),
        (5, "drop", 0, 2),
    ]
    assert messages[0].sent == 1 and messages[3].note == "failed"
    model = MessagesModel()
    model.load(messages, ["alice", "bob", "carol"])
    assert model.index(0, MessagesModel.SENDER).data() == "(runtime)"
    assert model.index(0, MessagesModel.PAYLOAD).data() == "hi"
    assert "as int64: [1]" in model.detail(1)
    assert "from bob to carol, kind 3" in model.detail(2)
    proxy = MessagesFilterModel()
    proxy.setSourceModel(model)
    proxy.set_tick(1)
    assert proxy.rowCount() == 1
    proxy.set_tick(None)
    proxy.set_agent(2)  # carol, as receiver
    assert proxy.rowCount() == 2
    proxy.set_agent(None)
    proxy.set_text("ALICE")
    assert proxy.rowCount() == 3  # runtime->alice, alice->bob, alice->carol
    proxy.set_text("deadbeef")
    assert proxy.rowCount() == 1


def test_envelopes_decode_and_reply_chains_follow_both_ways() -> None:
    import struct

    from qhybrid.runtime.wasm_pool import KIND_ENVELOPE, KIND_TOOL_DONE

    def env(kind: int, corr: int, body: bytes, reply_to: int = -1) -> bytes:
        return struct.pack("<iiqii", kind, reply_to, corr, -1, 0) + body

    job = env(10, 7, b'{"n": 0}')
    records = [
        (0, 1, f"('ok', 1, 2, 0, 1, {KIND_ENVELOPE}, 'aaaaaaaaaaaaaaaa', 1)"),  # digest only
        (1, 1, f"('ok', 1, 3, 0, 2, {KIND_ENVELOPE}, {env(10, 8, b'')!r}, 1)"),
        (2, 2, f"('ok', 2, 5, 1, 0, {KIND_ENVELOPE}, 'bbbbbbbbbbbbbbbb', 0)"),
        (3, 3, f"('ok', 3, 9, -1, 0, {KIND_TOOL_DONE}, b'{{}}', 0)"),
    ]
    model = MessagesModel()
    # The long payloads in full come from the store, by (tick, seq).
    model.load(
        parse_messages(records), ["boss", "w1", "w2"], {(1, 2): job, (2, 5): env(11, 7, b"ok")}
    )
    assert model.index(0, MessagesModel.KIND).data() == "10 env"
    assert model.index(0, MessagesModel.PAYLOAD).data() == '{"n": 0}'
    assert model.index(0, MessagesModel.CORR).data() == "0x7 (2)"
    assert model.index(1, MessagesModel.CORR).data() == "0x8"  # a request with no reply yet
    assert model.index(3, MessagesModel.KIND).data() == "TOOL_DONE"
    assert model.chain(0) == [0, 2] and model.chain(3) == []
    assert model.follow(0) == 2 and model.follow(2) == 0  # to the reply, and round again
    assert model.back(2) == 0 and model.follow(1) is None
    detail = model.detail(2)
    assert "correlation 7, replies go to its sender" in detail
    assert "reply chain (2 messages" in detail and "tick 1: boss to w1, kind 10" in detail
