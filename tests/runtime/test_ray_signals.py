"""A driver that runs wasm after the Ray pool started Ray still gets traps as exceptions.

``ray.init`` installs crash-signal handlers (faulthandler, absl's) over wasmtime's trap
handlers; the pool puts wasmtime's back (``_ray_signals.py``). Without that, the first trap
after ``ray.init`` killed the process with SIGILL (what made the Ray tests need a pytest
process of their own). Run in a child process: a failure kills that process, not pytest.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed (pip install '.[ray]')")

DRIVER = """
import asyncio, wasmtime
from qhybrid.runtime.wasm_pool import RayWorkerPool

def trap():
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    module = wasmtime.Module(engine, '(module (func (export "f") unreachable))')
    instance = wasmtime.Instance(store, module, [])
    try:
        instance.exports(store)["f"](store)
    except wasmtime.Trap:
        print("trapped", flush=True)

async def main():
    trap()  # wasmtime's handlers are installed now, as in an orchestrator
    pool = RayWorkerPool(1)
    await pool.start()
    trap()  # ray.init has run
    await pool.aclose()
    trap()

asyncio.run(main())
"""


def test_wasm_traps_in_the_driver_survive_ray_init() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["trapped"] * 3
