"""The run store: every run recorded in an embedded SQLite file, resumable from its
checkpoints, replayable with no model calls, forkable, diffable, deletable;
its state at any tick rebuilt by replay (:func:`state_at`).

- :class:`RunStore`: the file (WAL mode; a second process may read while a run writes).
- :class:`RunRecorder`: records a running :class:`~qhybrid.runtime.Runtime` off its thread.
- :class:`DurableRuntime`: a runtime that records, checkpoints, restores a checkpoint, or
  replays against a recording (:class:`TraceCheck`, :func:`recorded_llm`).

The ``qhybrid runs | show | resume | replay | fork | diff | export`` commands are built on it.
"""

from __future__ import annotations

from qhybrid.runtime.store._checkpoint import CheckpointUnavailable, capture, checkpointable
from qhybrid.runtime.store._fork import fork_seed
from qhybrid.runtime.store._llm_calls import LLM_KEY, RecordedLlmCall, llm_calls
from qhybrid.runtime.store._recorder import RunRecorder
from qhybrid.runtime.store._replay import RecordedLlm, recorded_llm
from qhybrid.runtime.store._runtime import Divergence, DurableRuntime, RestorePoint, TraceCheck
from qhybrid.runtime.store._schema import SCHEMA_VERSION, StoreError, default_store_path
from qhybrid.runtime.store._state_at import (
    AgentAt,
    QueuedAt,
    ReplayRuntime,
    StateAt,
    TensorAt,
    replay_start,
    state_at,
)
from qhybrid.runtime.store._store import Checkpoint, RunStore

__all__ = [
    "LLM_KEY",
    "SCHEMA_VERSION",
    "AgentAt",
    "Checkpoint",
    "CheckpointUnavailable",
    "Divergence",
    "DurableRuntime",
    "QueuedAt",
    "RecordedLlm",
    "RecordedLlmCall",
    "ReplayRuntime",
    "RestorePoint",
    "RunRecorder",
    "RunStore",
    "StateAt",
    "StoreError",
    "TensorAt",
    "TraceCheck",
    "capture",
    "checkpointable",
    "default_store_path",
    "fork_seed",
    "llm_calls",
    "recorded_llm",
    "replay_start",
    "state_at",
]
