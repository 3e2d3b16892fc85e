"""GpuDevice: one thread that owns the wgpu adapter, device and queue, and runs tensor jobs."""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar, cast

import numpy as np
from psygnal import Signal, SignalInstance

from qhybrid.runtime.tensors import AttachedTensor, OpError, TensorHandle, attach, get_op
from qhybrid.runtime.wgpu_thread._backends import Backend, open_backend
from qhybrid.runtime.wgpu_thread._context import ComputeContext, GpuDeviceLost
from qhybrid.runtime.wgpu_thread._placement import CostModel, placement_rule
from qhybrid.runtime.wgpu_thread._types import (
    CPU_DEVICE_INFO,
    PREFER_CHOICES,
    DeviceInfo,
    GpuJobError,
    GpuJobEvent,
    GpuJobResult,
    Placement,
    Prefer,
)

logger = logging.getLogger(__name__)

#: Environment variable that overrides ``prefer="auto"``: ``gpu``, ``cpu`` or ``auto``.
DEVICE_ENV = "QHYBRID_DEVICE"

_device_ids = itertools.count(1)

T = TypeVar("T")


@dataclass(slots=True)
class _Call:
    fn: Callable[[ComputeContext | None], Any]
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


@dataclass(slots=True)
class _Job:
    job_id: int
    op: str
    inputs: tuple[TensorHandle, ...]
    output: TensorHandle
    params: dict[str, float]
    future: concurrent.futures.Future[GpuJobResult] = field(
        default_factory=concurrent.futures.Future
    )


def _resolve_prefer(prefer: str) -> Prefer:
    if prefer not in PREFER_CHOICES:
        raise ValueError(f"prefer must be one of {', '.join(PREFER_CHOICES)}; got {prefer!r}")
    if prefer != "auto":
        return cast(Prefer, prefer)
    env = os.environ.get(DEVICE_ENV, "").strip().lower()
    if not env:
        return "auto"
    if env not in PREFER_CHOICES:
        raise ValueError(
            f"environment variable {DEVICE_ENV} must be one of {', '.join(PREFER_CHOICES)}; "
            f"got {env!r}"
        )
    return env


class GpuDevice:
    """Owns one thread that owns the wgpu adapter/device/queue.

    Every wgpu call happens on that thread, so wgpu objects never cross threads. Jobs are
    submitted from any thread with :meth:`submit`, which returns a
    :class:`concurrent.futures.Future` (asyncio callers use :func:`asyncio.wrap_future`); the
    thread runs them one at a time, in submission order.

    With no usable adapter (or ``prefer="cpu"``) one warning is logged and the same thread
    runs every job with numpy (:attr:`info` ``.kind == "cpu"``). ``prefer="gpu"`` makes a
    missing adapter an error instead. The environment variable ``QHYBRID_DEVICE``
    (``gpu``, ``cpu`` or ``auto``) overrides ``prefer="auto"`` only.

    Signals (psygnal), both emitted ON THE DEVICE THREAD, with a :class:`GpuJobEvent`:

    - ``job_started``: a job is about to run (``elapsed_s`` is 0).
    - ``job_finished``: a job finished or failed (``error`` holds the message), emitted
      before its future resolves. Slow handlers delay the next job; Qt code must hop to the
      GUI thread before touching a widget.

    A job rejected by :meth:`submit` (bad op, shapes or dtype; device closed) fails its future
    at once and emits no signal. A job that fails on the thread (a tensor that cannot be
    mapped, a GPU error) fails its future; the thread goes on. Ops without a GPU kernel, or
    tensors beyond the device's buffer limits, run with numpy (``placement == "cpu"``); with
    ``prefer="auto"`` a cost model calibrated at start (:mod:`._placement`) picks the GPU or
    numpy per job. If the GPU device is lost, the job (or call) in flight fails with
    :class:`GpuDeviceLost` (a :class:`GpuJobError`), the device is opened again
    (``device_changed``; the context's ``generation`` bumps) and later work runs on it.

    :meth:`call` runs a function on the device thread with the :class:`ComputeContext`
    (kernels recorded and submitted in batches: the LLM engine's way in), in order with jobs.
    """

    job_started = Signal(GpuJobEvent)
    job_finished = Signal(GpuJobEvent)
    #: Emitted ON THE DEVICE THREAD with the new :class:`DeviceInfo` after a lost device was
    #: opened again (or with the CPU description when numpy takes over).
    device_changed = Signal(DeviceInfo)

    def __init__(self, *, prefer: str = "auto", placement: str = "measured") -> None:
        if placement not in ("measured", "fixed"):
            raise ValueError(f"placement must be 'measured' or 'fixed'; got {placement!r}")
        self._prefer: Prefer = _resolve_prefer(prefer)
        self._fixed = placement == "fixed"
        self._name = f"qhybrid-gpu-{next(_device_ids)}"
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job | _Call | None] = queue.SimpleQueue()
        self._job_ids = itertools.count(1)
        self._pending = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._info: DeviceInfo | None = None
        self._start_error: BaseException | None = None
        # Set by the device thread; read by tests and diagnostics only.
        self._backend: Backend | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> DeviceInfo:
        """Start the device thread and wait until its device (or numpy) is ready.

        Idempotent. Raises :class:`GpuJobError` if the device is closed, cannot start
        (``prefer="gpu"`` with no adapter), or is not ready within ``timeout`` seconds; the
        device is then closed.
        """
        with self._lock:
            if self._closed:
                raise GpuJobError("the GPU device is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        if not self._ready.wait(timeout):
            self.close(timeout=0)
            raise GpuJobError(f"the GPU device did not start within {timeout:g} s")
        if self._info is None:
            error = self._start_error
            self.close()
            if isinstance(error, GpuJobError):
                raise GpuJobError(str(error)) from error
            raise GpuJobError(f"the GPU device failed to start: {error}") from error
        return self._info

    @property
    def info(self) -> DeviceInfo:
        """The device jobs run on; available once :meth:`start` has returned."""
        if self._info is None:
            raise RuntimeError("the GPU device is not started; call start() first")
        return self._info

    @property
    def thread(self) -> threading.Thread | None:
        """The device thread (None before :meth:`start`)."""
        return self._thread

    def close(self, timeout: float = 10.0) -> None:
        """Fail queued jobs with "device closed", finish the running one, join the thread.

        Idempotent. wgpu objects are released on the device thread before it ends. Called
        from the device thread itself (e.g. in a signal handler), it does not wait.
        """
        with self._lock:
            already = self._closed
            self._closed = True
        if not already:
            self._fail_queued()
            self._jobs.put(None)  # wakes the thread, which then leaves its loop
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(timeout)
        if thread.is_alive():
            logger.warning(
                "the GPU device thread %s did not stop within %g s (a job is still running)",
                thread.name,
                timeout,
            )

    def __enter__(self) -> GpuDevice:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- jobs -----------------------------------------------------------------------------
    def submit(
        self,
        op: str,
        inputs: Sequence[TensorHandle],
        output: TensorHandle,
        params: Mapping[str, float] | None = None,
    ) -> concurrent.futures.Future[GpuJobResult]:
        """Queue ``op(inputs) -> output``; thread-safe. The future resolves once the result
        is in the output tensor's shared memory, or fails with :class:`GpuJobError`.

        The caller keeps the tensors alive (e.g. ``TensorStore.retain``) until it resolves.
        """
        job_id = next(self._job_ids)
        try:
            job = _Job(
                job_id,
                op,
                tuple(inputs),
                output,
                {str(k): float(v) for k, v in (params or {}).items()},
            )
            _validate(job)
        except (OpError, TypeError, ValueError) as exc:
            return _failed(GpuJobError(f"job {job_id} ({op}) rejected: {exc}"))
        with self._lock:
            if self._closed:
                return _failed(GpuJobError(f"job {job_id} ({op}) rejected: device closed"))
            self._pending += 1
            self._jobs.put(job)
        return job.future

    def call(self, fn: Callable[[ComputeContext | None], T]) -> concurrent.futures.Future[T]:
        """Run ``fn(ctx)`` on the device thread, in order with jobs; thread-safe.

        ``ctx`` is the :class:`ComputeContext`, or None when numpy does the work (no adapter,
        ``prefer="cpu"``, or the device was lost and could not be opened again). The future
        holds ``fn``'s result or exception; if the device was lost meanwhile, it fails with
        :class:`GpuDeviceLost` and the device is opened again for later work.
        """
        item = _Call(fn)
        with self._lock:
            if self._closed:
                item.future.set_exception(GpuJobError("call rejected: device closed"))
                return cast("concurrent.futures.Future[T]", item.future)
            self._pending += 1
            self._jobs.put(item)
        return cast("concurrent.futures.Future[T]", item.future)

    @property
    def placement_rule(self) -> str:
        """What decides where jobs run (for a run's recorded configuration), once started."""
        info = self._info
        if info is None:
            return "not started"
        return placement_rule(self._prefer, info, self._fixed)

    @property
    def cost_model(self) -> CostModel | None:
        """The placement model (``prefer="auto"`` with a GPU), once started; else None."""
        backend = self._backend
        return None if backend is None else backend.cost

    def pending(self) -> int:
        """Jobs queued or running; thread-safe."""
        with self._lock:
            return self._pending

    # -- the device thread ------------------------------------------------------------------
    def _run(self) -> None:
        try:
            backend = open_backend(self._prefer, self._fixed)
        except BaseException as exc:
            self._start_error = exc
            self._ready.set()
            return
        self._backend = backend
        self._info = backend.info
        self._ready.set()
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    break
                if isinstance(job, _Call):
                    self._call(backend, job)
                    continue
                try:
                    self._execute(backend, job)
                except Exception:  # a bug here must not take the device thread down
                    logger.exception("the GPU device thread failed on job %d", job.job_id)
                    if not job.future.done():
                        job.future.set_exception(
                            GpuJobError(f"job {job.job_id} ({job.op}) failed: internal error")
                        )
        finally:
            self._fail_queued()
            self._backend = None
            try:
                backend.close()
            except Exception:
                logger.exception("releasing the GPU device failed")

    def _call(self, backend: Backend, item: _Call) -> None:
        if not item.future.set_running_or_notify_cancel():
            self._job_done()
            return
        try:
            result = item.fn(backend.context)
        except BaseException as exc:
            lost = self._lost(backend, exc)
            self._job_done()
            if lost is not None:
                error = GpuDeviceLost(f"the GPU device was lost during a call: {lost}")
                error.__cause__ = exc
                item.future.set_exception(error)
            else:
                item.future.set_exception(exc)
            return
        self._job_done()
        item.future.set_result(result)

    def _lost(self, backend: Backend, exc: BaseException) -> str | None:
        """After a failure: if the device is gone, open it again; the reason, or None."""
        if backend.context is None:
            return None
        try:
            reason = backend.check_lost(exc)
        except Exception:
            logger.exception("checking the GPU device failed")
            return None
        if reason is None:
            return None
        backend.recreate(reason)
        self._info = backend.info if backend.context is not None else CPU_DEVICE_INFO
        try:
            self.device_changed.emit(self._info)
        except Exception:
            logger.exception("a handler of device_changed raised")
        return reason

    def _execute(self, backend: Backend, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            self._job_done()  # cancelled while queued
            return
        placement: Placement = "cpu"
        error: GpuJobError | None = None
        gpu_s: float | None = None
        info = backend.info
        started = time.perf_counter()
        try:
            placement = backend.placement(job.op, [h.shape for h in job.inputs], job.output.shape)
            self._emit(
                self.job_started, GpuJobEvent(job.job_id, job.op, placement, 0.0, device=info)
            )
            gpu_s = self._compute(backend, job, placement)
        except Exception as exc:
            lost = self._lost(backend, exc) if placement == "gpu" else None
            if lost is not None:
                error = GpuDeviceLost(
                    f"job {job.job_id} ({job.op}) failed: the GPU device was lost ({lost}); "
                    "it was opened again for later jobs"
                )
            else:
                error = GpuJobError(f"job {job.job_id} ({job.op}) failed on {placement}: {exc}")
            error.__cause__ = exc
            logger.debug("%s", error, exc_info=True)
        elapsed = time.perf_counter() - started
        message = None if error is None else str(error)
        self._emit(
            self.job_finished,
            GpuJobEvent(job.job_id, job.op, placement, elapsed, message, info, gpu_s),
        )
        self._job_done()
        if error is None:
            job.future.set_result(GpuJobResult(job.job_id, job.op, placement, elapsed, gpu_s))
        else:
            job.future.set_exception(error)

    @staticmethod
    def _compute(backend: Backend, job: _Job, placement: Placement) -> float | None:
        mapped: list[AttachedTensor] = []
        arrays: list[Any] = []
        try:
            mapped.extend(attach(h) for h in job.inputs)
            out = attach(job.output, writable=True)
            mapped.append(out)
            arrays = [t.array for t in mapped[:-1]]
            return backend.run(job.op, placement, arrays, out.array, job.params)
        except BaseException as exc:
            # The traceback's frames hold numpy views of the mappings; drop them so the
            # mappings can close now rather than when the future is collected.
            traceback.clear_frames(exc.__traceback__)
            raise
        finally:
            arrays.clear()
            for tensor in mapped:
                tensor.close()

    def _emit(self, signal: SignalInstance, event: GpuJobEvent) -> None:
        try:
            signal.emit(event)
        except Exception:
            logger.exception("a handler of %s raised (job %d)", signal.name, event.job_id)

    def _job_done(self) -> None:
        with self._lock:
            self._pending -= 1

    def _fail_queued(self) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is None:
                continue
            self._job_done()
            if job.future.set_running_or_notify_cancel():
                what = f"job {job.job_id} ({job.op})" if isinstance(job, _Job) else "call"
                job.future.set_exception(GpuJobError(f"{what} failed: device closed"))


def _validate(job: _Job) -> None:
    for handle in (*job.inputs, job.output):
        if not isinstance(handle, TensorHandle):
            raise TypeError(f"expected a TensorHandle, got {type(handle).__name__}")
    spec = get_op(job.op)
    shape, dtype = spec.check(
        [h.shape for h in job.inputs], [h.dtype for h in job.inputs], job.params
    )
    out = job.output
    if out.shape != shape or np.dtype(out.dtype) != np.dtype(dtype):
        expected = f"{np.dtype(dtype).name}[{'x'.join(str(d) for d in shape)}]"
        raise OpError(f"output is {out.describe()}, expected {expected}")


def _failed(error: GpuJobError) -> concurrent.futures.Future[GpuJobResult]:
    future: concurrent.futures.Future[GpuJobResult] = concurrent.futures.Future()
    future.set_exception(error)
    return future
