"""The Server panel: start serving from the window, a real client's request shows in the
counters, stop; a model that cannot be served shows why."""

from __future__ import annotations

import httpx
from pytestqt.qtbot import QtBot

from qhybrid.models import ServerModel, ServerState
from qhybrid.views import ServerPanel


def test_start_serve_count_and_stop(qtbot: QtBot) -> None:
    model = ServerModel(poll_ms=50)
    panel = ServerPanel(model)
    qtbot.addWidget(panel)
    panel.port_spin.setValue(0)
    panel.slots_spin.setValue(2)
    try:
        panel.button.click()
        assert not panel.button.isEnabled()  # loading
        qtbot.waitUntil(lambda: model.state == ServerState.SERVING, timeout=60_000)
        assert panel.button.text() == "Stop serving" and model.url in panel.status.text()
        r = httpx.post(
            model.url + "/v1/completions",
            json={"prompt": "Once upon a time", "max_tokens": 6, "temperature": 0},
            timeout=60,
        )
        assert r.status_code == 200
        qtbot.waitUntil(
            lambda: model.stats.requests == 1 and model.stats.tokens == 6, timeout=10_000
        )
        assert "1 requests" in panel.stats.text() and "6 tokens" in panel.stats.text()
        panel.button.click()
        qtbot.waitUntil(lambda: model.state == ServerState.STOPPED, timeout=60_000)
        assert panel.button.text() == "Start serving" and panel.model_edit.isEnabled()
    finally:
        model.close()


def test_a_bad_model_shows_the_reason(qtbot: QtBot) -> None:
    model = ServerModel()
    panel = ServerPanel(model)
    qtbot.addWidget(panel)
    panel.model_edit.setText("no-such-model-here")
    panel.port_spin.setValue(0)
    try:
        panel.button.click()
        qtbot.waitUntil(lambda: model.state == ServerState.FAILED, timeout=60_000)
        assert "no-such-model-here" in panel.status.text()
        assert panel.button.isEnabled() and panel.button.text() == "Start serving"
    finally:
        model.close()
