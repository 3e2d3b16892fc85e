"""The roster: every agent of the run, where it lives, and how it is loaded there.

Owns: the agent table (:class:`AgentRecord` per agent, by id and by name) and each agent's
placement (agent ``i`` lives on worker ``i % workers``), state, counters and crash-recovery
fields (the last snapshot, the replay log since, the tensors read since). The commit updates
the counters and the replay log; recovery updates state, snapshot and log. Also here: compiling
the scenario's modules and loading every agent onto its worker at start.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import json
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qhybrid.runtime._events import AgentStateChanged, MessageUsage, RuntimeEvents
from qhybrid.runtime._ports import AgentPool
from qhybrid.runtime._result import AgentSummary
from qhybrid.runtime._scenario import AgentSpec, Scenario
from qhybrid.runtime._seeding import derive_seed
from qhybrid.runtime.wasm_pool import (
    AGENT_USAGE_ROW,
    USAGE_ROW,
    AgentLoad,
    AgentModuleError,
    BatchReply,
    Limits,
    Quotas,
    default_cache_dir,
    load_module,
    load_python_module,
    make_engine,
    split_usage,
)

__all__ = [
    "DEFAULT_CACHE",
    "FAILED",
    "LOADED",
    "SKIPPED",
    "AgentRecord",
    "Roster",
    "collector_paused",
    "compile_modules",
]

logger = logging.getLogger(__name__)

#: Agent states.
LOADED, FAILED, SKIPPED = "loaded", "failed", "skipped"

#: Folded into the per-agent arrays past this many bytes of reports (some 40,000 rows).
_FOLD_BYTES = 1 << 20


def _message_usage(
    tick: int, per_worker: Mapping[int, bytes], placements: Sequence[tuple[Any, int, int]]
) -> MessageUsage:
    """Each worker's per-delivery ``(fuel, memory)`` pairs by the queue sequence numbers of
    the messages it was given (a worker's deliveries are its placements' in queue order)."""
    seqs: list[int] = []
    fuel: list[int] = []
    memory: list[int] = []
    for worker, pairs in per_worker.items():
        got = [it.seq for it, w, _ in placements if w == worker and it.message is not None]
        values = np.frombuffer(pairs, "<i8")[: 2 * len(got)]
        seqs += got[: len(values) // 2]
        fuel += values[0::2].tolist()
        memory += values[1::2].tolist()
    return MessageUsage(tick, tuple(seqs), tuple(fuel), tuple(memory))


#: ``RuntimeConfig.cache_dir`` default: the user's cache folder (or ``QHYBRID_CACHE_DIR``).
DEFAULT_CACHE = Path("<default>")


@dataclass(slots=True)
class AgentRecord:
    agent_id: int
    name: str
    group: str
    module: Path
    worker: int
    on_error: str
    max_restarts: int = 3
    state: str = LOADED
    handled: int = 0
    error: str | None = None
    restarts: int = 0
    load: AgentLoad | None = None
    # Crash recovery: the last snapshot (None: fresh from its module) and what it handled since:
    # ``log`` holds each message's tick, sender, kind and payload, flat (four items a message:
    # a tuple per message kept until the next snapshot made the cyclic collector walk them all
    # again and again, milliseconds each time); :meth:`replay_log` gives them as tuples.
    snapshot: bytes | None = None
    log: list[int | bytes] = field(default_factory=list)
    reads: set[str] = field(default_factory=set)
    # Set when a message failed this tick and the agent is to be restarted after the commit.
    restart_pending: bool = False

    def replay_log(self) -> list[tuple[int, int, int, bytes]]:
        """The messages handled since the snapshot: ``(tick, sender, kind, payload)`` each."""
        it = iter(self.log)
        return list(zip(it, it, it, it, strict=True))  # type: ignore[arg-type]

    def summary(
        self,
        fuel_used: int | None = None,
        fuel_last: int | None = None,
        memory_bytes: int | None = None,
    ) -> AgentSummary:
        """The agent now, with the usage its worker reported (``Roster.summaries``)."""
        return AgentSummary(
            self.name,
            self.module.name,
            self.worker,
            self.state,
            self.handled,
            self.error,
            self.restarts,
            self.group,
            fuel_used,
            fuel_last,
            memory_bytes,
        )


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Hold the cyclic garbage collector while making many long-lived objects (an agent
    table of 100,000): it would otherwise scan the growing heap again and again."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def compile_modules(scenario: Scenario, cache_dir: Path | None) -> dict[str, tuple[bytes, bytes]]:
    """Every distinct module of the scenario, compiled (or from the cache): key -> (serialized,
    original). Raises :class:`ScenarioError` naming the agent whose module is not valid."""
    engine = make_engine()
    cache = default_cache_dir() if cache_dir == DEFAULT_CACHE else cache_dir
    compiled: dict[str, tuple[bytes, bytes]] = {}
    for index, spec in enumerate(scenario.agents):
        key = str(spec.module)
        if key in compiled:
            continue
        try:
            if spec.module.suffix == ".py":
                compiled[key] = load_python_module(engine, spec.module, cache)
                continue
            module, _, original, cached = load_module(engine, spec.module, cache)
        except AgentModuleError as exc:
            raise scenario.error(f"agents[{index}].module", str(exc)) from None
        logger.debug("module %s %s", spec.module, "from cache" if cached else "compiled")
        compiled[key] = (bytes(module.serialize()), original)
    return compiled


class Roster:
    """The agent table; ``agents[i].agent_id == i``."""

    def __init__(self, scenario: Scenario, workers: int) -> None:
        self.scenario = scenario
        self.workers = workers
        self.agents: list[AgentRecord] = []
        self.by_name: dict[str, int] = {}
        #: Fuel burnt by every agent so far, and linear memory of all agents now (bytes).
        self.fuel_total = 0
        self.memory_total = 0
        # Per-agent usage: the workers' packed reports, kept as they come (the loop thread
        # does O(workers) work per tick) and folded into arrays in bulk when someone asks
        # (summaries) or when enough have piled up. The workers send the rows only when
        # asked (``usage_asked``, set by summaries: the next tick's batches ask for them),
        # and once more at the end of the run and at a pause (collect_usage).
        self.usage_asked = False
        self._usage: collections.deque[bytes] = collections.deque()
        self._usage_bytes = 0
        self._usage_lock = threading.Lock()
        self._worker_memory: dict[int, int] = {}
        # Per agent, -1 until reported (and for fuel, when not metered).
        self._fuel_used = np.full(0, -1, np.int64)
        self._fuel_last = np.full(0, -1, np.int64)
        self._memory = np.full(0, -1, np.int64)
        self._shared: dict[
            str,
            tuple[
                str,
                Limits,
                tuple[tuple[str, str, bool], ...],
                tuple[tuple[str, str], ...],
                Quotas,
            ],
        ] = {}

    def create(self) -> None:
        """One record per instance, in scenario order, placed round-robin over the workers."""
        for spec in self.scenario.agents:
            for name in spec.instances:
                agent_id = len(self.agents)
                self.agents.append(
                    AgentRecord(
                        agent_id,
                        name,
                        spec.name,
                        spec.module,
                        agent_id % self.workers,
                        spec.on_error,
                        spec.max_restarts,
                    )
                )
                self.by_name[name] = agent_id

    def take_usage(
        self,
        replies: Mapping[int, BatchReply],
        placements: Sequence[tuple[Any, int, int]] = (),
        tick: int = -1,
    ) -> MessageUsage | None:
        """Take the fuel and memory the workers report with a tick's batches (by worker).
        When they carry each delivery's (the batches asked for rows), returns them by queue
        sequence number, read off the tick's ``placements`` (the plan's ``(item, worker,
        index)``, in queue order)."""
        fuel_total = self.fuel_total
        per_worker: dict[int, bytes] = {}
        for worker, reply in replies.items():
            usage = reply.usage
            if usage:
                if len(usage) == USAGE_ROW.size:  # the batch's totals alone (the hot path)
                    _, fuel, memory = USAGE_ROW.unpack_from(usage)
                    rows = b""
                else:
                    (fuel, memory), pairs, rows = split_usage(usage)
                    if pairs:
                        per_worker[worker] = pairs
                fuel_total += fuel
                self._worker_memory[worker] = memory
                if rows:
                    self._usage.append(rows)
                    self._usage_bytes += len(rows)
        self.fuel_total = fuel_total
        self.memory_total = sum(self._worker_memory.values())
        if self._usage_bytes > _FOLD_BYTES:
            self.fold_usage()
        return _message_usage(tick, per_worker, placements) if per_worker else None

    async def collect_usage(self, pool: AgentPool) -> None:
        """Ask every worker for the usage rows it has not sent (no batch will carry them:
        the run ends or pauses). Best effort: usage is observability, never in the trace."""
        ask = getattr(pool, "agent_usage", None)
        if ask is None:
            return
        for index in range(self.workers):
            try:
                rows = await ask(index)
            except Exception as exc:  # a dead or stuck worker: keep what was reported
                logger.debug("no usage from worker %d: %s", index, exc)
                continue
            if rows:
                self._usage.append(rows)
                self._usage_bytes += len(rows)

    def fold_usage(self) -> None:
        """Add the reports taken so far to the per-agent arrays (from any thread)."""
        with self._usage_lock:
            n = len(self.agents)
            if len(self._fuel_used) != n:
                for name in ("_fuel_used", "_fuel_last", "_memory"):
                    old = getattr(self, name)
                    new = np.full(n, -1, np.int64)
                    new[: min(n, len(old))] = old[:n]
                    setattr(self, name, new)
            chunks = []
            while self._usage:
                chunks.append(self._usage.popleft())
            self._usage_bytes = 0
            if not chunks:
                return
            width = AGENT_USAGE_ROW.size // 8
            rows = np.frombuffer(b"".join(chunks), np.int64).reshape(-1, width)
            ids = rows[:, 0]
            if len(ids) and (ids.min() < 0 or ids.max() >= n):
                rows = rows[(ids >= 0) & (ids < n)]
                ids = rows[:, 0]
            # Assignments only (the workers send each agent's running totals and its last
            # tick's fuel): the last report of an agent wins.
            order = np.argsort(ids, kind="stable")
            ids, rows = ids[order], rows[order]
            last = np.flatnonzero(np.append(ids[1:] != ids[:-1], True))
            agent = ids[last]
            self._fuel_used[agent] = rows[last, 1]
            self._memory[agent] = rows[last, 2]
            self._fuel_last[agent] = rows[last, 3]

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.agents]

    def summaries(self) -> tuple[AgentSummary, ...]:
        """Every agent now; fuel and memory as last reported (asking for the next report:
        the workers send per-agent usage only while someone reads it)."""
        self.usage_asked = True
        agents = list(self.agents)
        self.fold_usage()
        with self._usage_lock:
            n = len(agents)
            used, last = self._fuel_used[:n].tolist(), self._fuel_last[:n].tolist()
            memory = self._memory[:n].tolist()
        return tuple(
            a.summary(
                used[i] if used[i] >= 0 else None,
                last[i] if last[i] >= 0 else None,
                memory[i] if memory[i] >= 0 else None,
            )
            for i, a in enumerate(agents)
        )

    async def load_all(self, pool: AgentPool, events: RuntimeEvents) -> None:
        """Instantiate every agent on its worker (all workers in parallel)."""
        count = len(self.agents)
        loads: list[list[AgentLoad]] = [[] for _ in range(self.workers)]
        for spec in self.scenario.agents:
            peers = tuple(self.by_name[n] for n in spec.instances)
            config_json = json.dumps(dict(spec.config), sort_keys=True, default=dict).encode()
            for name in spec.instances:
                agent = self.agents[self.by_name[name]]
                if spec.overrides:  # ABI v2: per-instance config
                    config_json = json.dumps(spec.instance_config(name), sort_keys=True).encode()
                agent.load = self._agent_load(spec, agent, peers, count, config_json)
                loads[agent.worker].append(agent.load)
        try:
            await asyncio.gather(
                *(pool.load_agents(w, batch) for w, batch in enumerate(loads) if batch)
            )
        except AgentModuleError as exc:
            name = str(exc).split(":", 1)[0]
            failed = self.agents[self.by_name[name]] if name in self.by_name else None
            index = next(
                (
                    i
                    for i, s in enumerate(self.scenario.agents)
                    if failed and s.name == failed.group
                ),
                0,
            )
            raise self.scenario.error(f"agents[{index}].module", str(exc)) from None
        for agent in self.agents:
            events.agent_state.emit(
                AgentStateChanged(agent.name, agent.agent_id, agent.worker, LOADED, 0)
            )

    def _agent_load(
        self,
        spec: AgentSpec,
        agent: AgentRecord,
        peers: tuple[int, ...],
        count: int,
        config: bytes,
    ) -> AgentLoad:
        """One agent's load (the agents' memory wraps this to add its quotas)."""
        shared = self._shared.get(spec.name)
        if shared is None:
            # What a group's instances share is made once and shared (in pickles too).
            lim = spec.limits
            shared = self._shared[spec.name] = (
                str(spec.module),
                Limits(lim.fuel, lim.memory_bytes, lim.timeout_ms, lim.stack_bytes),
                tuple((str(d.host), d.guest, d.mode == "rw") for d in spec.grants.dirs),
                tuple(spec.grants.env),
                Quotas(**spec.quotas.model_dump()),
            )
        key, limits, dirs, env, quotas = shared
        return AgentLoad(
            agent.agent_id,
            agent.name,
            key,
            peers,
            count,
            derive_seed(self.scenario.seed, "agent", agent.name),
            config,
            limits,
            dirs,
            env,
            quotas=quotas,
            worker_memory_bytes=self.scenario.workers.memory_mb << 20,
            tools=spec.grants.tools,
            spawn=spec.grants.spawn,
            stop_run=spec.grants.stop_run,
        )
