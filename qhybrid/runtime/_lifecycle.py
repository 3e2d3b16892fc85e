"""ABI version 2's lifecycle at the orchestrator: agents spawned at run time, and agents that
end the run (``spawn``, ``stop_run``; ``docs/agent-abi.md``, "Config and lifecycle").

Owns: the spawned agents (name, group and the config given, in id order: what a checkpoint
saves and a restore makes again), each group's spawned ids, the agents to load before the
next tick, and the reason an agent gave for ending the run.

A ``spawn`` effect is applied at the commit, in queue order like every other effect: the new
agent takes the next id (so ids, names and placement, ``id % workers``, never depend on the
number of workers or on timing), its record joins the roster, and its parent gets a
``SPAWNED`` message at the next tick. After the commit :meth:`Lifecycle.after_commit` tells
every worker the new directory and loads the new agents, before the next tick begins; from
then on a spawned agent is an agent like the others (its snapshots, replay log and worker-crash
recovery are the roster's). Runs on the orchestrator's loop thread.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from qhybrid.runtime._commit import EffectKind
from qhybrid.runtime._events import AgentStateChanged
from qhybrid.runtime._roster import FAILED, LOADED, AgentRecord
from qhybrid.runtime.wasm_pool import (
    KIND_SPAWNED,
    RUNTIME_SENDER,
    AgentLoad,
    AgentModuleError,
    WorkerCrashed,
)

if TYPE_CHECKING:
    from qhybrid.runtime._parts import Parts
    from qhybrid.runtime._ports import AgentPool
    from qhybrid.runtime._scenario import AgentSpec
    from qhybrid.runtime._schedule import Item
    from qhybrid.runtime._trace import TraceRecorder

__all__ = ["LIFECYCLE_EFFECTS", "Lifecycle"]

logger = logging.getLogger(__name__)

#: The effect kinds this part applies.
LIFECYCLE_EFFECTS = ("spawn", "stop_run", "stop_run_refused")


def _merged(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            base[key] = _merged(base[key], value)
        else:
            base[key] = value
    return base


class Lifecycle:
    def __init__(
        self,
        parts: Parts,
        pool: AgentPool,
        trace: TraceRecorder,
        stop: Callable[[str], None],
    ) -> None:
        self.parts = parts
        self.pool = pool
        self.trace = trace
        self._stop = stop
        self._specs = {spec.name: spec for spec in parts.roster.scenario.agents}
        #: (name, group, config text) of each spawned agent, in id order.
        self.spawned: list[tuple[str, str, str]] = []
        self._members: dict[str, list[int]] = {}
        self._to_load: list[AgentRecord] = []
        #: Why an agent ended the run (the first ``stop_run`` applied), or None.
        self.stop_reason: str | None = None
        for kind in LIFECYCLE_EFFECTS:
            parts.commit.register_effect(kind, EffectKind(self._apply))

    # -- effects (at the commit) ----------------------------------------------------------
    def _apply(self, agent: AgentRecord, tick: int, item: Item, effect: tuple[object, ...]) -> None:
        what = effect[0]
        if what == "spawn":
            _, spawn, tag, group, name, config = effect
            assert isinstance(spawn, int) and isinstance(tag, int) and isinstance(config, bytes)
            self._spawn(agent, tick, item.seq, spawn, tag, str(group), str(name), config)
            return
        reason = str(effect[1])
        granted = what == "stop_run" and self._specs[agent.group].grants.stop_run
        if not granted:
            self.trace.record("stop_run_refused", tick, item.seq, agent.agent_id, reason)
            logger.warning(
                "agent %s asked to stop the run (%s) without grants.stop_run", agent.name, reason
            )
            return
        self.trace.record("stop_run", tick, item.seq, agent.agent_id, reason)
        if self.stop_reason is None:
            self.stop_reason = f"stopped by agent {agent.name}: {reason}"
            self._stop(self.stop_reason)

    def _spawn(
        self,
        parent: AgentRecord,
        tick: int,
        seq: int,
        spawn: int,
        tag: int,
        group: str,
        name: str,
        config: bytes,
    ) -> None:
        answer: dict[str, Any] = {"spawn": spawn, "tag": tag, "group": group}
        spec = self._specs.get(group)
        error = None
        if spec is None or group not in self._specs[parent.group].grants.spawn:
            error = f"agent {parent.name} may not spawn from group {group!r}"
        elif len(self._members.get(group, ())) >= spec.max_spawned:
            error = f"quota exceeded: group {group} has max_spawned = {spec.max_spawned} agents"
        else:
            name = name or self._default_name(spec)
            if name in self.parts.roster.by_name:
                error = f"the name {name!r} is taken"
        if error is not None or spec is None:
            self.trace.record("spawn_refused", tick, seq, parent.agent_id, spawn, group, error)
            answer.update(status=1, agent=-1, name=name or None, error=error)
        else:
            text = config.decode("utf-8") if config.strip() else ""
            child = self.create(name, spec, text)
            self.trace.record(
                "spawn", tick, seq, parent.agent_id, spawn, group, name, child.agent_id
            )
            answer.update(status=0, agent=child.agent_id, name=name, error=None)
        payload = json.dumps(answer, sort_keys=True).encode("utf-8")
        self.parts.schedule.push_message(
            tick + 1, 0, RUNTIME_SENDER, parent.agent_id, KIND_SPAWNED, payload
        )

    def _default_name(self, spec: AgentSpec) -> str:
        index = spec.count + len(self._members.get(spec.name, ()))
        while f"{spec.name}-{index}" in self.parts.roster.by_name:
            index += 1
        return f"{spec.name}-{index}"

    # -- the roster -------------------------------------------------------------------------
    def create(self, name: str, spec: AgentSpec, config: str) -> AgentRecord:
        """A spawned agent's record (the next id), to be loaded by :meth:`after_commit`; also
        how a restore makes the checkpoint's spawned agents again."""
        roster = self.parts.roster
        agent_id = len(roster.agents)
        record = AgentRecord(
            agent_id,
            name,
            spec.name,
            spec.module,
            agent_id % roster.workers,
            spec.on_error,
            spec.max_restarts,
        )
        roster.agents.append(record)
        roster.by_name[name] = agent_id
        members = self._members.setdefault(spec.name, [])
        members.append(agent_id)
        self.spawned.append((name, spec.name, config))
        values = spec.instance_config(name)
        if config:
            values = _merged(values, json.loads(config))
        peers = tuple(roster.by_name[n] for n in spec.instances) + tuple(members)
        config_json = json.dumps(values, sort_keys=True).encode("utf-8")
        record.load = roster._agent_load(spec, record, peers, agent_id + 1, config_json)
        self._to_load.append(record)
        return record

    def recreate(self, spawned: list[tuple[str, str, str]]) -> None:
        """The spawned agents of a checkpoint, made again in id order (before its restore)."""
        for name, group, config in spawned:
            self.create(name, self._specs[group], config)

    @property
    def groups(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """Each group's spawned ids, for the workers' directory."""
        return tuple((g, tuple(ids)) for g, ids in sorted(self._members.items()))

    async def after_commit(self, tick: int) -> None:
        """Tell every worker the new directory and load the agents spawned this tick (a worker
        that dies meanwhile is replaced as in a tick: its agents, the new ones too, restored)."""
        if not self._to_load:
            return
        records, self._to_load = self._to_load, []
        recovery = self.parts.recovery
        while True:
            try:
                await self._load_all(records, tick)
                return
            except WorkerCrashed as crash:
                await recovery.recover_worker(crash.index, tick, crash)

    async def _load_all(self, records: list[AgentRecord], tick: int) -> None:
        await self.pool.set_directory(self.parts.roster.names, self.groups)
        # One at a time, in id order: a module that refuses to start is reported the same
        # way whatever the others do.
        for record in records:
            if record.state == LOADED and record.load is not None:
                await self._load(record.worker, record, record.load, tick)

    async def _load(self, worker: int, record: AgentRecord, load: AgentLoad, tick: int) -> None:
        emit = self.parts.llm.events.agent_state.emit
        try:
            await self.pool.load_agents(worker, [load])
        except AgentModuleError as exc:
            error = str(exc)
            record.state, record.error = FAILED, error
            self.trace.record("spawn_failed", tick, record.agent_id, error)
            emit(AgentStateChanged(record.name, record.agent_id, worker, FAILED, tick, error))
            if record.on_error == "fail":
                self.parts.schedule.fail(f"agent {record.name} failed to start: {error}")
            return
        emit(AgentStateChanged(record.name, record.agent_id, worker, LOADED, tick, "spawned"))
