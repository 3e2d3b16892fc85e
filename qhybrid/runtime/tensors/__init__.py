"""Shared-memory tensors: numpy arrays that cross processes and threads by handle.

The orchestrator's process owns every segment (a :class:`TensorStore`); worker processes and
the GPU thread receive a :class:`TensorHandle` (segment name, offset, shape, dtype) and map it
with :func:`attach`. Bytes are never pickled. Only the owner creates or unlinks segments, so a
worker that dies cannot leak one.
"""

from __future__ import annotations

from qhybrid.runtime.tensors._handle import SEGMENT_PREFIX, TensorHandle
from qhybrid.runtime.tensors._map import AttachedTensor, attach
from qhybrid.runtime.tensors._ops import OPS, OpError, OpSpec, get_op, run_numpy
from qhybrid.runtime.tensors._room import SharedMemoryFull
from qhybrid.runtime.tensors._segment import Segment
from qhybrid.runtime.tensors._stale import remove_stale_segments
from qhybrid.runtime.tensors._store import SharedTensor, TensorStore, TensorStoreStats

__all__ = [
    "OPS",
    "SEGMENT_PREFIX",
    "AttachedTensor",
    "OpError",
    "OpSpec",
    "Segment",
    "SharedMemoryFull",
    "SharedTensor",
    "TensorHandle",
    "TensorStore",
    "TensorStoreStats",
    "attach",
    "get_op",
    "remove_stale_segments",
    "run_numpy",
]
