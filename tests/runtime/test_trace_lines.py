"""The trace's lines (runtime/_trace.py): a record's line is made when the record is, and the
commit's hot path makes a handled message's line by OK_LINE; the hash is the SHA-256 of the
``repr`` lines whoever made them, so it is the hash of every earlier release."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from qhybrid.runtime._trace import OK_LINE, TraceRecorder

ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
payload_field = st.binary(max_size=32) | st.text(alphabet="0123456789abcdef", max_size=16)


@given(ints, ints, ints, ints, ints, payload_field, st.integers(0, 1000))
def test_ok_line_is_the_records_repr(
    tick: int, seq: int, sender: int, dst: int, kind: int, field: bytes | str, sent: int
) -> None:
    fields = (tick, seq, sender, dst, kind, field, sent)
    assert OK_LINE % fields == repr(("ok", *fields))


def test_the_hash_is_of_the_repr_lines_in_order() -> None:
    trace = TraceRecorder()
    add_record, add_line = trace.appenders()
    ok = (3, 7, 0, 1, 2, b"\x00'\"\\", 1)
    add_record(("ok", *ok))
    add_line(OK_LINE % ok)
    trace.record("drop", 3, 8, 0, 1, 2, "deadbeefdeadbeef", "failed")
    assert [r[0] for r in trace.flush()] == ["ok", "drop"]
    trace.record("end", 4, "completed")
    lines = [
        repr(("ok", *ok)),
        repr(("drop", 3, 8, 0, 1, 2, "deadbeefdeadbeef", "failed")),
        repr(("end", 4, "completed")),
    ]
    # Where the batches break does not matter: one update of every line, each ended by "\n".
    assert trace.hash == hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest()
    assert trace.records == 3


def test_a_sink_gets_each_batch_with_its_lines() -> None:
    trace = TraceRecorder()
    got: list[tuple[list[tuple[object, ...]], list[str]]] = []
    trace.sink = lambda records, lines: got.append((list(records), list(lines)))
    trace.record("log", 1, 2, 20, "hello")
    trace.flush()
    trace.flush()  # nothing new: no call
    assert got == [([("log", 1, 2, 20, "hello")], [repr(("log", 1, 2, 20, "hello"))])]
