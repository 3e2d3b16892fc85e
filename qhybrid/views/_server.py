"""The Server panel: serve a model over HTTP (OpenAI and Ollama APIs) from the window."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from qhybrid.models import ServerModel, ServerState
from qhybrid.serve import ServeOptions

__all__ = ["ServerPanel"]


class ServerPanel(QWidget):
    """Model, port and slots; Start/Stop; the URL, requests, tokens/s and clients connected."""

    def __init__(self, server: ServerModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("server_panel")
        self.server = server
        self.model_edit = QLineEdit(self)
        self.model_edit.setObjectName("server_model")
        self.model_edit.setPlaceholderText("GGUF file or `qhybrid models` name (default: shipped)")
        self.port_spin = QSpinBox(self)
        self.port_spin.setObjectName("server_port")
        self.port_spin.setRange(0, 65535)
        self.port_spin.setValue(8080)
        self.port_spin.setToolTip("0: any free port")
        self.slots_spin = QSpinBox(self)
        self.slots_spin.setObjectName("server_slots")
        self.slots_spin.setRange(1, 256)
        self.slots_spin.setValue(8)
        self.button = QPushButton("Start serving", self)
        self.button.setObjectName("server_toggle")
        self.button.clicked.connect(self.toggle)
        self.status = QLabel("Stopped", self)
        self.status.setObjectName("server_status")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(
            self.status.textInteractionFlags().TextSelectableByMouse
        )
        self.stats = QLabel("", self)
        self.stats.setObjectName("server_stats")
        form = QFormLayout()
        form.addRow("Model:", self.model_edit)
        ports = QHBoxLayout()
        ports.addWidget(self.port_spin)
        ports.addWidget(QLabel("Slots:", self))
        ports.addWidget(self.slots_spin)
        form.addRow("Port:", ports)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(form)
        layout.addWidget(self.button)
        layout.addWidget(self.status)
        layout.addWidget(self.stats)
        layout.addStretch(1)
        server.state_changed.connect(self._state_changed)
        server.stats_changed.connect(self._stats_changed)
        self._state_changed(server.state, "")

    def options(self) -> ServeOptions:
        model = self.model_edit.text().strip()
        return ServeOptions(
            models=(model,) if model else (),
            port=self.port_spin.value(),
            slots=self.slots_spin.value(),
        )

    def toggle(self) -> None:
        if self.server.state == ServerState.SERVING:
            self.server.stop()
        else:
            self.server.start(self.options())

    def _state_changed(self, state: str, detail: str) -> None:
        serving = state == ServerState.SERVING
        busy = state in (ServerState.STARTING, ServerState.STOPPING)
        self.button.setText("Stop serving" if serving else "Start serving")
        self.button.setEnabled(not busy)
        for w in (self.model_edit, self.port_spin, self.slots_spin):
            w.setEnabled(state in (ServerState.STOPPED, ServerState.FAILED))
        text = {
            ServerState.STOPPED: "Stopped",
            ServerState.STARTING: "Loading the model\N{HORIZONTAL ELLIPSIS}",
            ServerState.SERVING: f"Serving at {detail}/v1 (OpenAI) and {detail}/api (Ollama)",
            ServerState.STOPPING: "Stopping\N{HORIZONTAL ELLIPSIS}",
            ServerState.FAILED: f"Failed: {detail}",
        }.get(state, state)
        self.status.setText(text)
        if not serving:
            self.stats.setText("")

    def _stats_changed(self) -> None:
        s = self.server.stats
        self.stats.setText(
            f"{s.requests} requests, {s.in_flight} in flight, {s.clients} clients connected, "
            f"{s.tokens} tokens, {s.tok_s:.1f} tokens/s"
        )
