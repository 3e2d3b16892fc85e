"""The fork dialog: a new run from a recorded run's state at a tick, with another seed, config
overrides (``--set``), replaced modules and another model: ``qhybrid fork``'s options."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

__all__ = ["ForkDialog", "fork_arguments"]


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def fork_arguments(
    run_id: str,
    tick: int,
    *,
    seed: int | None = None,
    sets: str = "",
    modules: str = "",
    model: str = "",
) -> tuple[list[str], str | None]:
    """``qhybrid fork`` arguments and ``None``, or ``[]`` and what is wrong (which line)."""
    args = [run_id, "--at", str(tick)]
    if seed is not None:
        args += ["--seed", str(seed)]
    for i, line in enumerate(_lines(sets), 1):
        key, sep, _value = line.partition("=")
        if not sep or len(key.split(".")) < 3 or key.split(".")[1] != "config":
            return [], f"config override line {i} ({line!r}): expected GROUP.config.KEY=VALUE"
        args += ["--set", line]
    for i, line in enumerate(_lines(modules), 1):
        group, sep, path = line.partition("=")
        if not sep or not group.strip() or not path.strip():
            return [], f"module line {i} ({line!r}): expected GROUP=PATH"
        if not Path(path.strip()).expanduser().is_file():
            return [], f"module line {i}: no such file {path.strip()}"
        args += ["--module", f"{group.strip()}={Path(path.strip()).expanduser()}"]
    if model.strip():
        if not Path(model.strip()).expanduser().is_file():
            return [], f"model: no such file {model.strip()}"
        args += ["--model", str(Path(model.strip()).expanduser())]
    return args, None


class ForkDialog(QDialog):
    """Asks for the fork's tick and changes; :meth:`arguments` gives ``qhybrid fork``'s."""

    def __init__(
        self,
        run: dict[str, object],
        tick: int,
        groups: list[str] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("fork_dialog")
        self.run_id = str(run["run_id"])
        self.setWindowTitle(f"Fork run {self.run_id}")
        self.tick = QSpinBox(self)
        self.tick.setObjectName("fork_tick")
        self.tick.setRange(0, max(int(str(run.get("last_tick") or 0)), tick, 0))
        self.tick.setValue(tick)
        self.new_seed = QCheckBox("another seed", self)
        self.new_seed.setObjectName("fork_new_seed")
        self.new_seed.setChecked(True)
        self.seed = QSpinBox(self)
        self.seed.setObjectName("fork_seed")
        self.seed.setRange(0, 2_000_000_000)
        self.seed.setValue(int(str(run.get("seed") or 0)) + 1)
        self.new_seed.toggled.connect(self.seed.setEnabled)
        seed_row = QHBoxLayout()
        seed_row.addWidget(self.new_seed)
        seed_row.addWidget(self.seed, 1)
        hint = ", ".join(groups or []) or "GROUP"
        self.sets = QPlainTextEdit(self)
        self.sets.setObjectName("fork_sets")
        self.sets.setPlaceholderText(f"one per line: GROUP.config.KEY=VALUE  (groups: {hint})")
        self.sets.setMaximumHeight(70)
        self.modules = QPlainTextEdit(self)
        self.modules.setObjectName("fork_modules")
        self.modules.setPlaceholderText("one per line: GROUP=PATH to a .wasm, .wat or .py")
        self.modules.setMaximumHeight(60)
        browse = QPushButton("Add module\N{HORIZONTAL ELLIPSIS}", self)
        browse.clicked.connect(self._browse_module)
        self.model = QLineEdit(self)
        self.model.setObjectName("fork_model")
        self.model.setPlaceholderText("another GGUF model (empty: the run's own)")
        self.problem = QLabel(self)
        self.problem.setObjectName("fork_problem")
        self.problem.setWordWrap(True)
        self.problem.setStyleSheet("color: #D55E00")
        form = QFormLayout()
        form.addRow("From tick", self.tick)
        form.addRow("Seed", seed_row)
        form.addRow("Config overrides", self.sets)
        modules_row = QVBoxLayout()
        modules_row.addWidget(self.modules)
        modules_row.addWidget(browse)
        form.addRow("Replace modules", modules_row)
        form.addRow("Model", self.model)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self
        )
        ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        ok.setText("Fork")
        ok.setObjectName("fork_ok")
        self.buttons.accepted.connect(self._accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(
            QLabel(
                f"A new run, recorded in the store: run {self.run_id} up to the tick, then "
                "live with these changes.",
                self,
            )
        )
        layout.addLayout(form)
        layout.addWidget(self.problem)
        layout.addWidget(self.buttons)
        self.resize(520, 400)

    def arguments(self) -> tuple[list[str], str | None]:
        return fork_arguments(
            self.run_id,
            self.tick.value(),
            seed=self.seed.value() if self.new_seed.isChecked() else None,
            sets=self.sets.toPlainText(),
            modules=self.modules.toPlainText(),
            model=self.model.text(),
        )

    def _accept(self) -> None:
        _args, problem = self.arguments()
        if problem is not None:
            self.problem.setText(problem)
            return
        self.accept()

    def _browse_module(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Module", "", "Agents (*.wasm *.wat *.py);;All files (*)"
        )
        if path:
            text = self.modules.toPlainText().rstrip()
            self.modules.setPlainText((text + "\n" if text else "") + f"GROUP={path}")
