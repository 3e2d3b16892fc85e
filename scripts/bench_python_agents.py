#!/usr/bin/env python3
"""Python agents against C agents, in one worker context (no processes, no orchestrator):
start-up per agent, linear memory per agent, and messages handled per second by an echo.

    .venv/bin/python scripts/bench_python_agents.py [--messages N] [--repeat R]

Figures are best of R; say the machine and its load average with them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from qhybrid.runtime.wasm_pool import (
    default_cache_dir,
    load_module,
    load_python_module,
    make_engine,
)
from qhybrid.runtime.wasm_pool._agent import AgentHost, WorkerContext
from qhybrid.runtime.wasm_pool._protocol import AgentLoad
from qhybrid.runtime.wasm_pool._python_agent import PythonAgentHost

ROOT = Path(__file__).resolve().parent.parent
PY_ECHO = (
    "import qhybrid\n\ndef on_message(msg):\n    qhybrid.send(msg.sender, msg.kind, msg.payload)\n"
)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    engine = make_engine()
    ctx = WorkerContext()
    ctx.set_directory(["c", "py"])
    module, _, original, _ = load_module(
        engine, ROOT / "resources/agents/echo.wasm", default_cache_dir()
    )
    ctx.add_module("echo.wasm", bytes(module.serialize()), original)
    src = Path("/tmp/qh_bench_echo.py")
    src.write_text(PY_ECHO)
    t = time.perf_counter()
    serialized, source = load_python_module(engine, src, default_cache_dir())
    say(f"interpreter load (module cache after a first run): {time.perf_counter() - t:.2f} s")
    ctx.add_module("echo.py", serialized, source)
    results: dict[str, list[float]] = {"c": [], "py": []}
    starts: dict[str, list[float]] = {"c": [], "py": []}
    memory: dict[str, int] = {}
    for _ in range(args.repeat):
        for kind in ("c", "py"):
            load = AgentLoad(
                0 if kind == "c" else 1,
                kind,
                f"echo.{'wasm' if kind == 'c' else 'py'}",
                (0,),
                2,
                1,
                b"{}",
            )
            t = time.perf_counter()
            host = AgentHost(ctx, load) if kind == "c" else PythonAgentHost(ctx, load, source)
            starts[kind].append(time.perf_counter() - t)
            t = time.perf_counter()
            for i in range(args.messages):
                outcome = host.deliver(i, 1 - load.agent_id, 1, b"ping %d" % i)
                assert outcome.ok, outcome.error
            results[kind].append(args.messages / (time.perf_counter() - t))
            mem = host._guest_memory if kind == "py" else host._memory  # type: ignore[attr-defined]
            memory[kind] = mem.data_len(host._store) if mem is not None else 0
            host.close()
    ctx.close()
    say(f"load average: {os.getloadavg()}")
    for kind, name in (("c", "C echo.wasm"), ("py", "Python echo (CPython 3.12 for WASI)")):
        say(
            f"{name}: start-up {min(starts[kind]) * 1000:.1f} ms, "
            f"memory {memory[kind] / 2**20:.1f} MiB, "
            f"{max(results[kind]):,.0f} messages/s"
        )
    say(f"ratio C / Python, messages/s: {max(results['c']) / max(results['py']):.1f}x")


if __name__ == "__main__":
    main()
