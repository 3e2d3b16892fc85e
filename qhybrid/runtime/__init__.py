"""The qhybrid runtime: a deterministic orchestrator over WASM agents and a GPU thread.

Pure Python, numpy, wasmtime and wgpu; it never imports Qt, so it runs headless
(``qhybrid --headless``) as well as under the desktop window.

Typical use::

    from qhybrid.runtime import Runtime, RuntimeConfig, load_scenario

    scenario = load_scenario("demo.toml")
    async with Runtime(scenario, RuntimeConfig(workers=2)) as runtime:
        result = await runtime.run()
    print(result.trace_hash)

The names are imported on first use (PEP 562 ``__getattr__``): a process that only runs a
model (``import qhybrid.runtime.llm``) does not import the orchestrator, the scenario models
(pydantic), the worker pool or the GPU thread, about 21 MB of resident memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qhybrid.runtime._lazy import lazy_names

if TYPE_CHECKING:
    from qhybrid.runtime._events import (
        AgentLog,
        AgentStateChanged,
        GpuAdapter,
        LlmRequested,
        LlmTokens,
        MessageUsage,
        RunStateChanged,
        RuntimeEvents,
        TaskFinished,
        TaskStarted,
        TickFinished,
        WorkerRestarted,
    )
    from qhybrid.runtime._heap import freeze_heap, heap_frozen, unfreeze_heap
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

#: Each public name and the module it comes from, imported when first asked for.
_LAZY: dict[str, str] = {
    "AgentLog": "qhybrid.runtime._events",
    "AgentStateChanged": "qhybrid.runtime._events",
    "GpuAdapter": "qhybrid.runtime._events",
    "LlmRequested": "qhybrid.runtime._events",
    "LlmTokens": "qhybrid.runtime._events",
    "MessageUsage": "qhybrid.runtime._events",
    "RunStateChanged": "qhybrid.runtime._events",
    "RuntimeEvents": "qhybrid.runtime._events",
    "TaskFinished": "qhybrid.runtime._events",
    "TaskStarted": "qhybrid.runtime._events",
    "TickFinished": "qhybrid.runtime._events",
    "WorkerRestarted": "qhybrid.runtime._events",
    "SERIES": "qhybrid.runtime._metrics",
    "MetricsSnapshot": "qhybrid.runtime._metrics",
    "RunFailed": "qhybrid.runtime._orchestrator",
    "Runtime": "qhybrid.runtime._orchestrator",
    "RuntimeConfig": "qhybrid.runtime._orchestrator",
    "run_scenario": "qhybrid.runtime._orchestrator",
    "AgentSummary": "qhybrid.runtime._result",
    "RunResult": "qhybrid.runtime._result",
    "AgentGrants": "qhybrid.runtime._scenario",
    "AgentLimits": "qhybrid.runtime._scenario",
    "AgentSpec": "qhybrid.runtime._scenario",
    "DirGrant": "qhybrid.runtime._scenario",
    "LlmSpec": "qhybrid.runtime._scenario",
    "MessageSpec": "qhybrid.runtime._scenario",
    "Scenario": "qhybrid.runtime._scenario",
    "ScenarioError": "qhybrid.runtime._scenario",
    "StopSpec": "qhybrid.runtime._scenario",
    "TaskSpec": "qhybrid.runtime._scenario",
    "TensorSpec": "qhybrid.runtime._scenario",
    "load_scenario": "qhybrid.runtime._scenario",
    "freeze_heap": "qhybrid.runtime._heap",
    "heap_frozen": "qhybrid.runtime._heap",
    "unfreeze_heap": "qhybrid.runtime._heap",
    "parse_scenario": "qhybrid.runtime._scenario",
    "printable": "qhybrid.runtime._text",
    "printable_lines": "qhybrid.runtime._text",
    "SharedTensor": "qhybrid.runtime.tensors",
    "TensorHandle": "qhybrid.runtime.tensors",
    "TensorStore": "qhybrid.runtime.tensors",
}

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
    "MessageUsage",
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
    "freeze_heap",
    "heap_frozen",
    "load_scenario",
    "parse_scenario",
    "printable",
    "printable_lines",
    "run_scenario",
    "unfreeze_heap",
]


__getattr__, __dir__ = lazy_names(__name__, _LAZY, __all__)
