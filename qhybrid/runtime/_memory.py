"""Agents' long-term memory, orchestrator side (the ABI's ``mem_*`` imports; see
``wasm_pool._memory_abi`` for the agent's view).

Owns: a mirror of every agent's memory, kept by applying each committed ``mem_put`` and
``mem_del`` effect in queue order (what the worker applies at the end of the tick), the trace
records those effects make, and the memory each agent starts with (a persistent namespace's,
filled in before the runtime starts). The quotas come from the scenario's ``[memory]``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from qhybrid.runtime._commit import EffectKind, payload_field
from qhybrid.runtime._trace import digest

if TYPE_CHECKING:
    from qhybrid.runtime._events import AgentStateChanged
    from qhybrid.runtime._orchestrator import Runtime
    from qhybrid.runtime._roster import AgentRecord
    from qhybrid.runtime._schedule import Item
    from qhybrid.runtime.wasm_pool._protocol import AgentLoad, Effect

__all__ = ["AgentMemories", "install_memory"]


class AgentMemories:
    """Every agent's memory as the commits left it: agent name -> key -> value."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        #: Agent name -> its memory at the start (set before ``start``).
        self.initial: dict[str, dict[bytes, bytes]] = {}
        self.by_agent: dict[str, dict[bytes, bytes]] = {}

    def _put(self, agent: AgentRecord, tick: int, item: Item, effect: Effect) -> None:
        _, key, value = effect
        assert isinstance(key, bytes) and isinstance(value, bytes)
        self._of(agent)[key] = value
        self._runtime._trace.record(
            "mem_put", tick, item.seq, agent.agent_id, payload_field(key), digest(value)
        )

    def _delete(self, agent: AgentRecord, tick: int, item: Item, effect: Effect) -> None:
        _, key = effect
        assert isinstance(key, bytes)
        self._of(agent).pop(key, None)
        self._runtime._trace.record("mem_del", tick, item.seq, agent.agent_id, payload_field(key))

    def _of(self, agent: AgentRecord) -> dict[bytes, bytes]:
        mem = self.by_agent.get(agent.name)
        if mem is None:
            mem = self.by_agent[agent.name] = dict(self.initial.get(agent.name, {}))
        return mem

    def restart(self, name: str) -> None:
        """A restarted agent starts again from the memory the run started with."""
        self.by_agent[name] = dict(self.initial.get(name, {}))

    def everyone(self) -> dict[str, dict[bytes, bytes]]:
        """Every agent's memory now (for a persistent namespace and for checkpoints)."""
        return {name: self.current(name) for name in self._runtime.agent_names}

    def current(self, name: str) -> dict[bytes, bytes]:
        got = self.by_agent.get(name)
        return dict(got) if got is not None else dict(self.initial.get(name, {}))

    def load(self, load: AgentLoad) -> AgentLoad:
        """An agent's load with its quotas and starting memory."""
        spec = self._runtime.scenario.memory
        start = self.current(load.name)
        return dataclasses.replace(
            load,
            memory=tuple(sorted(start.items())),
            memory_keys=spec.max_keys,
            memory_bytes=spec.max_bytes,
        )


def install_memory(runtime: Runtime) -> AgentMemories:
    """Wire the memory into a runtime's commit and agent loading."""
    memories = AgentMemories(runtime)
    runtime.register_effect("mem_put", EffectKind(memories._put))
    runtime.register_effect("mem_del", EffectKind(memories._delete))
    roster = runtime._roster
    make_load = roster._agent_load

    def agent_load(*args: object) -> AgentLoad:
        return memories.load(make_load(*args))  # type: ignore[arg-type]

    setattr(roster, "_agent_load", agent_load)  # noqa: B010 (this roster's own loader)

    def on_state(event: AgentStateChanged) -> None:
        if event.state == "restarted":
            memories.restart(event.agent)

    runtime.events.agent_state.connect(on_state)
    return memories
