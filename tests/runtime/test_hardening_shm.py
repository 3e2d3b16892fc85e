"""A full /dev/shm fails the message that asked for the segment, never the orchestrator.

What users rely on: before a shared-memory segment is created its size is checked against the
free space of /dev/shm, and the segment's memory is reserved when it is created (no SIGBUS when
it is first written); an agent whose tensor does not fit has its message failed with a reason
that says so, and the run goes on.
"""

from __future__ import annotations

import asyncio

import pytest

from qhybrid.runtime import RunResult, Runtime, RuntimeConfig, parse_scenario
from qhybrid.runtime.tensors import SharedMemoryFull, TensorStore, _room
from tests.conftest import ROOT, SHM

AGENTS = (ROOT / "resources" / "agents").as_posix()
HOSTILE = (ROOT / "tests" / "agents").as_posix()

pytestmark = pytest.mark.skipif(not SHM.is_dir(), reason="POSIX shared memory in /dev/shm")


def test_a_segment_larger_than_the_free_space_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_room, "shm_free", lambda: 20 << 20)
    with TensorStore() as store:
        with pytest.raises(SharedMemoryFull, match=r"shared memory is full.*free in /dev/shm"):
            store.create((1 << 20, 2), "float32")  # 8 MiB
        small = store.create((1024,), "float32")  # 4 KiB: fits
        small.close()


def test_an_agents_tensor_that_does_not_fit_fails_its_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_room, "shm_free", lambda: 40 << 20)
    text = f"""
name = "shm"
seed = 1
[stop]
max_ticks = 4
[[agents]]
name = "flood"
module = "{HOSTILE}/flood.wat"
on_error = "skip"
[[messages]]
to = "flood"
kind = 8
payload = ""
[[agents]]
name = "echo"
module = "{AGENTS}/echo.wasm"
[[messages]]
to = "echo"
kind = 9
payload = "still here"
at = 1
"""
    scenario = parse_scenario(text, source="shm.toml")

    async def main() -> RunResult:
        async with Runtime(scenario, RuntimeConfig(workers=2, device="cpu")) as rt:
            return await rt.run()

    result = asyncio.run(main())
    assert result.ok, result.reason
    flood = next(a for a in result.agents if a.name == "flood")
    assert flood.state == "skipped"
    assert flood.error is not None and "shared memory is full" in flood.error, flood.error
    echo = next(a for a in result.agents if a.name == "echo")
    assert (echo.state, echo.handled) == ("loaded", 1)
