"""Events the runtime emits for observers (a window, a CLI, a test), without Qt.

Every signal of :class:`RuntimeEvents` fires **on the orchestrator's event-loop thread** (the
thread that runs :meth:`Runtime.run`). A Qt observer must hop to the GUI thread before it
touches a widget (e.g. a queued signal); a cheap alternative is polling
:meth:`Runtime.metrics`, which is safe from any thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from psygnal import Signal


@dataclass(frozen=True, slots=True)
class RunStateChanged:
    """The run moved to ``state``: starting, running, paused, completed, failed or closed."""

    state: str
    tick: int
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class AgentStateChanged:
    """An agent moved to ``state``: loaded; failed (``reason`` says why: a trap, out of fuel,
    out of memory, timeout, ...); skipped (stopped after an error, the run goes on); or
    restarted (a fresh instance replaced it, its ``restart`` policy)."""

    agent: str
    agent_id: int
    worker: int
    state: str
    tick: int
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class TaskStarted:
    """A CPU or GPU task was dispatched (``kind`` is "cpu" or "gpu")."""

    task: str
    kind: str
    op: str
    tick: int


@dataclass(frozen=True, slots=True)
class TaskFinished:
    """A CPU or GPU task finished; ``placement`` is where it ran: "worker", "gpu" or "cpu"."""

    task: str
    kind: str
    op: str
    tick: int
    placement: str
    elapsed_s: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class TickFinished:
    """One logical tick is committed: what it delivered and what is left queued.

    ``elapsed_s`` is the tick's wall time from dispatch to commit: the latency every message
    delivered in it saw (messages are batched per tick). ``fuel`` is the fuel the agents'
    handlers burnt in it (as the workers report it; not part of the trace).
    """

    tick: int
    delivered: int
    failed: int
    tasks: int
    queued_messages: int
    queued_cpu: int
    queued_gpu: int
    worker_busy_s: tuple[float, ...]
    elapsed_s: float = 0.0
    fuel: int = 0


@dataclass(frozen=True, slots=True)
class WorkerRestarted:
    """A worker process died and was replaced; its agents were restored from their last
    snapshot and the messages they handled since, and the interrupted tick was sent again."""

    worker: int
    old_pid: int | None
    new_pid: int
    tick: int
    reason: str


@dataclass(frozen=True, slots=True)
class AgentLog:
    """A line an agent logged (levels as in :mod:`logging`: 10 debug ... 40 error)."""

    agent: str
    level: int
    text: str
    tick: int


@dataclass(frozen=True, slots=True)
class LlmTokens:
    """Text an LLM request produced since the last event for it (streamed, a few tokens at a
    time), or its end (``done`` true; ``finish`` is "stop", "length", "cancelled" or "error",
    and ``error`` says why for "error").

    ``agent`` is the agent that asked (or ``"user"`` for a request posted from outside);
    ``tokens`` counts the tokens in ``text``; ``tok_s`` is the request's decode rate so far and
    ``ttft_s`` its time to first token (0 until the first token).
    """

    request_id: int
    agent: str
    text: str
    tokens: int
    done: bool
    tok_s: float = 0.0
    ttft_s: float = 0.0
    finish: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class LlmRequested:
    """An agent asked the scenario's LLM; its answer streams as :class:`LlmTokens` with the
    same ``request_id`` (the engine's id of the request).

    ``prompt`` is what the agent sent, decoded as UTF-8 (``kind`` "complete", ABI v1's
    ``llm_complete``), or its chat messages as ``role: content`` lines (``kind`` "chat", ABI
    v2's ``llm_chat``). ``request`` is the agent's own number for it. A request answered at
    once, without reaching the engine (no model, a quota, a malformed chat request), has a
    negative ``request_id`` and ``error`` saying why; no :class:`LlmTokens` follow it.

    An observer's event, like every event here: it is not part of the trace (the trace hash
    is the same with or without anyone listening)."""

    request_id: int
    agent: str
    tick: int
    prompt: str
    max_tokens: int
    kind: str = "complete"
    request: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class GpuAdapter:
    """The device GPU work runs on, once it has started: ``kind`` is "hardware", "software"
    (e.g. llvmpipe) or "cpu" (no adapter; numpy does the work)."""

    name: str
    backend: str
    kind: str


@dataclass(frozen=True, slots=True)
class MessageUsage:
    """What each message handled in a tick used, as its worker reported it: by queue
    sequence number (the trace records' ``seq``; worker by worker, not in queue order), the
    fuel its handler burnt (-1: not metered, e.g. a Python agent's) and the agent's linear
    memory after it (bytes). Only
    while someone listens to :attr:`RuntimeEvents.message_usage` (the window's debugger, a
    recording): then every batch asks its worker for them. Never part of the trace."""

    tick: int
    seqs: tuple[int, ...]
    fuel: tuple[int, ...]
    memory: tuple[int, ...]


class RuntimeEvents:
    """The runtime's signals (psygnal); all of them fire on the orchestrator's loop thread."""

    #: :class:`RunStateChanged`, on the orchestrator's loop thread.
    run_state = Signal(RunStateChanged)
    #: :class:`AgentStateChanged`, on the orchestrator's loop thread.
    agent_state = Signal(AgentStateChanged)
    #: :class:`TaskStarted`, on the orchestrator's loop thread.
    task_started = Signal(TaskStarted)
    #: :class:`TaskFinished`, on the orchestrator's loop thread.
    task_finished = Signal(TaskFinished)
    #: :class:`TickFinished`, on the orchestrator's loop thread, once per committed tick.
    tick_finished = Signal(TickFinished)
    #: :class:`AgentLog`, on the orchestrator's loop thread, in deterministic order.
    agent_log = Signal(AgentLog)
    #: :class:`WorkerRestarted`, on the orchestrator's loop thread.
    worker_restarted = Signal(WorkerRestarted)
    #: :class:`LlmTokens`, on the orchestrator's loop thread, as an LLM request streams.
    llm_tokens = Signal(LlmTokens)
    #: :class:`LlmRequested`, on the orchestrator's loop thread, as an agent's request arrives.
    llm_requested = Signal(LlmRequested)
    #: :class:`GpuAdapter`, on the orchestrator's loop thread, once the GPU device started.
    gpu_adapter = Signal(GpuAdapter)
    #: :class:`MessageUsage`, on the orchestrator's loop thread, after each tick with messages,
    #: while anyone is connected (connecting is what makes the workers report it).
    message_usage = Signal(MessageUsage)
