"""The host functions that ABI version 2 adds, for one agent instance.

:class:`V2Calls` belongs to an :class:`~qhybrid.runtime.wasm_pool._agent.AgentHost` and
implements envelopes, timers, groups and topics, config, lifecycle, LLM chat, tools and
questions (``docs/agent-abi.md``, "Version 2"). Like version 1, nothing here acts at once:
messages go to the handler's outbox, and the rest becomes effects that the orchestrator
applies at the end of the tick (``("delay", ...)``, ``("publish", ...)`` and so on, see
:data:`V2_EFFECTS`), or nothing at all when the message fails.

An enveloped message or a timer fire travels as kind ``ENVELOPE`` with a 24-byte header
(:data:`ENVELOPE_HEADER`); :meth:`V2Calls.unwrap` strips it before the agent sees it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qhybrid.runtime.wasm_pool._abi import KIND_ENVELOPE, RESERVED_KIND_BASE
from qhybrid.runtime.wasm_pool._abi_spec import load_spec
from qhybrid.runtime.wasm_pool._tensor_calls import TensorCalls

if TYPE_CHECKING:
    from qhybrid.runtime.wasm_pool._agent import AgentHost

_SPEC = load_spec()
OK = _SPEC.constant("OK")
ERR_NOT_FOUND = _SPEC.constant("ERR_NOT_FOUND")
ERR_RESERVED_KIND = _SPEC.constant("ERR_RESERVED_KIND")
ERR_UNKNOWN_AGENT = _SPEC.constant("ERR_UNKNOWN_AGENT")
ERR_BAD_ARG = _SPEC.constant("ERR_BAD_ARG")
ERR_NOT_GRANTED = _SPEC.constant("ERR_NOT_GRANTED")
ERR_NO_MESSAGE = _SPEC.constant("ERR_NO_MESSAGE")
_MAX_PAYLOAD = _SPEC.constant("MESSAGE_MAX")
_MAX_NAME = _SPEC.constant("NAME_MAX")
_MAX_TEXT = _SPEC.constant("LOG_MAX")
_MAX_REQUEST = _SPEC.constant("LLM_PROMPT_MAX")

#: kind, reply_to, correlation id, timer id (-1: none), timer period (0: once).
ENVELOPE_HEADER = struct.Struct("<iiqii")
#: The effects this module produces (the orchestrator hands them to its agent services).
V2_EFFECTS = frozenset(
    {
        "delay",
        "publish",
        "subscribe",
        "unsubscribe",
        "stop_self",
        "llm_chat",
        "llm_cancel",
        "tool",
        "ask",
        # Lifecycle (the orchestrator's ``_lifecycle``): spawn, stop the run, its refusal.
        "spawn",
        "stop_run",
        "stop_run_refused",
    }
)


def wrap(
    kind: int,
    payload: bytes,
    *,
    reply_to: int = -1,
    corr: int = 0,
    timer: int = -1,
    period: int = 0,
) -> bytes:
    """The wire payload of an enveloped message (sent with kind ``ENVELOPE``)."""
    return ENVELOPE_HEADER.pack(kind, reply_to, corr, timer, period) + payload


def _good_name(name: str) -> bool:
    """A name a spawned agent may take: letters, digits, ``_`` and ``-``, up to 64."""
    return len(name) <= 64 and all(c.isascii() and (c.isalnum() or c in "_-") for c in name)


def _bad_kind(kind: int) -> bool:
    return kind < 0 or kind >= RESERVED_KIND_BASE


class V2Calls:
    """Version 2 host functions and the per-agent state they keep (snapshotted with the
    host's own, see :meth:`state` and :meth:`set_state`)."""

    def __init__(self, host: AgentHost, tools: tuple[str, ...] = ()) -> None:
        self.host = host
        self.tools = frozenset(tools)
        # The envelope of the message being handled.
        self.corr = 0
        self.reply_to = -1
        self.timer = -1
        # Persistent state.
        self.next_corr = 0
        self.next_timer = 0
        self.timers: dict[int, int] = {}  # live timer id -> period (0: once)
        self.next_call = 0
        self.next_question = 0
        self.next_spawn = 0
        self.error_text: str | None = None
        self._config: Any = None
        self._config_loaded = False
        # What this message changed in the timers, applied only if it succeeds.
        self._pending_timers: dict[int, int | None] = {}
        #: tensor_release and gpu_submit_into (``_tensor_calls``).
        self.tensor_calls = TensorCalls(host)

    # -- state --------------------------------------------------------------------------
    def state(self) -> tuple[object, ...]:
        return (
            self.next_corr,
            self.next_timer,
            tuple(sorted(self.timers.items())),
            self.next_call,
            self.next_question,
            self.next_spawn,
        )

    def set_state(self, state: tuple[Any, ...]) -> None:
        self.next_corr, self.next_timer, timers, self.next_call, self.next_question = state[:5]
        self.next_spawn = state[5] if len(state) > 5 else 0  # snapshots made before spawn
        self.timers = dict(timers)

    def begin(self) -> None:
        """Before each call into the guest."""
        self.corr, self.reply_to, self.timer = 0, -1, -1
        self.error_text = None
        self._pending_timers = {}
        self.tensor_calls.begin()

    def commit(self) -> None:
        """After a call that succeeded: its timer changes take effect."""
        for timer, period in self._pending_timers.items():
            if period is None:
                self.timers.pop(timer, None)
            else:
                self.timers[timer] = period
        self._pending_timers = {}

    def unwrap(self, sender: int, kind: int, payload: bytes) -> tuple[int, int, bytes] | None:
        """Strip the envelope of an incoming message and remember it; ``None`` for a fire of a
        timer cancelled since (the message is then not delivered)."""
        self.begin()
        self.reply_to = sender
        if kind != KIND_ENVELOPE or len(payload) < ENVELOPE_HEADER.size:
            return sender, kind, payload
        inner, reply_to, corr, timer, period = ENVELOPE_HEADER.unpack_from(payload)
        body = payload[ENVELOPE_HEADER.size :]
        self.corr = corr
        self.reply_to = reply_to if reply_to >= 0 else sender
        if timer >= 0 and sender == self.host.agent_id:
            if timer not in self.timers:
                return None  # cancelled
            self.timer = timer
            self.reply_to = -1
            if period > 0:
                # The next fire, armed by this one (dropped with it if the handler fails).
                self.host.call_state.effects.append(("delay", period, payload))
            else:
                self._pending_timers[timer] = None
            return -1, inner, body
        return sender, inner, body

    # -- helpers ------------------------------------------------------------------------
    def _text(self, what: str, ptr: int, length: int, limit: int = _MAX_NAME) -> str:
        return self.host.read_guest(what, ptr, length, limit).decode("utf-8", "replace")

    def _payload(self, what: str, ptr: int, length: int, copies: int = 1) -> bytes:
        """A payload about to be sent ``copies`` times, within the per-message send quotas
        that ``send`` has (a QuotaExceeded fails the message)."""
        from qhybrid.runtime.wasm_pool._quotas import MAX_SEND_BYTES, MAX_SENDS, QuotaExceeded

        state = self.host.call_state
        if len(state.outbox) + len(state.effects) + copies > MAX_SENDS:
            raise QuotaExceeded(f"{what}: more than {MAX_SENDS} messages sent by one message")
        if state.sent_bytes + copies * length > MAX_SEND_BYTES:
            raise QuotaExceeded(
                f"{what}: more than {MAX_SEND_BYTES >> 20} MiB of payload sent by one message"
            )
        data = self.host.read_guest(what, ptr, length, _MAX_PAYLOAD)
        state.sent_bytes += copies * length
        return data

    def members(self, group: str) -> list[int]:
        return self.host.ctx.group_members(group)

    # -- envelopes ----------------------------------------------------------------------
    def _h_send_env(
        self, to: int, kind: int, corr: int, reply_to: int, ptr: int, length: int
    ) -> int:
        payload = self._payload("send_env", ptr, length)
        count = max(self.host.load.agent_count, self.host.ctx.agent_count)
        if not 0 <= to < count or reply_to >= count:
            return ERR_UNKNOWN_AGENT
        if _bad_kind(kind):
            return ERR_RESERVED_KIND
        wire = wrap(kind, payload, reply_to=max(reply_to, -1), corr=corr)
        self.host.call_state.outbox.append((to, KIND_ENVELOPE, wire))
        return OK

    def _h_reply(self, kind: int, ptr: int, length: int) -> int:
        payload = self._payload("reply", ptr, length)
        if _bad_kind(kind):
            return ERR_RESERVED_KIND
        if self.reply_to < 0:
            return ERR_NO_MESSAGE
        wire = wrap(kind, payload, corr=self.corr)
        self.host.call_state.outbox.append((self.reply_to, KIND_ENVELOPE, wire))
        return OK

    def _h_msg_corr(self) -> int:
        return self.corr

    def _h_msg_reply_to(self) -> int:
        return self.reply_to

    def _h_msg_timer(self) -> int:
        return self.timer

    def _h_new_corr(self) -> int:
        self.next_corr += 1
        value = ((self.host.agent_id + 1) << 32) | (self.next_corr & 0xFFFFFFFF)
        return value - (1 << 64) if value >= 1 << 63 else value

    # -- timers -------------------------------------------------------------------------
    def _set_timer(
        self, what: str, delay: int, kind: int, ptr: int, length: int, repeat: bool
    ) -> int:
        payload = self._payload(what, ptr, length)
        if _bad_kind(kind):
            return ERR_RESERVED_KIND
        if delay < 1:
            return ERR_BAD_ARG
        timer = self.next_timer
        self.next_timer += 1
        period = delay if repeat else 0
        self._pending_timers[timer] = period
        wire = wrap(kind, payload, timer=timer, period=period)
        self.host.call_state.effects.append(("delay", delay, wire))
        return timer

    def _h_timer_after(self, delay: int, kind: int, ptr: int, length: int) -> int:
        return self._set_timer("timer_after", delay, kind, ptr, length, False)

    def _h_timer_every(self, period: int, kind: int, ptr: int, length: int) -> int:
        return self._set_timer("timer_every", period, kind, ptr, length, True)

    def _h_timer_cancel(self, timer: int) -> int:
        pending = self._pending_timers.get(timer, self.timers.get(timer))
        if pending is None:
            return ERR_NOT_FOUND
        self._pending_timers[timer] = None
        return OK

    # -- groups and topics --------------------------------------------------------------
    def _h_group_size(self, ptr: int, length: int) -> int:
        members = self.members(self._text("group_size", ptr, length))
        return len(members) if members else ERR_NOT_FOUND

    def _h_group_member(self, ptr: int, length: int, index: int) -> int:
        members = self.members(self._text("group_member", ptr, length))
        return members[index] if 0 <= index < len(members) else ERR_NOT_FOUND

    def _h_group_send(self, ptr: int, length: int, kind: int, data: int, size: int) -> int:
        group = self._text("group_send", ptr, length)
        members = self.members(group)
        payload = self._payload("group_send", data, size, max(1, len(members)))
        if not members:
            return ERR_NOT_FOUND
        if _bad_kind(kind):
            return ERR_RESERVED_KIND
        self.host.call_state.outbox.extend((to, kind, payload) for to in members)
        return len(members)

    def _h_subscribe(self, ptr: int, length: int) -> int:
        self.host.call_state.effects.append(("subscribe", self._text("subscribe", ptr, length)))
        return OK

    def _h_unsubscribe(self, ptr: int, length: int) -> int:
        topic = self._text("unsubscribe", ptr, length)
        self.host.call_state.effects.append(("unsubscribe", topic))
        return OK

    def _h_publish(self, ptr: int, length: int, kind: int, data: int, size: int) -> int:
        topic = self._text("publish", ptr, length)
        payload = self._payload("publish", data, size)
        if _bad_kind(kind):
            return ERR_RESERVED_KIND
        self.host.call_state.effects.append(("publish", topic, kind, payload))
        return OK

    # -- config and lifecycle -----------------------------------------------------------
    def config_value(self, path: str) -> tuple[bool, Any]:
        if not self._config_loaded:
            self._config = json.loads(self.host.load.config_json or b"{}")
            self._config_loaded = True
        value = self._config
        for part in path.split(".") if path else ():
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                return False, None
        return True, value

    def _h_config_get(self, ptr: int, length: int, out: int, cap: int) -> int:
        found, value = self.config_value(self._text("config_get", ptr, length, 1024))
        if not found:
            return ERR_NOT_FOUND
        text = json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")
        if len(text) <= cap:
            self.host.write_guest("config_get", out, text)
        return len(text)

    def _h_stop_self(self) -> None:
        self.host.call_state.effects.append(("stop_self",))

    def _h_set_error(self, ptr: int, length: int) -> None:
        self.error_text = self._text("set_error", ptr, length, _MAX_TEXT)

    def _h_spawn(
        self,
        group_ptr: int,
        group_len: int,
        name_ptr: int,
        name_len: int,
        config_ptr: int,
        config_len: int,
        tag: int,
    ) -> int:
        group = self._text("spawn", group_ptr, group_len)
        name = self._text("spawn", name_ptr, name_len)
        config = self.host.read_guest("spawn", config_ptr, config_len, _MAX_REQUEST)
        if group not in self.host.load.spawn:
            return ERR_NOT_GRANTED
        if name and not _good_name(name):
            return ERR_BAD_ARG
        if config.strip():
            try:
                parsed = json.loads(config.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                return ERR_BAD_ARG
            if not isinstance(parsed, dict):
                return ERR_BAD_ARG
        spawn = self.next_spawn
        self.next_spawn += 1
        self.host.call_state.effects.append(("spawn", spawn, tag, group, name, config))
        return spawn

    def _h_stop_run(self, ptr: int, length: int) -> int:
        reason = self._text("stop_run", ptr, length, _MAX_TEXT)
        if not self.host.load.stop_run:
            self.host.call_state.effects.append(("stop_run_refused", reason))
            return ERR_NOT_GRANTED
        self.host.call_state.effects.append(("stop_run", reason))
        return OK

    # -- LLM chat, tools, people --------------------------------------------------------
    def _h_llm_chat(self, ptr: int, length: int, tag: int) -> int:
        from qhybrid.runtime.wasm_pool._quotas import MAX_LLM_REQUESTS, QuotaExceeded

        state = self.host.call_state
        if state.llm_requests >= MAX_LLM_REQUESTS:
            raise QuotaExceeded(
                f"llm_chat: more than {MAX_LLM_REQUESTS} LLM requests made by one message"
            )
        state.llm_requests += 1
        request = self.host.read_guest("llm_chat", ptr, length, _MAX_REQUEST)
        rid = self.host.new_request()
        self.host.call_state.effects.append(("llm_chat", rid, tag, request))
        return rid

    def _h_llm_cancel(self, request: int) -> int:
        if not 0 <= request < self.host.requests_made():
            return ERR_NOT_FOUND
        self.host.call_state.effects.append(("llm_cancel", request))
        return OK

    def _h_tool_call(self, ptr: int, length: int, args: int, args_len: int, tag: int) -> int:
        name = self._text("tool_call", ptr, length)
        data = self.host.read_guest("tool_call", args, args_len, _MAX_REQUEST)
        if name not in self.tools:
            return ERR_NOT_GRANTED
        call = self.next_call
        self.next_call += 1
        self.host.call_state.effects.append(("tool", call, tag, name, data))
        return call

    def _h_ask(self, ptr: int, length: int, tag: int) -> int:
        text = self._text("ask", ptr, length, _MAX_TEXT)
        question = self.next_question
        self.next_question += 1
        self.host.call_state.effects.append(("ask", question, tag, text))
        return question

    # -- tensors v2 (``_tensor_calls``) ----------------------------------------------------
    def _h_tensor_release(self, h: int) -> int:
        return self.tensor_calls.tensor_release(h)

    def _h_gpu_submit_into(
        self, op_ptr: int, op_len: int, inputs_ptr: int, n_inputs: int, out: int, param: float
    ) -> int:
        return self.tensor_calls.gpu_submit_into(op_ptr, op_len, inputs_ptr, n_inputs, out, param)

    def function(self, name: str) -> Callable[..., Any]:
        impl: Callable[..., Any] = getattr(self, f"_h_{name}")
        return impl
