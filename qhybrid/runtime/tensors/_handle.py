"""The handle that names a shared tensor; plain data, cheap to send anywhere."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Every segment qhybrid creates starts with this prefix (``/dev/shm/qh_...`` on Linux).
SEGMENT_PREFIX = "qh_"


@dataclass(frozen=True, slots=True)
class TensorHandle:
    """Where a tensor lives: a shared-memory segment, a byte offset, a shape and a dtype.

    Handles are values: they can be pickled, compared and hashed. They do not keep the
    tensor alive; the owning :class:`~qhybrid.runtime.tensors.TensorStore` does.
    """

    segment: str
    offset: int
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        if not self.segment.startswith(SEGMENT_PREFIX):
            raise ValueError(f"not a qhybrid segment name: {self.segment!r}")
        if self.offset < 0:
            raise ValueError(f"negative offset {self.offset}")
        if any(d < 0 for d in self.shape):
            raise ValueError(f"negative dimension in shape {self.shape}")
        np.dtype(self.dtype)  # raises TypeError for an unknown dtype

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Number of bytes the tensor occupies in its segment."""
        return self.size * np.dtype(self.dtype).itemsize

    def describe(self) -> str:
        """A short human-readable form, e.g. ``float32[128x64]``."""
        return f"{np.dtype(self.dtype).name}[{'x'.join(str(d) for d in self.shape)}]"
