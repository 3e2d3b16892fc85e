"""The owner's side: creating shared tensors, counting references, freeing segments."""

from __future__ import annotations

import atexit
import itertools
import logging
import math
import os
import threading
import weakref
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from qhybrid.runtime.tensors import _room
from qhybrid.runtime.tensors._handle import SEGMENT_PREFIX, TensorHandle
from qhybrid.runtime.tensors._room import SharedMemoryFull
from qhybrid.runtime.tensors._segment import Segment
from qhybrid.runtime.tensors._stale import sweep_once

logger = logging.getLogger(__name__)

_store_ids = itertools.count()


@dataclass(frozen=True, slots=True)
class TensorStoreStats:
    """How much the store holds right now."""

    tensors: int
    bytes: int
    peak_bytes: int
    created: int
    freed: int


class _Segment:
    __slots__ = ("handle", "refs", "shm")

    def __init__(self, shm: Segment, handle: TensorHandle) -> None:
        self.shm = shm
        self.handle = handle
        self.refs = 1


class SharedTensor:
    """A reference to a tensor in a :class:`TensorStore`, with a numpy view of it.

    Each ``SharedTensor`` holds one reference; the segment is freed when the last reference
    is released (:meth:`close`, leaving a ``with`` block, or garbage collection).
    """

    __slots__ = ("__weakref__", "_array", "_finalizer", "handle")

    def __init__(self, store: TensorStore, segment: _Segment) -> None:
        self.handle = segment.handle
        handle = segment.handle
        arr = segment.shm.view(handle.shape, np.dtype(handle.dtype), handle.offset)
        self._array: npt.NDArray[Any] | None = arr
        self._finalizer = weakref.finalize(self, store.release, segment.handle)

    @property
    def array(self) -> npt.NDArray[Any]:
        """A writable numpy view of the tensor's memory (no copy).

        A view may outlive the tensor: its memory stays mapped (but no longer shared) until
        the view is gone.
        """
        if self._array is None:
            raise ValueError(f"tensor {self.handle.describe()} was closed")
        return self._array

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Release this reference; idempotent."""
        self._array = None
        self._finalizer()

    def __enter__(self) -> SharedTensor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<SharedTensor {self.handle.describe()} {self.handle.segment} {state}>"


class TensorStore:
    """Creates and owns shared-memory tensors for this process; thread-safe.

    Every tensor lives in its own segment named ``qh_<pid>_<store>_<n>``. References are
    counted: :class:`SharedTensor` objects and explicit :meth:`retain` calls (used while a
    handle is in flight to a worker or the GPU thread) each hold one. :meth:`close` frees
    everything, and an ``atexit`` hook does so at interpreter exit.
    """

    def __init__(self) -> None:
        sweep_once()  # the first store of a process removes what dead runs left (_stale.py)
        self._lock = threading.Lock()
        self._segments: dict[str, _Segment] = {}
        self._counter = itertools.count()
        self._prefix = f"{SEGMENT_PREFIX}{os.getpid()}_{next(_store_ids)}_"
        self._bytes = 0
        self._peak = 0
        self._created = 0
        self._freed = 0
        self._closed = False
        atexit.register(self.close)

    # -- creating -----------------------------------------------------------------------
    @staticmethod
    def room_problem(nbytes: int) -> str | None:
        """Why a tensor of ``nbytes`` cannot be created now (shared memory is full), or None."""
        return _room.room_problem(nbytes)

    def create(self, shape: tuple[int, ...] | list[int], dtype: npt.DTypeLike) -> SharedTensor:
        """A new zero-filled tensor."""
        shape_t = tuple(int(d) for d in shape)
        dt = np.dtype(dtype)
        nbytes = math.prod(shape_t) * dt.itemsize
        with self._lock:
            if self._closed:
                raise RuntimeError("the tensor store is closed")
            name = f"{self._prefix}{next(self._counter)}"
            handle = TensorHandle(name, 0, shape_t, dt.str)  # validates before anything exists
            problem = _room.room_problem(nbytes)
            if problem is not None:
                raise SharedMemoryFull(problem)
            # A zero-size segment is not allowed; one byte keeps empty tensors uniform.
            shm = Segment.create(name, nbytes)
            segment = _Segment(shm, handle)
            self._segments[name] = segment
            self._bytes += nbytes
            self._peak = max(self._peak, self._bytes)
            self._created += 1
            return SharedTensor(self, segment)

    def from_array(self, array: npt.ArrayLike) -> SharedTensor:
        """A new tensor holding a copy of ``array``."""
        src = np.asarray(array)
        tensor = self.create(src.shape, src.dtype)
        tensor.array[...] = src
        return tensor

    # -- references ---------------------------------------------------------------------
    def open(self, handle: TensorHandle) -> SharedTensor:
        """A new reference (and view) to a tensor this store holds."""
        with self._lock:
            segment = self._require(handle)
            segment.refs += 1
            return SharedTensor(self, segment)

    def retain(self, handle: TensorHandle) -> None:
        """Add a reference, e.g. while ``handle`` is in flight to another process."""
        with self._lock:
            self._require(handle).refs += 1

    def release(self, handle: TensorHandle) -> None:
        """Drop a reference; the segment is unlinked when none is left."""
        with self._lock:
            segment = self._segments.get(handle.segment)
            if segment is None:
                return  # already freed, e.g. by close()
            segment.refs -= 1
            if segment.refs > 0:
                return
            del self._segments[handle.segment]
            self._free(segment)

    def refcount(self, handle: TensorHandle) -> int:
        with self._lock:
            segment = self._segments.get(handle.segment)
            return 0 if segment is None else segment.refs

    def __contains__(self, handle: object) -> bool:
        return isinstance(handle, TensorHandle) and handle.segment in self._segments

    @property
    def bytes_used(self) -> int:
        """The bytes of the tensors now (``stats().bytes``, without the lock: one int read)."""
        return self._bytes

    def stats(self) -> TensorStoreStats:
        with self._lock:
            return TensorStoreStats(
                tensors=len(self._segments),
                bytes=self._bytes,
                peak_bytes=self._peak,
                created=self._created,
                freed=self._freed,
            )

    # -- closing ------------------------------------------------------------------------
    def close(self) -> None:
        """Free every segment, referenced or not; idempotent."""
        with self._lock:
            self._closed = True
            segments = list(self._segments.values())
            self._segments.clear()
            for segment in segments:
                self._free(segment)
        atexit.unregister(self.close)

    def __enter__(self) -> TensorStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------
    def _require(self, handle: TensorHandle) -> _Segment:
        segment = self._segments.get(handle.segment)
        if segment is None or segment.handle != handle:
            raise KeyError(f"unknown or freed tensor {handle.describe()} ({handle.segment})")
        return segment

    def _free(self, segment: _Segment) -> None:
        self._bytes -= segment.handle.nbytes
        self._freed += 1
        try:
            segment.shm.unlink()
        except FileNotFoundError:
            logger.warning("segment %s was already gone", segment.handle.segment)
        # Views still held keep the (now nameless) memory mapped until they are dropped.
        segment.shm.close()
