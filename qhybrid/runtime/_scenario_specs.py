"""What the runtime reads from a scenario: frozen specs, every name resolved, every path absolute.

These dataclasses are the scenario's public API (``Scenario``, ``AgentSpec``, ``TaskSpec``,
...), built by :mod:`~qhybrid.runtime._scenario_build` from the checked file
(:mod:`~qhybrid.runtime._scenario_models`), or directly in code (tests, the orchestrator's own
tasks), where they are not checked again.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from qhybrid.runtime._scenario_errors import ScenarioError, describe, line_for
from qhybrid.runtime._scenario_models import (
    DEFAULT_MAX_RESTARTS,
    DEFAULT_MAX_TICKS,
    DEFAULT_TIMEOUT_S,
    QuotasTable,
    WorkersTable,
)
from qhybrid.runtime._scenario_types import INT64_MAX

__all__ = [
    "AgentGrants",
    "AgentLimits",
    "AgentSpec",
    "DirGrant",
    "LlmSpec",
    "MessageSpec",
    "Scenario",
    "StopSpec",
    "TaskSpec",
    "TensorSpec",
]


def _empty_mapping() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class AgentLimits:
    """What one message may cost an agent instance; ``None`` is no limit of the runtime's own.

    See "Limits and failures" in ``docs/agent-abi.md`` for what happens when one is reached.
    """

    #: Fuel (wasmtime's instruction-like units) per message; ``None``: unlimited.
    fuel: int | None = None
    #: Maximum linear memory in bytes, a whole number of 64 KiB pages; ``None``: wasmtime's default.
    memory_bytes: int | None = None
    #: Wall-clock time per message in milliseconds; ``None``: none (the run's timeout still holds).
    timeout_ms: int | None = None
    #: WebAssembly stack size in bytes; ``None``: wasmtime's default.
    stack_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class DirGrant:
    """A host directory an agent may open through WASI, at ``guest`` inside its sandbox."""

    #: Absolute and resolved; it existed and was a directory when the scenario was loaded.
    host: Path
    #: An absolute POSIX path, normalised (no ``.``, ``..``, repeated or trailing ``/``).
    guest: str
    #: ``"ro"`` (read only) or ``"rw"`` (read and write).
    mode: str = "ro"


@dataclass(frozen=True, slots=True)
class AgentGrants:
    """What an agent may reach through WASI beyond the default nothing: directories, variables."""

    dirs: tuple[DirGrant, ...] = ()
    #: ``(name, value)`` pairs, sorted by name.
    env: tuple[tuple[str, str], ...] = ()
    #: ABI v2: the ``[[tools]]`` the agent may call, by name.
    tools: tuple[str, ...] = ()
    #: ABI v2 lifecycle: the groups it may ``spawn`` from, and whether it may ``stop_run``.
    spawn: tuple[str, ...] = ()
    stop_run: bool = False


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool agents may call (ABI v2 ``tool_call``) where their grants name it: ``kind``
    "python" calls ``function`` (``"package.module:name"``, or ``"/abs/file.py:name"``) with
    the JSON arguments; "http" requests a URL on one of ``hosts``, reading at most
    ``max_bytes``."""

    name: str
    kind: str
    function: str = ""
    hosts: tuple[str, ...] = ()
    max_bytes: int = 1 << 20
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """A group of agent instances running the same module with the same config.

    Mapping fields here and below are read-only views; they take part in ``==`` but not in
    ``hash()`` (mappings cannot be hashed), so the specs stay usable as keys.
    """

    name: str
    module: Path
    count: int = 1
    on_error: str = "fail"
    config: Mapping[str, Any] = dataclasses.field(default_factory=_empty_mapping, hash=False)
    limits: AgentLimits = AgentLimits()
    grants: AgentGrants = AgentGrants()
    #: What one message may ask of the runtime (``[agents.quotas]``, docs/limits.md).
    quotas: QuotasTable = dataclasses.field(default_factory=QuotasTable)
    #: How many times an instance is replaced after errors (with ``on_error = "restart"``).
    max_restarts: int = DEFAULT_MAX_RESTARTS
    #: ABI v2: how many instances agents may spawn at run time (``grants.spawn``).
    max_spawned: int = 0
    #: Instance name -> config keys that replace the group's for that instance (merged into
    #: nested tables).
    overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(
        default_factory=_empty_mapping, hash=False
    )

    def instance_config(self, instance: str) -> dict[str, Any]:
        """The config one instance sees: the group's, with its overrides merged in."""

        def plain(value: Any) -> Any:
            if isinstance(value, Mapping):
                return {k: plain(v) for k, v in value.items()}
            return list(value) if isinstance(value, tuple) else value

        def merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
            for key, value in over.items():
                if isinstance(value, Mapping) and isinstance(base.get(key), dict):
                    base[key] = merge(base[key], value)
                else:
                    base[key] = plain(value)
            return base

        return merge(plain(self.config), self.overrides.get(instance, {}))

    @property
    def instances(self) -> tuple[str, ...]:
        """Instance names: the group's name when ``count == 1``, else ``name-0`` ... ``name-N``."""
        if self.count == 1:
            return (self.name,)
        return tuple(f"{self.name}-{i}" for i in range(self.count))


@dataclass(frozen=True, slots=True)
class MessageSpec:
    """An initial message, addressed to resolved instance names (a group gives all of them)."""

    to: tuple[str, ...]
    kind: int = 0
    payload: bytes = b""
    at: int = 0
    priority: int = 0


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A tensor created in shared memory before the run."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "<f4"
    init: str = "zeros"
    #: Whether agents may write it with ``tensor_write``; if not, it is read-only to them.
    writable: bool = False


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A tensor operation run at a tick, on the GPU thread or in a worker process."""

    name: str
    kind: str
    op: str
    inputs: tuple[str, ...]
    output: str
    output_shape: tuple[int, ...]
    output_dtype: str
    params: Mapping[str, float] = dataclasses.field(default_factory=_empty_mapping, hash=False)
    at: int = 0
    priority: int = 0
    notify: tuple[str, ...] = ()
    #: The result goes into the existing tensor ``output`` (an agent's ``gpu_submit_into``),
    #: applied at the end of the tick, instead of becoming a new tensor of that name.
    into: bool = False


@dataclass(frozen=True, slots=True)
class StopSpec:
    """When a run ends: a logical time, optionally a message count, and a wall-clock limit."""

    max_ticks: int = DEFAULT_MAX_TICKS
    max_messages: int | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class LlmSpec:
    """The scenario's LLM (``[llm]``): the GGUF file agents' ``llm_complete`` calls go to.

    ``device`` is where its graph runs (auto, gpu or cpu); ``slots`` how many requests run at
    once (continuous batching); ``n_ctx`` the context per request (0: the model's, at most
    2048); ``chat`` renders each prompt as a user message with the model's chat template; the
    sampling fields apply to every request (``temperature`` 0 is greedy), each request drawing
    from its own stream seeded by the scenario's seed, the agent and the request.
    """

    model: Path
    device: str = "auto"
    slots: int = 8
    n_ctx: int = 0
    chat: bool = False
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    repeat_penalty: float = 1.0
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MemorySpec:
    """Agents' long-term memory (``[memory]``): quotas per agent, and the persistent
    ``namespace`` (empty: none) under which the run store keeps it from one run to the next."""

    namespace: str = ""
    max_keys: int = 1024
    max_bytes: int = 1 << 20


@dataclass(frozen=True, slots=True)
class Scenario:
    """A checked scenario: every name resolved, every path absolute, every shape inferred."""

    name: str
    description: str
    seed: int
    source: Path | None
    agents: tuple[AgentSpec, ...]
    messages: tuple[MessageSpec, ...] = ()
    tensors: tuple[TensorSpec, ...] = ()
    tasks: tuple[TaskSpec, ...] = ()
    stop: StopSpec = StopSpec()
    llm: LlmSpec | None = None
    tools: tuple[ToolSpec, ...] = ()
    memory: MemorySpec = MemorySpec()
    #: What the worker processes share (``[workers]``): the memory total of their instances.
    workers: WorkersTable = dataclasses.field(default_factory=WorkersTable)
    #: Ticks between the run store's checkpoints (0: the command line's default).
    checkpoint_every: int = 0
    #: Field path (``"agents[0].module"``) -> 1-based line in the source; best effort.
    field_lines: Mapping[str, int] = dataclasses.field(default_factory=_empty_mapping, hash=False)

    @property
    def agent_names(self) -> tuple[str, ...]:
        """Every instance name, in declaration order."""
        return tuple(name for agent in self.agents for name in agent.instances)

    def with_seed(self, seed: int) -> Scenario:
        """The same scenario with another seed (for example from ``--seed``)."""
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= INT64_MAX:
            raise ScenarioError(
                f"expected an integer from 0 to 2**63 - 1, got {describe(seed)}", field="seed"
            )
        return dataclasses.replace(self, seed=seed)

    def error(self, field: str, message: str) -> ScenarioError:
        """An error located at ``field`` (for checks made after loading, e.g. by the runtime).

        The line is the field's own, else its nearest parent's (``agents[1].config.x`` falls back
        to ``agents[1].config``, then ``agents[1]``).
        """
        return ScenarioError(
            message,
            path=None if self.source is None else os.fspath(self.source),
            line=line_for(self.field_lines, field),
            field=field,
        )
