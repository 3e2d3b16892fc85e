"""The bridge to the GPU thread: submitting GPU tasks and answering agents' GPU jobs.

Owns: which agent asked for which queued GPU job (task name -> ``(agent id, job id)``) and
the GPU's busy time so far. The :class:`GpuDevice` itself (its thread, buffers, pipelines)
belongs to the runtime, which starts and closes it; this part only talks to it.

An agent's ``gpu`` effect becomes a GPU task due at the next tick; its answer (status and
error text, kind ``KIND_GPU_DONE``) reaches the agent the tick after the task ran.
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
    ) -> None:
        """An agent's ``gpu`` effect: check it now, run it as a GPU task at the next tick."""
        names = tuple(str(n) for n in inputs)
        # The ABI's one scalar goes to the op's one parameter (scale's and softmax's factor,
        # rmsnorm's eps); ops without one ignore it.
        op_params = get_op(op).params if op in OPS else ()
        params = {op_params[0]: param} if op_params else {}
        metas: list[tuple[tuple[int, ...], str] | None] = []
        for name in names:
            tensor = self.tensors.by_name.get(name)
            if tensor is None:
                metas.append(None)
                break
            metas.append((tensor.handle.shape, tensor.handle.dtype))
        task_name = f"{agent.name}:gpu{job}"
        try:
            if any(m is None for m in metas):
                raise ValueError("an input tensor does not exist")
            shape, dtype = get_op(op).check(
                [m[0] for m in metas if m], [m[1] for m in metas if m], params
            )
        except ValueError as exc:
            self.answer((agent.agent_id, job), tick, 1, str(exc))
            return
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
        )
        self._job_owner[task_name] = (agent.agent_id, job)
        self.schedule.push_task(tick + 1, item.neg_priority, spec)
