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
