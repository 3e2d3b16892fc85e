"""The qhybrid runtime: a deterministic orchestrator over WASM agents and a GPU thread.

Pure Python, numpy, wasmtime and wgpu; it never imports Qt, so it runs headless
(``qhybrid --headless``) as well as under the desktop window.

Typical use::

    from qhybrid.runtime import Runtime, RuntimeConfig, load_scenario

    scenario = load_scenario("demo.toml")
    async with Runtime(scenario, RuntimeConfig(workers=2)) as runtime:
        result = await runtime.run()
    print(result.trace_hash)
"""

from __future__ import annotations

from qhybrid.runtime._events import (
    AgentLog,
    AgentStateChanged,
    GpuAdapter,
    LlmRequested,
    LlmTokens,
    RunStateChanged,
    RuntimeEvents,
    TaskFinished,
    TaskStarted,
    TickFinished,
    WorkerRestarted,
)
from qhybrid.runtime._metrics import SERIES, MetricsSnapshot
from qhybrid.runtime._orchestrator import RunFailed, Runtime, RuntimeConfig, run_scenario
from qhybrid.runtime._result import AgentSummary, RunResult
from qhybrid.runtime._scenario import (
    AgentGrants,
    AgentLimits,
    AgentSpec,
    DirGrant,
    LlmSpec,
    MessageSpec,
    Scenario,
    ScenarioError,
    StopSpec,
    TaskSpec,
    TensorSpec,
    load_scenario,
    parse_scenario,
)
from qhybrid.runtime._text import printable, printable_lines
from qhybrid.runtime.tensors import SharedTensor, TensorHandle, TensorStore

__all__ = [
    "SERIES",
    "AgentGrants",
    "AgentLimits",
    "AgentLog",
    "AgentSpec",
    "AgentStateChanged",
    "AgentSummary",
    "DirGrant",
    "GpuAdapter",
    "LlmRequested",
    "LlmSpec",
    "LlmTokens",
    "MessageSpec",
    "MetricsSnapshot",
    "RunFailed",
    "RunResult",
    "RunStateChanged",
    "Runtime",
    "RuntimeConfig",
    "RuntimeEvents",
    "Scenario",
    "ScenarioError",
    "SharedTensor",
    "StopSpec",
    "TaskFinished",
    "TaskSpec",
    "TaskStarted",
    "TensorHandle",
    "TensorSpec",
    "TensorStore",
    "TickFinished",
    "WorkerRestarted",
    "load_scenario",
    "parse_scenario",
    "printable",
    "printable_lines",
    "run_scenario",
]
