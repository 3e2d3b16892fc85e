"""One timer on the GUI thread turns the runtime's events and metrics into model updates.

:class:`LiveModels` owns every model a window shows and one :class:`QTimer` (about 40 times a
second while a run is active). Each frame it drains the :class:`RuntimeFeed`, polls
:meth:`Runtime.metrics`, applies all of it to the models in batches, and emits
:attr:`LiveModels.frame` once, which is when the charts redraw; a few times a second, in a
slice of its own, it polls :meth:`Runtime.agent_summaries` for the agents table. However
fast the runtime goes, the GUI does a bounded amount of work per frame, and the runtime's loop
only ever appends to deques.
"""

from __future__ import annotations

import logging
import math
import sys
import time

from PySide6.QtCore import QObject, QTimer, Signal

from qhybrid.models._agents import AgentsFilterModel, AgentsTableModel
from qhybrid.models._chat import ChatModel
from qhybrid.models._controller import RuntimeController, SessionState
from qhybrid.models._feed import FeedBatch
from qhybrid.models._log import LogFilterModel, LogLine, LogModel, PythonLogCollector
from qhybrid.models._series import LiveSeries
from qhybrid.runtime import GpuAdapter, Runtime

__all__ = ["LiveModels", "adapter_text"]

#: Frames per second the timer asks for while a run is active. Above the 30 a second that
#: the window promises, so that a late timer or a slow frame now and then still leaves 30
#: (the coarse timer gives about 36), and not more: on two cores shared with the workers and
#: the runtime's thread, every frame more is GUI work the runtime waits for. ``bench ui`` at
#: 1000 agents on the idle dev VM: asking 40 gave 40 painted and the longest stall 11-14 ms
#: over the no-window floor, asking 34 gave 35.8 and 7.6-10.5 ms.
DEFAULT_FPS = 34
#: Agent table refreshes per second (a thousand rows need not change 34 times a second).
AGENTS_HZ = 2
#: The interpreter's thread switch interval while a run is shown (Python's default: 5 ms).
#: The runtime's loop thread is busy in Python most of the time; when the GUI thread wants the
#: GIL it waits until the loop thread is made to drop it, up to this long, every time it comes
#: back from Qt's C++ code. A shorter interval bounds that wait, at the price of a few more
#: GIL hand-overs on the loop thread (measured by ``qhybrid bench ui``).
GUI_SWITCH_INTERVAL_S = 0.001
#: Adaptive throttling: the timer's interval is kept at least this many times the recent cost
#: of one frame (its refresh and, as the window reports it, its painting), so that the GUI
#: thread spends at most about a quarter of its time on frames (and leaves the GIL and the
#: cores to the runtime) when there is much to show. The cost is the GUI thread's CPU time,
#: not the wall clock: waiting for the GIL or for a core that other processes hold costs the
#: runtime nothing, and throttling for it would only drop frames.
FRAME_COST_FACTOR = 4.0
#: The slowest the charts go when the machine is very busy.
MIN_FPS = 4
#: Seconds of samples the charts can show.
HISTORY_S = 60


#: The runtime's own end states: the log shows the session's verdict instead (see _on_state).
_RUNTIME_END_STATES = frozenset({"completed", "failed"})


def adapter_text(adapter: GpuAdapter | None) -> str:
    """ "llvmpipe (vulkan, software)", or "no GPU adapter yet"."""
    if adapter is None:
        return "GPU: not started"
    if adapter.kind == "cpu":
        return "GPU: none (numpy on the CPU)"
    return f"GPU: {adapter.name} ({adapter.backend}, {adapter.kind})"


class LiveModels(QObject):
    """The models of one window over one :class:`RuntimeController`.

    Signals (GUI thread): ``frame()`` after each refresh; ``adapter_changed(text, adapter)``;
    ``progress(text)``: a short line for the status bar (tick, messages, tasks/s).
    """

    frame = Signal()
    adapter_changed = Signal(str, object)
    progress = Signal(str)

    def __init__(
        self,
        controller: RuntimeController,
        parent: QObject | None = None,
        *,
        fps: int = DEFAULT_FPS,
    ) -> None:
        super().__init__(parent)
        self.controller = controller
        self.agents = AgentsTableModel(self)
        self.agents_filter = AgentsFilterModel(self)
        self.agents_filter.setSourceModel(self.agents)
        self.log = LogModel(self)
        self.log_filter = LogFilterModel(self)
        self.log_filter.setSourceModel(self.log)
        self.chat = ChatModel(self)
        self.series = LiveSeries(capacity=HISTORY_S * max(fps, DEFAULT_FPS))
        self.adapter: GpuAdapter | None = None
        self.frames = 0
        self.frame_seconds_max = 0.0  # the longest refresh so far (GUI-thread work per frame)
        self.frame_cpu_s = 0.0  # the GUI thread's CPU time in refreshes and reported paints
        #: The longest of those, one event-loop slice each (a refresh, the agents' poll, a
        #: paint): on an idle machine, about the longest the window keeps the GUI thread.
        self.slice_cpu_max_s = 0.0
        self._t0 = time.perf_counter()
        self._agents_period = 1.0 / AGENTS_HZ
        self._agents_next = 0.0  # perf_counter time of the next agents poll
        self._agents_due = True
        self.agents_visible = True  # set by the view: a hidden table is not polled
        self._base_interval_ms = max(1, round(1000 / fps))
        self._cost_ms = 0.0  # moving average of one refresh's cost
        self._saved_switch_interval: float | None = None
        self._python_log = PythonLogCollector()
        logging.getLogger("qhybrid").addHandler(self._python_log)

        self.timer = QTimer(self)
        self.timer.setObjectName("live_models_timer")
        self.timer.setInterval(self._base_interval_ms)
        self.timer.timeout.connect(self._on_timer)
        # The agents table is polled in a slice of its own, half a frame after the charts':
        # its cost (a thousand summaries, the rows that changed, their repaint) then never
        # adds to a frame's, and the event loop answers the user in between.
        self._agents_timer = QTimer(self)
        self._agents_timer.setSingleShot(True)
        self._agents_timer.timeout.connect(self._poll_agents)
        self._paint_cpu_s = 0.0  # reported by the window since the last frame

        controller.runtime_changed.connect(self._on_runtime)
        controller.state_changed.connect(self._on_state)
        controller.error.connect(self._on_error)

    def set_fps(self, fps: float) -> None:
        """Refreshes per second while a run is active (0: as fast as the GUI can)."""
        self._base_interval_ms = 0 if fps <= 0 else max(1, round(1000 / fps))
        self.timer.setInterval(self._base_interval_ms)

    def set_agents_visible(self, visible: bool) -> None:
        """Whether the agents table is shown; a hidden one is not polled (caught up on show)."""
        if visible and not self.agents_visible:
            self._agents_due = True
        self.agents_visible = visible

    def close(self) -> None:
        """Stop refreshing and detach from logging (the window is closing)."""
        self._stop_timer()
        logging.getLogger("qhybrid").removeHandler(self._python_log)

    def _start_timer(self) -> None:
        if self.timer.isActive():
            return
        self._cost_ms = 0.0
        self.timer.setInterval(self._base_interval_ms)
        self.timer.start()
        if self._saved_switch_interval is None:
            self._saved_switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(GUI_SWITCH_INTERVAL_S, self._saved_switch_interval))

    def _stop_timer(self) -> None:
        self.timer.stop()
        self._agents_timer.stop()
        if self._saved_switch_interval is not None:
            sys.setswitchinterval(self._saved_switch_interval)
            self._saved_switch_interval = None

    def add_paint_cost(self, cpu_s: float) -> None:
        """The window says what painting the last frame cost (the GUI thread's CPU time)."""
        self._paint_cpu_s += cpu_s
        self.frame_cpu_s += cpu_s
        self.slice_cpu_max_s = max(self.slice_cpu_max_s, cpu_s)

    def _on_timer(self) -> None:
        c0 = time.thread_time()
        self.refresh(agents=False)
        if self._agents_wanted(time.perf_counter()) and not self._agents_timer.isActive():
            self._agents_timer.start(max(1, self.timer.interval() // 2))
        cost_ms = (time.thread_time() - c0 + self._paint_cpu_s) * 1000.0
        self._paint_cpu_s = 0.0
        # Throttle: when a frame costs more (there is much to show), refresh less often;
        # come back as soon as it is cheap again.
        self._cost_ms = 0.8 * self._cost_ms + 0.2 * cost_ms
        want = max(self._base_interval_ms, round(FRAME_COST_FACTOR * self._cost_ms))
        want = min(want, max(self._base_interval_ms, round(1000 / MIN_FPS)))
        if abs(want - self.timer.interval()) > 2:
            self.timer.setInterval(want)

    # -- controller signals ----------------------------------------------------------------
    def _on_runtime(self, runtime: Runtime) -> None:
        self.series.reset()
        self._t0 = time.perf_counter()
        self._agents_due = True
        self.adapter = None
        self.log.append_lines([LogLine(None, 20, "run", f"scenario {runtime.scenario.name!r}")])

    def _on_state(self, state: str, detail: str) -> None:
        if state in SessionState.ACTIVE:
            self._start_timer()
        else:
            self._stop_timer()
            self._agents_due = True
            self.refresh()  # the last events and the final counts
            # The session's verdict, not the runtime's "completed" (a stop request and the
            # window's timeout both end a run the runtime calls completed). A failure is
            # logged by the controller at warning level, and reaches the log from there.
            if state in (SessionState.COMPLETED, SessionState.STOPPED):
                self.log.append_lines([LogLine(None, 20, "run", _state_line(state, detail))])

    def _on_error(self, message: str) -> None:
        self.log.append_lines([LogLine(None, 40, "window", message)])

    # -- one frame ---------------------------------------------------------------------------
    def _agents_wanted(self, now: float) -> bool:
        return self.controller.runtime is not None and (
            self._agents_due or (self.agents_visible and now >= self._agents_next)
        )

    def _poll_agents(self) -> None:
        """The agents table's own slice (see ``_agents_timer``)."""
        c0 = time.thread_time()
        runtime = self.controller.runtime
        if runtime is not None:
            self._update_agents(runtime, time.perf_counter())
        cpu_s = time.thread_time() - c0
        self.frame_cpu_s += cpu_s
        self.slice_cpu_max_s = max(self.slice_cpu_max_s, cpu_s)

    def _update_agents(self, runtime: Runtime, now: float) -> None:
        # A thousand agents make this the costliest part of the window's work: a few times a
        # second only, and not at all while the table is hidden (agent state changes still are).
        self.agents.update_agents(runtime.agent_summaries())
        self._agents_due = False
        self._agents_next = now + self._agents_period

    def refresh(self, *, agents: bool = True) -> None:
        """Take what the runtime produced since the last frame and update every model (the
        agents table too, when it is due, unless ``agents`` is false: the timer polls it in a
        slice of its own)."""
        t_start = time.perf_counter()
        c_start = time.thread_time()
        batch = self.controller.feed.drain()
        runtime = self.controller.runtime
        self._apply(batch)
        metrics = runtime.metrics() if runtime is not None else None
        self.series.sample(t_start - self._t0, metrics, batch.tasks, batch.llm)
        if batch.agent_states:
            self._agents_due = True  # a state changed: shown within half a frame
        if agents and runtime is not None and self._agents_wanted(t_start):
            self._update_agents(runtime, t_start)
        latest = self.series.latest
        if runtime is not None and latest:
            tick = latest.get("tick")
            tick_text = "-" if tick is None or tick != tick else f"{int(tick):,}"
            rate = latest.get("tasks_per_s")
            rate_text = "-" if rate is None or not math.isfinite(rate) else f"{rate:,.0f}"
            self.progress.emit(f"tick {tick_text}  \N{MIDDLE DOT}  {rate_text} tasks/s")
        self.frames += 1
        self.frame.emit()
        self.frame_seconds_max = max(self.frame_seconds_max, time.perf_counter() - t_start)
        cpu_s = time.thread_time() - c_start
        self.frame_cpu_s += cpu_s
        self.slice_cpu_max_s = max(self.slice_cpu_max_s, cpu_s)

    def _apply(self, batch: FeedBatch) -> None:
        lines = [
            LogLine(None, 20, "run", _state_line(e.state, e.reason))
            for e in batch.run_states
            if e.state not in _RUNTIME_END_STATES
        ]
        lines.extend(LogLine(e.tick, e.level, e.agent, e.text) for e in batch.logs)
        if batch.logs_dropped:
            lines.append(
                LogLine(None, 30, "window", f"{batch.logs_dropped} log lines dropped (too many)")
            )
        for e in batch.agent_states:
            if e.state != "loaded":
                level = 20 if e.state == "restarted" else 30
                text = f"agent {e.state}" + (f": {e.reason}" if e.reason else "")
                lines.append(LogLine(e.tick, level, e.agent, text))
        lines.extend(
            LogLine(e.tick, 30, "run", f"worker {e.worker} replaced ({e.reason})")
            for e in batch.restarts
        )
        lines.extend(self._python_log.take())
        self.log.append_lines(lines)
        if batch.llm or batch.logs:
            self.chat.apply(batch.llm, batch.logs)
        if batch.adapter is not None:
            self.adapter = batch.adapter
            self.adapter_changed.emit(adapter_text(batch.adapter), batch.adapter)


def _state_line(state: str, reason: str | None) -> str:
    return f"run {state}" + (f": {reason}" if reason else "")
