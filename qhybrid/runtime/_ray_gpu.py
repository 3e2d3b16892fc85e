"""GPU jobs on a Ray node with a GPU: the ``--backend ray`` run's GPU device.

:class:`RayGpuDevice` is the run's :class:`~qhybrid.runtime.wgpu_thread.GpuDevice` (its own
device thread starts as always: the LLM engine's ``call`` work and the fallback run there).
When the Ray cluster declares GPUs (``ray.cluster_resources()["GPU"] >= 1``, the
``num_gpus`` of its nodes), it also starts one actor with ``num_gpus=0.5`` (so Ray places it
on such a node, and the LLM actor fits beside it) that opens a ``GpuDevice`` there with the
same preference and the fixed placement rule, and every GPU job (scenario GPU tasks,
agents' ``gpu_submit``) runs in it:
the inputs go as arrays (Ray's object store for large ones), the output comes back and is
written into the output's shared memory on the driver, and the future resolves as a local
job's does. Without GPUs in the cluster, jobs run on the driver's device, as locally. If
the actor dies, later jobs (and the one that failed) run on the driver's device.

Same answers: the actor runs the very same device code with ``placement="fixed"``; where
its device is the same kind as the driver's would be (numpy with ``--device cpu``, the same
adapter), the trace hash is the local run's. A different GPU can round differently, as it
would locally.

The LLM engine: with GPUs in the cluster, :meth:`RayGpuDevice.open_engine` opens the
scenario's model in a second actor on a GPU node (``_ray_llm``); both actors ask for
``num_gpus=0.5``, so one GPU holds both. Without GPUs, the model opens on the driver's device
thread, as locally.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib
import logging
import os
import queue
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from qhybrid.runtime.tensors import TensorHandle, TensorStore, attach
from qhybrid.runtime.wasm_pool import RayWorkerPool
from qhybrid.runtime.wgpu_thread import (
    ComputeContext,
    DeviceInfo,
    GpuDevice,
    GpuJobError,
    GpuJobResult,
)

if TYPE_CHECKING:
    from qhybrid.runtime._ray_llm import RemoteEngine
    from qhybrid.runtime.llm import LlmOptions, LoadedModel

__all__ = ["GpuActor", "RayGpuDevice"]

logger = logging.getLogger(__name__)


class GpuActor:
    """The body of the GPU actor: a :class:`GpuDevice` on its node, jobs on arrays."""

    def __init__(self, prefer: str) -> None:
        self.device = GpuDevice(prefer=prefer, placement="fixed")
        self.store = TensorStore()

    def start(self) -> tuple[DeviceInfo, str]:
        """The device's description and this actor's Ray node id."""
        info = self.device.start()
        node = importlib.import_module("ray").get_runtime_context().get_node_id()
        return info, str(node)

    def run(
        self,
        op: str,
        inputs: list[npt.NDArray[Any]],
        out_shape: tuple[int, ...],
        out_dtype: str,
        params: dict[str, float],
    ) -> tuple[npt.NDArray[Any], GpuJobResult]:
        """``op(inputs)``, through this node's device (its segments are this node's)."""
        tensors = [self.store.create(a.shape, a.dtype.str) for a in inputs]
        out = self.store.create(out_shape, out_dtype)
        try:
            for tensor, array in zip(tensors, inputs, strict=True):
                tensor.array[...] = array
            result = self.device.submit(op, [t.handle for t in tensors], out.handle, params)
            job = result.result()
            return np.array(out.array), job
        finally:
            for tensor in (*tensors, out):
                tensor.close()

    def close(self) -> None:
        self.device.close()
        self.store.close()


#: What a job was submitted with: op, inputs, output, params.
_JobArgs = tuple[str, tuple[TensorHandle, ...], TensorHandle, dict[str, float]]


class _RemoteJob:
    __slots__ = ("args", "done")

    def __init__(self, args: _JobArgs) -> None:
        self.args = args
        self.done: concurrent.futures.Future[GpuJobResult] = concurrent.futures.Future()


class RayGpuDevice(GpuDevice):
    """The run's GPU device on the Ray backend: jobs on a GPU node's actor when the cluster
    has GPUs, else on this (the driver's) device thread."""

    def __init__(self, pool: RayWorkerPool, *, prefer: str = "auto") -> None:
        super().__init__(prefer=prefer, placement="fixed")
        self._pool = pool
        self._prefer_name = prefer
        self._actor: Any = None
        #: The Ray node the GPU actor runs on ("" when jobs run on the driver).
        self.gpu_node = ""
        #: GPU jobs run by the actor so far.
        self.remote_jobs = 0
        self._waiting: queue.SimpleQueue[_RemoteJob | None] = queue.SimpleQueue()
        self._waiter: threading.Thread | None = None
        #: The LLM engine's actor, when the model was opened on a GPU node (``_ray_llm``).
        self.llm_engine: RemoteEngine | None = None
        self._gpus = False

    def start(self, timeout: float = 30.0) -> DeviceInfo:
        info = super().start(timeout)
        # The pool starts (or joins) Ray on the loop meanwhile; the GPU actor needs it, and
        # is created after the pool's actors.
        if not self._pool.started.wait(self._pool.start_timeout):
            return info
        ray = self._pool.ray
        if not self._pool.running:
            return info  # the pool failed to start; the run fails there
        if float(ray.cluster_resources().get("GPU", 0)) < 1:
            logger.info("no GPU in the Ray cluster: GPU jobs run on the driver (%s)", info.name)
            return info
        self._gpus = True
        env = {name: str(_blas_threads()) for name in _BLAS_THREAD_VARS}
        try:
            actor = (
                ray.remote(GpuActor)
                .options(num_gpus=0.5, num_cpus=0, max_restarts=0, runtime_env={"env_vars": env})
                .remote(self._prefer_name)
            )
        except Exception as exc:  # e.g. the pool closed meanwhile
            logger.warning("no GPU actor (%s): GPU jobs run on the driver", exc)
            return info
        try:
            remote_info, node = ray.get(actor.start.remote(), timeout=self._pool.start_timeout)
        except Exception as exc:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
            logger.warning("the GPU actor did not start (%s): GPU jobs run on the driver", exc)
            return info
        self._actor, self.gpu_node = actor, node
        self._waiter = threading.Thread(target=self._wait_jobs, name="qhybrid-gpu-actor-waiter")
        self._waiter.start()
        self._pool.add_close_hook(self._close_actor)  # before the pool shuts Ray down
        logger.info("GPU jobs run on Ray node %s (%s)", node, remote_info.name)
        return info

    def submit(
        self,
        op: str,
        inputs: Sequence[TensorHandle],
        output: TensorHandle,
        params: Mapping[str, float] | None = None,
    ) -> concurrent.futures.Future[GpuJobResult]:
        if self._waiter is None:  # no GPU actor: the driver's device thread
            return super().submit(op, inputs, output, params)
        # Through the job thread even once the actor is dead: jobs stay in order.
        plain = {str(k): float(v) for k, v in (params or {}).items()}
        job = _RemoteJob((op, tuple(inputs), output, plain))
        self._waiting.put(job)
        return job.done

    def _wait_jobs(self) -> None:
        """The job thread: each job in order, as the device thread runs them (a job may read
        the output of the one before it in the same tick): its inputs read, run by the
        actor, its output written; a dead actor's jobs go to the driver's device. A thread
        of its own, not callbacks on Ray's threads (those are not Python's)."""
        ray = self._pool.ray
        while (job := self._waiting.get()) is not None:
            op, inputs, output, params = job.args
            try:
                actor = self._actor
                if actor is None:
                    raise ray.exceptions.RayActorError()
                arrays = []
                for handle in inputs:
                    with attach(handle) as mapped:
                        arrays.append(np.array(mapped.array))
                ref = actor.run.remote(op, arrays, output.shape, output.dtype, params)
                array, result = ray.get(ref)
                with attach(output, writable=True) as out:
                    out.array[...] = array
            except ray.exceptions.RayActorError as exc:
                if self._actor is not None:
                    logger.warning("the GPU actor died (%s): GPU jobs run on the driver", exc)
                self._actor = None  # this and later jobs run here
                local = super().submit(op, inputs, output, params)
                try:
                    job.done.set_result(local.result())
                except Exception as error:
                    job.done.set_exception(error)
                continue
            except Exception as exc:
                # The job's own failure: the device's error as a local job gives it (Ray
                # wraps what the actor raised; the text goes into the trace).
                cause = getattr(exc, "cause", None) or exc
                job.done.set_exception(GpuJobError(str(cause)))
                continue
            self.remote_jobs += 1
            job.done.set_result(result)

    def open_engine(
        self, ctx: ComputeContext | None, path: str | os.PathLike[str], options: LlmOptions
    ) -> LoadedModel:
        """The scenario's model (on this device thread): in an actor on a GPU node when the
        cluster has GPUs, else here, as locally."""
        from qhybrid.runtime._ray_llm import open_remote
        from qhybrid.runtime.llm import open_engine

        if not self._gpus or not self._pool.running:
            return open_engine(ctx, path, options)
        env = {name: str(_blas_threads()) for name in _BLAS_THREAD_VARS}
        loaded = open_remote(
            self._pool.ray,
            path,
            options,
            prefer=self._prefer_name,
            env=env,
            timeout=self._pool.start_timeout,
            # If the actor dies: the model opened here, on this device thread, where the
            # engine's calls are made.
            fallback=lambda: open_engine(ctx, path, options),
        )
        self.llm_engine = cast("RemoteEngine", loaded.engine)
        self._pool.add_close_hook(self._close_llm)  # before the pool shuts Ray down
        return loaded

    def _close_llm(self) -> None:
        engine, self.llm_engine = self.llm_engine, None
        if engine is None:
            return
        engine.close()
        local, engine.local = engine.local, None
        if local is not None:  # the driver's engine, after the actor died: its device thread
            try:
                self.call(lambda _ctx: local.close()).result(timeout=10)
            except Exception:
                logger.debug("releasing the driver's LLM failed", exc_info=True)

    def kill_gpu_actor(self) -> None:
        """Kill the GPU actor (for tests of its failure): the next job finds it dead."""
        if self._actor is not None:
            self._pool.ray.kill(self._actor, no_restart=True)

    def _close_actor(self, timeout: float = 10.0) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:  # the jobs in flight are answered first
            self._waiting.put(None)
            waiter.join(timeout)
        actor, self._actor = self._actor, None
        if actor is not None:
            ray = self._pool.ray
            with contextlib.suppress(Exception):
                ray.get(actor.close.remote(), timeout=timeout)
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)

    def close(self, timeout: float = 10.0) -> None:
        self._close_actor(timeout)
        self._close_llm()
        super().close(timeout)


#: What the BLAS libraries numpy may use read for their thread count (OpenBLAS reads the
#: first, then OMP_NUM_THREADS; MKL its own).
_BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _blas_threads() -> int:
    """The number of BLAS threads numpy uses in this process: a float32 matrix product's
    bits depend on it (how the sums are split), so the GPU actor's numpy fallback uses the
    same number as the driver's device thread would, or its hash would not be the local one
    (Ray gives an actor with ``num_cpus=0`` one thread)."""
    for name in _BLAS_THREAD_VARS[:2]:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1
