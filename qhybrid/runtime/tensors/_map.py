"""Mapping a handle into this process: used by worker processes and the GPU thread."""

from __future__ import annotations

from types import TracebackType

import numpy as np
import numpy.typing as npt

from qhybrid.runtime.tensors._handle import TensorHandle
from qhybrid.runtime.tensors._segment import Segment


class AttachedTensor:
    """A numpy view of a shared tensor in this process; close it (or use ``with``) when done.

    ``array`` is read-only unless the tensor was attached with ``writable=True``.
    """

    __slots__ = ("_array", "_segment", "handle")

    def __init__(self, handle: TensorHandle, *, writable: bool = False) -> None:
        self.handle = handle
        self._segment = Segment.open(handle.segment)
        try:
            arr = self._segment.view(handle.shape, np.dtype(handle.dtype), handle.offset)
        except ValueError:
            self._segment.close()
            raise
        arr.flags.writeable = writable
        self._array: npt.NDArray[np.generic] | None = arr

    @property
    def array(self) -> npt.NDArray[np.generic]:
        if self._array is None:
            raise ValueError(f"tensor {self.handle.describe()} is closed")
        return self._array

    def close(self) -> None:
        """Drop this mapping (the segment itself stays). Views still held elsewhere keep
        their memory mapped until they are gone, so they never dangle."""
        self._array = None
        self._segment.close()

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
