"""Tensors for Ray actors off the driver's node: through Ray's object store, by reference.

On the driver's node an actor maps the driver's shared-memory segments as a local worker
does. An actor on another node cannot (its node has its own ``/dev/shm``), so for it:

- the driver (:class:`StoreRefs`) puts each named tensor's bytes into Ray's object store once
  per version (``ray.put`` of a flat ``uint8`` array; a tensor only agents may write is
  compared with its last version before each tick's batches and put again when it changed),
  and sends each such actor the references it has not had yet, with its next request. A
  reference is a few bytes: the bytes themselves travel to a node only when an agent or a
  task there reads the tensor (``ray.get`` on that node), so only to the nodes that read it;
- the actor (:class:`ObjectStoreWorker`, the same :class:`~._worker.Worker` with a different
  tensor source) reads a tensor through ``ray.get``, which gives a zero-copy, read-only view
  of the node's object store for large values, where the worker code maps a segment;
- a CPU task's output, computed on that node into a plain array, comes back with the batch's
  reply and the driver copies it into the output's segment. Tensors agents create or write
  come back as they always do: as effects (name, shape, bytes) in the outcomes, applied by
  the driver.

Handles stay handles: entries and tasks carry the driver's :class:`TensorHandle` everywhere;
the references ride beside them, keyed by handle.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from qhybrid.runtime.tensors import AttachedTensor, TensorHandle, attach, run_numpy
from qhybrid.runtime.wasm_pool._protocol import TaskOutcome, TaskRun, TensorEntry
from qhybrid.runtime.wasm_pool._worker import Worker
from qhybrid.runtime.wasm_pool._worker_context import WorkerContext

__all__ = ["ObjectStoreContext", "ObjectStoreWorker", "StoreRefs", "copy_outputs"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Version:
    ref: Any  # ray.ObjectRef of the flat uint8 bytes
    #: The driver's read of ``ref``: what the tensor held when it was put (a mutable tensor
    #: is compared with it).
    view: npt.NDArray[np.uint8]
    mutable: bool


class StoreRefs:
    """The driver's side: one object-store reference per named tensor's current version,
    by handle (a name published again names another tensor)."""

    def __init__(self, ray: Any) -> None:
        self._ray = ray
        self._versions: dict[TensorHandle, _Version] = {}
        self._mapped: dict[TensorHandle, AttachedTensor] = {}
        self._checked_tick: int | None = None
        #: Tensor versions put so far, and their bytes (for the benchmark and the tests).
        self.puts = 0
        self.put_bytes = 0

    def _flat(self, handle: TensorHandle) -> npt.NDArray[np.uint8]:
        mapped = self._mapped.get(handle)
        if mapped is None:
            mapped = self._mapped[handle] = attach(handle)
        return mapped.array.reshape(-1).view(np.uint8)

    def _put(self, handle: TensorHandle, flat: npt.NDArray[np.uint8], mutable: bool) -> None:
        ref = self._ray.put(flat)
        # On the driver's node this is a view of the store's copy, not a second copy.
        view = self._ray.get(ref)
        self._versions[handle] = _Version(ref, view, mutable)
        self.puts += 1
        self.put_bytes += flat.nbytes

    def refresh(self, entries: Sequence[TensorEntry], tick: int | None) -> None:
        """Put every tensor not put yet; once per ``tick`` (on every call when None), put
        again each mutable one whose bytes changed (agents' writes are applied between ticks,
        never during one); forget released ones."""
        check = tick is None or tick != self._checked_tick
        for entry in entries:
            if entry.released:  # gone: its segment may be unlinked already
                self._versions.pop(entry.handle, None)
                mapped = self._mapped.pop(entry.handle, None)
                if mapped is not None:
                    mapped.close()
                continue
            # Only agents write tensors after they are published (their writers, and jobs
            # into a tensor they may write); one nobody may write never changes.
            mutable = entry.writers != frozenset()
            version = self._versions.get(entry.handle)
            if version is None:
                self._put(entry.handle, self._flat(entry.handle), mutable)
                continue
            version.mutable = version.mutable or mutable  # a task's output, published
            if check and version.mutable:
                flat = self._flat(entry.handle)
                if not np.array_equal(flat, version.view):
                    self._put(entry.handle, flat, True)
        if tick is not None:
            self._checked_tick = tick

    def add_inputs(self, tasks: Sequence[TaskRun]) -> None:
        """Put the CPU tasks' inputs that are no named tensor yet (an earlier task's output
        in the same tick, which a chained task reads before it is published)."""
        for task in tasks:
            for handle in task.inputs:
                if handle not in self._versions:
                    self._put(handle, self._flat(handle), False)

    def delta(self, sent: dict[TensorHandle, Any]) -> dict[TensorHandle, Any]:
        """The references an actor that has had ``sent`` lacks; ``sent`` is updated."""
        new = {n: v.ref for n, v in self._versions.items() if sent.get(n) is not v.ref}
        sent.update(new)
        return new

    def close(self) -> None:
        self._versions.clear()
        for mapped in self._mapped.values():
            mapped.close()
        self._mapped.clear()


def copy_outputs(tasks: Sequence[TaskRun], outputs: dict[int, npt.NDArray[Any]]) -> None:
    """Write the outputs of a remote actor's CPU tasks into their segments (driver side)."""
    by_id = {t.task_id: t for t in tasks}
    for task_id, array in outputs.items():
        task = by_id[task_id]
        with attach(task.output, writable=True) as out:
            out.array[...] = array.reshape(out.array.shape)


class ObjectStoreContext(WorkerContext):
    """A worker context whose tensors come from Ray's object store instead of segments."""

    def __init__(self) -> None:
        super().__init__()
        self._refs: dict[TensorHandle, Any] = {}
        self._fetched: dict[TensorHandle, npt.NDArray[np.uint8]] = {}
        #: Tensors fetched from the object store so far, and their bytes.
        self.fetches = 0
        self.fetched_bytes = 0

    def add_tensors(self, entries: list[TensorEntry]) -> None:
        super().add_tensors(entries)
        for entry in entries:
            if entry.released:
                self._refs.pop(entry.handle, None)
                self._fetched.pop(entry.handle, None)

    def set_refs(self, refs: dict[TensorHandle, Any]) -> None:
        for handle, ref in refs.items():
            self._refs[handle] = ref
            self._fetched.pop(handle, None)  # a new version: fetched again when read

    def _bytes_of(self, handle: TensorHandle) -> npt.NDArray[np.uint8]:
        got = self._fetched.get(handle)
        if got is None:
            ref = self._refs.get(handle)
            if ref is None:
                raise KeyError(
                    f"no object-store reference for tensor {handle.describe()} "
                    f"({handle.segment} at {handle.offset})"
                )
            got = importlib.import_module("ray").get(ref)
            assert isinstance(got, np.ndarray)
            self._fetched[handle] = got
            self.fetches += 1
            self.fetched_bytes += got.nbytes
        return got

    def tensor_bytes(self, entry: TensorEntry) -> npt.NDArray[np.uint8]:
        return self._bytes_of(entry.handle)

    def array_of(self, handle: TensorHandle) -> npt.NDArray[Any]:
        """The (read-only) array a task input's handle names."""
        return self._bytes_of(handle).view(np.dtype(handle.dtype)).reshape(handle.shape)

    def close(self) -> None:
        super().close()
        self._fetched.clear()
        self._refs.clear()


class ObjectStoreWorker(Worker):
    """The same worker, reading tensors from the object store; CPU tasks' outputs are kept
    for the reply instead of being written to a segment."""

    def __init__(self) -> None:
        super().__init__()
        self.ctx.close()
        self.store_ctx = ObjectStoreContext()
        self.ctx = self.store_ctx
        self.outputs: dict[int, npt.NDArray[Any]] = {}

    def run_task(self, task: TaskRun) -> TaskOutcome:  # type: ignore[override]
        start = time.perf_counter_ns()
        try:
            inputs = [self.store_ctx.array_of(h) for h in task.inputs]
            out = np.zeros(task.output.shape, np.dtype(task.output.dtype))
            run_numpy(task.op, inputs, out, dict(task.params))
        except Exception as exc:
            return TaskOutcome(
                False, f"{type(exc).__name__}: {exc}", time.perf_counter_ns() - start
            )
        self.outputs[task.task_id] = out
        return TaskOutcome(True, None, time.perf_counter_ns() - start)

    def take_outputs(self) -> dict[int, npt.NDArray[Any]]:
        outputs, self.outputs = self.outputs, {}
        return outputs
