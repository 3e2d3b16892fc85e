"""The agent graph and the per-agent detail in the window, over a real live run and over a
recorded run from the run store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pytestqt.qtbot import QtBot

from qhybrid._resources import resource_path
from qhybrid.models import RuntimeController, SessionState
from qhybrid.views import MainWindow


def _scenario(tmp_path: Path, relays: int = 40, hops: int = 300) -> Path:
    path = tmp_path / "relays.toml"
    path.write_text(
        f"""
name = "relays"
seed = 5
[stop]
max_ticks = 400
timeout_s = 120
[[agents]]
name = "relay"
module = "{resource_path("agents", "relay.wat").as_posix()}"
count = {relays}
[[agents]]
name = "sink"
module = "{resource_path("agents", "sink.wat").as_posix()}"
[[messages]]
to = "relay"
kind = 1
payload_i64 = [{hops}, 0]
""",
        encoding="utf-8",
    )
    return path


def test_the_graph_and_the_detail_follow_a_live_run(qtbot: QtBot, tmp_path: Path) -> None:
    window = MainWindow(_scenario(tmp_path), controller=RuntimeController(workers=2, device="cpu"))
    qtbot.addWidget(window)
    window.show()
    window.central_tabs.setCurrentWidget(window.graph_panel)
    window.start_action.trigger()
    qtbot.waitUntil(lambda: window.controller.state in SessionState.ENDED, timeout=120_000)
    graph = window.debugger.graph
    assert len(graph.names) == 41 and window.debugger.live
    layout = window.graph_panel.rebuild()
    # 41 agents > FOLD_ABOVE: the relays fold into one node, the sink stays.
    assert [n.key for n in layout.nodes][:2] == ["relay", "sink"]
    relay = layout.nodes[0]
    assert relay.folded and relay.internal > 0  # relays pass the token among themselves
    delivered = window.controller.runtime.result.messages_delivered
    assert layout.messages == delivered == graph.history.messages
    assert "41 agents in" in window.graph_panel.info_label.text()
    # Double-click the group: every relay gets its node.
    window.graph_panel._activated("relay")
    assert len(window.graph_panel.rebuild().nodes) >= 41
    # Choosing an agent in the table shows it in the detail, with its fuel and memory.
    window.agents_view.table.selectRow(0)
    window.agents_view.table.setCurrentIndex(window.live.agents_filter.index(0, 0))
    detail = window.agent_detail
    name = graph.names[detail.agent]
    assert detail.report is not None and detail.report.title == name
    overview = detail.texts["overview"].toPlainText()
    assert "fuel used:" in overview and "in all" in overview and "limits: fuel" in overview
    assert "memory: 65,536 bytes" in overview or "memory: 131,072 bytes" in overview
    messages = detail.texts["messages"].toPlainText()
    assert (" in \N{LEFTWARDS ARROW} " in messages) or (" out \N{RIGHTWARDS ARROW} " in messages)
    # The agents table shows real figures too.
    fuel = window.live.agents.index(0, window.live.agents.FUEL).data()
    assert fuel not in ("\N{EM DASH}", None) and int(fuel.replace(",", "")) > 0
    window.close()


def test_the_graph_shows_a_recorded_run(
    qtbot: QtBot, tmp_path: Path, isolated_run_store: Path
) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "qhybrid",
            "--headless",
            str(_scenario(tmp_path, 6, 40)),
            "--store",
            str(isolated_run_store),
            "--device",
            "cpu",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(out.stdout)
    window = MainWindow(controller=RuntimeController(workers=1, device="cpu"))
    qtbot.addWidget(window)
    window.runs_panel.refresh()
    window.runs_panel.open_run(result["run_id"])
    debugger = window.debugger
    assert not debugger.live and result["run_id"] in debugger.source
    assert window.graph_panel.source_label.text() == debugger.source
    layout = window.graph_panel.rebuild()
    # 7 agents: nothing folded; every relay and the sink, and the runtime's first message.
    keys = [n.key for n in layout.nodes]
    assert keys == [*(f"relay-{i}" for i in range(6)), "sink", "(runtime)"]
    assert layout.messages == result["messages_delivered"]
    sink = layout.nodes[keys.index("sink")]
    assert sink.received > 0
    panel = window.graph_panel
    panel.set_range_mode("last")
    panel.last_ticks.setValue(5)
    ranged = panel.rebuild()
    assert 0 < ranged.messages < layout.messages
    # The ticks chosen on the Recorded runs tab's scrubber are the graph's: one tick's
    # messages, as many as the message inspector lists for it.
    inspector = window.message_inspector
    counts = debugger.tick_counts()
    busy = int(counts[1:].argmax()) + 1
    inspector.timeline.scrubber.setValue(busy)
    assert debugger.selection == (busy, busy) and panel.range_mode() == "chosen"
    one = panel.rebuild()
    assert one.messages == counts[busy] == inspector.filter.rowCount()
    assert f"over tick {busy}," in panel.info_label.text()
    assert panel.timeline.chosen_range() == (busy, busy)
    # A range chosen on the graph's own timeline: the edges count its ticks, exactly.
    panel.timeline.set_range((2, 9))
    panel.timeline._region_moved(panel.timeline.region)
    assert debugger.selection == (2, 9)
    span = panel.rebuild()
    assert span.messages == int(counts[2:10].sum())
    inspector.tick_spin.setValue(-1)  # "all ticks" there: the whole run here
    assert panel.range_mode() == "all" and panel.rebuild().messages == layout.messages
    window.agent_detail.show_agent(keys.index("sink"))
    overview = window.agent_detail.texts["overview"].toPlainText()
    assert overview.startswith("sink") and "handled" in overview
    window.close()


def test_a_thousand_agents_read_as_coloured_groups_and_unfold_on_demand(qtbot: QtBot) -> None:
    """1000 agents in four groups (one with failed members) and a sink, at 1100x720's room:
    a node per group, named with its size, coloured by its worst member; one unfolds on a
    double click; the edges count the ticks chosen on the graph's timeline."""
    from PySide6.QtCore import QPointF, Qt
    from PySide6.QtGui import QColor

    from qhybrid.models import DebuggerModels
    from qhybrid.views._graph import NODE_COLOURS, GraphPanel

    groups = (("ring", 500), ("mesh", 300), ("fan", 190), ("spare", 9))
    names = [f"{g}-{i}" for g, n in groups for i in range(n)] + ["sink"]
    states = ["loaded"] * len(names)
    states[names.index("spare-3")] = "failed"
    controller = RuntimeController(workers=1, device="cpu")
    debugger = DebuggerModels(controller)
    debugger.live = False
    graph = debugger.graph
    graph.set_agents(names, [n.rsplit("-", 1)[0] for n in names], states)
    first = {g: names.index(f"{g}-0") for g, _n in groups}
    records = []
    for tick in range(50):
        for g, n in groups:  # each group passes a token round among itself, then reports
            a = first[g] + tick % n
            records.append(("ok", tick, len(records), a, first[g] + (tick + 1) % n, 1, b"", 0))
            if tick % 10 == 9:
                records.append(("ok", tick, len(records), a, len(names) - 1, 2, b"", 0))
    graph.history.add_records(records)
    panel = GraphPanel(debugger)
    qtbot.addWidget(panel)
    panel.resize(690, 430)
    panel.show()
    qtbot.waitExposed(panel)
    layout = panel.rebuild()
    assert [n.key for n in layout.nodes] == ["fan", "mesh", "ring", "sink", "spare"]
    spare = layout.nodes[layout.node_of("spare")]
    assert (
        spare.folded
        and spare.state == "failed"
        and "\N{MULTIPLICATION SIGN}9 (1 failed)" in (spare.label)
    )
    image = panel.canvas.grab().toImage()
    for node in layout.nodes:  # each node painted in its state's colour, its label shown
        p = panel.canvas._to_screen(node.x, node.y)
        colour = image.pixelColor(round(p.x()), round(p.y()))
        assert colour == QColor(NODE_COLOURS[node.state]), (node.key, colour.name())
    assert panel.canvas.labels_drawn == len(layout.nodes)
    assert "1,000 agents in 5 nodes" in panel.info_label.text()
    # A double click unfolds "spare": its nine agents, the failed one in its colour.
    p = panel.canvas._to_screen(spare.x, spare.y)
    qtbot.mouseDClick(panel.canvas, Qt.MouseButton.LeftButton, pos=QPointF(p).toPoint())
    unfolded = panel.canvas.layout_
    assert unfolded is not None and len(unfolded.nodes) == 4 + 9
    assert unfolded.nodes[unfolded.node_of("spare-3")].state == "failed"
    # Ticks 10-19 chosen on the timeline: the sink got one report per group then.
    panel.timeline.set_range((10, 19))
    panel.timeline._region_moved(panel.timeline.region)
    ranged = panel.rebuild()
    sink = ranged.nodes[ranged.node_of("sink")]
    assert sink.received == 4 and ranged.messages == 4 * 10 + 4
    assert "over ticks 10\N{EN DASH}19" in panel.info_label.text()
    panel.close()
    debugger.close()
    assert controller.shutdown()
