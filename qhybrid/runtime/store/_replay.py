"""The LLM as a replay sees it: every answer comes from the store, no model is loaded.

:class:`RecordedLlm` stands in for the scenario's loaded model: its engine hands back, at each
tick, the updates the recorded run's engine made at that tick, for the requests the replay
submitted (the orchestrator numbers requests itself, the same way each run). Its tokenizer only
has to satisfy the orchestrator's prompt encoding: the recorded prompt ids are what count.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qhybrid.runtime._orchestrator import Runtime
    from qhybrid.runtime.llm import GenerationParams, RequestUpdate


class _Tokenizer:
    bos_id = None

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        return [0]

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        return messages[-1]["content"]

    def token_text(self, token: int) -> str:
        return ""


@dataclass
class _Config:
    arch: str


@dataclass
class _Model:
    name: str
    config: _Config


@dataclass
class _Runner:
    n_ctx: int = 1 << 30


class RecordedEngine:
    """Answers from the recording; counts the model calls it makes (always none)."""

    def __init__(self, runtime: Runtime, updates: list[dict[str, Any]]) -> None:
        self._runtime = runtime
        self._by_tick: dict[int, list[dict[str, Any]]] = {}
        for u in updates:
            self._by_tick.setdefault(int(u["tick"]), []).append(u)
        self._pending: set[int] = set()
        self.model_calls = 0
        self.steps = 0

    def submit(
        self,
        prompt_tokens: Sequence[int],
        params: GenerationParams,
        request_id: int | None = None,
        owner: object = None,
    ) -> int:
        # ``owner`` decides slot order in the real engine; here every answer comes recorded.
        assert request_id is not None
        self._pending.add(request_id)
        return request_id

    def has_work(self) -> bool:
        return bool(self._pending)

    @property
    def active(self) -> int:
        return len(self._pending)

    def cancel(self, request_id: int) -> None:
        self._pending.discard(request_id)

    def step(self) -> list[RequestUpdate]:
        from qhybrid.runtime.llm import GenerationResult, RequestUpdate

        self.steps += 1
        out: list[RequestUpdate] = []
        for u in self._by_tick.get(self._runtime.tick, []):
            rid = int(u["request_id"])
            if rid not in self._pending:
                continue
            result = None
            if u["done"]:
                self._pending.discard(rid)
                r = u["result"]
                result = GenerationResult(
                    rid,
                    tuple(r["prompt_tokens"]),
                    tuple(r["tokens"]),
                    r["text"],
                    r["finish"],
                    r["error"],
                    r.get("ttft_s", 0.0),
                    r.get("prefill_s", 0.0),
                    r.get("decode_s", 0.0),
                )
            out.append(RequestUpdate(rid, u["text"], tuple(u["new_tokens"]), u["done"], result))
        return out


@dataclass
class RecordedLlm:
    """A ``LoadedModel`` look-alike over the recording (see the module docstring)."""

    model: _Model
    engine: RecordedEngine
    placement: str
    tokenizer: _Tokenizer = field(default_factory=_Tokenizer)
    runner: _Runner = field(default_factory=_Runner)

    def close(self) -> None:
        pass


def recorded_llm(
    runtime: Runtime, first_lines: list[str], updates: list[dict[str, Any]]
) -> RecordedLlm:
    """The stand-in for ``runtime``'s model: name and placement from the recorded
    ``llm_model`` record, answers from ``updates``."""
    name, arch, placement = "recorded model", "unknown", "cpu"
    for line in first_lines:
        rec = ast.literal_eval(line)
        if rec[0] == "llm_model":
            name, arch, placement = rec[3], rec[4], rec[5]
            break
    return RecordedLlm(_Model(name, _Config(arch)), RecordedEngine(runtime, updates), placement)
