"""Agents that failed or were skipped stand out in the agents table."""

from __future__ import annotations

from pytestqt.qtbot import QtBot


def test_failed_and_skipped_agents_stand_out_in_the_table(qtbot: QtBot) -> None:
    from PySide6.QtWidgets import QStyleOptionViewItem

    from qhybrid.models import AgentsTableModel, LiveModels, RuntimeController
    from qhybrid.runtime import AgentSummary
    from qhybrid.views._tables import STATE_COLOURS, AgentsView

    controller = RuntimeController()
    live = LiveModels(controller)
    view = AgentsView(live)
    qtbot.addWidget(view)
    live.agents.update_agents(
        [
            AgentSummary("a", "m.wat", 0, "loaded", 1, None),
            AgentSummary("b", "m.wat", 0, "failed", 1, "out of fuel"),
            AgentSummary("c", "m.wat", 0, "skipped", 1, "out of fuel"),
        ]
    )
    colours = []
    for row in range(3):
        option = QStyleOptionViewItem()
        index = live.agents_filter.index(row, AgentsTableModel.STATE)
        view.state_delegate.initStyleOption(option, index)
        colours.append((index.data(), option.palette.text().color().name(), option.font.bold()))
    by_state = {state: (colour, bold) for state, colour, bold in colours}
    assert by_state["failed"] == (STATE_COLOURS["failed"].lower(), True)
    assert by_state["skipped"] == (STATE_COLOURS["skipped"].lower(), True)
    assert by_state["loaded"][1] is False
    live.close()
    assert controller.shutdown()
