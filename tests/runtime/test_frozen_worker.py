"""Workers start in a frozen app (PyInstaller), where sys.executable is the app itself."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

from qhybrid.runtime.wasm_pool import (
    WORKER_FLAG,
    AgentLoad,
    Delivery,
    WorkerPool,
    compile_module,
    make_engine,
    worker_command,
)
from tests.conftest import ROOT


def test_the_cli_knows_the_worker_flag() -> None:
    source = (ROOT / "qhybrid" / "cli.py").read_text(encoding="utf-8")
    assert f'["{WORKER_FLAG}"]' in source


def test_a_frozen_app_starts_workers_through_its_own_entry_point(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The console script stands in for the frozen app: an executable whose main is cli.main.
    app = Path(sys.executable).parent / "qhybrid"
    if not app.exists():
        found = shutil.which("qhybrid")
        assert found, "the qhybrid console script is not installed"
        app = Path(found)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(app))
    assert worker_command() == [str(app), WORKER_FLAG]

    sink = ROOT / "resources" / "agents" / "sink.wat"
    module = bytes(compile_module(make_engine(), sink).serialize())

    async def main() -> bool:
        pool = WorkerPool(1)
        try:
            await pool.start()
            await pool.set_directory(["sink"])
            await pool.install_module("sink", module)
            await pool.load_agents(0, [AgentLoad(0, "sink", "sink", (0,), 1, 1, b"{}")])
            payload = (5).to_bytes(8, "little")
            reply = await pool.run_batch(0, 0, [Delivery(0, -1, 2, payload)])
            return reply.outcomes[0].ok
        finally:
            await pool.aclose()

    assert asyncio.run(main())
