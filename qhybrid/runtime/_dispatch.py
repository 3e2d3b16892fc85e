"""Dispatch: one tick's batches, sent to the workers, the GPU thread and the LLM engine.

Owns nothing across ticks. :meth:`Dispatcher.plan` turns the items due at a tick into one
batch per worker (its agents' messages in queue order, then its share of the CPU tasks), the
GPU jobs, and a plan that says where each item's result will be; :meth:`Dispatcher.execute`
sends them all at once and waits for every answer. Which worker answers first never matters:
the commit reads the results in queue order from the plan. A worker that dies mid-batch is
replaced by recovery and the same batch sent again, so the tick's result does not change.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from qhybrid.runtime._events import RuntimeEvents, TaskStarted
from qhybrid.runtime._gpu_bridge import GpuBridge
from qhybrid.runtime._llm_bridge import LlmBridge
from qhybrid.runtime._named_tensors import NamedTensors
from qhybrid.runtime._ports import AgentPool
from qhybrid.runtime._recovery import Recovery, RunFailed
from qhybrid.runtime._roster import LOADED, Roster
from qhybrid.runtime._schedule import Item
from qhybrid.runtime.tensors import SharedTensor
from qhybrid.runtime.wasm_pool import BatchReply, TaskRun, WorkerCrashed, WorkerError
from qhybrid.runtime.wgpu_thread import GpuJobResult

if TYPE_CHECKING:
    from qhybrid.runtime.llm import RequestUpdate

__all__ = ["Dispatcher", "TickPlan", "TickResults"]

#: Where an item's result is: ``(item, worker, index in that worker's list)``; worker -1 for
#: an item no worker handles (a dropped message, a GPU task, a task that could not start).
Placement = tuple[Item, int, int]


@dataclass(slots=True)
class TickPlan:
    tick: int
    deliveries: list[list[tuple[int, int, int, bytes]]]
    cpu_runs: list[list[TaskRun]]
    placements: list[Placement] = field(default_factory=list)
    gpu_jobs: dict[int, concurrent.futures.Future[GpuJobResult]] = field(default_factory=dict)
    #: Output tensors of the tasks that started, by position in the tick's items.
    outputs: dict[int, SharedTensor] = field(default_factory=dict)

    def close_outputs(self) -> None:
        """Free the outputs (the tick will not be committed)."""
        for out in self.outputs.values():
            out.close()


@dataclass(slots=True)
class TickResults:
    replies: dict[int, BatchReply]
    gpu: dict[int, GpuJobResult | BaseException]
    llm_updates: list[RequestUpdate]


class Dispatcher:
    def __init__(
        self,
        pool: AgentPool,
        roster: Roster,
        tensors: NamedTensors,
        gpu: GpuBridge,
        llm: LlmBridge,
        recovery: Recovery,
        events: RuntimeEvents,
        workers: int,
    ) -> None:
        self.pool = pool
        self.roster = roster
        self.tensors = tensors
        self.gpu = gpu
        self.llm = llm
        self.recovery = recovery
        self.events = events
        self.workers = workers

    def plan(self, tick: int, due: list[Item]) -> TickPlan:
        """Sort the tick's items into batches; start the GPU jobs and allocate task outputs."""
        workers = self.workers
        plan = TickPlan(tick, [[] for _ in range(workers)], [[] for _ in range(workers)])
        deliveries, cpu_runs, placements = plan.deliveries, plan.cpu_runs, plan.placements
        cpu_count = 0
        agents = self.roster.agents
        named = self.tensors.by_name
        for pos, item in enumerate(due):
            if item.message is not None:
                sender, dst, kind, payload = item.message
                agent = agents[dst]
                if agent.state != LOADED:
                    placements.append((item, -1, -1))  # dropped; the commit records it
                    continue
                batch = deliveries[agent.worker]
                placements.append((item, agent.worker, len(batch)))
                batch.append((dst, sender, kind, payload))
                continue
            task = item.task
            assert task is not None
            try:
                inputs = tuple(named[name].handle for name in task.inputs)
            except KeyError as exc:
                # Only an agent's GPU job can name a tensor that is not there.
                placements.append((item, -1, -1))
                self.gpu.task_failed(task, tick, -1, f"input tensor {exc.args[0]!r} does not exist")
                continue
            out = self.tensors.store.create(task.output_shape, task.output_dtype)
            plan.outputs[pos] = out
            self.events.task_started.emit(TaskStarted(task.name, task.kind, task.op, tick))
            if task.kind == "gpu":
                plan.gpu_jobs[pos] = self.gpu.submit(task, inputs, out.handle)
                placements.append((item, -1, -1))
            else:
                # Any worker computes the same numbers; spread tasks for parallelism.
                w = cpu_count % workers
                cpu_count += 1
                placements.append((item, w, len(cpu_runs[w])))
                cpu_runs[w].append(
                    TaskRun(pos, task.op, inputs, out.handle, tuple(task.params.items()))
                )
        return plan

    async def execute(self, plan: TickPlan) -> TickResults:
        """Send every batch, the GPU jobs and the LLM step at once; wait for all of them.

        Raises :class:`RunFailed` or :class:`WorkerError` (after freeing the outputs) when a
        batch or the LLM step cannot be done.
        """
        tick = plan.tick
        # Batches of messages alone (no task, no GPU job, no LLM step; and run_batch not
        # wrapped, as a replay wraps it for CPU tasks): the pool's cheaper path.
        run_batches = getattr(self.pool, "run_batches", None)
        if (
            run_batches is not None
            and not plan.gpu_jobs
            and not any(plan.cpu_runs)
            and "run_batch" not in vars(self)
            and not self.llm.busy
        ):
            return await self._execute_batches(plan, run_batches)
        batch_calls = {
            w: self.run_batch(w, tick, plan.deliveries[w], plan.cpu_runs[w])
            for w in range(self.workers)
            if plan.deliveries[w] or plan.cpu_runs[w]
        }
        gpu_waits = {pos: asyncio.wrap_future(fut) for pos, fut in plan.gpu_jobs.items()}
        llm_wait: list[asyncio.Future[list[RequestUpdate]]] = []
        step = self.llm.step()
        if step is not None:
            llm_wait.append(asyncio.wrap_future(step))
        try:
            results = await asyncio.gather(
                *batch_calls.values(), *gpu_waits.values(), *llm_wait, return_exceptions=True
            )
        except asyncio.CancelledError:
            plan.close_outputs()
            raise
        llm_updates: list[RequestUpdate] = []
        if llm_wait:
            step_result = results.pop()
            if isinstance(step_result, BaseException):
                plan.close_outputs()
                raise RunFailed(f"the LLM step failed: {step_result}") from step_result
            llm_updates = cast("list[RequestUpdate]", step_result)
        replies: dict[int, BatchReply] = {}
        for w, res in zip(batch_calls, results[: len(batch_calls)], strict=True):
            if not isinstance(res, BatchReply):
                plan.close_outputs()
                if isinstance(res, WorkerError):
                    raise res
                cause = res if isinstance(res, BaseException) else None
                raise RunFailed(f"worker {w}: {res}") from cause
            replies[w] = res
        gpu_results: dict[int, GpuJobResult | BaseException] = {}
        for pos, gres in zip(gpu_waits, results[len(batch_calls) :], strict=True):
            assert isinstance(gres, GpuJobResult | BaseException)
            gpu_results[pos] = gres
        return TickResults(replies, gpu_results, llm_updates)

    async def _execute_batches(
        self, plan: TickPlan, run_batches: Callable[..., Awaitable[dict[int, object]]]
    ) -> TickResults:
        """A tick of worker batches alone (the common case): all sent at once through the
        pool's :meth:`~qhybrid.runtime.wasm_pool.WorkerPool.run_batches`, one wait for every
        reply, no task per worker; a worker that died is recovered and its batch sent again,
        as :meth:`run_batch` does."""
        tick = plan.tick
        deliveries, cpu_runs = plan.deliveries, plan.cpu_runs
        batches = {
            w: (deliveries[w], cpu_runs[w])
            for w in range(self.workers)
            if deliveries[w] or cpu_runs[w]
        }
        try:
            results = await run_batches(tick, batches)
            replies: dict[int, BatchReply] = {}
            for w, res in results.items():
                if isinstance(res, WorkerCrashed):
                    await self.recovery.recover_worker(w, tick, res)
                    res = await self.run_batch(w, tick, deliveries[w], cpu_runs[w])
                if not isinstance(res, BatchReply):
                    if isinstance(res, WorkerError):
                        raise res
                    cause = res if isinstance(res, BaseException) else None
                    raise RunFailed(f"worker {w}: {res}") from cause
                replies[w] = res
        except BaseException:
            plan.close_outputs()
            raise
        return TickResults(replies, {}, [])

    async def run_batch(
        self,
        worker: int,
        tick: int,
        deliveries: list[tuple[int, int, int, bytes]],
        runs: list[TaskRun],
    ) -> BatchReply:
        """One worker's batch; a worker that dies is replaced, its agents restored, and the
        same batch sent again, so the tick's result does not change."""
        while True:
            try:
                return await self.pool.run_batch(worker, tick, deliveries, runs)
            except WorkerCrashed as exc:
                await self.recovery.recover_worker(worker, tick, exc)
