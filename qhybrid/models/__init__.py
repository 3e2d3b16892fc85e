"""Qt models and view-models over the runtime.

Models adapt runtime events (which fire on runtime threads, as each event's docstring says)
into Qt item models and view-models, hopping to the GUI thread before anything a view reads
changes. They use QtCore only (no QtGui, no QtWidgets, no pyqtgraph), so they can be tested
without a display; widgets and charts live in ``qhybrid.views``.

- :class:`RuntimeController` runs a scenario on an asyncio loop in a ``QThread`` it owns and
  steers it (start, pause, step, stop, restart, post); the GUI thread never awaits it.
- :class:`RuntimeFeed` collects the runtime's events where they fire (append-only deques).
- :class:`LiveModels` drains the feed and polls the metrics once per frame (about 40 a
  second) into :class:`AgentsTableModel`, :class:`LogModel`, :class:`ChatModel` and
  :class:`LiveSeries` (the charts' ring buffers).
- :class:`ServerModel` starts and stops ``qhybrid serve`` (an HTTP API over a model) for the
  window's Server panel, and polls its counters.

Layering: ``qhybrid.app`` -> ``qhybrid.views`` -> ``qhybrid.models`` -> ``qhybrid.runtime``.
"""

from __future__ import annotations

from qhybrid.models._agent_detail import AgentReport, LlmCall, LlmCalls, agent_report, limits_text
from qhybrid.models._agents import SORT_ROLE, AgentsFilterModel, AgentsTableModel, natural_key
from qhybrid.models._chat import ChatEntry, ChatModel
from qhybrid.models._controller import ASK_KIND, RuntimeController, SessionState
from qhybrid.models._debug_feed import DebugBatch, DebugFeed
from qhybrid.models._debugger import DebuggerModels
from qhybrid.models._feed import FeedBatch, RuntimeFeed
from qhybrid.models._graph import (
    FOLD_ABOVE,
    AgentGraph,
    GraphEdge,
    GraphLayout,
    GraphNode,
    MessageHistory,
    group_key,
    parse_trace_lines,
)
from qhybrid.models._live import LiveModels, adapter_text
from qhybrid.models._log import (
    LEVELS,
    LogFilterModel,
    LogLine,
    LogModel,
    PythonLogCollector,
    plain_tooltip,
)
from qhybrid.models._messages import (
    Envelope,
    MessageRecord,
    MessagesFilterModel,
    MessagesModel,
    decode_payload,
    parse_messages,
)
from qhybrid.models._questions import Question, QuestionBox, QuestionsModel
from qhybrid.models._runs import RunCommand, RunsModel, format_duration
from qhybrid.models._scenario import ScenarioCheck, scenario_outline
from qhybrid.models._series import CHANNELS, LiveSeries
from qhybrid.models._server import ServerModel, ServerState, ServerStats
from qhybrid.models._stall import StallMonitor
from qhybrid.models._state_at import RowsModel, StateAtModel, memory_text

__all__ = [
    "ASK_KIND",
    "CHANNELS",
    "FOLD_ABOVE",
    "LEVELS",
    "SORT_ROLE",
    "AgentGraph",
    "AgentReport",
    "AgentsFilterModel",
    "AgentsTableModel",
    "ChatEntry",
    "ChatModel",
    "DebugBatch",
    "DebugFeed",
    "DebuggerModels",
    "Envelope",
    "FeedBatch",
    "GraphEdge",
    "GraphLayout",
    "GraphNode",
    "LiveModels",
    "LiveSeries",
    "LlmCall",
    "LlmCalls",
    "LogFilterModel",
    "LogLine",
    "LogModel",
    "MessageHistory",
    "MessageRecord",
    "MessagesFilterModel",
    "MessagesModel",
    "PythonLogCollector",
    "Question",
    "QuestionBox",
    "QuestionsModel",
    "RowsModel",
    "RunCommand",
    "RunsModel",
    "RuntimeController",
    "RuntimeFeed",
    "ScenarioCheck",
    "ServerModel",
    "ServerState",
    "ServerStats",
    "SessionState",
    "StallMonitor",
    "StateAtModel",
    "adapter_text",
    "agent_report",
    "decode_payload",
    "format_duration",
    "group_key",
    "limits_text",
    "memory_text",
    "natural_key",
    "parse_messages",
    "parse_trace_lines",
    "plain_tooltip",
    "scenario_outline",
]
