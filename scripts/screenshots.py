"""Screenshots of every view of the window, mid-run and on a recorded run, at two sizes.

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/screenshots.py OUT_DIR
    QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/screenshots.py OUT_DIR

For each size (``--sizes 1100x720,1920x1080``): a long variant of the demo scenario is started
and, mid-run (ticks going by, the LLM agents streaming), the window is saved once per central
tab and once per dock (each raised in turn), plus a chart with the cursor over it; the run is
stopped; then a run recorded beforehand (``qhybrid --headless`` into a fresh run store) is
opened in the Recorded runs tab and every view is saved again. The chat's Model tab has a real
conversation first when a real model is cached (SmolLM2, ``qhybrid models``). Docks and tabs
are found at run time, so views added later are included. Settings, run store and chats live
in a temporary folder: the user's are never read or written. Prints each file written.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _long_demo(folder: Path) -> Path:
    """The demo with longer chains and no early end, its paths made absolute."""
    text = (ROOT / "resources" / "scenarios" / "demo.toml").read_text("utf-8")
    text = text.replace('"../', f'"{(ROOT / "resources").as_posix()}/')
    text = text.replace("max_ticks = 1000", "max_ticks = 1000000")
    text = text.replace("payload_i64 = [40, 0]", "payload_i64 = [100000, 0]")
    text = text.replace('name = "demo"', 'name = "demo-long"')
    path = folder / "demo-long.toml"
    path.write_text(text, "utf-8")
    return path


def _thousand(folder: Path) -> Path:
    """A thousand relay agents in four groups, passing tokens within their group and
    reporting to one sink: the agent graph's case of many agents."""
    relay = (ROOT / "resources" / "agents" / "relay.wat").as_posix()
    sink = (ROOT / "resources" / "agents" / "sink.wat").as_posix()
    groups = (("ring", 500), ("mesh", 300), ("fan", 190), ("spare", 9))
    text = 'name = "thousand"\nseed = 11\n[stop]\nmax_ticks = 60\n'
    for name, count in groups:
        text += f'[[agents]]\nname = "{name}"\nmodule = "{relay}"\ncount = {count}\n'
    text += f'[[agents]]\nname = "sink"\nmodule = "{sink}"\n'
    for name, _count in groups:
        text += f'[[messages]]\nto = "{name}"\nkind = 1\npayload_i64 = [50, 0]\n'
    path = folder / "thousand.toml"
    path.write_text(text, "utf-8")
    return path


def _record_a_run(store: Path, env: dict[str, str], scenario: Path | None = None) -> None:
    scenario = scenario or ROOT / "resources" / "scenarios" / "demo.toml"
    cmd = [sys.executable, "-m", "qhybrid", "--headless", "--device", "cpu", "--store", str(store)]
    subprocess.run([*cmd, str(scenario)], env=env, check=True, capture_output=True, timeout=300)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the folder the PNG files go to")
    parser.add_argument("--sizes", default="1100x720,1920x1080")
    parser.add_argument("--no-chat", action="store_true", help="no real model in the chat")
    args = parser.parse_args(argv)
    sizes = []
    for size in args.sizes.split(","):
        match = re.fullmatch(r"(\d+)x(\d+)", size.strip())
        if match is None:
            parser.error(f"--sizes: {size!r} is not WIDTHxHEIGHT")
        sizes.append((int(match[1]), int(match[2])))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix="qhybrid-shots-"))
    env = dict(os.environ)
    env.update(
        XDG_CONFIG_HOME=str(work / "config"),
        XDG_DATA_HOME=str(work / "data"),
        QHYBRID_STORE=str(work / "runs.sqlite"),
    )
    env.pop("QHYBRID_DEVICE", None)
    os.environ.update(env)
    _record_a_run(work / "runs.sqlite", env)
    _record_a_run(work / "runs.sqlite", env, _thousand(work))
    scenario = _long_demo(work)
    return _shoot(out, sizes, scenario, chat=not args.no_chat)


def _shoot(out: Path, sizes: list[tuple[int, int]], scenario: Path, *, chat: bool) -> int:
    from PySide6.QtCore import QPointF
    from PySide6.QtWidgets import QApplication, QDockWidget

    from qhybrid.models import RuntimeController, SessionState
    from qhybrid.views import MainWindow

    app = QApplication(["qhybrid"])
    QApplication.setApplicationName("qhybrid")
    QApplication.setOrganizationName("qhybrid")
    _say(f"platform: {app.platformName()}")

    def wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise SystemExit(f"screenshots: timed out waiting for {what}")
            app.processEvents()
            time.sleep(0.01)

    def settle(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.01)

    written: list[Path] = []

    def save(window: MainWindow, name: str) -> None:
        settle(0.15)
        path = out / f"{name}.png"
        window.grab().save(str(path), "PNG")
        written.append(path)
        _say(str(path))

    def every_view(window: MainWindow, prefix: str) -> None:
        _choose_an_agent(window)
        save(window, f"{prefix}-window")
        tabs = window.central_tabs
        for i in range(tabs.count()):
            tabs.setCurrentIndex(i)
            save(window, f"{prefix}-tab-{_slug(tabs.tabText(i))}")
        tabs.setCurrentIndex(0 if prefix.endswith("live") else tabs.count() - 1)
        for dock in window.findChildren(QDockWidget):
            if not dock.toggleViewAction().isChecked():
                dock.show()
            dock.raise_()
            chat_tabs = getattr(window, "chat_tabs", None)
            if dock.widget() is chat_tabs and chat_tabs is not None:
                for i in range(chat_tabs.count()):
                    chat_tabs.setCurrentIndex(i)
                    save(window, f"{prefix}-dock-chat-{_slug(chat_tabs.tabText(i))}")
                chat_tabs.setCurrentIndex(0)
            else:
                save(window, f"{prefix}-dock-{_slug(dock.windowTitle())}")

    for width, height in sizes:
        size = f"{width}x{height}"
        window = MainWindow(controller=RuntimeController(workers=2, device="cpu"))
        window.resize(width, height)
        window.show()
        settle(0.3)
        if chat:
            _chat_with_a_real_model(window, wait)
        window.set_scenario_path(scenario)
        save(window, f"{size}-0-before-start")
        window.start()
        controller = window.controller
        wait(lambda c=controller: c.state == SessionState.RUNNING, 120, "the run to start")
        wait(lambda c=controller: c.runtime is not None and c.runtime.tick > 30, 120, "ticks")
        settle(1.0)  # the charts fill a little
        every_view(window, f"{size}-1-live")
        window.central_tabs.setCurrentWidget(window.charts)
        settle(0.2)
        plot = window.charts.plots["Throughput"]
        view = plot.getViewBox()
        (x_low, x_high), (y_low, y_high) = view.viewRange()
        window.charts.hover_at(
            view.mapViewToScene(QPointF(x_low + (x_high - x_low) * 0.7, (y_low + y_high) / 2))
        )
        save(window, f"{size}-1-live-chart-hover")
        window.charts.clear_hover()
        window.controller.stop()
        wait(lambda c=controller: c.state in SessionState.ENDED, 60, "the run to stop")
        save(window, f"{size}-2-stopped")
        runs = window.runs_panel
        window.central_tabs.setCurrentWidget(window.runs_split)
        runs.refresh()
        wait(lambda m=window.runs_model: m.rowCount() > 0, 30, "the recorded runs")
        # The demo run recorded headlessly (the window's own run may be recorded too).
        recorded = window.runs_model.runs
        found = [r for r in recorded if r.get("scenario_name") == "demo"]
        run = (found or recorded)[0]
        window.runs_panel.select(str(run["run_id"]))
        runs.open_run(str(run["run_id"]))
        window.message_inspector.tick_spin.setValue(12)  # a tick with messages, scrubbed to
        state = window.state_panel.model
        settle(0.5)  # (the state panel waits for the scrubber to rest, then replays)
        wait(lambda m=state: not m.busy, 120, "the state at tick 12")
        every_view(window, f"{size}-3-recorded")
        # A thousand agents: folded by group, one group unfolded, a range of ticks chosen.
        found = [r for r in recorded if r.get("scenario_name") == "thousand"]
        if found:
            runs.select(str(found[0]["run_id"]))
            runs.open_run(str(found[0]["run_id"]))
            graph = window.graph_panel
            window.central_tabs.setCurrentWidget(graph)
            save(window, f"{size}-4-thousand-graph-folded")
            window.debugger.graph.toggle("spare")
            graph.canvas.fit()
            graph._changed()
            window.debugger.select_ticks(20, 35)
            save(window, f"{size}-4-thousand-graph-unfolded-spare-ticks-20-35")
            window.debugger.graph.toggle("spare")
            window.debugger.graph.toggle("fan")
            graph.canvas.fit()
            graph._changed()
            save(window, f"{size}-4-thousand-graph-unfolded-fan")
        window.close()
        settle(0.2)
    _say(f"{len(written)} screenshots in {out}")
    return 0


def _chat_with_a_real_model(window: object, wait: Callable[..., None]) -> None:
    """One real exchange in the Model tab (SmolLM2, when it is cached)."""
    from qhybrid.models._local_chat import ChatSettings

    panel = window.model_chat_panel  # type: ignore[attr-defined]
    choices = [i for i, c in enumerate(panel.choices) if "smollm2" in c.name.lower()]
    if not choices:
        _say("no SmolLM2 cached: the chat stays empty")
        return
    panel.model_combo.setCurrentIndex(choices[0])
    panel.load_selected()
    wait(lambda: panel.chat.ready, 120, "the model to load")
    window.conversations.settings = ChatSettings(max_tokens=48, temperature=0.0)  # type: ignore[attr-defined]
    panel.system_edit.setPlainText("You are a helpful assistant. Answer briefly.")
    panel.input.setText("What is a multi-agent system?")
    panel.send()
    wait(lambda: not window.conversations.busy, 120, "the answer")  # type: ignore[attr-defined]


def _choose_an_agent(window: object) -> None:
    """Select an LLM agent (else the first) in the agents table, so that views that show one
    agent have one to show."""
    table = getattr(getattr(window, "agents_view", None), "table", None)
    model = table.model() if table is not None else None
    if model is None or model.rowCount() == 0:
        return
    rows = [r for r in range(model.rowCount()) if "storyteller" in str(model.index(r, 0).data())]
    table.setCurrentIndex(model.index(rows[0] if rows else 0, 0))
    debugger = getattr(window, "debugger", None)
    detail = getattr(window, "agent_detail", None)
    if debugger is not None and detail is not None:
        if not debugger.live:  # a recorded run's agent (the table shows the live run's)
            agent = debugger.agent_id("storyteller-0")
            detail.show_agent(max(agent, 0))
        detail.tabs.setCurrentIndex(3)  # its LLM requests


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower().replace("&", "")).strip("-") or "view"


if __name__ == "__main__":
    sys.exit(main())
