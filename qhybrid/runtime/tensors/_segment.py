"""A mapped shared-memory segment whose numpy views can never outlive the mapping.

Views are made with ``np.frombuffer`` on the ``mmap`` object, so each view holds a buffer
export of the mapping: :meth:`Segment.close` then cannot unmap memory a view still points to
(``mmap.close`` refuses with ``BufferError``), and the mapping goes away with its last view.
``multiprocessing.shared_memory`` is not used on POSIX because, before Python 3.13, attaching
registers the segment with the attaching process's resource tracker, which then unlinks it
when that process exits.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from typing import Any

import numpy as np
import numpy.typing as npt

_POSIX = os.name == "posix"


def _reserve(fd: int, size: int, name: str) -> None:
    """Back every page now: on a full tmpfs this fails with ENOSPC, where writing to an
    unbacked page later would kill the writer with SIGBUS."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None:
        return
    try:
        fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            from qhybrid.runtime.tensors._room import SharedMemoryFull

            raise SharedMemoryFull(
                errno.ENOSPC, f"shared memory is full: no room for {size} bytes in {name}"
            ) from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise


class Segment:
    """One mapping of a named segment; create it (the owner) or open it (anyone else)."""

    __slots__ = ("_mmap", "_shm", "name", "size")

    def __init__(self, name: str, size: int, mapping: mmap.mmap, shm: Any = None) -> None:
        self.name = name
        self.size = size
        self._mmap: mmap.mmap | None = mapping
        self._shm = shm  # Windows only: keeps the named mapping's handle

    @classmethod
    def create(cls, name: str, size: int) -> Segment:
        """Create a new zero-filled segment of ``size`` bytes (at least 1)."""
        size = max(size, 1)
        if not _POSIX:
            from multiprocessing import shared_memory

            shm = shared_memory.SharedMemory(name=name, create=True, size=size)
            return cls(name, size, shm._mmap, shm)  # type: ignore[attr-defined]
        import _posixshmem  # type: ignore[import-not-found,unused-ignore]
        from multiprocessing import resource_tracker

        fd = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        try:
            os.ftruncate(fd, size)
            _reserve(fd, size, name)
            mapping = mmap.mmap(fd, size)
        except BaseException:
            _posixshmem.shm_unlink("/" + name)
            raise
        finally:
            os.close(fd)
        # If this process dies without unlinking (SIGKILL), its resource tracker does it.
        resource_tracker.register("/" + name, "shared_memory")
        return cls(name, size, mapping)

    @classmethod
    def open(cls, name: str) -> Segment:
        """Map an existing segment; this process does not become responsible for it."""
        if not _POSIX:
            from multiprocessing import shared_memory

            shm = shared_memory.SharedMemory(name=name)
            return cls(name, shm.size, shm._mmap, shm)  # type: ignore[attr-defined]
        import _posixshmem

        fd = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)
        try:
            size = os.fstat(fd).st_size
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        return cls(name, size, mapping)

    def view(self, shape: tuple[int, ...], dtype: np.dtype[Any], offset: int) -> npt.NDArray[Any]:
        """A view of ``shape`` and ``dtype`` at byte ``offset``; it keeps the mapping alive."""
        if self._mmap is None:
            raise ValueError(f"segment {self.name} is closed")
        count = 1
        for d in shape:
            count *= d
        end = offset + count * dtype.itemsize
        if end > self.size:
            raise ValueError(
                f"a {dtype.name} tensor of shape {list(shape)} at offset {offset} overruns "
                f"segment {self.name} of {self.size} bytes"
            )
        flat = np.frombuffer(self._mmap, dtype=dtype, count=count, offset=offset)
        return flat.reshape(shape)

    def close(self) -> None:
        """Drop this handle on the mapping; memory is unmapped once no view uses it."""
        mapping, self._mmap = self._mmap, None
        if mapping is not None:
            with contextlib.suppress(BufferError):  # views left: they keep it mapped
                mapping.close()
        if self._shm is not None:
            with contextlib.suppress(BufferError):
                self._shm.close()

    def unlink(self) -> None:
        """Remove the segment's name (POSIX): no new mapping can open it, memory goes with
        the last mapping. On Windows memory goes with the last handle, so this only closes."""
        if not _POSIX:
            return
        import _posixshmem
        from multiprocessing import resource_tracker

        try:
            _posixshmem.shm_unlink("/" + self.name)
        finally:
            resource_tracker.unregister("/" + self.name, "shared_memory")
