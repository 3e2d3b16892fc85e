"""The worker pool on Ray: each worker index is a Ray actor hosting that index's agents.

The actor runs the same worker code as a local worker process (:class:`_worker.Worker`,
its ``handle``), in-process, so a request means the same thing on either backend. The
orchestrator stays the one driver: it sends the same requests in the same order and commits
the answers in queue order, so the trace does not depend on where the actors run.

Placement: one placement group of ``size`` bundles (``{"CPU": 1}`` each), strategy
``SPREAD`` (Ray puts the bundles on different nodes where it can), actor ``i`` in bundle
``i``. A dead actor (killed, out of memory, its node gone) surfaces as
:class:`~qhybrid.runtime.wasm_pool.WorkerCrashed`; :meth:`RayWorkerPool.respawn` starts a
new actor in the same bundle, which Ray reschedules onto a live node when its node is gone,
and the orchestrator's recovery restores the agents there from their snapshots.

Ray is optional (``pip install 'qhybrid[ray]'``): this module imports it only when a pool
starts, and :class:`RayNotInstalled` says how to install it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

from qhybrid.runtime.wasm_pool._abi import AgentModuleError
from qhybrid.runtime.wasm_pool._limits import effective_limits
from qhybrid.runtime.wasm_pool._pool import WorkerCrashed, WorkerError
from qhybrid.runtime.wasm_pool._protocol import (
    AgentLoad,
    BatchReply,
    Outcome,
    Request,
    TaskOutcome,
    TaskRun,
    TensorEntry,
)
from qhybrid.runtime.wasm_pool._watchdog import BASE_DEADLINE_S, batch_deadline

__all__ = ["RAY_INSTALL_HINT", "RayNotInstalled", "RayWorkerPool", "import_ray"]

logger = logging.getLogger(__name__)

RAY_INSTALL_HINT = "pip install 'qhybrid[ray]'  (or: pip install ray)"


class RayNotInstalled(WorkerError):
    """``backend="ray"`` without Ray installed."""


def import_ray() -> Any:
    """The ``ray`` module, or :class:`RayNotInstalled` saying how to install it."""
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise RayNotInstalled(
            f"the Ray backend needs Ray, which is not installed ({exc}); "
            f"install it with: {RAY_INSTALL_HINT}"
        ) from None


class WorkerActor:
    """The body of one Ray actor: a :class:`_worker.Worker` and the same replies a worker
    process writes on its pipe (``("ok", value)``, ``("module-error", text)``,
    ``("error", text)``)."""

    def __init__(self) -> None:
        from qhybrid.runtime.wasm_pool._worker import Worker

        self.worker = Worker()

    def hello(self) -> tuple[int, str, str]:
        """This actor's process id, Ray node id and host name."""
        ray = importlib.import_module("ray")
        return os.getpid(), str(ray.get_runtime_context().get_node_id()), socket.gethostname()

    def handle(self, request: Request) -> tuple[str, Any]:
        try:
            return "ok", self.worker.handle(request)
        except AgentModuleError as exc:
            return "module-error", str(exc)
        except Exception as exc:  # reported to the pool, which decides; the actor goes on
            logger.exception("request %s failed", request.op)
            return "error", f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        self.worker.close()


class _Actor:
    def __init__(self, index: int, handle: Any) -> None:
        self.index = index
        self.handle = handle
        self.pid: int | None = None
        self.node_id = ""
        self.host = ""
        self.lock = asyncio.Lock()
        self.busy_ns = 0
        self.requests = 0
        self.tensors_seen = 0


class RayWorkerPool:
    """``size`` Ray actors, one per worker index, behind the interface of
    :class:`~qhybrid.runtime.wasm_pool.WorkerPool` (the orchestrator's ``AgentPool``).

    ``address``: a running cluster (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``);
    ``None`` starts a local Ray instance with ``num_cpus`` CPUs (default: ``size``) and shuts
    it down in :meth:`aclose`. If Ray is already initialised in this process, the pool uses
    that connection and leaves it open.
    """

    def __init__(
        self,
        size: int,
        *,
        address: str | None = None,
        start_timeout: float = 60.0,
        num_cpus: int | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one worker, got {size}")
        self.size = size
        self.address = address
        self.start_timeout = start_timeout
        self.num_cpus = num_cpus
        self._ray: Any = None
        self._owns_ray = False
        self._pg: Any = None
        self._actors: list[_Actor] = []
        self._closed = False
        self._directory: tuple[str, ...] = ()
        self._modules: dict[str, tuple[bytes, bytes]] = {}
        self._tensors: list[TensorEntry] = []
        self._time_limits: dict[int, int] = {}
        self.restarts = 0

    # -- what the orchestrator reads --------------------------------------------------------
    @property
    def pids(self) -> list[int]:
        return [a.pid or 0 for a in self._actors]

    @property
    def node_ids(self) -> list[str]:
        """The Ray node each worker index's actor runs on."""
        return [a.node_id for a in self._actors]

    @property
    def hosts(self) -> list[str]:
        """The host name each worker index's actor runs on."""
        return [a.host for a in self._actors]

    def busy_ns(self) -> list[int]:
        return [a.busy_ns for a in self._actors]

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect to (or start) Ray, reserve the placement group, start every actor."""
        ray = self._ray = import_ray()
        try:
            if not ray.is_initialized():
                if self.address:
                    ray.init(address=self.address, log_to_driver=False)
                else:
                    # "local": a new instance even if a cluster runs here (`ray start`,
                    # RAY_ADDRESS), which ray.init() without an address would join instead.
                    ray.init(
                        address="local",
                        num_cpus=self.num_cpus or self.size,
                        include_dashboard=False,
                        log_to_driver=False,
                    )
                self._owns_ray = True
            placement = importlib.import_module("ray.util.placement_group")
            self._pg = placement.placement_group([{"CPU": 1}] * self.size, strategy="SPREAD")
            await self._wait(self._pg.ready(), "the placement group")
            for index in range(self.size):
                self._actors.append(self._spawn(index))
            await asyncio.gather(*(self._hello(a) for a in self._actors))
        except BaseException:
            await self.aclose()
            raise
        logger.info("Ray pool started: %d actors on nodes %s", self.size, self.node_ids)

    def _spawn(self, index: int) -> _Actor:
        strategies = importlib.import_module("ray.util.scheduling_strategies")
        strategy = strategies.PlacementGroupSchedulingStrategy(
            placement_group=self._pg, placement_group_bundle_index=index
        )
        cls = self._ray.remote(WorkerActor)
        handle = cls.options(num_cpus=1, max_restarts=0, scheduling_strategy=strategy).remote()
        return _Actor(index, handle)

    async def _wait(self, ref: Any, what: str, timeout: float | None = None) -> Any:
        try:
            return await asyncio.wait_for(
                asyncio.wrap_future(ref.future()), timeout=timeout or self.start_timeout
            )
        except TimeoutError:
            raise WorkerError(
                f"Ray gave no answer for {what} within {timeout or self.start_timeout:.0f} s "
                "(not enough CPUs in the cluster for the workers?)"
            ) from None

    async def _hello(self, actor: _Actor) -> None:
        try:
            actor.pid, actor.node_id, actor.host = await self._wait(
                actor.handle.hello.remote(), f"worker {actor.index}'s start"
            )
        except self._ray.exceptions.RayActorError as exc:
            raise WorkerCrashed(actor.index, None, None, f"Ray actor died: {exc}") from None
        if actor.host != socket.gethostname():
            # Tensors are shared memory on the driver's machine; carrying them to another
            # machine through Ray's object store is not implemented yet (docs/scale-out.md).
            logger.warning(
                "worker %d runs on host %s, not on the driver's (%s): its agents cannot open "
                "tensors, and CPU tasks on tensors fail there",
                actor.index,
                actor.host,
                socket.gethostname(),
            )

    async def aclose(self, timeout: float = 5.0) -> None:
        """Stop every actor, free the placement group, shut Ray down if this pool started
        it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        ray = self._ray
        actors, self._actors = self._actors, []
        if ray is None:
            return
        refs = []
        for a in actors:
            with contextlib.suppress(Exception):
                refs.append(a.handle.close.remote())
        if refs:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    asyncio.gather(*(asyncio.wrap_future(r.future()) for r in refs)), timeout
                )
        for a in actors:
            with contextlib.suppress(Exception):
                ray.kill(a.handle, no_restart=True)
        if self._pg is not None:
            with contextlib.suppress(Exception):
                importlib.import_module("ray.util.placement_group").remove_placement_group(self._pg)
        if self._owns_ray:
            ray.shutdown()

    # -- requests ---------------------------------------------------------------------------
    async def _request(
        self, index: int, request: Request, deadline_s: float = BASE_DEADLINE_S
    ) -> Any:
        if self._closed:
            raise WorkerError("the worker pool is closed")
        actor = self._actors[index]
        ray = self._ray
        async with actor.lock:
            start = time.perf_counter_ns()
            ref = actor.handle.handle.remote(request)
            try:
                reply = await asyncio.wait_for(asyncio.wrap_future(ref.future()), deadline_s)
            except TimeoutError:
                # The watchdog's rule: a silent worker is killed and reported as crashed.
                with contextlib.suppress(Exception):
                    ray.kill(actor.handle, no_restart=True)
                logger.warning("worker %d (Ray actor) unresponsive: killed", index)
                raise WorkerCrashed(
                    index, actor.pid, None, f"unresponsive for {deadline_s:.0f} s"
                ) from None
            except ray.exceptions.RayActorError as exc:
                raise WorkerCrashed(
                    index, actor.pid, None, f"Ray actor died: {type(exc).__name__}"
                ) from None
            actor.requests += 1
            actor.busy_ns += time.perf_counter_ns() - start
        status, value = reply
        if status == "ok":
            return value
        if status == "module-error":
            raise AgentModuleError(value)
        raise WorkerError(f"worker {index}: {value}")

    async def install_module(self, key: str, serialized: bytes, original: bytes = b"") -> None:
        self._modules[key] = (serialized, original)
        await asyncio.gather(
            *(
                self._request(i, Request("module", (key, serialized, original)))
                for i in range(self.size)
            )
        )

    async def set_directory(self, names: Sequence[str]) -> None:
        self._directory = tuple(names)
        await asyncio.gather(
            *(self._request(i, Request("directory", (self._directory,))) for i in range(self.size))
        )

    def add_tensors(self, entries: Sequence[TensorEntry]) -> None:
        self._tensors.extend(entries)

    async def _sync_tensors(self, index: int) -> None:
        actor = self._actors[index]
        if actor.tensors_seen < len(self._tensors):
            entries = self._tensors[actor.tensors_seen :]
            await self._request(index, Request("tensors", (entries,)))
            actor.tensors_seen += len(entries)

    async def load_agents(self, index: int, loads: Sequence[AgentLoad]) -> None:
        for load in loads:
            self._time_limits[load.agent_id] = effective_limits(load.limits)[0].timeout_ms or 0
        budget = 4 * sum(self._time_limits[load.agent_id] for load in loads)
        await self._request(index, Request("load", (list(loads),)), batch_deadline(budget, 0))

    async def run_batch(
        self,
        index: int,
        tick: int,
        deliveries: Sequence[tuple[int, int, int, bytes]],
        tasks: Sequence[TaskRun] = (),
    ) -> BatchReply:
        if self._closed:
            raise WorkerError("the worker pool is closed")
        actor = self._actors[index]
        new = self._tensors[actor.tensors_seen :]
        limits = self._time_limits
        deadline = batch_deadline(sum(limits.get(d[0], 0) for d in deliveries), len(tasks))
        reply = await self._request(
            index, Request("batch", (tick, list(deliveries), list(tasks), new)), deadline
        )
        actor.tensors_seen += len(new)
        outcomes, tasks_done, busy_ns, *usage = reply
        return BatchReply(
            tuple(map(Outcome._make, outcomes)),
            tuple(map(TaskOutcome._make, tasks_done)),
            busy_ns,
            usage[0] if usage else b"",
        )

    async def snapshot(self, index: int, agent_ids: Sequence[int]) -> dict[int, bytes | str]:
        reply = await self._request(index, Request("snapshot", (list(agent_ids),)))
        assert isinstance(reply, dict)
        return reply

    async def restore(
        self,
        index: int,
        items: Sequence[tuple[AgentLoad, bytes | None, list[tuple[int, int, int, bytes]]]],
    ) -> list[str | None]:
        await self._sync_tensors(index)
        budget = 0
        for load, _, replay in items:
            per = effective_limits(load.limits)[0].timeout_ms or 0
            self._time_limits[load.agent_id] = per
            budget += per * (len(replay) + 2)
        reply = await self._request(
            index, Request("restore", (list(items),)), batch_deadline(budget, 0)
        )
        assert isinstance(reply, list)
        return reply

    async def restart_agent(self, index: int, agent_id: int) -> None:
        await self._request(index, Request("restart", (agent_id,)))

    async def respawn(self, index: int) -> None:
        """Replace a dead actor with a new one in the same placement-group bundle (Ray
        moves the bundle to a live node when its node is gone), told the names and modules
        the old one knew; it hosts no agents until :meth:`restore`."""
        old = self._actors[index]
        with contextlib.suppress(Exception):
            self._ray.kill(old.handle, no_restart=True)
        actor = self._spawn(index)
        actor.busy_ns = old.busy_ns
        self._actors[index] = actor
        await self._hello(actor)
        self.restarts += 1
        await self._request(index, Request("directory", (self._directory,)))
        for key, (serialized, original) in self._modules.items():
            await self._request(index, Request("module", (key, serialized, original)))
        logger.warning(
            "worker %d replaced: Ray actor on node %s (was %s)", index, actor.node_id, old.node_id
        )

    def kill_worker(self, index: int) -> None:
        """Kill one actor (for tests of crash handling)."""
        self._ray.kill(self._actors[index].handle, no_restart=True)
