"""The agent graph's model: edges weighted by message count over a tick range, groups folded
at a thousand agents (and unfolded on demand), states coloured by the worst member."""

from __future__ import annotations

import time

import numpy as np

from qhybrid.models import FOLD_ABOVE, AgentGraph, MessageHistory, group_key, parse_trace_lines
from qhybrid.models._graph import RUNTIME_NODE


def _ok(tick: int, seq: int, sender: int, receiver: int, payload: bytes = b"") -> tuple:
    return ("ok", tick, seq, sender, receiver, 1, payload, 0)


def test_group_keys_come_from_the_scenario_group_or_the_name() -> None:
    assert group_key("relay-17", "relay") == "relay"
    assert group_key("relay-17") == "relay"
    assert group_key("sink", "sink") == "sink"
    assert group_key("7") == "7"


def test_edges_count_messages_between_agents_over_the_chosen_ticks() -> None:
    graph = AgentGraph()
    graph.set_agents(["a", "b", "c"], ["a", "b", "c"])
    graph.history.add_records(
        [
            _ok(0, 0, -1, 0),
            _ok(1, 1, 0, 1),
            _ok(1, 2, 0, 1),
            ("log", 2, 3, 20, "hi"),
            _ok(2, 3, 1, 2),
            _ok(3, 4, 2, 0),
            ("end", "completed", 3),
        ]
    )
    whole = graph.build()
    assert graph.history.messages == 5 and whole.messages == 5
    names = [n.key for n in whole.nodes]
    assert names == ["a", "b", "c", RUNTIME_NODE]  # the runtime sent the first message
    edges = {(names[e.source], names[e.target]): e.count for e in whole.edges}
    assert edges == {(RUNTIME_NODE, "a"): 1, ("a", "b"): 2, ("b", "c"): 1, ("c", "a"): 1}
    assert whole.max_count == 2
    ranged = graph.build(1, 2)
    names = [n.key for n in ranged.nodes]
    assert {(names[e.source], names[e.target]): e.count for e in ranged.edges} == {
        ("a", "b"): 2,
        ("b", "c"): 1,
    }
    # The log line belongs to the message of the same tick and seq: c's (b -> c).
    assert list(graph.history.logs[2]) == [(2, 20, "hi")]
    assert [r[2] for r in graph.history.messages_of(1)] == [1, 2, 3]


def test_a_thousand_agents_fold_into_groups_that_unfold_on_demand() -> None:
    n = 1000
    names = [f"relay-{i}" for i in range(n)] + ["sink"]
    graph = AgentGraph()
    states = ["loaded"] * (n + 1)
    states[17] = "failed"
    graph.set_agents(names, ["relay"] * n + ["sink"], states)
    rng = np.random.default_rng(1)
    records = [
        _ok(t, i, int(rng.integers(n)), int(rng.integers(n))) for t in range(20) for i in range(n)
    ]
    records += [_ok(20, i, i, n) for i in range(n)]  # every relay reports to the sink
    graph.history.add_records(records)
    assert len(names) > FOLD_ABOVE
    t0 = time.perf_counter()
    layout = graph.build()
    build_s = time.perf_counter() - t0
    assert [node.key for node in layout.nodes] == ["relay", "sink"]
    relay, sink = layout.nodes
    assert relay.folded and len(relay.members) == n and relay.state == "failed"
    assert "1 failed" in relay.label and "\N{MULTIPLICATION SIGN}1000" in relay.label
    assert relay.internal == 20 * n  # relay-to-relay messages stay inside the folded node
    assert [(e.source, e.target, e.count) for e in layout.edges] == [(0, 1, n)]
    assert sink.received == n
    assert build_s < 1.0, build_s  # (generous: a shared CI machine)
    # Unfolding the group shows every relay; folding it again goes back.
    graph.toggle("relay")
    unfolded = graph.build(max_edges=500)
    assert len(unfolded.nodes) == n + 1
    assert len(unfolded.edges) == 500 and unfolded.hidden_edges > 0
    assert unfolded.nodes[unfolded.node_of("relay-17")].state == "failed"
    graph.toggle("relay-5")
    assert [node.key for node in graph.build().nodes] == ["relay", "sink"]
    # Same run, same picture.
    again = graph.build()
    assert [(n.x, n.y) for n in again.nodes] == [(n.x, n.y) for n in graph.build().nodes]


def test_the_history_drops_old_rows_but_keeps_the_whole_runs_totals() -> None:
    history = MessageHistory(max_rows=100)
    graph = AgentGraph(history)
    graph.set_agents(["a", "b"])
    for tick in range(10):
        history.add_records([_ok(tick, i, 0, 1) for i in range(30)])
    assert history.rows <= 100 + 30 and history.first_tick > 0
    assert graph.build().edges[0].count == 300  # all ticks: from the totals
    recent = graph.build(history.first_tick, 9)
    assert recent.edges[0].count == 30 * (10 - history.first_tick)
    assert graph.build(0, 9).notes  # says that early ticks are gone


def test_recorded_trace_lines_parse_into_the_same_records() -> None:
    lines = [
        (0, 0, repr(("ok", 0, 0, -1, 0, 1, b"hi", 1))),
        (1, 0, repr(("task", 0, 1, "t"))),
        (2, 1, repr(("agent-failed", 1, 2, 0, "out of fuel (limit 5 per message)"))),
    ]
    records = parse_trace_lines(lines)
    assert records == [
        ("ok", 0, 0, -1, 0, 1, b"hi", 1),
        ("agent-failed", 1, 2, 0, "out of fuel (limit 5 per message)"),
    ]
    history = MessageHistory(1)
    history.add_records(records)
    assert history.errors[0] == [(1, "out of fuel (limit 5 per message)")]


def test_a_live_graph_counts_only_new_messages_and_agrees_with_a_fresh_count() -> None:
    n = 1000
    names = [f"relay-{i}" for i in range(n)] + ["sink"]
    rng = np.random.default_rng(2)

    def tick(t: int) -> list[tuple]:
        senders = rng.integers(-1, n, n).tolist()
        receivers = rng.integers(0, n + 1, n).tolist()
        return [
            ("ok", t, i, s, r, 1, b"", 0)
            for i, (s, r) in enumerate(zip(senders, receivers, strict=True))
        ]

    live = AgentGraph()
    live.set_agents(names, ["relay"] * n + ["sink"])
    everything: list[tuple] = []
    for t in range(200):  # some 180,000 distinct pairs
        records = tick(t)
        everything += records
        live.history.add_records(records)
    live.build()
    records = tick(200)
    everything += records
    live.history.add_records(records)
    t0 = time.perf_counter()
    layout = live.build()  # one tick's messages to add
    incremental_s = time.perf_counter() - t0
    fresh = AgentGraph()
    fresh.set_agents(names, ["relay"] * n + ["sink"])
    fresh.history.add_records(everything)
    expected = fresh.build()
    assert [(e.source, e.target, e.count) for e in layout.edges] == [
        (e.source, e.target, e.count) for e in expected.edges
    ]
    assert [(x.key, x.internal, x.sent) for x in layout.nodes] == [
        (x.key, x.internal, x.sent) for x in expected.nodes
    ]
    assert layout.messages == 201 * n
    assert incremental_s < 0.5, incremental_s  # (generous: a shared CI machine)
    # Unfolding changes what a node is: counted again from the totals, still the same.
    live.toggle("relay")
    fresh.toggle("relay")
    assert [(e.source, e.target, e.count) for e in live.build().edges] == [
        (e.source, e.target, e.count) for e in fresh.build().edges
    ]


def test_a_past_range_is_counted_once_and_stays_right_as_ticks_come_and_groups_fold() -> None:
    graph = AgentGraph()
    names = [f"relay-{i}" for i in range(30)] + ["sink"]
    graph.set_agents(names, ["relay"] * 30 + ["sink"])
    history = graph.history
    for t in range(10):
        history.add_records([_ok(t, i, i % 30, 30) for i in range(t + 1)])
    folded = graph.build(2, 4)
    assert folded.messages == 3 + 4 + 5 and graph._range_cache is not None
    history.add_records([_ok(10, 0, 0, 30)])  # a later tick
    assert graph.build(2, 4).messages == 12  # (from the kept counts)
    graph.toggle("relay")
    unfolded = graph.build(2, 4)
    assert unfolded.messages == 12 and len(unfolded.nodes) == 31
    sink = unfolded.nodes[unfolded.node_of("sink")]
    assert sink.received == 12
    live = graph.build(9, 10)  # reaches the last tick: counted afresh each time
    history.add_records([_ok(10, 1, 2, 30)])
    assert graph.build(9, 10).messages == live.messages + 1
