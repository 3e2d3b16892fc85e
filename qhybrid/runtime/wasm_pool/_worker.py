"""The worker process: hosts agents and runs CPU tasks for the pool.

Started as ``python -m qhybrid.runtime.wasm_pool`` (or, in a frozen app, as the app with
``--qhybrid-worker``). Speaks framed requests on stdin and replies on stdout (the real
stdout: ``print`` output goes to stderr). It exits when its stdin closes, so it never outlives
the pool.
"""

from __future__ import annotations

import array
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from itertools import chain
from typing import IO, Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

from qhybrid.runtime.tensors import attach, run_numpy
from qhybrid.runtime.wasm_pool._abi import AgentModuleError
from qhybrid.runtime.wasm_pool._agent import AgentHost
from qhybrid.runtime.wasm_pool._frames import FrameError
from qhybrid.runtime.wasm_pool._protocol import (
    MESSAGE_USAGE_MARK,
    USAGE_AGENTS,
    USAGE_MESSAGES,
    USAGE_ROW,
    AgentLoad,
    Outcome,
    Request,
    TaskOutcome,
    TaskRun,
    encode,
    read_frame_sync,
    wire_outcome,
    write_frame_sync,
)
from qhybrid.runtime.wasm_pool._reply_bound import bound_reply
from qhybrid.runtime.wasm_pool._worker_context import WorkerContext

logger = logging.getLogger("qhybrid.worker")


class Worker:
    def __init__(self) -> None:
        self.ctx = WorkerContext()
        self.agents: dict[int, AgentHost] = {}
        self.loads: dict[int, AgentLoad] = {}
        self._fuel_reported = 0  # ctx.fuel_burnt at the last usage report
        # The agents that had messages since their usage was last reported (by id): rows
        # are built only when the parent asks for them (a batch's flag, a "usage" request).
        self._unreported: dict[int, Any] = {}

    def handle(self, request: Request) -> Any:
        op = request.op
        if op == "batch":
            tick, deliveries, tasks, *rest = request.args
            if rest and rest[0]:
                self.ctx.add_tensors(rest[0])
            return self.batch(tick, deliveries, tasks, rest[1] if len(rest) > 1 else True)
        if op == "usage":
            return self.agent_rows()
        if op == "module":
            key, serialized, *original = request.args
            self.ctx.add_module(key, serialized, original[0] if original else b"")
            return None
        if op == "directory":
            names, *spawned = request.args
            # Updated in place: agents already loaded hold this same mapping.
            self.ctx.set_directory(names, *spawned)
            return None
        if op == "tensors":
            (entries,) = request.args
            self.ctx.add_tensors(entries)
            return None
        if op == "load":
            (loads,) = request.args
            return self.load(loads)
        if op == "snapshot":
            (agent_ids,) = request.args
            return self.snapshot(agent_ids)
        if op == "restore":
            (items,) = request.args
            return self.restore(items)
        if op == "restart":
            (agent_id,) = request.args
            self.load([self.loads[agent_id]])
            return None
        raise ValueError(f"unknown request {op!r}")

    def name_of(self, agent_id: int) -> str:
        load = self.loads.get(agent_id)
        return load.name if load is not None else str(agent_id)

    def load(self, loads: list[AgentLoad]) -> None:
        # Each agent is some dozens of long-lived objects: with the cyclic collector on, it
        # scans the growing heap again and again (half the time of loading 10,000 agents).
        # Off while loading; afterwards what was loaded is frozen out of later collections.
        collecting = gc.isenabled()
        gc.disable()
        self.ctx.plan_room(loads)
        try:
            for load in loads:
                self.loads[load.agent_id] = load
                old = self.agents.get(load.agent_id)
                if old is not None:
                    old.close()
                if load.module_key.endswith(".py"):
                    from qhybrid.runtime.wasm_pool._python_agent import PythonAgentHost

                    source = self.ctx.sources[load.module_key]
                    self.agents[load.agent_id] = PythonAgentHost(self.ctx, load, source)
                else:
                    self.agents[load.agent_id] = AgentHost(self.ctx, load)
        finally:
            if collecting:
                gc.freeze()
                gc.enable()

    def snapshot(self, agent_ids: list[int]) -> dict[int, bytes | str]:
        """Each agent's snapshot, or why it cannot be taken."""
        snaps: dict[int, bytes | str] = {}
        for agent_id in agent_ids:
            agent = self.agents.get(agent_id)
            if agent is None:
                snaps[agent_id] = "not on this worker"
                continue
            try:
                snaps[agent_id] = agent.snapshot()
            except AgentModuleError as exc:
                snaps[agent_id] = str(exc)
        return snaps

    def restore(
        self, items: list[tuple[AgentLoad, bytes | None, list[tuple[int, int, int, bytes]]]]
    ) -> list[str | None]:
        """Recreate agents lost with a dead worker: fresh instance, last snapshot, then the
        messages they handled since, in order. Returns, per agent, None or what went wrong."""
        problems: list[str | None] = []
        for load, snapshot, replay in items:
            self.load([load])
            agent = self.agents[load.agent_id]
            why = agent.unrecoverable() if snapshot is not None or replay else None
            if why is not None:
                problems.append(why)  # a fresh instance would diverge silently
                continue
            try:
                if snapshot is not None:
                    agent.restore(snapshot)
                for tick, sender, kind, payload in replay:
                    outcome = agent.deliver(tick, sender, kind, payload)
                    if not outcome.ok:
                        raise AgentModuleError(f"replay diverged at tick {tick}: {outcome.error}")
            except AgentModuleError as exc:
                problems.append(str(exc))
                continue
            problems.append(None)
        return problems

    def batch(
        self,
        tick: int,
        deliveries: list[tuple[int, int, int, bytes]],
        tasks: list[TaskRun],
        rows: int = True,
    ) -> tuple[tuple[tuple[Any, ...] | list[Any], ...], tuple[tuple[Any, ...], ...], int, bytes]:
        """Handle deliveries in order, then tasks; their outcomes back as ``wire_outcome``
        makes them (see ``BatchReply.outcomes``), the task outcomes as plain tuples, the
        CPU time the batch took (this thread's: wall time would count other programs' turns
        on a busy machine), and the usage report (see ``BatchReply.usage``): the totals,
        then what ``rows`` asks for (:data:`USAGE_AGENTS`: each agent's that had messages
        since its last report; :data:`USAGE_MESSAGES`: each delivery's; ``True``: both)."""
        start = time.thread_time_ns()
        outcomes: list[tuple[Any, ...] | list[Any]] = []
        agents = self.agents
        touched = self._unreported
        ctx = self.ctx
        wire = wire_outcome
        if rows is True:
            rows = USAGE_AGENTS | USAGE_MESSAGES
        # Each delivery's fuel and memory, when asked for (see usage()).
        per_message = array.array("q") if rows & USAGE_MESSAGES else None
        for agent_id, sender, kind, payload in deliveries:
            agent = agents.get(agent_id)
            if agent is None:
                missing = Outcome(False, error=f"agent {agent_id} is not on this worker")
                outcomes.append(wire(missing))
                if per_message is not None:
                    per_message.extend((-1, -1))
                continue
            touched[agent_id] = agent
            if per_message is None:
                outcomes.append(wire(agent.deliver(tick, sender, kind, payload)))
                continue
            burnt = ctx.fuel_burnt
            outcomes.append(wire(agent.deliver(tick, sender, kind, payload)))
            metered = agent.fuel_used >= 0
            per_message.extend((ctx.fuel_burnt - burnt if metered else -1, agent._memory_size))
        task_outcomes = tuple(tuple(self.run_task(t)) for t in tasks)
        busy = time.thread_time_ns() - start
        return tuple(outcomes), task_outcomes, busy, self.usage(rows, per_message)

    def usage(self, rows: int = True, per_message: array.array[int] | None = None) -> bytes:
        """The batch's usage report (``USAGE_ROW``): the fuel burnt since the last report and
        the worker's memory; then ``per_message``, each delivery's ``(fuel, memory)`` (the
        section ``MESSAGE_USAGE_MARK`` heads), and with ``rows`` (:data:`USAGE_AGENTS`)
        :meth:`agent_rows`."""
        ctx = self.ctx
        burnt = ctx.fuel_burnt - self._fuel_reported
        self._fuel_reported = ctx.fuel_burnt
        totals = USAGE_ROW.pack(-1, burnt, ctx.memory_used)
        if not rows:
            return totals
        section = b""
        if per_message is not None:
            if sys.byteorder != "little":  # pragma: no cover - the format is little-endian
                per_message.byteswap()
            section = USAGE_ROW.pack(MESSAGE_USAGE_MARK, len(per_message) // 2, 0)
            section += per_message.tobytes()
        return totals + section + (self.agent_rows() if rows & USAGE_AGENTS else b"")

    def agent_rows(self) -> bytes:
        """Once per agent that had messages since its last report (not per message), an
        ``AGENT_USAGE_ROW``: its fuel so far, its memory now, its fuel in its last tick."""
        touched, self._unreported = self._unreported, {}
        if not touched:
            return b""
        rows = array.array(
            "q",
            chain.from_iterable(
                (agent_id, agent.fuel_used, agent._memory_size, agent.fuel_last)
                for agent_id, agent in touched.items()
            ),
        )
        if sys.byteorder != "little":  # pragma: no cover - the format is little-endian
            rows.byteswap()
        return rows.tobytes()

    @staticmethod
    def run_task(task: TaskRun) -> TaskOutcome:
        start = time.perf_counter_ns()
        mapped = []
        try:
            inputs = [attach(h) for h in task.inputs]
            mapped.extend(inputs)
            out = attach(task.output, writable=True)
            mapped.append(out)
            run_numpy(task.op, [m.array for m in inputs], out.array, dict(task.params))
        except Exception as exc:
            return TaskOutcome(
                False, f"{type(exc).__name__}: {exc}", time.perf_counter_ns() - start
            )
        finally:
            for m in mapped:
                m.close()
        return TaskOutcome(True, None, time.perf_counter_ns() - start)

    def close(self, *, free_agents: bool = True) -> None:
        """Stop the epoch ticker and unmap tensors; ``free_agents=False`` leaves the agents
        to the process's exit (freeing 50,000 stores one by one takes longer than the pool
        waits for a worker to exit). Python agents' threads are stopped either way."""
        for agent in self.agents.values():
            agent.close()
        if free_agents:
            self.agents.clear()
        self.ctx.close()


def serve(stdin: IO[bytes], stdout: IO[bytes]) -> int:
    worker = Worker()
    try:
        write_frame_sync(stdout, ("ready", os.getpid(), "wasmtime"))
        while True:
            request = read_frame_sync(stdin)
            if request.__class__ is tuple and len(request) == 2:  # (op, args): the pool's way
                request = Request(*request)
            if request is None or (isinstance(request, Request) and request.op == "shutdown"):
                return 0
            try:
                reply: tuple[str, Any] = ("ok", worker.handle(request))
            except AgentModuleError as exc:
                reply = ("module-error", str(exc))
            except Exception as exc:  # reported to the pool, which decides; the worker goes on
                logger.exception("request %s failed", getattr(request, "op", request))
                reply = ("error", f"{type(exc).__name__}: {exc}")
            try:
                data = encode(reply)
            except FrameError:  # too large to carry: the culprits named, not a dead worker
                data = encode(bound_reply(request, reply, worker.name_of))
            stdout.write(data)
            stdout.flush()
    finally:
        worker.close(free_agents=False)


#: The pipes' capacity asked for (Linux's default is 64 KiB; an unprivileged process may ask
#: up to ``/proc/sys/fs/pipe-max-size``, 1 MiB by default).
PIPE_BYTES = 1 << 20


def _widen_pipes() -> None:
    """Widen the request and reply pipes, where the system allows it: a checkpoint of 32
    agents is megabytes of snapshots, which went through the 64 KiB pipe in 32 turns of
    write, wake the reader, read; at 1 MiB, in two (issue 11: checkpoints were the longest
    ticks of ``qhybrid bench dispatch``)."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if set_size is None:
        return
    for fd in (0, 1):
        try:
            fcntl.fcntl(fd, set_size, PIPE_BYTES)
        except OSError:  # not a pipe (a test's file), or above the system's limit
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, set_size, 256 << 10)


def main() -> int:
    # Ctrl-C reaches the whole process group; the parent decides how to stop us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGHUP"):  # so does the hangup of a closed terminal (issue 12)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logging.basicConfig(
        level=os.environ.get("QHYBRID_LOG_LEVEL", "WARNING").upper(),
        format=f"worker[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    stdin = sys.stdin.buffer
    stdout = sys.stdout.buffer
    _widen_pipes()
    # Anything printed by accident must not corrupt the protocol stream.
    sys.stdout = sys.stderr
    try:
        code = serve(stdin, stdout)
    except (BrokenPipeError, KeyboardInterrupt):
        code = 0
    # Straight out: the agents' stores, host functions and modules go with the process; an
    # orderly interpreter shutdown would free them one by one (seconds at 50,000 agents).
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
