"""The message inspector's model: every message a recorded run delivered, from its trace.

A run's trace (``RunStore.records``; see docs/trace-format.md) has one ``ok``, ``fail`` or
``drop`` record per message handled: tick, queue sequence, sender, receiver, kind, payload
(the bytes when at most 32 long, else the first 16 hex digits of their SHA-256) and, for
``ok``, how many messages the handler sent. :class:`MessagesModel` reads them into columns;
:class:`MessagesFilterModel` narrows them to a tick, an agent (as sender or receiver) or a text.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import (
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
)

from qhybrid.models._table import TableModel
from qhybrid.runtime import printable, printable_lines
from qhybrid.runtime.wasm_pool import (
    KIND_ANSWER,
    KIND_ENVELOPE,
    KIND_GPU_DONE,
    KIND_LLM_CHAT_DONE,
    KIND_LLM_DONE,
    KIND_TASK_DONE,
    KIND_TOOL_DONE,
)

__all__ = [
    "MESSAGE_RECORDS",
    "Envelope",
    "MessageRecord",
    "MessagesFilterModel",
    "MessagesModel",
    "decode_payload",
    "parse_messages",
]

logger = logging.getLogger(__name__)

_Index = QModelIndex | QPersistentModelIndex

#: The trace records that are messages handled (or dropped).
MESSAGE_RECORDS = ("ok", "fail", "drop")
_PREFIXES = tuple(f"('{name}'" for name in MESSAGE_RECORDS)
#: The runtime itself sends as -1.
RUNTIME_SENDER = -1
#: The runtime's reserved kinds, by name (docs/agent-abi.md).
KIND_NAMES = {
    KIND_TASK_DONE: "TASK_DONE",
    KIND_GPU_DONE: "GPU_DONE",
    KIND_LLM_DONE: "LLM_DONE",
    KIND_LLM_CHAT_DONE: "LLM_CHAT_DONE",
    KIND_TOOL_DONE: "TOOL_DONE",
    KIND_ANSWER: "ANSWER",
    KIND_ENVELOPE: "ENVELOPE",
}
#: An ABI v2 envelope's header: kind, reply_to, correlation id, timer id, timer period.
_ENVELOPE = struct.Struct("<iiqii")


@dataclass(frozen=True, slots=True)
class Envelope:
    """What an ABI v2 enveloped message carries besides its payload (docs/agent-abi.md)."""

    kind: int  # the kind the agent sees
    reply_to: int  # where a reply goes (-1: the sender)
    corr: int  # correlation id (0: none)
    timer: int  # the timer that sent it (-1: none)
    body: bytes


def envelope_of(kind: int, payload: bytes | str) -> Envelope | None:
    """The envelope of a message sent with the reserved kind ``ENVELOPE``, when its payload
    is known in full (the trace's own bytes, or the store's ``payloads``)."""
    if kind != KIND_ENVELOPE or not isinstance(payload, bytes) or len(payload) < _ENVELOPE.size:
        return None
    inner, reply_to, corr, timer, _period = _ENVELOPE.unpack_from(payload)
    return Envelope(inner, reply_to, corr, timer, payload[_ENVELOPE.size :])


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One message as its trace record has it; ``payload`` is bytes, or a digest (str)."""

    n: int  # the record's position in the trace
    tick: int
    seq: int
    status: str  # ok, fail or drop
    sender: int
    receiver: int
    kind: int
    payload: bytes | str
    sent: int | None  # messages the handler sent (ok only)
    note: str = ""  # drop: the receiver's state


def parse_messages(records: Iterable[tuple[int, int, str]]) -> list[MessageRecord]:
    """The message records of ``(n, tick, line)`` trace records (other records skipped)."""
    out: list[MessageRecord] = []
    for n, _tick, line in records:
        if not line.startswith(_PREFIXES):
            continue
        try:
            rec = ast.literal_eval(line)
        except (ValueError, SyntaxError):
            logger.warning("trace record %d is not a Python literal: %.80s", n, line)
            continue
        status = rec[0]
        sent = int(rec[7]) if status == "ok" and len(rec) > 7 else None
        note = str(rec[7]) if status == "drop" and len(rec) > 7 else ""
        out.append(
            MessageRecord(
                n,
                int(rec[1]),
                int(rec[2]),
                status,
                int(rec[3]),
                int(rec[4]),
                int(rec[5]),
                rec[6],
                sent,
                note,
            )
        )
    return out


def decode_payload(payload: bytes | str, *, pretty: bool = False) -> tuple[str, str]:
    """``(how, text)``: "text" (UTF-8), "json" (pretty-printed with ``pretty``), "hex", or
    "digest" (a payload over 32 bytes, of which the trace keeps only a digest)."""
    if isinstance(payload, str):
        return "digest", f"sha256 {payload}\u2026 (over 32 bytes: the trace keeps only a digest)"
    if not payload:
        return "empty", ""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and (
        text.isprintable() or all(c.isprintable() or c in "\n\t\r" for c in text)
    ):
        try:
            value = json.loads(text)
        except ValueError:
            return "text", text if pretty else printable(text)
        if isinstance(value, (dict, list)):
            dumped = json.dumps(value, indent=2 if pretty else None, ensure_ascii=False)
            return "json", dumped
        return "text", text if pretty else printable(text)
    return "hex", payload.hex(" ") if pretty else payload.hex()


def int64s(payload: bytes) -> list[int] | None:
    """The payload as little-endian int64 values, when its length allows."""
    if not payload or len(payload) % 8:
        return None
    return [
        int.from_bytes(payload[i : i + 8], "little", signed=True) for i in range(0, len(payload), 8)
    ]


class MessagesModel(TableModel):
    """The messages of one recorded run, in trace order."""

    COLUMNS = (
        "Tick",
        "Seq",
        "Status",
        "Sender",
        "Receiver",
        "Kind",
        "Sent",
        "Corr",
        "Fuel",
        "Memory",
        "Payload",
    )
    TICK, SEQ, STATUS, SENDER, RECEIVER, KIND, SENT, CORR, FUEL, MEMORY, PAYLOAD = range(
        len(COLUMNS)
    )

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.messages: list[MessageRecord] = []
        self.agent_names: list[str] = []
        self.envelopes: list[Envelope | None] = []
        self._payload_text: list[str] = []
        self._chains: dict[int, list[int]] = {}
        self.usage: dict[tuple[int, int], tuple[int, int]] = {}

    def load(
        self,
        messages: Sequence[MessageRecord],
        agent_names: Sequence[str],
        payloads: dict[tuple[int, int], bytes] | None = None,
        usage: dict[tuple[int, int], tuple[int, int]] | None = None,
    ) -> None:
        """``payloads``: (tick, seq) -> the full payload of a message whose trace record
        keeps only a digest (``RunStore.payloads``); ``usage``: (tick, seq) -> the fuel its
        handler burnt and its agent's memory after it (``RunStore.message_usage``)."""
        if payloads:
            messages = [
                dataclasses.replace(m, payload=payloads.get((m.tick, m.seq), m.payload))
                if isinstance(m.payload, str)
                else m
                for m in messages
            ]
        self.beginResetModel()
        self.messages = list(messages)
        self.agent_names = list(agent_names)
        self.usage = dict(usage or {})
        self.envelopes = [envelope_of(m.kind, m.payload) for m in self.messages]
        self._payload_text = [
            decode_payload(e.body if e is not None else m.payload)[1]
            for m, e in zip(self.messages, self.envelopes, strict=True)
        ]
        self._chains = {}
        for row, e in enumerate(self.envelopes):
            if e is not None and e.corr != 0:
                self._chains.setdefault(e.corr, []).append(row)
        self.endResetModel()

    def chain(self, row: int) -> list[int]:
        """The rows of the messages that share this one's correlation id (the request, its
        replies, and what they led to), in trace order; ``[]`` when it has none."""
        e = self.envelopes[row] if 0 <= row < len(self.envelopes) else None
        if e is None or e.corr == 0:
            return []
        return self._chains.get(e.corr, [])

    def follow(self, row: int) -> int | None:
        """The next message of this one's reply chain (a request's reply, a reply's next
        request or reply), wrapping round to the first: one click each way along it."""
        rows = self.chain(row)
        if len(rows) < 2:
            return None
        return rows[(rows.index(row) + 1) % len(rows)]

    def back(self, row: int) -> int | None:
        """The previous message of this one's reply chain (wrapping round to the last)."""
        rows = self.chain(row)
        if len(rows) < 2:
            return None
        return rows[(rows.index(row) - 1) % len(rows)]

    def clear(self) -> None:
        self.load([], [])

    def per_tick(self) -> list[int]:
        """Messages handled per tick, from tick 0 to the last (the timeline's bars)."""
        counts = [0] * (max((m.tick for m in self.messages), default=-1) + 1)
        for m in self.messages:
            counts[m.tick] += 1
        return counts

    def name(self, agent: int) -> str:
        if agent == RUNTIME_SENDER:
            return "(runtime)"
        if 0 <= agent < len(self.agent_names):
            return self.agent_names[agent]
        return f"agent {agent}"

    def detail(self, row: int) -> str:
        """A message in full: who, when, its envelope and reply chain, and its payload
        decoded (JSON pretty-printed)."""
        m = self.messages[row]
        e = self.envelopes[row]
        body = e.body if e is not None else m.payload
        how, text = decode_payload(body, pretty=True)
        kind = (
            f"kind {e.kind} (enveloped)"
            if e is not None
            else f"kind {m.kind}" + (f" ({KIND_NAMES[m.kind]})" if m.kind in KIND_NAMES else "")
        )
        lines = [
            f"tick {m.tick}, seq {m.seq}, trace record {m.n}: {m.status}"
            + (f" ({m.note})" if m.note else ""),
            f"from {self.name(m.sender)} to {self.name(m.receiver)}, {kind}"
            + ("" if m.sent is None else f"; the handler sent {m.sent}"),
        ]
        used = self.usage.get((m.tick, m.seq))
        if used is not None:
            fuel, memory = used
            lines.append(
                ("fuel not metered" if fuel < 0 else f"its handler burnt {fuel:,} fuel")
                + (f"; the agent's memory after it: {memory:,} bytes" if memory >= 0 else "")
            )
        if e is not None:
            reply = "its sender" if e.reply_to < 0 else self.name(e.reply_to)
            lines.append(
                f"correlation {e.corr}, replies go to {reply}"
                + (f", from timer {e.timer}" if e.timer >= 0 else "")
            )
            chain = self.chain(row)
            if len(chain) > 1:
                lines.append(f"reply chain ({len(chain)} messages; Follow goes along it):")
                for r in chain:
                    c, ce = self.messages[r], self.envelopes[r]
                    mark = "->" if r == row else "  "
                    lines.append(
                        f" {mark} tick {c.tick}: {self.name(c.sender)} to {self.name(c.receiver)},"
                        f" kind {ce.kind if ce is not None else c.kind}"
                    )
        size = len(body) if isinstance(body, bytes) else ">32"
        lines += [f"payload ({how}, {size} bytes):", printable_lines(text)]
        if isinstance(body, bytes) and how == "hex":
            values = int64s(body)
            if values is not None:
                lines.append(f"as int64: {values}")
        return "\n".join(lines)

    # -- QAbstractTableModel ---------------------------------------------------------------
    def row_count(self) -> int:
        return len(self.messages)

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        m = self.messages[index.row()]
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(m, index.row(), column)
        if role == Qt.ItemDataRole.UserRole:  # sorting: numbers as numbers
            e = self.envelopes[index.row()]
            values = (
                m.tick,
                m.seq,
                m.status,
                m.sender,
                m.receiver,
                e.kind if e is not None else m.kind,
                m.sent or 0,
                e.corr if e is not None else 0,
                *self.usage.get((m.tick, m.seq), (-1, -1)),
            )
            return values[column] if column < len(values) else self._payload_text[index.row()]
        if role == Qt.ItemDataRole.ToolTipRole and column == self.PAYLOAD:
            return self.detail(index.row())
        return None

    def _display(self, m: MessageRecord, row: int, column: int) -> str:
        if column == self.TICK:
            return str(m.tick)
        if column == self.SEQ:
            return str(m.seq)
        if column == self.STATUS:
            return m.status + (f" ({m.note})" if m.note else "")
        if column == self.SENDER:
            return printable(self.name(m.sender))
        if column == self.RECEIVER:
            return printable(self.name(m.receiver))
        e = self.envelopes[row]
        if column == self.KIND:
            return KIND_NAMES.get(m.kind, str(m.kind)) if e is None else f"{e.kind} env"
        if column == self.SENT:
            return "" if m.sent is None else str(m.sent)
        if column == self.CORR:
            if e is None or e.corr == 0:
                return ""
            n = len(self.chain(row))
            return f"{e.corr:#x}" + (f" ({n})" if n > 1 else "")
        if column in (self.FUEL, self.MEMORY):
            used = self.usage.get((m.tick, m.seq))
            value = None if used is None else used[column - self.FUEL]
            if value is None or value < 0:
                return ""
            return f"{value:,}" if column == self.FUEL else f"{value / 1024:,.0f} KiB"
        return self._payload_text[row]


class MessagesFilterModel(QSortFilterProxyModel):
    """Messages of one tick, of one agent (sent or received), and/or containing a text."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.tick: int | None = None
        self.agent: int | None = None
        self.text = ""
        self.setSortRole(Qt.ItemDataRole.UserRole)

    def set_tick(self, tick: int | None) -> None:
        self._change(lambda: setattr(self, "tick", tick))

    def set_agent(self, agent: int | None) -> None:
        self._change(lambda: setattr(self, "agent", agent))

    def set_text(self, text: str) -> None:
        self._change(lambda: setattr(self, "text", text.casefold()))

    def _change(self, apply: Callable[[], None]) -> None:
        if hasattr(self, "endFilterChange"):  # Qt 6.10
            self.beginFilterChange()
            apply()
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:
            apply()
            self.invalidateRowsFilter()

    def filterAcceptsRow(self, source_row: int, source_parent: _Index) -> bool:
        model = self.sourceModel()
        assert isinstance(model, MessagesModel)
        m = model.messages[source_row]
        if self.tick is not None and m.tick != self.tick:
            return False
        if self.agent is not None and self.agent not in (m.sender, m.receiver):
            return False
        if self.text:
            hay = " ".join(
                (
                    model.name(m.sender),
                    model.name(m.receiver),
                    m.status,
                    str(m.kind),
                    model._payload_text[source_row],
                )
            ).casefold()
            return self.text in hay
        return True
