"""The agents table shows the fuel and memory the workers report (no more "—")."""

from __future__ import annotations

from pytestqt.qtbot import QtBot


def test_fuel_and_memory_columns_show_and_sort_by_the_reported_values(qtbot: QtBot) -> None:
    from PySide6.QtCore import Qt

    from qhybrid.models import SORT_ROLE, AgentsFilterModel, AgentsTableModel
    from qhybrid.runtime import AgentSummary

    model = AgentsTableModel()
    model.update_agents(
        [
            AgentSummary("a", "m.wat", 0, "loaded", 2, None, 0, "a", 12_000, 5_000, 131072),
            AgentSummary("b", "m.wat", 1, "loaded", 1, None, 0, "b", 900, 900, 65536),
            AgentSummary("py", "p.py", 0, "loaded", 1, None, 0, "py", None, None, 65536),
        ]
    )
    fuel = [model.index(r, AgentsTableModel.FUEL).data() for r in range(3)]
    memory = [model.index(r, AgentsTableModel.MEMORY).data() for r in range(3)]
    assert fuel == ["12,000", "900", "\N{EM DASH}"]
    assert memory == ["128 KiB", "64 KiB", "64 KiB"]
    tip = model.index(0, AgentsTableModel.FUEL).data(Qt.ItemDataRole.ToolTipRole)
    assert "12,000 in all" in tip and "5,000 in its last tick" in tip
    assert "not metered" in model.index(2, AgentsTableModel.FUEL).data(Qt.ItemDataRole.ToolTipRole)
    proxy = AgentsFilterModel()
    proxy.setSourceModel(model)
    proxy.sort(AgentsTableModel.FUEL, Qt.SortOrder.DescendingOrder)
    assert [proxy.index(r, 0).data() for r in range(3)] == ["a", "b", "py"]
    assert proxy.index(0, AgentsTableModel.FUEL).data(SORT_ROLE) == 12_000
    # A new tick's figures update the cells in place (one dataChanged, no reset).
    with qtbot.waitSignal(model.dataChanged):
        changed = model.update_agents(
            [
                AgentSummary("a", "m.wat", 0, "loaded", 3, None, 0, "a", 17_000, 5_000, 131072),
                AgentSummary("b", "m.wat", 1, "loaded", 1, None, 0, "b", 900, 900, 65536),
                AgentSummary("py", "p.py", 0, "loaded", 1, None, 0, "py", None, None, 65536),
            ]
        )
    assert changed == 1
    assert model.index(0, AgentsTableModel.FUEL).data() == "17,000"
