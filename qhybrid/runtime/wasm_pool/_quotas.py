"""What one message may ask of the runtime: quotas on a handler's effects (issue 12).

Limits (``_limits.py``) bound what a handler costs while it runs; quotas bound what it leaves
for the host to carry: messages, their bytes, log output, tensor bytes and LLM requests. Each
is counted per message, in the worker, as the handler asks (so a handler that loops on
``send`` is stopped at the quota, not after it has filled the host's memory). Past a quota the
message fails (``quota exceeded: ...``), nothing it asked for takes effect, and the agent's
``on_error`` policy applies; log output past its quota is dropped instead, with one line that
says how much. The defaults are in ``docs/limits.md``.
"""

from __future__ import annotations

__all__ = [
    "MAX_LLM_PROMPT_BYTES",
    "MAX_LLM_REQUESTS",
    "MAX_LOG_BYTES",
    "MAX_SENDS",
    "MAX_SEND_BYTES",
    "MAX_TENSOR_BYTES",
    "QuotaExceeded",
]

#: Messages one handler may send.
MAX_SENDS = 10_000
#: Payload bytes one handler may send, all its messages together.
MAX_SEND_BYTES = 64 << 20
#: Log bytes one handler may write (qhybrid's log and WASI stdout/stderr together).
MAX_LOG_BYTES = 64 << 10
#: Tensor bytes one handler may create or write (GPU job outputs included).
MAX_TENSOR_BYTES = 1 << 30
#: LLM requests one handler may make.
MAX_LLM_REQUESTS = 16
#: Bytes of one LLM prompt (checked before anything tokenises it).
MAX_LLM_PROMPT_BYTES = 64 << 10


class QuotaExceeded(Exception):
    """A handler asked for more than its message's quota; the message fails."""
