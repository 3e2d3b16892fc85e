"""Dispatch: one tick's batches, sent to the workers, the GPU thread and the LLM engine.

Owns nothing across ticks. :meth:`Dispatcher.plan` turns the items due at a tick into one
batch per worker (its agents' messages in queue order, then its share of the CPU tasks), the
GPU jobs, and a plan that says where each item's result will be; :meth:`Dispatcher.execute`
sends them all at once and waits for every answer. Which worker answers first never matters:
the commit reads the results in queue order from the plan. A worker that dies mid-batch is
replaced by recovery and the same batch sent again, so the tick's result does not change.

Tasks are chained in queue order: a task whose input is the output of a task earlier in the
same tick reads that output (a ``gpu_submit_into``'s result too, before it is applied). GPU
tasks chained only to GPU tasks start with the rest, since the GPU thread runs its jobs one at
a time in order; any other chained task (one that needs a CPU task's output, or a CPU task
that needs any) runs after the tick's batches, one after the other in queue order.
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
from qhybrid.runtime._scenario import TaskSpec
from qhybrid.runtime._schedule import Item
from qhybrid.runtime.tensors import SharedTensor, TensorHandle
from qhybrid.runtime.wasm_pool import (
    USAGE_AGENTS,
    USAGE_MESSAGES,
    BatchReply,
    TaskOutcome,
    TaskRun,
    WorkerCrashed,
    WorkerError,
)
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
    #: For a task chained to earlier ones: ``(position of the producer, tensor name)``.
    deps: dict[int, tuple[tuple[int, str], ...]] = field(default_factory=dict)
    #: The chained tasks run after the batches, in order: (position, task, inputs, CPU run).
    chained: list[tuple[int, TaskSpec, tuple[TensorHandle, ...], TaskRun | None]] = field(
        default_factory=list
    )

    def all_cpu_runs(self) -> list[TaskRun]:
        """Every CPU task's run, the batches' and the chained ones."""
        runs = [run for batch in self.cpu_runs for run in batch]
        return runs + [run for _, _, _, run in self.chained if run is not None]

    def close_outputs(self) -> None:
        """Free the outputs (the tick will not be committed)."""
        for out in self.outputs.values():
            out.close()


@dataclass(slots=True)
class TickResults:
    replies: dict[int, BatchReply]
    gpu: dict[int, GpuJobResult | BaseException]
    llm_updates: list[RequestUpdate]
    #: The chained CPU tasks' outcomes, by position.
    chained: dict[int, TaskOutcome] = field(default_factory=dict)


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
        #: Called once a tick's batches are all written, while the workers run them (work
        #: of the tick before that nothing of this tick depends on: the trace's hashing).
        self.while_waiting: Callable[[], None] | None = None

    def plan(self, tick: int, due: list[Item]) -> TickPlan:
        """Sort the tick's items into batches; start the GPU jobs and allocate task outputs."""
        workers = self.workers
        plan = TickPlan(tick, [[] for _ in range(workers)], [[] for _ in range(workers)])
        deliveries, cpu_runs, placements = plan.deliveries, plan.cpu_runs, plan.placements
        cpu_count = 0
        agents = self.roster.agents
        named = self.tensors.by_name
        self.tensors.drop_retired()
        #: The outputs made so far this tick: name -> (handle, producer, chained behind a CPU
        #: task, so readable only after the batches).
        made: dict[str, tuple[TensorHandle, int, bool]] = {}
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
            handles: list[TensorHandle] = []
            deps: list[tuple[int, str]] = []
            late = False
            missing = None
            for name in task.inputs:
                earlier = made.get(name)
                if earlier is not None:
                    handles.append(earlier[0])
                    deps.append((earlier[1], name))
                    late = late or earlier[2]
                elif name in named:
                    handles.append(named[name].handle)
                else:
                    missing = f"input tensor {name!r} does not exist"
                    break
            if missing is None and task.into and task.output not in named | made.keys():
                missing = f"output tensor {task.output!r} does not exist (released?)"
            if missing is not None:
                # Only an agent's GPU job can name a tensor that is not there.
                placements.append((item, -1, -1))
                self.gpu.task_failed(task, tick, -1, missing)
                continue
            inputs = tuple(handles)
            out = self.tensors.store.create(task.output_shape, task.output_dtype)
            plan.outputs[pos] = out
            if deps:
                plan.deps[pos] = tuple(deps)
            chained = late or (task.kind != "gpu" and bool(deps))
            made[task.output] = (out.handle, pos, chained or task.kind != "gpu")
            self.events.task_started.emit(TaskStarted(task.name, task.kind, task.op, tick))
            if chained:
                placements.append((item, -1, -1))
                run = None
                if task.kind != "gpu":
                    run = TaskRun(pos, task.op, inputs, out.handle, tuple(task.params.items()))
                plan.chained.append((pos, task, inputs, run))
                continue
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
        # The agents' usage rows ride on this tick's batches only if someone read the usage
        # since the last tick (Roster.summaries); a pool that does not know of them ignores it.
        asked = USAGE_AGENTS if self.roster.usage_asked else 0
        if len(self.events.message_usage):  # someone listens: each message's too
            asked |= USAGE_MESSAGES
        self.roster.usage_asked = False
        if hasattr(self.pool, "usage_rows"):
            self.pool.usage_rows = asked
        # Batches of messages alone (no task, GPU job, chained task or LLM step; run_batch not
        # wrapped, as a replay wraps it for CPU tasks): the pool's cheaper path.
        run_batches = getattr(self.pool, "run_batches", None)
        if (
            run_batches is not None
            and not plan.gpu_jobs
            and not plan.chained
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
        chained = await self._run_chained(plan, gpu_results) if plan.chained else {}
        return TickResults(replies, gpu_results, llm_updates, chained)

    async def _run_chained(
        self, plan: TickPlan, gpu_results: dict[int, GpuJobResult | BaseException]
    ) -> dict[int, TaskOutcome]:
        """The chained tasks, one after the other in queue order (each reads what the ones
        before it wrote); CPU ones spread over the workers as the batches' are."""
        outcomes: dict[int, TaskOutcome] = {}
        for n, (pos, task, inputs, run) in enumerate(plan.chained):
            if run is None:
                future = self.gpu.submit(task, inputs, plan.outputs[pos].handle)
                try:
                    done: GpuJobResult = await asyncio.wrap_future(future)
                except Exception as exc:
                    gpu_results[pos] = exc
                else:
                    gpu_results[pos] = done
                continue
            try:
                reply = await self.run_batch(n % self.workers, plan.tick, [], [run])
            except BaseException:
                plan.close_outputs()
                raise
            outcomes[pos] = reply.tasks[0]
        return outcomes

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
            results = await run_batches(tick, batches, while_waiting=self.while_waiting)
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
