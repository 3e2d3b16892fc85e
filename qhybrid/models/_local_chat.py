"""A chat with a local model outside any run: the model on a thread of its own, answers
streamed back to the GUI thread as Qt signals.

:class:`LocalChat` owns an asyncio loop on a ``QThread`` (as the runtime controller does) and,
on it, one :class:`~qhybrid.runtime.llm.Llm`: the model file is read (with progress), then
loaded on a :class:`~qhybrid.runtime.wgpu_thread.GpuDevice`, whose thread runs every engine
step. The conversation is rendered with the model's own chat template (the sandboxed jinja2
templates of :class:`~qhybrid.runtime.llm.Tokenizer`) and tokenised on the loop thread, never
on the GUI thread. Every method is for the GUI thread and returns at once; every signal is
emitted on the loop thread, so it reaches GUI-thread slots as a queued call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import secrets
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from qhybrid.models._controller import _LoopThread
from qhybrid.runtime import printable

__all__ = ["ChatSettings", "LocalChat", "ModelChoice", "conversation_prompt_ids"]

logger = logging.getLogger(__name__)

#: Progress is reported at most this often while the file is read.
_PROGRESS_EVERY_S = 0.1
_READ_CHUNK = 8 << 20


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """A model file ``qhybrid models`` finds: the name it shows, the file, where it was."""

    name: str
    path: Path
    source: str

    @property
    def label(self) -> str:
        return f"{self.name} ({self.source})"


@dataclass(frozen=True, slots=True)
class ChatSettings:
    """How answers are generated: a token budget and sampling (``temperature`` 0: greedy)."""

    max_tokens: int = 256
    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.95
    n_ctx: int = 2048


def find_model_choices() -> list[ModelChoice]:
    """What ``qhybrid models`` lists (Ollama, LM Studio, the Hugging Face cache, qhybrid's own
    models and download cache), as choices; unreadable files are still listed (loading one
    says why it cannot be used)."""
    from qhybrid.runtime.llm._models_cli import find_models

    return [
        ModelChoice(m.name or m.path.name, m.path, m.source)
        for m in find_models([], usual_places=True)
    ]


def conversation_prompt_ids(
    tokenizer: Any, messages: Sequence[dict[str, str]], budget: int
) -> list[int]:
    """The conversation's prompt ids through the model's chat template (a plain
    ``role: content`` transcript for a model without one), with the oldest turns left out
    until it fits in ``budget`` tokens (the system message and the last turn are kept).
    Raises ``ValueError`` when even that does not fit, or the template fails."""
    from qhybrid.runtime.llm import ChatTemplateError

    system = [dict(m) for m in messages if m["role"] == "system"][:1]
    turns = [dict(m) for m in messages if m["role"] != "system"]
    while True:
        shown = system + turns
        if tokenizer.chat_template:
            try:
                text = tokenizer.apply_chat_template(shown)
            except ChatTemplateError as exc:
                raise ValueError(f"the model's chat template failed: {exc}") from None
            bos = tokenizer.bos_id
            # A template that writes the BOS token itself must not get a second one.
            writes_bos = bos is not None and text.startswith(tokenizer.token_text(bos))
            ids: list[int] = tokenizer.encode(text, add_bos=None if not writes_bos else False)
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in shown) + "assistant:"
            ids = tokenizer.encode(text)
        if len(ids) <= budget:
            return ids
        if len(turns) <= 1:
            raise ValueError(
                f"the message is {len(ids)} tokens long; the model's context leaves room "
                f"for {budget} (shorten it, or the system prompt)"
            )
        # The oldest turn goes (and an assistant turn left leading goes with it).
        turns.pop(0)
        while len(turns) > 1 and turns[0]["role"] == "assistant":
            turns.pop(0)


class LocalChat(QObject):
    """One local model at a time, chatting; see the module docstring.

    Signals (emitted on the chat's loop thread, so queued to GUI-thread slots):

    - ``load_progress(name, fraction)``: reading the model's file (0 to 1), then -1 while
      the model is built.
    - ``loaded(name, info)``: ready to chat; ``info`` says what runs where.
    - ``load_failed(name, message)``: the file cannot be served, and why (no traceback).
    - ``delta(request, text)``: the next piece of answer ``request``'s text; the first piece
      starts at the answer's first visible character.
    - ``answer_done(request, finish, tokens, tok_s)``: the answer ended ("stop", "length",
      "cancelled").
    - ``answer_failed(request, message)``: the answer could not be made.
    """

    load_progress = Signal(str, float)
    loaded = Signal(str, str)
    load_failed = Signal(str, str)
    delta = Signal(int, str)
    answer_done = Signal(int, str, int, float)
    answer_failed = Signal(int, str)

    def __init__(self, parent: QObject | None = None, *, device: str = "auto") -> None:
        super().__init__(parent)
        self.device = device
        self.model_name: str | None = None
        self.model_path: Path | None = None
        self._thread: _LoopThread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._llm: Any = None  # qhybrid.runtime.llm.Llm, on the loop thread
        self._gpu: Any = None  # its GpuDevice
        self._stream: Any = None  # the answer in progress (a TokenStream)
        self._load_task: asyncio.Task[None] | None = None  # the loading in progress
        self._next_request = 0
        self._loading = False

    # -- GUI thread ---------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """A model is loaded (as last reported)."""
        return self.model_name is not None and not self._loading

    def load(self, path: str | Path, name: str | None = None) -> None:
        """Load ``path`` (the model loaded before is closed first)."""
        path = Path(path)
        shown = name or path.name
        self._loading = True
        self.model_name = None
        self._submit(self._load(path, shown))

    def ask(self, messages: Sequence[dict[str, str]], settings: ChatSettings | None = None) -> int:
        """Start the answer to ``messages`` (``[{"role", "content"}, ...]``, oldest first, a
        system message first if any); returns the request number the signals carry."""
        self._next_request += 1
        request = self._next_request
        checked = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
        self._submit(self._answer(request, checked, settings or ChatSettings()))
        return request

    def cancel(self) -> None:
        """End the answer in progress (it finishes as "cancelled")."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._cancel_stream)

    def close(self, timeout: float = 30.0) -> None:
        """Unload the model, stop its device thread and the loop thread (bounded)."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        try:
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            future.result(timeout)
        except (concurrent.futures.TimeoutError, RuntimeError):
            logger.warning("the chat's model did not close in %.0f s", timeout)
        except Exception:
            logger.debug("closing the chat's model failed", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        thread.wait(int(timeout * 1000))
        self._thread = None
        self._loop = None
        self.model_name = None

    def _submit(self, coroutine: Coroutine[Any, Any, None]) -> None:
        if self._thread is None:
            self._thread = _LoopThread()
            self._thread.setObjectName("qhybrid-chat-loop")
            self._thread.start()
            self._loop = self._thread.wait_ready()
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    # -- the loop thread ----------------------------------------------------------------------
    def _cancel_stream(self) -> None:
        if self._stream is not None:
            self._stream.cancel()

    async def _shutdown(self) -> None:
        """A loading in progress is cancelled (its device closed), then the model unloaded."""
        task = self._load_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._unload()

    async def _unload(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
        llm, gpu = self._llm, self._gpu
        self._llm = self._gpu = None
        if llm is not None:
            await llm.aclose()
        if gpu is not None:
            await asyncio.to_thread(gpu.close)

    async def _load(self, path: Path, name: str) -> None:
        from qhybrid.runtime.llm import Llm, LlmOptions, ModelError
        from qhybrid.runtime.wgpu_thread import GpuDevice, GpuJobError

        previous = self._load_task
        self._load_task = asyncio.current_task()
        if previous is not None and not previous.done():
            previous.cancel()  # the user chose another model meanwhile
            await asyncio.gather(previous, return_exceptions=True)
        try:
            await self._unload()
            self.load_progress.emit(name, 0.0)
            await asyncio.to_thread(self._read_file, path, name)
            self.load_progress.emit(name, -1.0)
            gpu = GpuDevice(prefer=self.device)
            try:
                llm = await Llm.open(path, LlmOptions(n_slots=1, runner="auto"), device=gpu)
            except BaseException:
                await asyncio.to_thread(gpu.close)
                raise
        except (ModelError, GpuJobError, OSError, ValueError) as exc:
            self._loading = False
            self.load_failed.emit(name, printable(str(exc)))
            return
        except Exception as exc:
            # A file the checks let through but the loader chokes on: said, not a traceback.
            logger.debug("loading %s failed", path, exc_info=True)
            self._loading = False
            self.load_failed.emit(name, f"{path}: cannot load it: {type(exc).__name__}: {exc}")
            return
        self._llm, self._gpu = llm, gpu
        self.model_name, self.model_path = name, path
        self._loading = False
        where = "GPU" if llm.placement == "gpu" else "CPU"
        template = "its chat template" if llm.tokenizer.chat_template else "no chat template"
        self.loaded.emit(
            name,
            f"{llm.model.config.arch} on the {where}, {llm.engine.runner.n_ctx} tokens, {template}",
        )

    def _read_file(self, path: Path, name: str) -> None:
        """Read the file once, reporting progress: the weights are memory-mapped, so this is
        the disk read the first answer would otherwise stall on."""
        if not path.is_file():
            raise OSError(
                f"{path}: no such model file"
                if not path.exists()
                else f"{path}: not a regular file"
            )
        size = path.stat().st_size
        done, last = 0, time.monotonic()
        with path.open("rb") as fh:
            while chunk := fh.read(_READ_CHUNK):
                done += len(chunk)
                now = time.monotonic()
                if now - last >= _PROGRESS_EVERY_S:
                    last = now
                    self.load_progress.emit(name, done / max(1, size))
        self.load_progress.emit(name, 1.0)

    async def _answer(self, request: int, messages: list[dict[str, str]], s: ChatSettings) -> None:
        from qhybrid.runtime.llm import GenerationParams, SamplingParams

        llm = self._llm
        if llm is None:
            self.answer_failed.emit(request, "no model is loaded: choose one and press Load")
            return
        if self._stream is not None:
            self.answer_failed.emit(request, "an answer is still being written")
            return
        try:
            n_ctx = int(llm.engine.runner.n_ctx)
            max_tokens = max(1, min(s.max_tokens, n_ctx // 2))
            ids = conversation_prompt_ids(llm.tokenizer, messages, n_ctx - max_tokens - 1)
            params = GenerationParams(
                max_tokens=max_tokens,
                sampling=SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p),
                seed=secrets.randbits(62),
            )
            stream = llm.stream(ids, params)
        except ValueError as exc:
            self.answer_failed.emit(request, printable(str(exc)))
            return
        self._stream = stream
        started = False
        tokens = 0
        try:
            async for text in stream:
                tokens += 1
                if not started:
                    # The answer starts at its first visible character (templates leave the
                    # model a newline or a space to open with).
                    text = text.lstrip()
                    if not text:
                        continue
                    started = True
                self.delta.emit(request, text)
        except Exception as exc:
            logger.debug("the answer failed", exc_info=True)
            self.answer_failed.emit(request, printable(str(exc)) or type(exc).__name__)
            return
        finally:
            self._stream = None
        result = stream.result
        if result is None:
            self.answer_failed.emit(request, "the answer ended early")
            return
        if result.finish == "error":
            self.answer_failed.emit(request, printable(result.error or "the model failed"))
            return
        self.answer_done.emit(
            request, str(result.finish), len(result.tokens), float(result.decode_tok_s)
        )
