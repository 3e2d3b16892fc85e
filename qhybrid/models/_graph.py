"""The agent graph's model: who sent how many messages to whom, over a range of ticks.

Qt-free (numpy only), so that its aggregation and layout are tested without a display and
cost the GUI thread a bounded amount per refresh:

- :class:`MessageHistory` takes a run's trace records (live, from the runtime's tick hook, or
  a recorded run's from the run store) and keeps every message as a (tick, pair) row, where
  a pair is ``(sender + 1) * (agents + 1) + receiver + 1`` (the runtime sends as -1), plus a
  running total per pair for the whole run. The rows of the oldest ticks are dropped past
  :attr:`MessageHistory.max_rows` (their totals stay); the last records are kept whole, with
  each agent's log lines and errors, for the per-agent detail.
- :class:`AgentGraph` folds agents into groups (their ``[[agents]]`` entry, or their name
  without its number: ``relay-17`` is in ``relay``) once a run has more than
  :data:`FOLD_ABOVE` agents, so a thousand agents read as a handful of nodes; any group can be
  expanded. :meth:`AgentGraph.build` aggregates the pairs into node-to-node edges with numpy
  and lays the nodes out on a circle in natural name order (deterministic: the same run gives
  the same picture).
"""

from __future__ import annotations

import ast
import collections
import itertools
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from qhybrid.models._agents import natural_key

__all__ = [
    "FOLD_ABOVE",
    "LABEL_ALL_BELOW",
    "RUNTIME_NODE",
    "AgentGraph",
    "GraphEdge",
    "GraphLayout",
    "GraphNode",
    "MessageHistory",
    "group_key",
    "labelled",
    "parse_trace_lines",
    "state_rank",
]

logger = logging.getLogger(__name__)

#: A run with more agents than this shows its groups folded (each a single node).
FOLD_ABOVE = 24
#: Past this many nodes, only folded groups (and the chosen and hovered nodes) are named.
LABEL_ALL_BELOW = 120
_LABEL_CHAR_PX = 7.0  # about one character of a label, in the layout's units (pixels at 1x)
#: The node the runtime's own messages (the scenario's initial ones) come from.
RUNTIME_NODE = "(runtime)"
#: Trace records the history reads (messages, agents' log lines, agents' failures).
_MESSAGE_STATUS = frozenset({"ok", "fail", "drop"})
_WANTED = ("ok", "fail", "drop", "log", "agent-failed")
_PREFIXES = tuple(f"('{name}'" for name in _WANTED)
_TRAILING_NUMBER = re.compile(r"[-_.]?\d+$")
#: Worst first: a folded group takes the colour of its worst member.
_STATE_ORDER = ("failed", "skipped", "restarting", "restarted", "loaded")


def state_rank(state: str) -> int:
    """0 for the worst state (failed) ... len for one not listed (shown as loaded)."""
    try:
        return _STATE_ORDER.index(state)
    except ValueError:
        return len(_STATE_ORDER)


def group_key(name: str, group: str = "") -> str:
    """The group an agent folds into: its ``[[agents]]`` entry when that names several
    instances, else its name without a trailing number (``relay-17`` -> ``relay``)."""
    if group and group != name:
        return group
    stripped = _TRAILING_NUMBER.sub("", name)
    return stripped or name


def parse_trace_lines(records: Iterable[tuple[int, int, str]]) -> list[tuple[Any, ...]]:
    """The records the history reads, from the run store's ``(n, tick, repr line)``."""
    out: list[tuple[Any, ...]] = []
    for n, _tick, line in records:
        if not line.startswith(_PREFIXES):
            continue
        try:
            out.append(ast.literal_eval(line))
        except (ValueError, SyntaxError):
            logger.warning("trace record %d is not a Python literal: %.80s", n, line)
    return out


class MessageHistory:
    """A run's messages as numpy columns, its pair totals, and its last records whole."""

    def __init__(
        self,
        agents: int = 0,
        *,
        max_rows: int = 2_000_000,
        keep_records: int = 50_000,
        keep_log: int = 500,
    ) -> None:
        self.max_rows = max_rows
        self.keep_log = keep_log
        self._keep_records = keep_records
        self.reset(agents)

    generation = 0  # one more at each reset: what was built from it is stale

    def reset(self, agents: int) -> None:
        """Forget everything; the next records are of a run with ``agents`` agents."""
        self.generation += 1
        self.serial = 0  # chunks of rows added so far
        self._serials: list[int] = []
        self.agents = agents
        self.width = agents + 1  # pair = (sender + 1) * width + receiver + 1
        self._ticks: list[npt.NDArray[np.int64]] = []
        self._pairs: list[npt.NDArray[np.int64]] = []
        self.rows = 0
        self.messages = 0  # every message seen, kept as rows or not
        self.first_tick = 0  # the first tick whose rows are kept
        self.last_tick = -1
        dense = self.width * self.width <= 4_194_304  # up to 2047 agents: a flat array
        self._dense: npt.NDArray[np.int64] | None = (
            np.zeros(self.width * self.width, np.int64) if dense else None
        )
        self._sparse: dict[int, int] = {}
        #: Messages per tick over the whole run (kept when the rows of old ticks are dropped).
        self._per_tick = np.zeros(0, np.int64)
        self._seen: npt.NDArray[np.bool_] | None = (
            np.zeros(self.width * self.width, np.bool_) if dense else None
        )
        self._nonzero: list[npt.NDArray[np.int64]] = []  # pairs seen, in order first seen
        # The last records whole, in the chunks they came in, with their senders and
        # receivers as arrays (an agent's messages are found with numpy, not a Python scan).
        self._kept: collections.deque[
            tuple[list[tuple[Any, ...]], npt.NDArray[np.int64], npt.NDArray[np.int64]]
        ] = collections.deque()
        self._kept_rows = 0
        self.logs: dict[int, collections.deque[tuple[int, int, str]]] = {}
        self.errors: dict[int, list[tuple[int, str]]] = {}
        self._pending_logs: list[tuple[int, int, int, str]] = []
        #: (tick, seq) -> (fuel, memory) of the messages handled, as the workers reported
        #: them (``MessageUsage``; a recorded run's ``RunStore.message_usage``), oldest first.
        self.usage: dict[tuple[int, int], tuple[int, int]] = {}

    # -- input ------------------------------------------------------------------------------
    def add_usage(
        self, tick: int, seqs: Sequence[int], fuel: Sequence[int], memory: Sequence[int]
    ) -> None:
        """Each message's fuel and memory for a tick (``MessageUsage``'s fields); as many
        are kept as records (the oldest forgotten first)."""
        usage = self.usage
        for seq, f, m in zip(seqs, fuel, memory, strict=True):
            usage[(tick, seq)] = (f, m)
        extra = len(usage) - self._keep_records
        if extra > 0:
            for key in list(itertools.islice(usage, extra)):
                del usage[key]

    def add_records(self, records: Sequence[tuple[Any, ...]]) -> int:
        """Take trace records (any kinds; messages, logs and failures are kept); returns how
        many messages they held."""
        statuses = _MESSAGE_STATUS
        width = self.width
        ticks: list[int] = []
        pairs: list[int] = []
        chunk: list[tuple[Any, ...]] = []
        kept = chunk.append
        pending = self._pending_logs
        for r in records:
            kind = r[0]
            if kind in statuses:
                tick, seq, receiver = r[1], r[2], r[4]
                ticks.append(tick)
                pairs.append((r[3] + 1) * width + receiver + 1)
                kept(r)
                if pending:
                    self._assign_logs(tick, seq, receiver)
            elif kind == "log":
                pending.append((r[1], r[2], r[3], str(r[4])))
            elif kind == "agent-failed":
                self.errors.setdefault(int(r[3]), []).append((int(r[1]), str(r[4])))
        if not ticks:
            return 0
        t = np.asarray(ticks, np.int64)
        p = np.asarray(pairs, np.int64)
        if (p < 0).any() or (p >= width * width).any():
            ok = (p >= 0) & (p < width * width)  # an agent this history was not sized for
            t, p = t[ok], p[ok]
            chunk = [r for r, good in zip(chunk, ok.tolist(), strict=True) if good]
        self._keep_chunk(chunk, p)
        self._ticks.append(t)
        self._pairs.append(p)
        self.serial += 1
        self._serials.append(self.serial)
        self.rows += len(p)
        self.messages += len(p)
        if len(t):
            self.last_tick = max(self.last_tick, int(t.max()))
            counts = np.bincount(t[t >= 0])
            if len(counts) > len(self._per_tick):
                grown = np.zeros(max(len(counts), 2 * len(self._per_tick)), np.int64)
                grown[: len(self._per_tick)] = self._per_tick
                self._per_tick = grown
            self._per_tick[: len(counts)] += counts
        if self._dense is not None and self._seen is not None:
            np.add.at(self._dense, p, 1)
            fresh = p[~self._seen[p]]
            if len(fresh):
                fresh = np.unique(fresh)
                self._seen[fresh] = True
                self._nonzero.append(fresh)
        else:
            keys, counts = np.unique(p, return_counts=True)
            sparse = self._sparse
            for k, c in zip(keys.tolist(), counts.tolist(), strict=True):
                sparse[k] = sparse.get(k, 0) + c
        while self.rows > self.max_rows and len(self._ticks) > 1:
            dropped = self._ticks.pop(0)
            self._pairs.pop(0)
            self._serials.pop(0)
            self.rows -= len(dropped)
            self.first_tick = int(self._ticks[0].min()) if len(self._ticks[0]) else 0
        return len(p)

    def _keep_chunk(self, chunk: list[tuple[Any, ...]], pairs: npt.NDArray[np.int64]) -> None:
        if not chunk:
            return
        self._kept.append((chunk, pairs // self.width - 1, pairs % self.width - 1))
        self._kept_rows += len(chunk)
        while self._kept_rows - len(self._kept[0][0]) >= self._keep_records:
            self._kept_rows -= len(self._kept.popleft()[0])

    @property
    def records(self) -> list[tuple[Any, ...]]:
        """The message records kept whole, oldest first."""
        return [r for chunk, _s, _r in self._kept for r in chunk]

    def _assign_logs(self, tick: int, seq: int, receiver: int) -> None:
        """Log records come just before their message's record (same tick and seq)."""
        rest = []
        for log_tick, log_seq, level, text in self._pending_logs:
            if log_tick == tick and log_seq == seq:
                lines = self.logs.get(receiver)
                if lines is None:
                    lines = self.logs[receiver] = collections.deque(maxlen=self.keep_log)
                lines.append((tick, level, text))
            elif log_tick >= tick:
                rest.append((log_tick, log_seq, level, text))
        self._pending_logs = rest

    # -- queries ----------------------------------------------------------------------------
    def pair_counts(
        self, lo: int | None = None, hi: int | None = None
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """``(pairs, counts)`` of the messages of ticks ``lo..hi`` (inclusive; None: open).
        The whole run comes from the running totals; a range, from the rows kept."""
        if lo is None and hi is None:
            if self._dense is not None:
                if len(self._nonzero) > 1:
                    self._nonzero = [np.concatenate(self._nonzero)]
                pairs = self._nonzero[0] if self._nonzero else np.zeros(0, np.int64)
                return pairs, self._dense[pairs]
            keys = np.fromiter(self._sparse.keys(), np.int64, len(self._sparse))
            counts = np.fromiter(self._sparse.values(), np.int64, len(self._sparse))
            return keys, counts
        chosen = []
        for t, p in zip(self._ticks, self._pairs, strict=True):
            if not len(t):
                continue
            if (lo is not None and t[-1] < lo and t.max() < lo) or (
                hi is not None and t[0] > hi and t.min() > hi
            ):
                continue
            mask = np.ones(len(t), bool)
            if lo is not None:
                mask &= t >= lo
            if hi is not None:
                mask &= t <= hi
            chosen.append(p[mask])
        if not chosen:
            empty = np.zeros(0, np.int64)
            return empty, empty
        keys, counts = np.unique(np.concatenate(chosen), return_counts=True)
        return keys.astype(np.int64), counts.astype(np.int64)

    def pairs_since(self, serial: int) -> list[npt.NDArray[np.int64]] | None:
        """The pair rows of the chunks added after chunk ``serial``; None if some of them
        are no longer kept."""
        if serial == self.serial:
            return []
        if not self._serials or self._serials[0] > serial + 1:
            return None
        start = serial + 1 - self._serials[0]
        return self._pairs[start:]

    def per_tick(self) -> npt.NDArray[np.int64]:
        """Messages per tick over the ticks kept (index 0 is :attr:`first_tick`)."""
        if not self._ticks or self.last_tick < self.first_tick:
            return np.zeros(0, np.int64)
        return self._per_tick[self.first_tick : self.last_tick + 1].copy()

    def run_per_tick(self) -> npt.NDArray[np.int64]:
        """Messages per tick over the whole run (index 0 is tick 0), kept as the records come
        (a refresh costs nothing like a count over every row)."""
        return self._per_tick[: self.last_tick + 1]

    def messages_of(self, agent: int, limit: int = 500) -> list[tuple[Any, ...]]:
        """The last ``limit`` message records kept that ``agent`` sent or received."""
        out: list[tuple[Any, ...]] = []
        for chunk, senders, receivers in reversed(self._kept):
            rows = np.flatnonzero((senders == agent) | (receivers == agent))
            out.extend(chunk[i] for i in rows[::-1].tolist())
            if len(out) >= limit:
                break
        return out[:limit][::-1]


@dataclass(slots=True)
class GraphNode:
    key: str  # the group's key, or the agent's name when expanded
    label: str
    members: tuple[int, ...]  # agent ids (empty for the runtime's node)
    folded: bool
    state: str  # the worst member's
    states: dict[str, int]
    x: float = 0.0
    y: float = 0.0
    radius: float = 10.0
    sent: int = 0
    received: int = 0
    internal: int = 0  # messages between members of a folded group


@dataclass(frozen=True, slots=True)
class GraphEdge:
    source: int  # node indices
    target: int
    count: int


@dataclass(slots=True)
class GraphLayout:
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    messages: int  # in the range, between all nodes
    hidden_edges: int = 0  # the lightest edges, left out past max_edges
    max_count: int = 1
    lo: int | None = None
    hi: int | None = None
    notes: list[str] = field(default_factory=list)

    def node_of(self, key: str) -> int:
        return next((i for i, n in enumerate(self.nodes) if n.key == key), -1)


class AgentGraph:
    """The agents, their groups and states, and a :class:`MessageHistory` of their messages."""

    def __init__(self, history: MessageHistory | None = None) -> None:
        self.history = history or MessageHistory()
        self.names: list[str] = []
        self.groups: list[str] = []  # group key per agent
        self.states: list[str] = []
        #: Groups the user folded or unfolded (overrides the rule of :data:`FOLD_ABOVE`).
        self.folding: dict[str, bool] = {}
        self._cache: tuple[tuple[int, bytes], int, npt.NDArray[np.int64]] | None = None
        self._range_cache: (
            tuple[
                tuple[int, int, int | None, int | None],
                npt.NDArray[np.int64],
                npt.NDArray[np.int64],
            ]
            | None
        ) = None

    def set_agents(
        self,
        names: Sequence[str],
        groups: Sequence[str] | None = None,
        states: Sequence[str] | None = None,
    ) -> None:
        """The run's agents, by id (a new set resets the history when its size changes)."""
        names = list(names)
        if len(names) != self.history.agents:
            self.history.reset(len(names))
        if names != self.names:
            self.folding = {}
        self.names = names
        given = list(groups) if groups is not None else [""] * len(names)
        self.groups = [group_key(n, g) for n, g in zip(names, given, strict=False)]
        self.groups += [group_key(n) for n in names[len(self.groups) :]]
        self.set_states(states if states is not None else ["loaded"] * len(names))

    def set_states(self, states: Sequence[str]) -> None:
        self.states = list(states)[: len(self.names)]
        self.states += ["loaded"] * (len(self.names) - len(self.states))

    def group_sizes(self) -> collections.Counter[str]:
        return collections.Counter(self.groups)

    def is_folded(self, group: str) -> bool:
        if group in self.folding:
            return self.folding[group]
        return len(self.names) > FOLD_ABOVE and self.group_sizes()[group] > 1

    def set_folded(self, group: str, folded: bool) -> None:
        self.folding[group] = folded

    def toggle(self, key: str) -> None:
        """Fold ``key``'s group (an agent's name or a group key), or unfold it."""
        group = key
        if key in self.names:
            group = self.groups[self.names.index(key)]
        self.set_folded(group, not self.is_folded(group))

    # -- building ---------------------------------------------------------------------------
    def build(
        self, lo: int | None = None, hi: int | None = None, *, max_edges: int = 1500
    ) -> GraphLayout:
        """Nodes, edges over ticks ``lo..hi`` and a circular layout."""
        sizes = self.group_sizes()
        keys: list[str] = []
        members: dict[str, list[int]] = {}
        folded_of: dict[str, bool] = {}
        node_of_agent = np.zeros(len(self.names) + 1, np.int64)
        folded_groups = {g: self.is_folded(g) for g in sizes}
        for agent, (name, group) in enumerate(zip(self.names, self.groups, strict=True)):
            key = group if folded_groups[group] else name
            if key not in members:
                members[key] = []
                folded_of[key] = folded_groups[group]
                keys.append(key)
            members[key].append(agent)
        order = sorted(keys, key=natural_key)
        index = {k: i for i, k in enumerate(order)}
        for key in order:
            for agent in members[key]:
                node_of_agent[agent + 1] = index[key]
        # The runtime's node is always numbered last; it is shown only if it sent anything.
        n = len(order) + 1
        node_of_agent[0] = n - 1
        edge_keys, weights = self._node_edges(node_of_agent, n, lo, hi)
        nodes = [self._node(k, members[k], folded_of[k]) for k in order]
        nodes.append(GraphNode(RUNTIME_NODE, RUNTIME_NODE, (), False, "runtime", {}))
        src, dst = edge_keys // n, edge_keys % n
        sent = np.bincount(src, weights=weights, minlength=n)
        received = np.bincount(dst, weights=weights, minlength=n)
        for i, node in enumerate(nodes):
            node.sent, node.received = int(sent[i]), int(received[i])
        if not nodes[-1].sent:
            nodes.pop()
        layout = GraphLayout(nodes, [], int(weights.sum()), lo=lo, hi=hi)
        if lo is not None and lo < self.history.first_tick:
            layout.notes.append(f"ticks before {self.history.first_tick} are no longer kept")
        loops = src == dst
        for k, w in zip(src[loops].tolist(), weights[loops].tolist(), strict=True):
            nodes[k].internal = int(w)
        edge_keys, weights = edge_keys[~loops], weights[~loops]
        if len(weights) > max_edges:
            keep = np.argsort(-weights, kind="stable")[:max_edges]
            layout.hidden_edges = len(weights) - max_edges
            edge_keys, weights = edge_keys[keep], weights[keep]
        layout.edges = [
            GraphEdge(k // n, k % n, w)
            for k, w in zip(edge_keys.tolist(), weights.tolist(), strict=True)
        ]
        layout.max_count = max((e.count for e in layout.edges), default=1) or 1
        _circle(nodes)
        return layout

    def _node_edges(
        self, node_of_agent: npt.NDArray[np.int64], n: int, lo: int | None, hi: int | None
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """``(source * n + target, count)`` per node pair with messages over ``lo..hi``.

        The whole run's is kept between calls as an ``n`` x ``n`` matrix (while the folding
        stays the same), and only the messages added since are counted into it: a live run's
        refresh costs what its new messages cost, not what the whole run's pairs do.
        """
        history = self.history
        width = history.width
        whole = lo is None and hi is None
        if whole and n * n <= 4_194_304:
            signature = (history.generation, node_of_agent.tobytes())
            cache = self._cache
            new = history.pairs_since(cache[1]) if cache and cache[0] == signature else None
            if cache is not None and new is not None:
                matrix = cache[2]
                for p in new:
                    np.add.at(matrix, node_of_agent[p // width] * n + node_of_agent[p % width], 1)
            else:
                pairs, counts = history.pair_counts()
                flat = node_of_agent[pairs // width] * n + node_of_agent[pairs % width]
                matrix = np.bincount(flat, weights=counts, minlength=n * n).astype(np.int64)
            self._cache = (signature, history.serial, matrix)
            keys = np.flatnonzero(matrix).astype(np.int64)
            return keys, matrix[keys]
        # A range that ended before the last tick seen is done: its counts are kept (a live
        # run's refresh, or a refold of a recorded one, does not count its rows again).
        key = (history.generation, history.first_tick, lo, hi)
        if self._range_cache is not None and self._range_cache[0] == key:
            pairs, counts = self._range_cache[1], self._range_cache[2]
        else:
            pairs, counts = history.pair_counts(lo, hi)
            done = hi is not None and hi < history.last_tick
            self._range_cache = (key, pairs, counts) if done else None
        if not len(pairs):
            return pairs, counts
        flat = node_of_agent[pairs // width] * n + node_of_agent[pairs % width]
        keys, inverse = np.unique(flat, return_inverse=True)
        return keys.astype(np.int64), np.bincount(inverse, weights=counts).astype(np.int64)

    def _node(self, key: str, agents: list[int], folded: bool) -> GraphNode:
        if len(agents) == 1:  # (most nodes of an unfolded graph: no Counter for them)
            state = self.states[agents[0]]
            return GraphNode(key, key, (agents[0],), folded, state, {state: 1})
        states = collections.Counter(self.states[a] for a in agents)
        worst = min(states, key=state_rank) if states else "loaded"
        if folded:
            bad = ", ".join(
                f"{c} {s}"
                for s, c in sorted(states.items(), key=lambda sc: state_rank(sc[0]))
                if s != "loaded"
            )
            label = f"{key} \N{MULTIPLICATION SIGN}{len(agents)}" + (f" ({bad})" if bad else "")
        else:
            label = key
        node = GraphNode(key, label, tuple(agents), folded, worst, dict(states))
        node.radius = 9.0 + (4.0 * math.log2(len(agents)) if folded else 0.0)
        return node


def labelled(node: GraphNode, nodes: int) -> bool:
    """Whether the graph names ``node`` (of ``nodes``) without it being hovered or chosen:
    every node of a small graph, only the folded groups of a large one."""
    return nodes < LABEL_ALL_BELOW or node.folded


def _circle(nodes: list[GraphNode]) -> None:
    """Nodes on a circle (one in the middle when alone), in order, each given an arc as long
    as its circle and its label need: a folded group's long label does not run over its
    neighbours, and the unlabelled members of an unfolded group sit close together."""
    n = len(nodes)
    if n == 1:
        nodes[0].x = nodes[0].y = 0.0
        return
    rooms = [
        2 * node.radius + (_LABEL_CHAR_PX * len(node.label) + 24 if labelled(node, n) else 6)
        for node in nodes
    ]
    total = sum(rooms)
    radius = max(120.0, total / (2 * math.pi))
    before = 0.0
    for node, room in zip(nodes, rooms, strict=True):
        angle = -math.pi / 2 + 2 * math.pi * (before + room / 2) / total
        before += room
        node.x = radius * math.cos(angle)
        node.y = radius * math.sin(angle)
