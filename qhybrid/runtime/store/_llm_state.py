"""LLM requests in flight at a checkpoint: their engine state rebuilt by recomputation.

The engine's state (KV cache slots, each request's sampling stream, its decoder) is not
saved. Instead a restore replays, on a fresh engine and in silence, the engine's own history
over the window that leads to the checkpoint: every request that was running in it is
submitted again at the tick it was first submitted, and the engine steps once per tick, as
it did (one step per tick while it has work). The same requests in the same steps give the
same state, bit for bit (the engine's determinism promise), so the run goes on as it would
have. The history comes from the run store (``llm_requests`` and ``llm_updates``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qhybrid.runtime.llm import GenerationParams, LlmEngine


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One engine request as the store has it: submitted after tick ``tick``'s step, done
    at the step of tick ``done`` (None: not done yet)."""

    request_id: int
    tick: int
    prompt_ids: tuple[int, ...]
    params: dict[str, Any]
    done: int | None


def history(requests: list[dict[str, Any]], updates: list[dict[str, Any]]) -> list[RecordedRequest]:
    """The store's rows of a run as :class:`RecordedRequest` values."""
    done = {int(u["request_id"]): int(u["tick"]) for u in updates if u["done"]}
    return [
        RecordedRequest(
            int(r["request_id"]),
            int(r["tick"]),
            tuple(int(t) for t in r["prompt_ids"]),
            r["params"],
            done.get(int(r["request_id"])),
        )
        for r in requests
    ]


def window(requests: list[RecordedRequest], at: int) -> tuple[int, list[RecordedRequest]]:
    """The tick ``t0`` from which to replay and the requests to submit again, so that the
    engine's state after tick ``at`` is rebuilt: every request submitted by ``at`` that
    is still to be stepped after it, and, going back, everything that shared a step with them."""
    live = [r for r in requests if r.tick <= at and (r.done is None or r.done > at)]
    if not live:
        return at, []
    t0 = min(r.tick for r in live)
    while True:
        earlier = [r for r in requests if r.tick < t0 and (r.done is None or r.done > t0)]
        if not earlier:
            break
        t0 = min(r.tick for r in earlier)
    chosen = [r for r in requests if t0 <= r.tick <= at]
    return t0, chosen


def _params(data: dict[str, Any]) -> GenerationParams:
    from qhybrid.runtime.llm import GenerationParams, SamplingParams

    return GenerationParams(
        max_tokens=int(data["max_tokens"]),
        sampling=SamplingParams(**data["sampling"]),
        seed=int(data["seed"]),
        stop=tuple(data["stop"]),
        ignore_eos=bool(data.get("ignore_eos", False)),
    )


def rebuild(engine: LlmEngine, t0: int, at: int, requests: list[RecordedRequest]) -> int:
    """Replay the engine's steps of ticks ``t0 + 1 .. at`` (run it on the engine's thread).
    Returns the steps taken."""
    by_tick: dict[int, list[RecordedRequest]] = {}
    for r in requests:
        by_tick.setdefault(r.tick, []).append(r)
    steps = 0
    for r in sorted(by_tick.get(t0, []), key=lambda r: r.request_id):
        engine.submit(
            r.prompt_ids, _params(r.params), request_id=r.request_id, owner=r.params.get("owner")
        )
    for tick in range(t0 + 1, at + 1):
        if engine.has_work():
            engine.step()
            steps += 1
        for r in sorted(by_tick.get(tick, []), key=lambda r: r.request_id):
            engine.submit(
                r.prompt_ids,
                _params(r.params),
                request_id=r.request_id,
                owner=r.params.get("owner"),
            )
    return steps
