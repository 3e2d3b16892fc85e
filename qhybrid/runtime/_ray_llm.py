"""The LLM engine on a Ray node with a GPU: the ``--backend ray`` run's model, weights and KV
cache in an actor (``num_gpus``), stepped there.

When the Ray cluster declares GPUs, :class:`~qhybrid.runtime._ray_gpu.RayGpuDevice` opens the
scenario's model in an :class:`LlmActor` (``num_gpus=0.5``, beside the GPU jobs' actor, so one
GPU holds both) instead of on the driver's device thread. The actor opens its own
``GpuDevice`` with the run's preference and builds the runner and the engine there with
:func:`~qhybrid.runtime.llm.open_engine`, from the model **path** (the file must be at the same
path on the GPU nodes: docs/scale-out.md). The driver keeps a light copy of what the bridges
read on the loop: the file's metadata and tokenizer (prompts are tokenised on the driver's
device thread as locally) and a :class:`RemoteEngine` in place of the engine, whose calls
(``submit``, ``step``; ``cancel`` travels with the next of them) are actor calls, made in
order from the driver's device thread, returning the step's updates: the engine sees what it
sees locally, in the same order, and the trace hash is the local pool's.

If the actor dies, the engine's state (its KV cache, every request's sampling stream) is
gone with it. The driver kept the engine's calls (submissions, cancels, steps, in order): it
opens the model on its own device thread and replays them there in silence, which gives the
same engine state bit for bit (the engine's determinism promise, as a checkpoint's restore
uses it: ``store/_llm_state``), and the call that found the actor dead, and every later one,
runs on that engine: the same trace hash. Without a fallback (or if it fails too) the run
fails with a :class:`GpuJobError` naming the actor and its node.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, cast

from qhybrid.runtime.wgpu_thread import GpuDevice, GpuJobError

if TYPE_CHECKING:
    from qhybrid.runtime.llm import GenerationParams, LlmOptions, LoadedModel, RequestUpdate
    from qhybrid.runtime.llm._gguf import ModelConfig

__all__ = ["LlmActor", "RemoteEngine", "open_remote"]

logger = logging.getLogger(__name__)

#: The engine's state after a call: (has work, requests holding a slot).
_State = tuple[bool, int]


class LlmActor:
    """The body of the LLM actor: the model opened on this node's device, its engine."""

    def __init__(self, prefer: str) -> None:
        self.device = GpuDevice(prefer=prefer, placement="fixed")
        self.loaded: LoadedModel | None = None

    def open(self, path: str, options: LlmOptions) -> tuple[str, str, str]:
        """Open ``path`` here: (placement, this node's id, the device's name)."""
        from qhybrid.runtime.llm import open_engine

        info = self.device.start()
        self.loaded = self.device.call(lambda ctx: open_engine(ctx, path, options)).result()
        node = importlib.import_module("ray").get_runtime_context().get_node_id()
        return self.loaded.placement, str(node), info.name

    def _state(self) -> _State:
        assert self.loaded is not None
        engine = self.loaded.engine
        return engine.has_work(), engine.active

    def _cancel(self, cancels: list[int]) -> None:
        assert self.loaded is not None
        for rid in cancels:
            self.loaded.engine.cancel(rid)

    def submit(
        self,
        cancels: list[int],
        ids: list[int],
        params: GenerationParams,
        request_id: int | None,
        owner: Hashable,
    ) -> tuple[int | Exception, _State]:
        """``engine.submit``; its error (bad input) is returned, to be raised on the driver."""
        assert self.loaded is not None
        self._cancel(cancels)
        try:
            rid: int | Exception = self.loaded.engine.submit(ids, params, request_id, owner)
        except Exception as exc:
            rid = exc
        return rid, self._state()

    def step(self, cancels: list[int]) -> tuple[list[RequestUpdate], _State]:
        """One engine step on this node's device thread."""
        assert self.loaded is not None
        self._cancel(cancels)
        engine = self.loaded.engine
        updates = self.device.call(lambda _ctx: engine.step()).result()
        return updates, self._state()

    def close(self) -> None:
        loaded, self.loaded = self.loaded, None
        if loaded is not None:
            self.device.call(lambda _ctx: loaded.close()).result()
        self.device.close()


class _RemoteRunner:
    """What the bridges read of the runner (its shape); the runner itself is in the actor."""

    def __init__(self, config: ModelConfig, n_slots: int, n_ctx: int) -> None:
        self.config = config
        self.n_slots = n_slots
        self.n_ctx = n_ctx


class RemoteEngine:
    """The engine as the driver sees it (the :class:`~qhybrid.runtime.llm.LlmEngine` calls
    the bridges make), each call an actor call. ``cancel`` is thread-safe and, as locally,
    takes effect at the next step; ``has_work`` and ``active`` are the state after the last
    call (every change to the engine goes through this object)."""

    def __init__(
        self,
        ray: Any,
        actor: Any,
        node: str,
        fallback: Callable[[], LoadedModel] | None = None,
    ) -> None:
        self._ray = ray
        self._fallback = fallback
        #: The engine's calls so far, to replay on the driver if the actor dies.
        self._history: list[tuple[Any, ...]] = []
        #: The driver's engine once the actor died (None while it lives).
        self.local: LoadedModel | None = None
        self._actor = actor
        #: The Ray node the actor runs on.
        self.node = node
        #: The actor and its node, for the message if it dies.
        self.name = f"LlmActor on Ray node {node}"
        #: Engine steps the actor ran.
        self.steps = 0
        self._lock = threading.Lock()
        self._cancels: list[int] = []
        self._has_work = False
        self._active = 0
        self._dead: GpuJobError | None = None

    def _take_cancels(self) -> list[int]:
        with self._lock:
            cancels, self._cancels = self._cancels, []
        return cancels

    def _get(self, ref: Any) -> Any:
        """The actor call's result; ``None`` when the actor is dead and the driver's engine
        now stands in (replayed up to here)."""
        if self._dead is not None:
            raise self._dead
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayActorError as exc:
            what = f"the LLM engine's Ray actor ({self.name}) died: {exc.__class__.__name__}"
        if self._fallback is not None:
            try:
                self.local = self._replay(self._fallback())
            except Exception as error:
                what += f"; the driver could not take its engine over ({error})"
            else:
                logger.warning("%s: its engine runs on the driver from here", what)
                return None
        self._dead = GpuJobError(f"{what}; its KV cache and requests are lost")
        logger.error("%s", self._dead)
        raise self._dead from None

    def _replay(self, loaded: LoadedModel) -> LoadedModel:
        """The engine's calls so far, on ``loaded`` (results dropped: they were given)."""
        engine = loaded.engine
        for call in self._history:
            if call[0] == "submit":
                try:
                    engine.submit(*call[1:])
                except Exception:  # it failed the first time too
                    continue
            elif call[0] == "cancel":
                engine.cancel(call[1])
            else:
                engine.step()
        self._history.clear()
        return loaded

    def submit(
        self,
        prompt_tokens: Sequence[int],
        params: GenerationParams,
        request_id: int | None = None,
        owner: Hashable = None,
    ) -> int:
        ids = [int(t) for t in prompt_tokens]
        if self.local is None:
            cancels = self._take_cancels()
            ref = self._actor.submit.remote(cancels, ids, params, request_id, owner)
            answer = self._get(ref)
            if answer is not None:
                self._history += [("cancel", rid) for rid in cancels]
                self._history.append(("submit", ids, params, request_id, owner))
                rid, (self._has_work, self._active) = answer
                if isinstance(rid, Exception):
                    raise rid
                return cast("int", rid)
            self._local_cancels(cancels)
        assert self.local is not None
        return self.local.engine.submit(ids, params, request_id, owner)

    def _local_cancels(self, cancels: list[int]) -> None:
        assert self.local is not None
        for rid in (*cancels, *self._take_cancels()):
            self.local.engine.cancel(rid)

    def cancel(self, request_id: int) -> None:
        if self.local is not None:
            self.local.engine.cancel(request_id)
            return
        with self._lock:
            self._cancels.append(request_id)

    def has_work(self) -> bool:
        if self.local is not None:
            return self.local.engine.has_work()
        with self._lock:
            cancels = bool(self._cancels)
        # A dead actor "has work": the next step is asked for, and fails the run.
        return cancels or self._has_work or self._dead is not None

    @property
    def active(self) -> int:
        return self.local.engine.active if self.local is not None else self._active

    def step(self) -> list[RequestUpdate]:
        if self.local is None:
            cancels = self._take_cancels()
            answer = self._get(self._actor.step.remote(cancels))
            if answer is not None:
                self._history += [("cancel", rid) for rid in cancels]
                self._history.append(("step",))
                updates, (self._has_work, self._active) = answer
                self.steps += 1
                return cast("list[RequestUpdate]", updates)
            self._local_cancels(cancels)
        assert self.local is not None
        return self.local.engine.step()

    def kill(self) -> None:
        """Kill the actor (for tests of its failure)."""
        self._ray.kill(self._actor, no_restart=True)

    def close(self, timeout: float = 10.0) -> None:
        """Close the actor (and the driver's engine, on the device thread that made it)."""
        import contextlib

        with contextlib.suppress(Exception):
            self._ray.get(self._actor.close.remote(), timeout=timeout)
        with contextlib.suppress(Exception):
            self._ray.kill(self._actor, no_restart=True)


def open_remote(
    ray: Any,
    path: str | os.PathLike[str],
    options: LlmOptions,
    *,
    prefer: str,
    env: dict[str, str],
    timeout: float,
    fallback: Callable[[], LoadedModel] | None = None,
) -> LoadedModel:
    """Open the model in a new :class:`LlmActor` on a GPU node; the driver's side of it (the
    file's metadata and tokenizer, a :class:`RemoteEngine`; ``fallback()`` opens the model
    on the driver's device thread if the actor dies). Raises what the actor's
    ``open_engine`` raised (:class:`~qhybrid.runtime.llm.ModelError` for a bad file)."""
    from qhybrid.runtime.llm import LoadedModel
    from qhybrid.runtime.llm._gguf import load_model
    from qhybrid.runtime.llm._service import DEFAULT_N_CTX, _load_tokenizer

    # The driver reads the same file for its tokenizer (a bad file fails here, as locally).
    model = load_model(path)
    try:
        tokenizer = _load_tokenizer(model)
        actor = (
            ray.remote(LlmActor)
            .options(num_gpus=0.5, num_cpus=0, max_restarts=0, runtime_env={"env_vars": env})
            .remote(prefer)
        )
        try:
            placement, node, device_name = ray.get(
                actor.open.remote(os.fspath(path), options), timeout=timeout
            )
        except Exception as exc:
            import contextlib

            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Exception):  # the actor's own error (a ModelError)
                raise cause from None
            raise
        config = model.config
        n_ctx = options.n_ctx or min(config.n_ctx_train or DEFAULT_N_CTX, DEFAULT_N_CTX)
        runner = _RemoteRunner(config, options.n_slots, n_ctx)
        engine = RemoteEngine(ray, actor, node, fallback)
    except BaseException:
        model.close()
        raise
    logger.info("LLM %s runs on Ray node %s (%s, %s)", model.name, node, placement, device_name)
    return LoadedModel(
        model, tokenizer, cast("Any", runner), cast("Any", engine), cast("Any", placement)
    )
