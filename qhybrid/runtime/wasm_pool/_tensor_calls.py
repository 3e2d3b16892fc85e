"""The tensor host functions that ABI version 2 adds: ``tensor_release`` and ``gpu_submit_into``.

They belong to :class:`~qhybrid.runtime.wasm_pool._agent_v2.V2Calls` (which dispatches to
them) and work on the :class:`~qhybrid.runtime.wasm_pool._agent.AgentHost`'s handle table and
per-message state, like the version 1 tensor functions. Nothing acts at once: they add the
effects ``("release", name)`` and ``("gpu_into", job, op, inputs, out, param)``, which the
orchestrator applies at the end of the tick (``qhybrid/runtime/_commit.py``), or drops with
the rest of the message's effects when it fails.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from qhybrid.runtime.tensors import get_op
from qhybrid.runtime.wasm_pool._abi_spec import load_spec

if TYPE_CHECKING:
    from qhybrid.runtime.wasm_pool._agent import AgentHost

__all__ = ["TensorCalls"]

_SPEC = load_spec()
OK = _SPEC.constant("OK")
ERR_BAD_HANDLE = _SPEC.constant("ERR_BAD_HANDLE")
ERR_NOT_READY = _SPEC.constant("ERR_NOT_READY")
ERR_READ_ONLY = _SPEC.constant("ERR_READ_ONLY")
ERR_BAD_SHAPE = _SPEC.constant("ERR_BAD_SHAPE")
ERR_BAD_OP = _SPEC.constant("ERR_BAD_OP")
_MAX_INPUTS = 8


class TensorCalls:
    """``tensor_release`` and ``gpu_submit_into`` for one agent instance."""

    def __init__(self, host: AgentHost) -> None:
        self.host = host
        #: Names this message has released (a second release of one is a no-op).
        self.released: set[str] = set()

    def begin(self) -> None:
        self.released = set()

    def tensor_release(self, h: int) -> int:
        host = self.host
        name = host._resolve(h)
        if name is None:
            return ERR_BAD_HANDLE
        if name in host.call_state.created:
            return ERR_NOT_READY
        entry = host._visible(name)
        if entry is None:
            return ERR_BAD_HANDLE
        # Only what the agent made: its tensor_create'd tensors and its jobs' outputs have it
        # as their one writer; a scenario's writable tensor (writers None) is nobody's.
        if entry.writers is None or host.agent_id not in entry.writers:
            return ERR_READ_ONLY
        if name not in self.released:
            self.released.add(name)
            host.call_state.effects.append(("release", name))
        return OK

    def gpu_submit_into(
        self, op_ptr: int, op_len: int, inputs_ptr: int, n_inputs: int, out: int, param: float
    ) -> int:
        host = self.host
        op = host._name("gpu_submit_into", op_ptr, op_len)
        if not 0 <= n_inputs <= _MAX_INPUTS:
            host._check("gpu_submit_into", inputs_ptr, 0)
            return ERR_BAD_OP
        raw = host._read("gpu_submit_into", inputs_ptr, 4 * n_inputs, 4 * _MAX_INPUTS)
        names: list[str] = []
        metas = []
        for h in np.frombuffer(raw, "<i4"):
            name = host._resolve(int(h))
            meta = None if name is None else host._meta(name)
            if name is None or meta is None:
                return ERR_BAD_HANDLE
            names.append(name)
            metas.append(meta)
        out_name = host._resolve(out)
        out_meta = None if out_name is None else host._meta(out_name)
        if out_name is None or out_meta is None:
            return ERR_BAD_HANDLE
        if out_name not in host.call_state.created:
            entry = host._visible(out_name)
            if entry is None or not entry.writable_by(host.agent_id):
                return ERR_READ_ONLY
        params = {"factor": float(param)} if op == "scale" else {}
        try:
            shape, dtype = get_op(op).check(
                [m[1] for m in metas], [m[0].str for m in metas], params
            )
        except ValueError:
            return ERR_BAD_OP
        if tuple(shape) != tuple(out_meta[1]) or np.dtype(dtype) != out_meta[0]:
            return ERR_BAD_SHAPE
        host.call_state.tensor(np.dtype(dtype).itemsize * math.prod(shape), "gpu_submit_into")
        job = host._next_job
        host._next_job += 1
        host.call_state.effects.append(("gpu_into", job, op, tuple(names), out_name, float(param)))
        return job
