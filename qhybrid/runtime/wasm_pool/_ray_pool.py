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

Tensors: an actor on the driver's Ray node (by node id, not host name: the raylets of a local
``Cluster`` share one machine) maps the driver's shared-memory segments as a local worker
does; an actor on any other node gets them through Ray's object store (``_ray_tensors.py``).
``QHYBRID_RAY_TENSORS=object-store`` (or ``tensors="object-store"``) sends every actor that
way, the driver's node included (for tests and to measure it).

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
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from qhybrid.runtime.wasm_pool._abi import AgentModuleError
from qhybrid.runtime.wasm_pool._pool import WorkerCrashed, WorkerError
from qhybrid.runtime.wasm_pool._pool_base import PoolBase
from qhybrid.runtime.wasm_pool._protocol import (
    BatchReply,
    Request,
    TaskRun,
)
from qhybrid.runtime.wasm_pool._watchdog import BASE_DEADLINE_S

__all__ = [
    "RAY_INSTALL_HINT",
    "RAY_TENSORS_ENV",
    "TENSOR_PATHS",
    "RayNotInstalled",
    "RayWorkerPool",
    "import_ray",
    "ray_tensor_path",
]

logger = logging.getLogger(__name__)

RAY_INSTALL_HINT = "pip install 'qhybrid[ray]'  (or: pip install ray)"
#: How tensors reach the actors: "auto" (shared memory on the driver's node, the object
#: store elsewhere) or "object-store" (every actor through the object store).
RAY_TENSORS_ENV = "QHYBRID_RAY_TENSORS"
TENSOR_PATHS = ("auto", "object-store")


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


def ray_tensor_path(tensors: str | None = None) -> str:
    """``tensors``, or ``$QHYBRID_RAY_TENSORS`` when None (default "auto"), checked: one of
    :data:`TENSOR_PATHS`, else :class:`WorkerError` naming where the value came from."""
    where = "tensors"
    if tensors is None:
        tensors = os.environ.get(RAY_TENSORS_ENV, "").strip() or "auto"
        where = f"${RAY_TENSORS_ENV}"
    if tensors not in TENSOR_PATHS:
        raise WorkerError(f"{where} must be one of {', '.join(TENSOR_PATHS)}, got {tensors!r}")
    return tensors


class WorkerActor:
    """The body of one Ray actor: a :class:`_worker.Worker` and the same replies a worker
    process writes on its pipe (``("ok", value)``, ``("module-error", text)``,
    ``("error", text)``)."""

    def __init__(self) -> None:
        from qhybrid.runtime.wasm_pool._worker import Worker

        self.worker: Any = Worker()

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

    def use_object_store(self) -> None:
        """Read tensors from Ray's object store from now on (before any agent is loaded)."""
        from qhybrid.runtime.wasm_pool._ray_tensors import ObjectStoreWorker

        self.worker.close()
        self.worker = ObjectStoreWorker()

    def handle_remote(
        self, request: Request, refs: dict[Any, Any]
    ) -> tuple[str, Any, dict[int, Any]]:
        """:meth:`handle` on the object-store path: the tensor references this actor had
        not had yet come with the request; CPU tasks' outputs go back with the reply."""
        self.worker.store_ctx.set_refs(refs)
        status, value = self.handle(request)
        return status, value, self.worker.take_outputs()

    def tensor_stats(self) -> tuple[int, int]:
        """Tensors this actor fetched from the object store, and their bytes."""
        ctx = getattr(self.worker, "store_ctx", None)
        return (0, 0) if ctx is None else (ctx.fetches, ctx.fetched_bytes)

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
        #: Tensors come through the object store (not on the driver's node, or forced).
        self.object_store = False
        #: The object-store references this actor has been sent, by tensor handle.
        self.refs_sent: dict[Any, Any] = {}


class RayWorkerPool(PoolBase):
    """``size`` Ray actors, one per worker index, behind the interface of
    :class:`~qhybrid.runtime.wasm_pool.WorkerPool` (the orchestrator's ``AgentPool``).

    ``address``: a running cluster (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``);
    ``None`` starts a local Ray instance with ``num_cpus`` CPUs (default: ``size``) and shuts
    it down in :meth:`aclose`. If Ray is already initialised in this process, the pool uses
    that connection and leaves it open. ``tensors``: one of :data:`TENSOR_PATHS` (default:
    ``$QHYBRID_RAY_TENSORS``, else "auto").
    """

    def __init__(
        self,
        size: int,
        *,
        address: str | None = None,
        start_timeout: float = 60.0,
        num_cpus: int | None = None,
        tensors: str | None = None,
    ) -> None:
        super().__init__(size)
        self.tensor_path = ray_tensor_path(tensors)
        self.address = address
        self.start_timeout = start_timeout
        self.num_cpus = num_cpus
        self._ray: Any = None
        self._owns_ray = False
        self._pg: Any = None
        self._actors: list[_Actor] = []
        self._closed = False
        self._driver_node = ""
        self._refs: Any = None  # _ray_tensors.StoreRefs, once an actor needs the object store
        self._tick: int | None = None
        #: Set once the pool has started (or failed to): what a part that needs Ray too
        #: (the GPU actor, _ray_gpu.py) waits for, from another thread, so that it does not
        #: create actors while the pool does (two threads exporting actor classes at once
        #: lost an actor now and then).
        self.started = threading.Event()
        self._close_hooks: list[Callable[[], None]] = []

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

    def _host(self, index: int) -> _Actor:
        return self._actors[index]

    @property
    def running(self) -> bool:
        """Started and not closed."""
        return self.started.is_set() and not self._closed

    @property
    def ray(self) -> Any:
        """The ``ray`` module once :meth:`start` has imported it, else None."""
        return self._ray

    def add_close_hook(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` in :meth:`aclose` before the actors stop and Ray shuts down."""
        self._close_hooks.append(hook)

    @property
    def driver_node(self) -> str:
        """The Ray node id of the driver (this process)."""
        return self._driver_node

    @property
    def object_store(self) -> list[bool]:
        """Per worker index: whether its actor gets tensors through the object store."""
        return [a.object_store for a in self._actors]

    def tensor_puts(self) -> tuple[int, int]:
        """Tensor versions the driver put into the object store so far, and their bytes."""
        return (0, 0) if self._refs is None else (self._refs.puts, self._refs.put_bytes)

    async def tensor_fetches(self) -> list[tuple[int, int]]:
        """Per worker index: tensors its actor fetched from the object store, and bytes."""
        return list(
            await asyncio.gather(
                *(self._wait(a.handle.tensor_stats.remote(), "tensor stats") for a in self._actors)
            )
        )

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect to (or start) Ray, reserve the placement group, start every actor."""
        ray = self._ray = import_ray()
        try:
            if not ray.is_initialized():
                from qhybrid.runtime.wasm_pool._ray_signals import kept_crash_handlers

                # ray.init's crash handlers would replace wasmtime's trap handlers here.
                with kept_crash_handlers():
                    self._ray_init(ray)
                self._owns_ray = True
            self._driver_node = str(ray.get_runtime_context().get_node_id())
            placement = importlib.import_module("ray.util.placement_group")
            self._pg = placement.placement_group([{"CPU": 1}] * self.size, strategy="SPREAD")
            await self._wait(self._pg.ready(), "the placement group")
            for index in range(self.size):
                self._actors.append(self._spawn(index))
            await asyncio.gather(*(self._hello(a) for a in self._actors))
        except BaseException:
            await self.aclose()
            raise
        self.started.set()
        logger.info("Ray pool started: %d actors on nodes %s", self.size, self.node_ids)

    def _ray_init(self, ray: Any) -> None:
        if self.address:
            ray.init(address=self.address, log_to_driver=False)
        else:
            # "local": a new instance even if a cluster runs here (`ray start`, RAY_ADDRESS),
            # which ray.init() without an address would join instead.
            ray.init(
                address="local",
                num_cpus=self.num_cpus or self.size,
                include_dashboard=False,
                log_to_driver=False,
            )

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
            if self.tensor_path == "object-store" or actor.node_id != self._driver_node:
                # Another node has its own /dev/shm (a local Cluster's raylets do not, but
                # which node it is, not which host, decides: the path is the same).
                await self._wait(actor.handle.use_object_store.remote(), "the object store")
                actor.object_store = True
                if self._refs is None:
                    from qhybrid.runtime.wasm_pool._ray_tensors import StoreRefs

                    self._refs = StoreRefs(self._ray)
        except self._ray.exceptions.RayActorError as exc:
            raise WorkerCrashed(actor.index, None, None, f"Ray actor died: {exc}") from None

    async def aclose(self, timeout: float = 5.0) -> None:
        """Stop every actor, free the placement group, shut Ray down if this pool started
        it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.started.set()  # nobody waits for a start that will not come
        ray = self._ray
        actors, self._actors = self._actors, []
        if ray is None:
            return
        for hook in self._close_hooks:
            try:
                await asyncio.to_thread(hook)
            except Exception:
                logger.exception("a Ray pool close hook failed")
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
        if self._refs is not None:
            self._refs.close()
        if self._pg is not None:
            with contextlib.suppress(Exception):
                importlib.import_module("ray.util.placement_group").remove_placement_group(self._pg)
        if self._owns_ray:
            from qhybrid.runtime.wasm_pool._ray_signals import kept_crash_handlers

            with kept_crash_handlers():  # its shutdown resets them to the default action
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
            if actor.object_store:
                self._refs.refresh(self._tensors, self._tick if request.op == "batch" else None)
                if request.op == "batch":
                    self._refs.add_inputs(request.args[2])
                refs = self._refs.delta(actor.refs_sent)
                ref = actor.handle.handle_remote.remote(request, refs)
            else:
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
            if actor.object_store:
                status, value, outputs = reply
                if outputs:
                    from qhybrid.runtime.wasm_pool._ray_tensors import copy_outputs

                    copy_outputs(request.args[2], outputs)
            else:
                status, value = reply
            actor.requests += 1
            actor.busy_ns += time.perf_counter_ns() - start
        if status == "ok":
            return value
        if status == "module-error":
            raise AgentModuleError(value)
        raise WorkerError(f"worker {index}: {value}")

    async def run_batch(
        self,
        index: int,
        tick: int,
        deliveries: Sequence[tuple[int, int, int, bytes]],
        tasks: Sequence[TaskRun] = (),
    ) -> BatchReply:
        if self._closed:
            raise WorkerError("the worker pool is closed")
        self._tick = tick
        return await self._batch(index, tick, deliveries, tasks)

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
        await self._tell_again(index)
        logger.warning(
            "worker %d replaced: Ray actor on node %s (was %s)", index, actor.node_id, old.node_id
        )

    def kill_worker(self, index: int) -> None:
        """Kill one actor (for tests of crash handling)."""
        self._ray.kill(self._actors[index].handle, no_restart=True)
