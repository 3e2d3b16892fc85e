"""Cheaper calls between Python and wasm: into exports, and from the guest into host functions.

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
import weakref
from collections.abc import Callable
from typing import Any

import wasmtime

logger = logging.getLogger(__name__)

# wasmtime-py's ctypes bindings, for the raw host functions; None if this wasmtime-py lacks
# them (then host functions are plain wasmtime.Func objects).
_ffi: Any
try:
    from wasmtime import _ffi as _wasmtime_ffi

    _ffi = _wasmtime_ffi if hasattr(_wasmtime_ffi, "wasmtime_func_new_unchecked") else None
except ImportError:  # pragma: no cover - another wasmtime-py
    _ffi = None
_enter_wasm: Any
try:
    from wasmtime._func import enter_wasm as _enter_wasm
except ImportError:  # pragma: no cover - another wasmtime-py
    _enter_wasm = None

_VAL_ARRAYS: dict[int, Any] = {}


def _val_array(n: int) -> Any:
    """The ctypes type ``wasmtime_val_t[n]``, made once (making one costs tens of us)."""
    array = _VAL_ARRAYS.get(n)
    if array is None:
        array = _VAL_ARRAYS[n] = _ffi.wasmtime_val_t * n
    return array


class I32Call:
    """``call(*args) -> int`` for a function of type ``(i32 * n) -> i32``."""

    __slots__ = ("_enter", "_ffi", "_func", "_n", "_params", "_results", "_store")

    def __init__(self, store: wasmtime.Store, func: wasmtime.Func, nparams: int) -> None:
        ffi = _ffi
        if ffi is None or _enter_wasm is None:
            raise AttributeError("wasmtime-py's ctypes bindings are not available")
        self._ffi: Any = ffi
        self._enter: Any = _enter_wasm
        self._store = store
        self._func = func
        self._n = nparams
        self._params = _val_array(max(nparams, 1))()
        for i in range(nparams):
            self._params[i].kind = ffi.WASMTIME_I32.value  # type: ignore[assignment,unused-ignore]
        self._results = _val_array(1)()

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


# -- host functions --------------------------------------------------------------------------
#
# wasmtime.Func wraps each host call in Caller and Val objects and converts its result through
# several ValType comparisons; for the ABI's small integer functions that costs more than
# the guest's own work. The "unchecked" C API passes raw values in one array instead.

_RAW_FUNCS: dict[int, tuple[Callable[..., Any], tuple[str, ...], str | None]] = {}
_raw_ids = iter(range(1, 1 << 62))
_raw_trampoline: Any = None
_raw_finalizer: Any = None


def _install_trampolines() -> tuple[Any, Any]:
    global _raw_trampoline, _raw_finalizer
    if _raw_trampoline is None:
        from wasmtime import _ffi as ffi
        from wasmtime import _func

        @ffi.wasmtime_func_unchecked_callback_t  # type: ignore[untyped-decorator,misc,unused-ignore]
        def trampoline(env: int, caller: Any, values: Any, count: int) -> int:
            try:
                fn, params, result = _RAW_FUNCS[env or 0]
                args = [getattr(values[i], kind) for i, kind in enumerate(params)]
                out = fn(*args)
                if result is not None:
                    setattr(values[0], result, out)
                return 0
            except BaseException as exc:
                # wasmtime-py re-raises this when the call that trapped returns.
                _func.LAST_EXCEPTION = exc  # type: ignore[assignment,unused-ignore]
                message = b"host function raised"
                trap = ffi.wasmtime_trap_new(message, len(message))
                return ctypes.cast(trap, ctypes.c_void_p).value or 0

        @ctypes.CFUNCTYPE(None, ctypes.c_void_p)  # type: ignore[untyped-decorator,misc,unused-ignore]
        def finalizer(env: int) -> None:
            # At interpreter exit wasmtime may free its stores after this module's globals
            # were cleared (then _RAW_FUNCS is None): nothing is left to forget.
            funcs = _RAW_FUNCS
            if funcs is not None:
                funcs.pop(env or 0, None)

        _raw_trampoline, _raw_finalizer = trampoline, finalizer
    return _raw_trampoline, _raw_finalizer


# Per engine: a type is tied to the engine of the first store that used it.
_FUNC_TYPES: weakref.WeakKeyDictionary[
    wasmtime.Engine, dict[tuple[tuple[str, ...], tuple[str, ...]], wasmtime.FuncType]
] = weakref.WeakKeyDictionary()


def func_type(
    engine: wasmtime.Engine, params: tuple[str, ...], results: tuple[str, ...]
) -> wasmtime.FuncType:
    """The (shared, cached) type ``params -> results`` for ``engine``: creating one per host
    function of every agent costs more than the rest of an agent's start, and one type
    serves every function of that signature in that engine's stores."""
    types = _FUNC_TYPES.get(engine)
    if types is None:
        types = _FUNC_TYPES[engine] = {}
    ty = types.get((params, results))
    if ty is None:
        valtypes = {
            "i32": wasmtime.ValType.i32(),
            "i64": wasmtime.ValType.i64(),
            "f32": wasmtime.ValType.f32(),
        }
        ty = wasmtime.FuncType([valtypes[p] for p in params], [valtypes[r] for r in results])
        types[(params, results)] = ty
    return ty


def host_func(
    store: wasmtime.Store,
    params: tuple[str, ...],
    results: tuple[str, ...],
    fn: Callable[..., Any],
) -> wasmtime.Func:
    """A host function of ``params -> results`` (``"i32"``, ``"i64"``, ``"f32"``) calling
    ``fn`` with plain Python numbers; exceptions it raises trap the guest and are re-raised
    from the call into wasm, as with ``wasmtime.Func``."""
    ty = func_type(store.engine, params, results)
    if _ffi is None:  # pragma: no cover - another wasmtime-py
        return wasmtime.Func(store, ty, fn)
    trampoline, finalizer = _install_trampolines()
    key = next(_raw_ids)
    _RAW_FUNCS[key] = (fn, params, results[0] if results else None)
    raw = _ffi.wasmtime_func_t()
    _ffi.wasmtime_func_new_unchecked(
        store._context(), ty.ptr(), trampoline, key, finalizer, ctypes.byref(raw)
    )
    return wasmtime.Func._from_raw(raw)


# -- fuel ------------------------------------------------------------------------------------
#
# ``Store.get_fuel`` allocates a c_uint64 and converts its result pointer through ctypes'
# typed prototypes on every call (about 1 us); read once per handled message, that is a
# noticeable share of a small handler. The same C function through an untyped prototype, with
# the output cell made once, costs about a third of that.
_FUEL_PROTO = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)


class FuelGauge:
    """``gauge() -> int``: the fuel left in ``store`` (as ``store.get_fuel()``)."""

    __slots__ = ("_call", "_context", "_out", "_out_ptr", "_store")

    def __init__(self, store: wasmtime.Store) -> None:
        from wasmtime import _bindings

        raw = _bindings._wasmtime_context_get_fuel
        self._store = store  # the context lives as long as the store
        address = ctypes.cast(raw, ctypes.c_void_p).value
        if not address:
            raise AttributeError("wasmtime_context_get_fuel has no address")
        self._call: Any = _FUEL_PROTO(address)
        self._context = ctypes.cast(store._context(), ctypes.c_void_p).value
        self._out = ctypes.c_uint64(0)
        self._out_ptr = ctypes.addressof(self._out)

    def __call__(self) -> int:
        if self._call(self._context, self._out_ptr):
            return self._store.get_fuel()  # raises the store's error, and frees it
        return self._out.value


def fuel_gauge(store: wasmtime.Store) -> Callable[[], int]:
    """The cheapest correct reader of ``store``'s fuel; the public API when internals differ."""
    try:
        return FuelGauge(store)
    except (ImportError, AttributeError) as exc:  # pragma: no cover - another wasmtime-py
        logger.info("fast fuel reads unavailable (%s); using Store.get_fuel", exc)
        return store.get_fuel
