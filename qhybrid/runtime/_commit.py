"""The commit: a tick's results applied in queue order, and the trace records they make.

Owns: the run's totals (messages delivered, tasks completed, CPU and GPU tasks) and the table
of effect kinds (:attr:`Commit.effects`). For each item of the tick, in queue order: a message
to an agent that stopped is recorded as dropped; a handled message records its logs, applies
its effects, queues what the handler sent (due at the next tick, with the next sequence
numbers) and appends it to the agent's replay log; a task publishes its output and notifies.
Nothing here depends on which worker answered first, so the trace does not either.

New effect kinds plug in with :meth:`Commit.register_effect`: ``check`` runs for every effect
of a handler before any is applied (return an error to fail the handler and apply none),
``apply`` then runs in order. An effect kind the table does not know is ignored.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qhybrid.runtime._dispatch import TickPlan, TickResults
from qhybrid.runtime._events import AgentLog, RuntimeEvents, TaskFinished
from qhybrid.runtime._gpu_bridge import GpuBridge
from qhybrid.runtime._llm_bridge import LlmBridge
from qhybrid.runtime._named_tensors import NamedTensors
from qhybrid.runtime._recovery import Recovery
from qhybrid.runtime._roster import LOADED, AgentRecord, Roster
from qhybrid.runtime._schedule import Item, Schedule
from qhybrid.runtime._schedule import new_item as _new_item
from qhybrid.runtime._trace import OK_LINE, TraceRecorder, digest
from qhybrid.runtime.wasm_pool import KIND_TASK_DONE, RUNTIME_SENDER, Outcome
from qhybrid.runtime.wasm_pool._protocol import Effect, outcome_of, plain_sent

__all__ = ["Commit", "EffectKind", "TickCounts"]

# Agents' log lines go through logging under the orchestrator's historical name, which the
# window's log collector recognises (and skips: it has them from the AgentLog event).
agent_logger = logging.getLogger("qhybrid.runtime._orchestrator")

_LEVELS = (10, 20, 30, 40, 50)


def payload_field(payload: bytes) -> bytes | str:
    """How the trace records a payload: small ones as they are, others by digest."""
    return payload if len(payload) <= 32 else digest(payload)


@dataclass(frozen=True, slots=True)
class EffectKind:
    """How the commit handles one kind of effect (``effect[0]``).

    ``apply(agent, tick, item, effect)`` carries it out; ``check(effect, taken)`` (optional)
    says why it cannot be, given ``taken``, the tensor names in use (a check that claims a
    name adds it to ``taken``).
    """

    apply: Callable[[AgentRecord, int, Item, Effect], None]
    check: Callable[[Effect, set[str]], str | None] | None = None


@dataclass(slots=True)
class TickCounts:
    delivered: int = 0
    failed: int = 0
    tasks: int = 0


class Commit:
    def __init__(
        self,
        schedule: Schedule,
        roster: Roster,
        tensors: NamedTensors,
        gpu: GpuBridge,
        llm: LlmBridge,
        recovery: Recovery,
        trace: TraceRecorder,
        events: RuntimeEvents,
        *,
        checkpoint_every: int,
    ) -> None:
        self.schedule = schedule
        self.roster = roster
        self.tensors = tensors
        self.gpu = gpu
        self.llm = llm
        self.recovery = recovery
        self.trace = trace
        self.events = events
        self.checkpoint_every = checkpoint_every
        self.delivered = 0
        self.tasks_completed = 0
        self.cpu_tasks = 0
        self.gpu_tasks = 0
        self.effects: dict[str, EffectKind] = {
            "create": EffectKind(self._create, self._check_create),
            "write": EffectKind(self._write),
            "gpu": EffectKind(self._gpu, _claim_name(4)),
            "gpu_into": EffectKind(self._gpu_into),
            "release": EffectKind(self._release),
            "llm": EffectKind(self._llm),
        }
        #: Positions (in the tick's items) of the tasks that failed this tick: a job chained
        #: behind one fails too.
        self._failed_tasks: set[int] = set()

    def register_effect(self, kind: str, effect: EffectKind) -> None:
        """Handle effects whose first field is ``kind`` (replacing any handler of it)."""
        self.effects[kind] = effect

    # -- the tick ---------------------------------------------------------------------------
    def apply(self, plan: TickPlan, results: TickResults) -> TickCounts:
        """Apply the tick's results in queue order; the tick's counts.

        The common case, a handled message that only sent messages, is done inline (this
        loop runs once per message); anything else goes through :meth:`_message`, which
        does the same for it and more.
        """
        counts = TickCounts()
        tick = plan.tick
        replies = results.replies
        outcomes_of = {w: reply.outcomes for w, reply in replies.items()}
        agents = self.roster.agents
        # The records and the queue, appended to and pushed on without a call per message
        # (as TraceRecorder.record and Schedule.push_message do).
        add_record, add_line = self.trace.appenders()
        schedule = self.schedule
        queue, seq = schedule.queue, schedule.sequence
        push, new_item, ok_line = heapq.heappush, _new_item, OK_LINE
        # Inline only while nobody wraps push_message (a recording does, to keep payloads,
        # and it may renumber the sequence counter): then every push goes through it.
        push_message = None if "push_message" not in vars(schedule) else schedule.push_message
        next_tick = tick + 1
        every = self.checkpoint_every
        every4 = 4 * every
        checkpoint_due = self.recovery.checkpoint_due
        plain = 0
        self._failed_tasks = set()
        for pos, (item, worker, index) in enumerate(plan.placements):
            message = item.message
            if message is None:
                self._task(plan, results, pos, item, worker, index, counts)
                continue
            outcome = outcomes_of[worker][index] if worker >= 0 else None
            sender, dst, kind, payload = message
            agent = agents[dst]
            # A plain tuple is the compact form of a handled message that only sent
            # messages (``wire_outcome``): what it sent. ``run_batch`` (a pool that wraps it,
            # a recording, Ray) gives Outcomes: the same test, by position. Anything else
            # takes the long way.
            sent = outcome
            if outcome.__class__ is not tuple:
                sent = plain_sent(outcome) if outcome.__class__ is Outcome else None
            if sent is None or agent.state != LOADED or agent.restart_pending:
                full = None if outcome is None else outcome_of(outcome)
                self._message(tick, item, message, full, counts)
                continue
            plain += 1
            agent.handled += 1
            field = payload if len(payload) <= 32 else digest(payload)
            n, at = len(sent), item.seq
            add_record(("ok", tick, at, sender, dst, kind, field, n))
            add_line(ok_line % (tick, at, sender, dst, kind, field, n))  # its repr, made now
            if sent and push_message is not None:
                priority = -item.neg_priority
                for to, out_kind, out_payload in sent:
                    push_message(next_tick, priority, dst, to, out_kind, out_payload)
            elif sent:
                neg = item.neg_priority
                for to, out_kind, out_payload in sent:
                    push(
                        queue,
                        new_item(
                            (next_tick, neg, next(seq), (dst, to, out_kind, out_payload), None)
                        ),
                    )
            if every > 0:
                log = agent.log
                log.extend((tick, sender, kind, payload))  # (flat: see AgentRecord.log)
                if len(log) == every4:
                    checkpoint_due.append(agent)
        counts.delivered += plain
        self.tasks_completed += plain
        self.delivered += counts.delivered
        return counts

    def _message(
        self,
        tick: int,
        item: Item,
        message: tuple[int, int, int, bytes],
        outcome: Outcome | None,
        counts: TickCounts,
    ) -> None:
        record = self.trace.record
        sender, dst, kind, payload = message
        agent = self.roster.agents[dst]
        if outcome is None or agent.state != LOADED or agent.restart_pending:
            # To an agent that stopped, before this tick or earlier in it.
            state = "restarting" if agent.restart_pending else agent.state
            record("drop", tick, item.seq, sender, dst, kind, payload_field(payload), state)
            return
        counts.delivered += 1
        for level, text in outcome.logs:
            record("log", tick, item.seq, level, text)
            self.events.agent_log.emit(AgentLog(agent.name, level, text, tick))
            agent_logger.log(level if level in _LEVELS else 20, "%s: %s", agent.name, text)
        error = outcome.error
        if outcome.ok and outcome.effects:
            error = self._apply_effects(agent, tick, item, outcome)
        if error is not None:
            counts.failed += 1
            record("fail", tick, item.seq, sender, dst, kind, payload_field(payload))
            self.recovery.agent_failed(agent, tick, item.seq, error)
            return
        agent.handled += 1
        self.tasks_completed += 1
        sent = outcome.sent
        record("ok", tick, item.seq, sender, dst, kind, payload_field(payload), len(sent))
        if sent:
            push = self.schedule.push_message
            priority = -item.neg_priority
            for to, out_kind, out_payload in sent:
                push(tick + 1, priority, dst, to, out_kind, out_payload)
        every = self.checkpoint_every
        if every > 0:
            log = agent.log
            log.extend((tick, sender, kind, payload))  # (flat: see AgentRecord.log)
            if len(log) == 4 * every:
                self.recovery.checkpoint_due.append(agent)
            if outcome.reads:
                agent.reads.update(outcome.reads)

    def _task(
        self,
        plan: TickPlan,
        results: TickResults,
        pos: int,
        item: Item,
        worker: int,
        index: int,
        counts: TickCounts,
    ) -> None:
        task = item.task
        assert task is not None
        tick = plan.tick
        if pos not in plan.outputs:
            return  # an agent's GPU job that could not start; already answered
        out = plan.outputs[pos]
        elapsed = 0.0
        placement = "worker"
        error = None
        if task.kind == "gpu":
            res = results.gpu[pos]
            if isinstance(res, BaseException):
                error = str(res)
            else:
                placement, elapsed = res.placement, res.elapsed_s
                self.gpu.busy_s += elapsed
        else:
            chained = results.chained.get(pos)
            t_out = chained if chained is not None else results.replies[worker].tasks[index]
            error = t_out.error
            elapsed = t_out.elapsed_ns / 1e9
        if error is None:
            for dep, name in plan.deps.get(pos, ()):
                if dep in self._failed_tasks:
                    error = f"input tensor {name!r}: the job that made it this tick failed"
                    break
        self.events.task_finished.emit(
            TaskFinished(task.name, task.kind, task.op, tick, placement, elapsed, error)
        )
        if error is not None:
            self._failed_tasks.add(pos)
            out.close()
            self.gpu.task_failed(task, tick, item.seq, error)
            return
        counts.tasks += 1
        self.tasks_completed += 1
        if task.kind == "gpu":
            self.gpu_tasks += 1
        else:
            self.cpu_tasks += 1
        content = digest(np.ascontiguousarray(out.array).view(np.uint8).data)
        if task.into:
            # Into an existing tensor: applied at the end of the tick, like a tensor_write.
            self.tensors.pending_writes.append((task.output, 0, out))
        else:
            # An agent's job output is its own: it may write and release it.
            owner = self.gpu.owner_of(task)
            writers = frozenset() if owner is None else frozenset({owner})
            self.tensors.publish(task.output, out, tick, writers)
        self.trace.record("task", tick, item.seq, task.name, task.op, content)
        self.gpu.finished(task, tick, None)
        if task.notify:
            note = json.dumps(
                {
                    "task": task.name,
                    "op": task.op,
                    "output": task.output,
                    "shape": list(task.output_shape),
                    "sum": float(np.sum(out.array, dtype=np.float64)),
                },
                sort_keys=True,
            ).encode("utf-8")
            by_name = self.roster.by_name
            for name in task.notify:
                self.schedule.push_message(
                    tick + 1, task.priority, RUNTIME_SENDER, by_name[name], KIND_TASK_DONE, note
                )

    # -- effects of handlers ----------------------------------------------------------------
    def _apply_effects(
        self, agent: AgentRecord, tick: int, item: Item, outcome: Outcome
    ) -> str | None:
        """Apply what a successful handler asked for, or say why none of it can be."""
        table = self.effects
        taken = set(self.tensors.by_name)
        for effect in outcome.effects:
            kind = table.get(str(effect[0]))
            if kind is not None and kind.check is not None:
                problem = kind.check(effect, taken)
                if problem is not None:
                    return problem
        for effect in outcome.effects:
            kind = table.get(str(effect[0]))
            if kind is not None:
                kind.apply(agent, tick, item, effect)
        return None

    def _check_create(self, effect: Effect, taken: set[str]) -> str | None:
        """The name is free and the tensor fits in shared memory (issue 12: a full /dev/shm
        fails the creating agent's message, not the run)."""
        problem = _CLAIM_CREATE_NAME(effect, taken)
        if problem is not None:
            return problem
        _, _, dtype, shape = effect
        assert isinstance(dtype, str) and isinstance(shape, tuple)
        return self.tensors.store.room_problem(np.dtype(dtype).itemsize * math.prod(shape))

    def _create(self, agent: AgentRecord, tick: int, item: Item, effect: Effect) -> None:
        _, name, dtype, shape = effect
        assert isinstance(name, str) and isinstance(dtype, str)
        assert isinstance(shape, tuple)
        tensor = self.tensors.store.create(shape, dtype)
        self.tensors.publish(name, tensor, tick, frozenset({agent.agent_id}))
        self.trace.record("create", tick, item.seq, name, dtype, "x".join(map(str, shape)))

    def _write(self, agent: AgentRecord, tick: int, item: Item, effect: Effect) -> None:
        _, name, offset, data = effect
        assert isinstance(name, str) and isinstance(offset, int)
        assert isinstance(data, bytes)
        self.tensors.pending_writes.append((name, offset, data))
        self.trace.record("write", tick, item.seq, name, offset, digest(data))

    def _gpu(self, agent: AgentRecord, tick: int, item: Item, effect: Effect) -> None:
        _, job, op, inputs, out_name, param = effect
        assert isinstance(job, int) and isinstance(op, str) and isinstance(inputs, tuple)
        assert isinstance(out_name, str) and isinstance(param, float)
        self.gpu.queue_agent_job(agent, tick, item, job, op, inputs, out_name, param)

    def _gpu_into(self, agent: AgentRecord, tick: int, item: Item, effect: Effect) -> None:
        _, job, op, inputs, out_name, param = effect
        assert isinstance(job, int) and isinstance(op, str) and isinstance(inputs, tuple)
        assert isinstance(out_name, str) and isinstance(param, float)
        self.gpu.queue_agent_job(agent, tick, item, job, op, inputs, out_name, param, into=True)

    def _release(self, agent: AgentRecord, tick: int, item: Item, effect: Effect) -> None:
        _, name = effect
        assert isinstance(name, str)
        if self.tensors.release(name, tick):
            self.trace.record("release", tick, item.seq, name)

    def _llm(self, agent: AgentRecord, tick: int, item: Item, effect: Effect) -> None:
        _, request, tag, prompt, max_tokens = effect
        assert isinstance(request, int) and isinstance(tag, int)
        assert isinstance(prompt, bytes) and isinstance(max_tokens, int)
        self.trace.record("llm", tick, item.seq, request)
        self.llm.submit(agent, tick, request, tag, prompt, max_tokens)


def _claim_name(field_index: int) -> Callable[[Effect, set[str]], str | None]:
    """A check for an effect that makes a tensor named by ``effect[field_index]``."""

    def check(effect: Effect, taken: set[str]) -> str | None:
        new = str(effect[field_index])
        if new in taken:
            return f"tensor name {new!r} is already taken"
        taken.add(new)
        return None

    return check


_CLAIM_CREATE_NAME = _claim_name(1)
