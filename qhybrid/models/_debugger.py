"""The debugger views' view-model: the agent graph and the per-agent detail of the live run,
or of a recorded run from the run store.

:class:`DebuggerModels` attaches a :class:`DebugFeed` to each runtime the controller makes
(directly, on the runtime's thread, before the run starts, so no tick is missed) and, on
the GUI thread, drains it a few times a second while a run is active: the records go into
the :class:`AgentGraph`'s history, LLM events into :class:`LlmCalls`, and the agents'
states are polled. ``changed`` fires after each refresh; views redraw only while shown.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, QTimer, Signal

from qhybrid.models._agent_detail import AgentReport, LlmCalls, agent_report, limits_text
from qhybrid.models._controller import RuntimeController, SessionState
from qhybrid.models._debug_feed import DebugFeed
from qhybrid.models._graph import AgentGraph, parse_trace_lines
from qhybrid.runtime import AgentSummary, Runtime, Scenario, load_scenario
from qhybrid.runtime.store import RunStore, llm_calls

__all__ = ["DEBUGGER_HZ", "DebuggerModels"]

logger = logging.getLogger(__name__)

#: Refreshes of the shown views per second while a run is active (they need no more).
DEBUGGER_HZ = 2
#: The records are taken in slices, this many times a second, each slice within
#: INGEST_BUDGET_S of GUI-thread time, so that no one call stalls the window.
INGEST_HZ = 10
INGEST_SLICE = 4000
INGEST_BUDGET_S = 0.003


class DebuggerModels(QObject):
    """``changed()`` after new data; ``source_changed(text)`` when it switches between the live
    run and a recorded one (both on the GUI thread)."""

    changed = Signal()
    source_changed = Signal(str)
    #: The ticks chosen on a timeline, ``(lo, hi)`` inclusive, or None (no choice: all).
    selection_changed = Signal(object)

    def __init__(self, controller: RuntimeController, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.feed = DebugFeed()
        self.graph = AgentGraph()
        self.llm = LlmCalls()
        self.source = "no run yet"
        self.live = True
        #: The recorded run shown (None: the live run, or none yet).
        self.run_id: str | None = None
        #: The ticks chosen on a timeline (the Recorded runs tab's scrubber, the graph's own
        #: range): the graph counts its edges over them.
        self.selection: tuple[int, int] | None = None
        self.summaries: list[AgentSummary | dict[str, Any]] = []
        self.scenario: Scenario | None = None
        self.refresh_seconds_max = 0.0
        self._runtime: Runtime | None = None
        self._fresh = False
        self._stale = False
        #: The views shown now (``watch``): states are polled and ``changed`` fires only then.
        self.watching: set[str] = set()
        self.timer = QTimer(self)
        self.timer.setInterval(round(1000 / INGEST_HZ))
        self._backlog: list[Any] = []
        self._backlog_at = 0
        self._next_poll = 0.0
        self._poll_queued = False
        self.timer.timeout.connect(self.refresh)
        # Direct: runs on the runtime's thread as soon as the runtime exists, before it starts.
        controller.runtime_changed.connect(self._attach, Qt.ConnectionType.DirectConnection)
        controller.state_changed.connect(self._state_changed)

    # -- live --------------------------------------------------------------------------------
    def _attach(self, runtime: Runtime) -> None:
        self.feed.attach(runtime)
        self._runtime = runtime
        self._fresh = True

    def _state_changed(self, state: str, _detail: str) -> None:
        if state in SessionState.ACTIVE:
            if not self.timer.isActive():
                self.timer.start()
        else:
            self.timer.stop()
            self.refresh(flush=True)  # the last ticks and the final states

    def refresh(self, *, flush: bool = False) -> None:
        """Take what the live run produced since the last call: a slice of it within
        :data:`INGEST_BUDGET_S` (all of it with ``flush``); the shown views' states and
        ``changed`` :data:`DEBUGGER_HZ` times a second."""
        t0 = time.perf_counter()
        runtime = self._runtime
        if self._fresh and runtime is not None:
            summaries = runtime.agent_summaries()
            if not summaries:
                return  # not loaded yet: the feed keeps the records meanwhile
            self._fresh = False
            self.live = True
            self.llm.clear()
            self.scenario = runtime.scenario
            self.graph.history.reset(0)
            self._backlog, self._backlog_at = [], 0
            self.graph.set_agents([s.name for s in summaries], [s.group for s in summaries])
            self.source = f"live run: {runtime.scenario.name}"
            self.run_id = None
            self.select_ticks(None)
            self.source_changed.emit(self.source)
        batch = self.feed.drain()
        if not self.live or runtime is None:
            return
        backlog = self._backlog
        if self._backlog_at >= len(backlog):
            backlog, self._backlog_at = batch.records, 0
        else:
            backlog.extend(batch.records)
        self._backlog = backlog
        add = self.graph.history.add_records
        while self._backlog_at < len(backlog):
            end = self._backlog_at + INGEST_SLICE
            add(backlog[self._backlog_at : end])
            self._backlog_at = end
            if not flush and time.perf_counter() - t0 > INGEST_BUDGET_S:
                break
        if self._backlog_at >= len(backlog):
            self._backlog, self._backlog_at = [], 0
        self.llm.apply(batch.requests, batch.tokens)
        for used in batch.usage:
            self.graph.history.add_usage(used.tick, used.seqs, used.fuel, used.memory)
        self._stale = True
        now = time.perf_counter()
        if self.watching and (flush or now >= self._next_poll):  # only while someone looks
            self._next_poll = now + 1.0 / DEBUGGER_HZ
            if flush:
                self._poll_states()
            elif not self._poll_queued:
                # In slices of their own, after this one's paint: the states (the agents'
                # summaries), then the views that show them (the graph, the detail). One
                # slice with the records' intake was the window's longest stall at 1000 agents.
                self._poll_queued = True
                QTimer.singleShot(0, self._queued_poll)
        self.refresh_seconds_max = max(self.refresh_seconds_max, time.perf_counter() - t0)

    def _queued_poll(self) -> None:
        self._poll_queued = False
        if self.watching:
            self._take_states()
            QTimer.singleShot(0, self.changed.emit)

    def _poll_states(self) -> None:
        self._take_states()
        self.changed.emit()

    def _take_states(self) -> None:
        runtime = self._runtime
        if self.live and runtime is not None and not self._fresh:
            summaries = runtime.agent_summaries()
            if len(summaries) == len(self.graph.names):
                self.summaries = list(summaries)
                self.graph.set_states([s.state for s in summaries])
        self._stale = False

    def watch(self, view: str, visible: bool) -> None:
        """A view says whether it is shown; a hidden debugger only keeps the records."""
        if visible:
            self.watching.add(view)
            if self._stale:
                self._poll_states()
        else:
            self.watching.discard(view)

    # -- recorded ------------------------------------------------------------------------------
    def load_run(self, store_path: Path, run_id: str) -> None:
        """Show a recorded run (its agents from its summary, its messages from its trace)."""
        with RunStore(store_path, readonly=True) as store:
            run = store.run(run_id)
            records = parse_trace_lines(store.records(run_id))
            agents = list((run.get("summary") or {}).get("agents") or [])
            calls = llm_calls(store, run_id, [str(a.get("name")) for a in agents])
            usage = store.message_usage(run_id)
        if not agents:  # not finished: the agents the trace names
            top = max(
                (max(r[3], r[4]) for r in records if r[0] in ("ok", "fail", "drop")), default=-1
            )
            agents = [{"name": f"agent {i}", "state": "?"} for i in range(top + 1)]
        self.live = False
        self.llm.load_recorded(calls)
        self.summaries = agents
        self.scenario = None
        path = run.get("scenario_path")
        if path:
            try:
                self.scenario = load_scenario(path)
            except Exception as exc:  # the file moved or changed: no limits shown
                logger.info("run %s: scenario %s not readable: %s", run_id, path, exc)
        self.graph.history.reset(0)
        self.graph.set_agents(
            [str(a["name"]) for a in agents],
            [str(a.get("group") or "") for a in agents],
            [str(a.get("state") or "?") for a in agents],
        )
        self.graph.history.add_records(records)
        self.graph.history.usage = usage
        self.source = f"recorded run {run_id} ({run.get('scenario_name')}, seed {run.get('seed')})"
        self.run_id = run_id
        self.select_ticks(None)
        self.source_changed.emit(self.source)
        self.changed.emit()

    # -- the chosen ticks ----------------------------------------------------------------------
    def select_ticks(self, lo: int | None, hi: int | None = None) -> None:
        """Choose ticks ``lo..hi`` (inclusive; ``hi`` None: just ``lo``; ``lo`` None: no
        choice). ``selection_changed`` fires when the choice changes."""
        if lo is None:
            chosen: tuple[int, int] | None = None
        else:
            hi = lo if hi is None else hi
            lo, hi = max(0, min(lo, hi)), max(0, lo, hi)
            chosen = (lo, hi)
        if chosen != self.selection:
            self.selection = chosen
            self.selection_changed.emit(chosen)

    def tick_counts(self) -> Any:
        """Messages per tick of the run shown, over the whole run (a numpy array)."""
        return self.graph.history.run_per_tick()

    # -- one agent -----------------------------------------------------------------------------
    def agent_id(self, name: str) -> int:
        try:
            return self.graph.names.index(name)
        except ValueError:
            return -1

    def limits_of(self, agent: int) -> str:
        scenario = self.scenario
        if scenario is None or not 0 <= agent < len(self.graph.names):
            return ""
        name = self.graph.names[agent]
        for spec in scenario.agents:
            if name in spec.instances:
                return limits_text(spec.limits)
        return ""

    def report(self, agent: int) -> AgentReport:
        if self._stale:  # asked while no view was watching: the states as of now
            self._take_states()
        history = self.graph.history
        names = self.graph.names
        summary = self.summaries[agent] if 0 <= agent < len(self.summaries) else None
        name = names[agent] if 0 <= agent < len(names) else ""
        return agent_report(
            agent,
            names,
            summary=summary,
            limits=self.limits_of(agent),
            messages=history.messages_of(agent),
            log=list(history.logs.get(agent, ())),
            errors=history.errors.get(agent, []),
            llm=self.llm.of_agent(name),
            usage=history.usage,
        )

    def close(self) -> None:
        self.timer.stop()
        self.feed.detach()
