"""The bridge to the GPU thread: submitting GPU tasks and answering agents' GPU jobs.

Owns: which agent asked for which queued GPU job (task name -> ``(agent id, job id)``) and
the GPU's busy time so far. The :class:`GpuDevice` itself (its thread, buffers, pipelines)
belongs to the runtime, which starts and closes it; this part only talks to it.

An agent's ``gpu`` effect becomes a GPU task due at the next tick; its answer (status and
error text, kind ``KIND_GPU_DONE``) reaches the agent the tick after the task ran. A
``gpu_into`` effect (``gpu_submit_into``) is the same with ``TaskSpec.into`` set: its result
goes into the existing tensor it names. A job may take as input the output of a job the same
agent queued earlier in the same tick: both run at the next tick, in queue order (the
dispatcher chains them), so the bridge knows the shapes of the outputs queued so far.
"""

from __future__ import annotations

import concurrent.futures
import struct

from qhybrid.runtime._named_tensors import NamedTensors
from qhybrid.runtime._roster import AgentRecord
from qhybrid.runtime._scenario import TaskSpec
from qhybrid.runtime._schedule import Item, Schedule
from qhybrid.runtime._trace import TraceRecorder
from qhybrid.runtime.tensors import OPS, TensorHandle, get_op
from qhybrid.runtime.wasm_pool import KIND_GPU_DONE, RUNTIME_SENDER
from qhybrid.runtime.wgpu_thread import GpuDevice, GpuJobResult

__all__ = ["GpuBridge"]


class GpuBridge:
    def __init__(
        self,
        device: GpuDevice,
        schedule: Schedule,
        tensors: NamedTensors,
        trace: TraceRecorder,
    ) -> None:
        self.device = device
        self.schedule = schedule
        self.tensors = tensors
        self.trace = trace
        self.busy_s = 0.0
        self._job_owner: dict[str, tuple[int, int]] = {}
        #: The outputs of the agents' jobs queued during the commit of tick ``_queued_tick``
        #: (all due at the next tick): name -> (shape, dtype).
        self._queued: dict[str, tuple[tuple[int, ...], str]] = {}
        self._queued_tick = -1

    def owner_of(self, task: TaskSpec) -> int | None:
        """The agent whose job ``task`` is, or None for a scenario's task."""
        owner = self._job_owner.get(task.name)
        return None if owner is None else owner[0]

    def submit(
        self, task: TaskSpec, inputs: tuple[TensorHandle, ...], out: TensorHandle
    ) -> concurrent.futures.Future[GpuJobResult]:
        return self.device.submit(task.op, inputs, out, dict(task.params))

    def finished(self, task: TaskSpec, tick: int, error: str | None) -> bool:
        """A GPU or CPU task ended: answer the agent that asked for it, if one did.
        True if an agent owned it (its failure is the agent's business, not the run's)."""
        owner = self._job_owner.pop(task.name, None)
        if owner is None:
            return False
        self.answer(owner, tick, 0 if error is None else 1, error or "")
        return True

    def task_failed(self, task: TaskSpec, tick: int, seq: int, error: str) -> None:
        """A task failed (``seq`` -1: it could not even start, an input is missing): its
        agent is told, or, for a scenario's task, the run fails."""
        self.trace.record("task-failed", tick, seq, task.name, error)
        if not self.finished(task, tick, error):
            # A task failure overrides an earlier reason of the same tick (as it always has).
            self.schedule.failure = f"task {task.name!r} ({task.kind} {task.op}) failed: {error}"

    def answer(self, owner: tuple[int, int], tick: int, status: int, error: str) -> None:
        agent_id, job = owner
        payload = struct.pack("<ii", job, status) + error.encode("utf-8")
        self.schedule.push_message(tick + 1, 0, RUNTIME_SENDER, agent_id, KIND_GPU_DONE, payload)

    def queue_agent_job(
        self,
        agent: AgentRecord,
        tick: int,
        item: Item,
        job: int,
        op: str,
        inputs: tuple[object, ...],
        out_name: str,
        param: float,
        *,
        into: bool = False,
    ) -> None:
        """An agent's ``gpu`` (or, ``into``, ``gpu_into``) effect: check it now, run it as a
        GPU task at the next tick."""
        if self._queued_tick != tick:
            self._queued, self._queued_tick = {}, tick
        names = tuple(str(n) for n in inputs)
        # The ABI's one scalar goes to the op's one parameter (scale's and softmax's factor,
        # rmsnorm's eps); ops without one ignore it.
        op_params = get_op(op).params if op in OPS else ()
        params = {op_params[0]: param} if op_params else {}
        task_name = f"{agent.name}:gpu{job}"
        try:
            metas = [self._meta(name, "input") for name in names]
            shape, dtype = get_op(op).check([m[0] for m in metas], [m[1] for m in metas], params)
            if into:
                target = self._meta(out_name, "output")
                if (tuple(shape), dtype) != (tuple(target[0]), target[1]):
                    raise ValueError(
                        f"output tensor {out_name!r} is {target[1]} {list(target[0])}, the "
                        f"result {dtype} {list(shape)}"
                    )
        except ValueError as exc:
            self.answer((agent.agent_id, job), tick, 1, str(exc))
            return
        self._queued[out_name] = (tuple(shape), dtype)
        spec = TaskSpec(
            name=task_name,
            kind="gpu",
            op=op,
            inputs=names,
            output=out_name,
            output_shape=shape,
            output_dtype=dtype,
            params=params,
            at=tick + 1,
            priority=-item.neg_priority,
            notify=(),
            into=into,
        )
        self._job_owner[task_name] = (agent.agent_id, job)
        self.schedule.push_task(tick + 1, item.neg_priority, spec)

    def _meta(self, name: str, what: str) -> tuple[tuple[int, ...], str]:
        """The shape and dtype ``name`` will have when the job runs: a named tensor's, or
        the output of a job queued before it for the same tick."""
        queued = self._queued.get(name)
        if queued is not None:
            return queued
        tensor = self.tensors.by_name.get(name)
        if tensor is None:
            raise ValueError(f"{what} tensor {name!r} does not exist")
        return tensor.handle.shape, tensor.handle.dtype
