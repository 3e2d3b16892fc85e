"""Mapping a handle into this process: used by worker processes and the GPU thread."""

from __future__ import annotations

import mmap
import os
from multiprocessing import shared_memory
from types import TracebackType

import numpy as np
import numpy.typing as npt

from qhybrid.runtime.tensors._handle import TensorHandle


class _Mapping:
    """A read-write mapping of an existing POSIX segment that no resource tracker knows about.

    ``SharedMemory(name=...)`` registers the segment with this process's resource tracker
    (before Python 3.13 there is no ``track=False``); unregistering afterwards would also drop
    the owner's registration when the owner attaches in its own process (the GPU thread).
    """

    def __init__(self, name: str) -> None:
        import _posixshmem  # type: ignore[import-not-found,unused-ignore]

        fd = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)
        try:
            self.size = os.fstat(fd).st_size
            self._mmap = mmap.mmap(fd, self.size)
        finally:
            os.close(fd)
        self.buf: memoryview = memoryview(self._mmap)

    def close(self) -> None:
        self.buf.release()
        self._mmap.close()


def open_segment(name: str) -> _Mapping | shared_memory.SharedMemory:
    """Map an existing segment without making this process responsible for unlinking it."""
    if os.name != "posix":
        # Windows frees a segment when its last handle closes; there is no tracker.
        return shared_memory.SharedMemory(name=name)
    return _Mapping(name)


class AttachedTensor:
    """A numpy view of a shared tensor in this process; close it (or use ``with``) when done.

    ``array`` is read-only unless the tensor was attached with ``writable=True``.
    """

    __slots__ = ("_array", "_shm", "handle")

    def __init__(self, handle: TensorHandle, *, writable: bool = False) -> None:
        self.handle = handle
        self._shm = open_segment(handle.segment)
        end = handle.offset + handle.nbytes
        if end > self._shm.size:
            self._shm.close()
            raise ValueError(
                f"tensor {handle.describe()} at offset {handle.offset} overruns segment "
                f"{handle.segment} of {self._shm.size} bytes"
            )
        arr: npt.NDArray[np.generic] = np.ndarray(
            handle.shape, dtype=np.dtype(handle.dtype), buffer=self._shm.buf, offset=handle.offset
        )
        arr.flags.writeable = writable
        self._array: npt.NDArray[np.generic] | None = arr

    @property
    def array(self) -> npt.NDArray[np.generic]:
        if self._array is None:
            raise ValueError(f"tensor {self.handle.describe()} is closed")
        return self._array

    def close(self) -> None:
        """Drop the view and unmap the segment (the segment itself stays)."""
        self._array = None
        try:
            self._shm.close()
        except BufferError:
            # A caller still holds a view; the mapping goes away with it.
            pass

    def __enter__(self) -> AttachedTensor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def attach(handle: TensorHandle, *, writable: bool = False) -> AttachedTensor:
    """Map the tensor named by ``handle``; read-only unless ``writable``."""
    return AttachedTensor(handle, writable=writable)
