"""Run the app on a real (Xvfb) display, start a scenario, save a screenshot mid-run, quit.

``python screenshot_app.py OUT.png SCENARIO.toml``: prints ``platform=... state=...`` and
exits with run_app's exit code.
"""

from __future__ import annotations

import sys

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from qhybrid.app import run_app
from qhybrid.views import MainWindow


def main() -> int:
    out, scenario = sys.argv[1], sys.argv[2]
    app = QApplication(["qhybrid"])

    def shoot() -> None:
        window = next(w for w in app.topLevelWidgets() if isinstance(w, MainWindow))
        ok = window.grab().save(out, "PNG")
        print(f"platform={app.platformName()} state={window.controller.state} saved={ok}")
        sys.stdout.flush()
        window.close()

    QTimer.singleShot(6000, shoot)
    QTimer.singleShot(60_000, app.closeAllWindows)  # a watchdog
    return run_app(["qhybrid"], scenario=scenario, device="cpu", start=True)


if __name__ == "__main__":
    sys.exit(main())
