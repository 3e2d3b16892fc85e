"""The worker process: hosts agents and runs CPU tasks for the pool.

Started as ``python -m qhybrid.runtime.wasm_pool``. Speaks framed requests on stdin
and replies on stdout (the real stdout: ``print`` output goes to stderr). It exits when its
stdin closes, so it never outlives the pool.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from typing import IO, Any

import wasmtime

from qhybrid.runtime.tensors import attach, run_numpy
from qhybrid.runtime.wasm_pool._abi import AgentModuleError, make_engine
from qhybrid.runtime.wasm_pool._agent import AgentHost
from qhybrid.runtime.wasm_pool._protocol import (
    AgentLoad,
    BatchReply,
    Delivery,
    Outcome,
    Request,
    TaskOutcome,
    TaskRun,
    read_frame_sync,
    write_frame_sync,
)

logger = logging.getLogger("qhybrid.worker")


class Worker:
    def __init__(self) -> None:
        self.engine = make_engine()
        self.modules: dict[str, wasmtime.Module] = {}
        self.agents: dict[int, AgentHost] = {}
        self.directory: dict[str, int] = {}

    def handle(self, request: Request) -> Any:
        if request.op == "module":
            key, serialized = request.args
            self.modules[key] = wasmtime.Module.deserialize(self.engine, serialized)
            return None
        if request.op == "directory":
            (names,) = request.args
            # Updated in place: agents already loaded hold this same mapping.
            self.directory.clear()
            self.directory.update((name, i) for i, name in enumerate(names))
            return None
        if request.op == "load":
            (loads,) = request.args
            return self.load(loads)
        if request.op == "batch":
            tick, deliveries, tasks = request.args
            return self.batch(tick, deliveries, tasks)
        raise ValueError(f"unknown request {request.op!r}")

    def load(self, loads: list[AgentLoad]) -> None:
        for load in loads:
            module = self.modules[load.module_key]
            self.agents[load.agent_id] = AgentHost(self.engine, module, load, self.directory)

    def batch(self, tick: int, deliveries: list[Delivery], tasks: list[TaskRun]) -> BatchReply:
        start = time.perf_counter_ns()
        outcomes: list[Outcome] = []
        for d in deliveries:
            agent = self.agents.get(d.agent_id)
            if agent is None:
                outcomes.append(Outcome(False, error=f"agent {d.agent_id} is not on this worker"))
                continue
            outcomes.append(agent.deliver(tick, d.sender, d.kind, d.payload))
        task_outcomes = [self.run_task(t) for t in tasks]
        return BatchReply(tuple(outcomes), tuple(task_outcomes), time.perf_counter_ns() - start)

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


def serve(stdin: IO[bytes], stdout: IO[bytes]) -> int:
    worker = Worker()
    write_frame_sync(stdout, ("ready", os.getpid(), wasmtime.__name__))
    while True:
        request = read_frame_sync(stdin)
        if request is None or (isinstance(request, Request) and request.op == "shutdown"):
            return 0
        try:
            reply: tuple[str, Any] = ("ok", worker.handle(request))
        except AgentModuleError as exc:
            reply = ("module-error", str(exc))
        except Exception as exc:  # reported to the pool, which decides; the worker goes on
            logger.exception("request %s failed", getattr(request, "op", request))
            reply = ("error", f"{type(exc).__name__}: {exc}")
        write_frame_sync(stdout, reply)


def main() -> int:
    # Ctrl-C reaches the whole process group; the parent decides how to stop us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=os.environ.get("QHYBRID_LOG_LEVEL", "WARNING").upper(),
        format=f"worker[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    stdin = sys.stdin.buffer
    stdout = sys.stdout.buffer
    # Anything printed by accident must not corrupt the protocol stream.
    sys.stdout = sys.stderr
    try:
        return serve(stdin, stdout)
    except (BrokenPipeError, KeyboardInterrupt):
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
