"""A cheaper way to call a wasm function with i32 arguments and one i32 result.

``wasmtime.Func.__call__`` asks for the function's type and converts every argument through
``Val`` objects on each call; for the per-message calls (``qh_alloc``, ``qh_on_message``) that
overhead is larger than the guest's work. :class:`I32Call` prepares the argument and result
arrays once and calls ``wasmtime_func_call`` directly, with the same trap and error handling as
``Func.__call__``. It relies on wasmtime-py internals, so :func:`i32_caller` falls back to the
public path when they are not there.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from typing import Any

import wasmtime

logger = logging.getLogger(__name__)


class I32Call:
    """``call(*args) -> int`` for a function of type ``(i32 * n) -> i32``."""

    __slots__ = ("_enter", "_ffi", "_func", "_n", "_params", "_results", "_store")

    def __init__(self, store: wasmtime.Store, func: wasmtime.Func, nparams: int) -> None:
        from wasmtime import _ffi as ffi
        from wasmtime._func import enter_wasm

        self._ffi: Any = ffi
        self._enter: Any = enter_wasm
        self._store = store
        self._func = func
        self._n = nparams
        self._params = (ffi.wasmtime_val_t * max(nparams, 1))()
        for i in range(nparams):
            self._params[i].kind = ffi.WASMTIME_I32.value  # type: ignore[assignment,unused-ignore]
        self._results = (ffi.wasmtime_val_t * 1)()

    def __call__(self, *args: int) -> int:
        params = self._params
        for i, value in enumerate(args):
            params[i].of.i32 = value
        ffi = self._ffi
        store = self._store
        with self._enter(store) as trap:
            error = ffi.wasmtime_func_call(
                store._context(),
                ctypes.byref(self._func._func),
                params,
                self._n,
                self._results,
                1,
                trap,
            )
            if error:
                raise wasmtime.WasmtimeError._from_ptr(error)
        return int(self._results[0].of.i32)


def i32_caller(store: wasmtime.Store, func: wasmtime.Func, nparams: int) -> Callable[..., int]:
    """The fastest correct caller for ``func``; the public API when internals differ."""
    try:
        return I32Call(store, func, nparams)
    except (ImportError, AttributeError) as exc:  # pragma: no cover - another wasmtime-py
        logger.info("fast wasm calls unavailable (%s); using Func.__call__", exc)

        def call(*args: int) -> int:
            return int(func(store, *args))

        return call
