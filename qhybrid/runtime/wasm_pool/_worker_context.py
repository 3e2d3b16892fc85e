"""What the agents of one worker share: engines, modules, names, groups, tensors, the ticker,
the memory total."""

from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import wasmtime

from qhybrid.runtime.tensors import Segment
from qhybrid.runtime.wasm_pool._globals import host_snapshot_exact
from qhybrid.runtime.wasm_pool._limits import DEFAULT_WORKER_MEMORY_BYTES
from qhybrid.runtime.wasm_pool._protocol import AgentLoad, TensorEntry
from qhybrid.runtime.wasm_pool._ticker import EPOCH_S, EpochTicker

__all__ = ["EPOCH_S", "EngineKind", "WorkerContext"]

#: Which engine an instance is made with: its stack limit (None: wasmtime's default) and
#: whether its memory has room to grow in place (see ``_abi.MEMORY_GROWTH_RESERVATION``).
EngineKind = tuple[int | None, bool]


class WorkerContext:
    """What the agents of one worker share: engines, modules, names, tensors, the ticker."""

    def __init__(self, roomy_limit: int | None = None) -> None:
        """``roomy_limit``: how many agents' memories get room to grow (None: as many as the
        system's mapping limit allows, ``_abi.roomy_instances()``)."""
        self._engines: dict[EngineKind, wasmtime.Engine] = {}
        self._linkers: dict[EngineKind, wasmtime.Linker] = {}
        self._serialized: dict[str, bytes] = {}
        self._modules: dict[tuple[str, EngineKind], wasmtime.Module] = {}
        #: The agents whose instances have room to grow (at most ``roomy_instances()``; it
        #: only fills, so an agent once passed over for it stays without).
        self._roomy: set[int] = set()
        self._roomy_limit = -1 if roomy_limit is None else roomy_limit  # -1: not read yet
        self._imports: dict[str, tuple[tuple[str, str], ...]] = {}
        self._recoverable: dict[str, bool] = {}
        self.directory: dict[str, int] = {}
        #: How many agents the run has (spawned ones included).
        self.agent_count = 0
        self._groups: dict[str, list[int]] = {}
        #: ABI v2 spawn: group -> the ids of its spawned instances, in spawn order.
        self._spawned: dict[str, tuple[int, ...]] = {}
        #: Python agents' sources, by module key.
        self.sources: dict[str, bytes] = {}
        self.tensors: dict[str, TensorEntry] = {}
        self._segments: dict[str, Segment] = {}
        self.ticker = EpochTicker(self._engines)
        #: Linear memory of this worker's instances together may not pass this (issue 12).
        self.memory_limit = DEFAULT_WORKER_MEMORY_BYTES
        self._memory_of: dict[int, int] = {}  # agent id -> its instance's memory, last seen
        self.memory_used = 0
        #: Fuel every agent's handlers burnt so far (the batches' usage reports).
        self.fuel_burnt = 0

    # -- the memory total across instances ------------------------------------------------
    def memory_room(self, agent_id: int) -> int:
        """How large ``agent_id``'s memory may grow, given what the others use."""
        return self.memory_limit - (self.memory_used - self._memory_of.get(agent_id, 0))

    def set_memory(self, agent_id: int, size: int) -> None:
        """Record ``agent_id``'s memory size (a new instance of it replaces the old one's)."""
        self.memory_used += size - self._memory_of.get(agent_id, 0)
        self._memory_of[agent_id] = size

    # -- engines and modules ------------------------------------------------------------
    def _room_limit(self) -> int:
        if self._roomy_limit < 0:
            from qhybrid.runtime.wasm_pool._abi import roomy_instances

            self._roomy_limit = roomy_instances()
        return self._roomy_limit

    def plan_room(self, loads: Sequence[AgentLoad]) -> None:
        """Before ``loads`` are loaded together (a run's start): when there is not room to
        grow for all of them, it goes first to the agents whose module few of the others
        share (a scenario's sinks, coordinators, aggregators: the ones likely to grow
        large), then to the rest in id order. Agents planned before keep their kind."""
        new = [load for load in loads if load.agent_id not in self._roomy]
        free = self._room_limit() - len(self._roomy)
        if len(new) <= free:
            return  # room for every one of them, as they come
        sharing = collections.Counter(load.module_key for load in new)
        new.sort(key=lambda load: (sharing[load.module_key], load.agent_id))
        self._roomy.update(load.agent_id for load in new[: max(free, 0)])  # (now full)

    def engine_kind(self, agent_id: int, stack_bytes: int | None) -> EngineKind:
        """The engine for a new instance of ``agent_id``: with room to grow while fewer than
        ``roomy_instances()`` of this worker's agents have it (or as :meth:`plan_room`
        decided; an agent keeps its kind when its instance is made again), so that the
        worker stays within the system's limit of memory mappings. Either kind runs the same
        code with the same limits: only how fast a growing memory grows differs."""
        roomy = agent_id in self._roomy
        if not roomy and len(self._roomy) < self._room_limit():
            self._roomy.add(agent_id)
            roomy = True
        return (stack_bytes, roomy)

    def engine(self, kind: EngineKind) -> wasmtime.Engine:
        engine = self._engines.get(kind)
        if engine is None:
            from qhybrid.runtime.wasm_pool._abi import make_engine

            engine = make_engine(kind[0], room_to_grow=kind[1])
            self._engines[kind] = engine
        return engine

    def linker(self, kind: EngineKind) -> wasmtime.Linker:
        linker = self._linkers.get(kind)
        if linker is None:
            linker = wasmtime.Linker(self.engine(kind))
            linker.define_wasi()
            self._linkers[kind] = linker
        return linker

    def add_module(self, key: str, serialized: bytes, original: bytes) -> None:
        self._serialized[key] = serialized
        if key.endswith(".py"):  # a Python agent: the module is the interpreter
            self.sources[key] = original
            self._recoverable[key] = False
            for cached in [k for k in self._modules if k[0] == key]:
                del self._modules[cached]
            return
        try:
            self._recoverable[key] = host_snapshot_exact(original)
        except (ValueError, IndexError, wasmtime.WasmtimeError):
            self._recoverable[key] = False  # unknown (no or unreadable source): assume not
        for cached in [k for k in self._modules if k[0] == key]:
            del self._modules[cached]
        self._imports.pop(key, None)

    def group_members(self, group: str) -> list[int]:
        """The ids of a group's instances, in instance order: ``group`` alone when it has
        one instance, else ``group-0``, ``group-1``, ... (how the orchestrator names them)."""
        members = self._groups.get(group)
        if members is None:
            members = []
            while (i := self.directory.get(f"{group}-{len(members)}")) is not None:
                members.append(i)
            if not members and group in self.directory:
                members = [self.directory[group]]
            members.extend(i for i in self._spawned.get(group, ()) if i not in members)
            self._groups[group] = members
        return members

    def set_directory(
        self,
        names: list[str] | tuple[str, ...],
        spawned: tuple[tuple[str, tuple[int, ...]], ...] = (),
    ) -> None:
        """Every agent's name by id, and (ABI v2) the spawned instances of each group."""
        self.directory.clear()
        self.directory.update((name, i) for i, name in enumerate(names))
        self.agent_count = len(names)
        self._spawned = dict(spawned)
        self._groups.clear()

    def module(self, key: str, kind: EngineKind) -> wasmtime.Module:
        module = self._modules.get((key, kind))
        if module is None:
            module = wasmtime.Module.deserialize(self.engine(kind), self._serialized[key])
            self._modules[(key, kind)] = module
        return module

    def imports(self, key: str, module: wasmtime.Module) -> tuple[tuple[str, str], ...]:
        """``(module, name)`` of each of the module's imports, in order (read once per module:
        asking wasmtime for them costs a few microseconds per import and agent)."""
        found = self._imports.get(key)
        if found is None:
            found = tuple((imp.module, imp.name or "") for imp in module.imports)
            self._imports[key] = found
        return found

    def host_snapshot_ok(self, key: str) -> bool:
        """Whether memory plus exported globals hold all of a module's state."""
        return self._recoverable.get(key, False)

    # -- tensors ------------------------------------------------------------------------
    def add_tensors(self, entries: list[TensorEntry]) -> None:
        for entry in entries:
            if entry.released:
                # Released: the name is free, the mapping of its (unlinked) segment closed.
                if self.tensors.get(entry.name, entry).handle == entry.handle:
                    self.tensors.pop(entry.name, None)
                segment = self._segments.pop(entry.handle.segment, None)
                if segment is not None:
                    segment.close()
                continue
            self.tensors[entry.name] = entry

    def tensor_bytes(self, entry: TensorEntry) -> npt.NDArray[np.uint8]:
        """The tensor's bytes as a flat uint8 view of its (cached) mapping."""
        segment = self._segments.get(entry.handle.segment)
        if segment is None:
            segment = Segment.open(entry.handle.segment)
            self._segments[entry.handle.segment] = segment
        return segment.view((entry.handle.nbytes,), np.dtype(np.uint8), entry.handle.offset)

    # -- the epoch ticker (wall-clock timeouts) -----------------------------------------
    def close(self) -> None:
        self.ticker.close()
        for segment in self._segments.values():
            segment.close()
        self._segments.clear()
