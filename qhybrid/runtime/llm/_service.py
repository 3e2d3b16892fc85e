"""The Python API: a model loaded once and served to many callers, with streaming.

:class:`Llm` opens a GGUF file on a :class:`~qhybrid.runtime.wgpu_thread.GpuDevice` (its own,
or one it is given), builds the runner there (the GPU graph, or numpy on the CPU) and serves
requests through an :class:`~qhybrid.runtime.llm._engine.LlmEngine`: while any request is
active, a driver task on the caller's event loop asks the device thread for one engine step
after another, so concurrent requests share each step (continuous batching)::

    async with await Llm.open("model.gguf") as llm:
        async for text in llm.stream("Once upon a time", GenerationParams(max_tokens=64)):
            print(text, end="", flush=True)

The orchestrator does not use the driver: it steps the engine once per tick itself
(:func:`open_engine` is shared), which keeps scenarios deterministic.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from qhybrid.runtime.llm._engine import GenerationParams, GenerationResult, LlmEngine, RequestUpdate
from qhybrid.runtime.llm._gguf import ModelError, ModelFile, load_model
from qhybrid.runtime.llm._gpu_model import GpuRunner, gpu_too_large, gpu_unsupported
from qhybrid.runtime.llm._memory import check_kv_cache
from qhybrid.runtime.llm._numpy_model import NumpyRunner
from qhybrid.runtime.llm._runner import ModelRunner
from qhybrid.runtime.llm._tokenizer import ChatTemplateError, Tokenizer
from qhybrid.runtime.wgpu_thread import ComputeContext, DeviceInfo, GpuDevice

logger = logging.getLogger(__name__)

RunnerChoice = Literal["auto", "gpu", "cpu"]
#: The context used when neither the caller nor the model says otherwise.
DEFAULT_N_CTX = 2048


@dataclass(frozen=True)
class LlmOptions:
    """How to load a model: KV-cache ``n_slots`` (concurrent sequences) of ``n_ctx`` positions
    (default: the model's training context, at most 2048), and where its graph runs:
    ``"gpu"`` (the WGSL kernels, on any adapter; an error without one), ``"cpu"`` (numpy) or
    ``"auto"`` (the GPU when the adapter is real hardware, else numpy)."""

    n_slots: int = 8
    n_ctx: int | None = None
    runner: RunnerChoice = "auto"
    max_batch_tokens: int = 2048

    def __post_init__(self) -> None:
        if self.n_slots < 1:
            raise ValueError(f"n_slots must be >= 1, got {self.n_slots}")
        if self.n_ctx is not None and self.n_ctx < 2:
            raise ValueError(f"n_ctx must be >= 2, got {self.n_ctx}")
        if self.runner not in ("auto", "gpu", "cpu"):
            raise ValueError(f"runner must be auto, gpu or cpu, got {self.runner!r}")


@dataclass
class LoadedModel:
    """A model ready to serve, as :func:`open_engine` builds it on the device thread."""

    model: ModelFile
    tokenizer: Tokenizer
    runner: ModelRunner
    engine: LlmEngine
    placement: Literal["gpu", "cpu"]

    def close(self) -> None:
        """Give GPU memory back (device thread) and unmap the file."""
        if isinstance(self.runner, GpuRunner):
            self.runner.close()
        self.model.close()


def _load_tokenizer(model: ModelFile) -> Tokenizer:
    """The file's tokenizer; any failure to build it (our checks, the ``tokenizers`` library's
    own, or metadata of the wrong type) is a :class:`ModelError` naming the file."""
    try:
        return Tokenizer.from_metadata(model.metadata)
    except Exception as exc:  # tokenizers raises plain Exception
        raise ModelError(f"{model.path}: bad tokenizer metadata: {exc}") from None


def open_engine(
    ctx: ComputeContext | None, path: str | os.PathLike[str], options: LlmOptions
) -> LoadedModel:
    """Load ``path`` and build its runner and engine; call on the device thread.

    Raises :class:`ModelError` for a file that cannot be served.
    """
    model = load_model(path)
    try:
        tokenizer = _load_tokenizer(model)
        model.release_header_pages()  # the vocabulary is read: its pages are not needed
        config = model.config
        n_ctx = options.n_ctx or min(config.n_ctx_train or DEFAULT_N_CTX, DEFAULT_N_CTX)
        runner: ModelRunner
        placement: Literal["gpu", "cpu"] = "cpu"
        why_not = gpu_unsupported(config)
        if why_not is None and ctx is not None:
            why_not = gpu_too_large(ctx, model)
        if options.runner == "gpu" and ctx is None:
            raise ModelError(f"{model.path}: a GPU was asked for, but the device has none")
        if options.runner == "gpu" and why_not is not None:
            raise ModelError(f"{model.path}: the GPU path does not support {why_not}")
        # "auto" takes the GPU only when it is real hardware: on a software adapter
        # (llvmpipe) numpy runs the same graph ~20x faster (docs/benchmarks.md).
        hardware = ctx is not None and ctx.info.kind == "hardware"
        use_gpu = options.runner == "gpu" or (options.runner == "auto" and hardware)
        gpu_buffer = ctx.max_buffer_bytes if ctx is not None and use_gpu and not why_not else None
        # Before allocating it: refuse a KV cache that cannot fit, saying what would.
        check_kv_cache(model, options.n_slots, n_ctx, max_buffer=gpu_buffer)
        if ctx is not None and use_gpu and why_not is None:
            runner = GpuRunner(ctx, model, options.n_slots, n_ctx)
            placement = "gpu"
        else:
            if hardware and options.runner == "auto" and why_not is not None:
                logger.warning(
                    "%s: the model runs on the CPU: no GPU support for %s", model.path, why_not
                )
            runner = NumpyRunner(model, options.n_slots, n_ctx, exact=False)
        engine = LlmEngine(
            runner,
            tokenizer.incremental,
            tokenizer.eog_ids,
            max_batch_tokens=options.max_batch_tokens,
        )
    except BaseException:
        model.close()
        raise
    logger.info(
        "LLM %s (%s, %d layers) on the %s, %d slots x %d positions",
        model.name,
        config.arch,
        config.n_layer,
        placement,
        options.n_slots,
        n_ctx,
    )
    return LoadedModel(model, tokenizer, runner, engine, placement)


class TokenStream:
    """One request's text as it is generated: ``async for text in stream``.

    After the loop, :attr:`result` holds the :class:`GenerationResult`. :meth:`cancel` (or
    leaving the loop early and calling :meth:`aclose`) ends the request at the next step.
    """

    def __init__(self, llm: Llm, request_id: int) -> None:
        self._llm = llm
        self.request_id = request_id
        self._queue: asyncio.Queue[RequestUpdate | BaseException] = asyncio.Queue()
        self.result: GenerationResult | None = None

    def _push(self, item: RequestUpdate | BaseException) -> None:
        self._queue.put_nowait(item)

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> str:
        while self.result is None:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            if item.done:
                self.result = item.result
            if item.text:
                return item.text
        raise StopAsyncIteration

    def cancel(self) -> None:
        """End the request at the next step (its result's ``finish`` is "cancelled")."""
        if self.result is None:
            self._llm.engine.cancel(self.request_id)

    async def aclose(self) -> None:
        """Cancel if still running and wait for the end."""
        self.cancel()
        while self.result is None:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                return
            if item.done:
                self.result = item.result

    async def collect(self) -> GenerationResult:
        """Run to the end and return the result."""
        async for _ in self:
            pass
        assert self.result is not None
        return self.result


class Llm:
    """A GGUF model served to many concurrent requests (see the module docstring)."""

    def __init__(self, device: GpuDevice, loaded: LoadedModel, *, owns_device: bool) -> None:
        self.device = device
        self._loaded = loaded
        self._owns_device = owns_device
        self._streams: dict[int, TokenStream] = {}
        self._driver: asyncio.Task[None] | None = None
        self._closed = False
        #: Longest run of back-to-back engine steps per device job (see _drive).
        self._step_budget_s = 0.05

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        options: LlmOptions | None = None,
        *,
        device: GpuDevice | None = None,
    ) -> Llm:
        """Load a model on ``device`` (or on a new :class:`GpuDevice` that the Llm then owns
        and closes). Raises :class:`ModelError` for a bad file,
        :class:`~qhybrid.runtime.wgpu_thread.GpuJobError` if the device cannot start."""
        options = options or LlmOptions()
        owns = device is None
        dev = GpuDevice() if device is None else device
        try:
            await asyncio.to_thread(dev.start)
            loaded = await asyncio.wrap_future(
                dev.call(lambda ctx: open_engine(ctx, path, options))
            )
        except BaseException:
            if owns:
                await asyncio.to_thread(dev.close)
            raise
        return cls(dev, loaded, owns_device=owns)

    # -- what is loaded ------------------------------------------------------------------------
    @property
    def engine(self) -> LlmEngine:
        return self._loaded.engine

    @property
    def tokenizer(self) -> Tokenizer:
        return self._loaded.tokenizer

    @property
    def model(self) -> ModelFile:
        return self._loaded.model

    @property
    def placement(self) -> Literal["gpu", "cpu"]:
        """Where the graph runs."""
        return self._loaded.placement

    @property
    def device_info(self) -> DeviceInfo:
        return self.device.info

    def encode(self, prompt: str, *, chat: bool = False) -> list[int]:
        """The prompt's token ids (BOS included when the model adds one); ``chat`` renders it
        as one user message with the model's chat template first."""
        return encode_prompt(self.tokenizer, prompt, chat=chat)

    # -- requests ------------------------------------------------------------------------------
    def stream(
        self,
        prompt: str | Sequence[int],
        params: GenerationParams | None = None,
        *,
        chat: bool = False,
    ) -> TokenStream:
        """Start a request; iterate the returned stream for its text. Raises ``ValueError``
        for a prompt the model cannot take (too long, empty)."""
        if self._closed:
            raise RuntimeError("this Llm is closed")
        ids = self.encode(prompt, chat=chat) if isinstance(prompt, str) else list(prompt)
        rid = self.engine.submit(ids, params or GenerationParams())
        stream = TokenStream(self, rid)
        self._streams[rid] = stream
        if self._driver is None or self._driver.done():
            self._driver = asyncio.get_running_loop().create_task(self._drive())
        return stream

    async def complete(
        self,
        prompt: str | Sequence[int],
        params: GenerationParams | None = None,
        *,
        chat: bool = False,
    ) -> GenerationResult:
        """Run one request to the end."""
        return await self.stream(prompt, params, chat=chat).collect()

    async def _drive(self) -> None:
        engine = self.engine
        loop = asyncio.get_running_loop()
        budget = self._step_budget_s

        def run_steps(_ctx: object) -> None:
            # On the device thread: steps back to back for up to `budget` seconds, each step's
            # updates handed to the loop at once. The loop streams them out (HTTP, printing)
            # while the next step computes, instead of the device waiting for the loop between
            # steps; the budget gives the device back to its other jobs now and then.
            deadline = time.perf_counter() + budget
            while not self._closed:
                updates = engine.step()
                if updates:
                    loop.call_soon_threadsafe(self._dispatch, updates)
                if time.perf_counter() >= deadline or not engine.has_work():
                    return

        try:
            while engine.has_work() and not self._closed:
                await asyncio.wrap_future(self.device.call(run_steps))
        except BaseException as exc:
            for stream in self._streams.values():
                stream._push(exc if isinstance(exc, Exception) else RuntimeError("the LLM closed"))
            self._streams.clear()
            if not isinstance(exc, Exception):
                raise
            logger.error("the LLM driver stopped: %s", exc)

    def _dispatch(self, updates: list[RequestUpdate]) -> None:
        for update in updates:
            stream = self._streams.get(update.request_id)
            if stream is not None:
                stream._push(update)
                if update.done:
                    del self._streams[update.request_id]

    # -- closing -------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Cancel what runs, free the model's GPU memory, close an owned device."""
        if self._closed:
            return
        for rid in list(self._streams):
            self.engine.cancel(rid)
        driver = self._driver
        if driver is not None and not driver.done():
            try:
                await asyncio.wait_for(asyncio.shield(driver), timeout=30)
            except TimeoutError:
                driver.cancel()
        self._closed = True
        loaded = self._loaded
        try:
            await asyncio.wrap_future(self.device.call(lambda _ctx: loaded.close()))
        except Exception:
            logger.debug("releasing the model failed", exc_info=True)
        if self._owns_device:
            await asyncio.to_thread(self.device.close)

    async def __aenter__(self) -> Llm:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def encode_prompt(tokenizer: Tokenizer, prompt: str, *, chat: bool) -> list[int]:
    """A prompt's ids (BOS first when the model adds one); with ``chat``, the prompt is one
    user message rendered with the model's chat template (a ``ValueError`` without one)."""
    if not chat:
        return tokenizer.encode(prompt)
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
    except ChatTemplateError as exc:
        raise ValueError(str(exc)) from None
    bos = tokenizer.bos_id
    # A template that writes the BOS token itself must not get a second one.
    writes_bos = bos is not None and text.startswith(tokenizer.token_text(bos))
    return tokenizer.encode(text, add_bos=None if not writes_bos else False)
