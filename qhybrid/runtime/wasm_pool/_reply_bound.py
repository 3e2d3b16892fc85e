"""A worker reply over the frame bound, cut down to one that fits, the culprits named.

The pipes carry messages of at most ``_frames.MAX_MESSAGE_BYTES``. A batch reply holds the
outcomes of all of one worker's deliveries: when it does not fit, the worker used to die on
the ``FrameError`` and the pool saw a crash that named nobody. Instead the largest outcomes
are replaced, one by one, by failures that name their agent (the orchestrator then applies
that agent's ``on_error`` policy; the others go on), until the reply fits. A snapshot reply
is cut the same way (the agent's entry becomes the reason it cannot be taken). An outcome
that alone passes the bound fails whatever the number of workers; which of several large
outcomes sharing one worker's reply fail depends on how agents are spread over workers.
(issue 12: "a frame over its bound does not name the agent")
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

from qhybrid.runtime.wasm_pool import _frames
from qhybrid.runtime.wasm_pool._protocol import Outcome, Request, outcome_of

__all__ = ["bound_reply"]

#: Room left for the reply's own framing (tuples, task outcomes, the busy time, the usage).
_SLACK = 1 << 16


def _size(obj: object) -> int:
    return len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _too_large(name: str, what: str, size: int) -> str:
    limit = _frames.MAX_MESSAGE_BYTES
    return (
        f"agent {name}: {what} of {size} bytes is larger than the {limit} bytes a worker "
        "reply may carry"
    )


def bound_reply(request: Request, reply: tuple[str, Any], name_of: Callable[[int], str]) -> Any:
    """``reply`` (to ``request``) made to fit in one message, or an ``("error", ...)`` reply
    that says why it cannot be."""
    status, value = reply
    budget = _frames.MAX_MESSAGE_BYTES - _SLACK
    if status == "ok" and request.op == "batch":
        outcomes, *rest = value  # then the tasks, the busy time and the usage report
        deliveries = request.args[1]
        sizes = [_size(o) for o in outcomes]
        kept = list(outcomes)
        total = sum(sizes)
        for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
            if total <= budget:
                break
            agent_id = deliveries[i][0]
            error = _too_large(name_of(agent_id), "the reply to its message", sizes[i])
            kept[i] = list(
                Outcome(False, error=error, elapsed_ns=outcome_of(outcomes[i]).elapsed_ns)
            )
            total += _size(kept[i]) - sizes[i]
        return ("ok", (tuple(kept), *rest))
    if status == "ok" and request.op == "snapshot" and isinstance(value, dict):
        snaps: dict[int, Any] = dict(value)
        sizes_by = {k: _size(v) for k, v in snaps.items()}
        total = sum(sizes_by.values())
        for agent_id in sorted(sizes_by, key=lambda k: (-sizes_by[k], k)):
            if total <= budget:
                break
            snaps[agent_id] = _too_large(name_of(agent_id), "its snapshot", sizes_by[agent_id])
            total += _size(snaps[agent_id]) - sizes_by[agent_id]
        return ("ok", snaps)
    return ("error", f"the reply to {request.op!r} is larger than the bound of a worker reply")
