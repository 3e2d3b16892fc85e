"""The worker pool: processes that host sandboxed WebAssembly agents and run CPU tasks.

The parent side (:class:`WorkerPool`) is asyncio; each worker is a separate Python process
running wasmtime, so a misbehaving agent cannot take the orchestrator down with it.
"""

from __future__ import annotations

from qhybrid.runtime.wasm_pool._abi import (
    ABI_VERSION,
    ABI_VERSIONS,
    KIND_ANSWER,
    KIND_ENVELOPE,
    KIND_GPU_DONE,
    KIND_LLM_CHAT_DONE,
    KIND_LLM_DONE,
    KIND_SPAWNED,
    KIND_TASK_DONE,
    KIND_TOOL_DONE,
    RESERVED_KIND_BASE,
    RUNTIME_SENDER,
    AgentModuleError,
    ModuleInfo,
    check_module,
    compile_module,
    make_engine,
)
from qhybrid.runtime.wasm_pool._agent_v2 import V2_EFFECTS
from qhybrid.runtime.wasm_pool._agent_v2 import wrap as wrap_envelope
from qhybrid.runtime.wasm_pool._cache import default_cache_dir, load_module
from qhybrid.runtime.wasm_pool._limits import effective_limits
from qhybrid.runtime.wasm_pool._pool import (
    WORKER_FLAG,
    WorkerCrashed,
    WorkerError,
    WorkerPool,
    worker_command,
)
from qhybrid.runtime.wasm_pool._protocol import (
    AGENT_USAGE_ROW,
    MESSAGE_USAGE_MARK,
    USAGE_AGENTS,
    USAGE_MESSAGES,
    USAGE_ROW,
    AgentLoad,
    BatchReply,
    Delivery,
    Limits,
    Outcome,
    TaskOutcome,
    TaskRun,
    TensorEntry,
    split_usage,
)
from qhybrid.runtime.wasm_pool._python_agent import load_python_module
from qhybrid.runtime.wasm_pool._quotas import Quotas
from qhybrid.runtime.wasm_pool._ray_pool import (
    RAY_INSTALL_HINT,
    RayNotInstalled,
    RayWorkerPool,
    import_ray,
    ray_tensor_path,
)
from qhybrid.runtime.wasm_pool._worker import main as run_worker

__all__ = [
    "ABI_VERSION",
    "ABI_VERSIONS",
    "AGENT_USAGE_ROW",
    "KIND_ANSWER",
    "KIND_ENVELOPE",
    "KIND_GPU_DONE",
    "KIND_LLM_CHAT_DONE",
    "KIND_LLM_DONE",
    "KIND_SPAWNED",
    "KIND_TASK_DONE",
    "KIND_TOOL_DONE",
    "MESSAGE_USAGE_MARK",
    "RAY_INSTALL_HINT",
    "RESERVED_KIND_BASE",
    "RUNTIME_SENDER",
    "USAGE_AGENTS",
    "USAGE_MESSAGES",
    "USAGE_ROW",
    "V2_EFFECTS",
    "WORKER_FLAG",
    "AgentLoad",
    "AgentModuleError",
    "BatchReply",
    "Delivery",
    "Limits",
    "ModuleInfo",
    "Outcome",
    "Quotas",
    "RayNotInstalled",
    "RayWorkerPool",
    "TaskOutcome",
    "TaskRun",
    "TensorEntry",
    "WorkerCrashed",
    "WorkerError",
    "WorkerPool",
    "check_module",
    "compile_module",
    "default_cache_dir",
    "effective_limits",
    "import_ray",
    "load_module",
    "load_python_module",
    "make_engine",
    "ray_tensor_path",
    "run_worker",
    "split_usage",
    "worker_command",
    "wrap_envelope",
]
