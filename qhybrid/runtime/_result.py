"""What a finished run reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class AgentSummary:
    name: str
    module: str
    worker: int
    state: str
    handled: int
    error: str | None
    restarts: int = 0
    #: The ``[[agents]]`` entry the agent comes from (its name, for a ``count`` group).
    group: str = ""
    #: Fuel its handlers burnt in all, and in the last tick it had messages; None: not
    #: metered (a Python agent). Reported by the workers beside the results, not traced.
    fuel_used: int | None = None
    fuel_last: int | None = None
    #: Bytes of linear memory after its last message (None: none handled yet).
    memory_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class RunResult:
    """The outcome of a run: ``status`` is "completed" or "failed", ``reason`` says why."""

    scenario: str
    seed: int
    status: str
    reason: str
    trace_hash: str
    ticks: int
    messages_delivered: int
    tasks_completed: int
    cpu_tasks: int
    gpu_tasks: int
    agents: tuple[AgentSummary, ...]
    workers: int
    device: dict[str, object]
    wall_s: float
    worker_restarts: int = 0
    #: The scenario's LLM, when it has one: model, arch, placement, requests answered and
    #: tokens generated.
    llm: dict[str, object] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["agents"] = [asdict(a) for a in self.agents]
        return data
