"""``python -m qhybrid``: the same entry point as the ``qhybrid`` console script."""

from __future__ import annotations

import multiprocessing

from qhybrid.cli import main

if __name__ == "__main__":
    # In a frozen app (PyInstaller) multiprocessing's helpers, such as the shared-memory
    # resource tracker, are started as this program with interpreter flags: let it take them.
    multiprocessing.freeze_support()
    raise SystemExit(main())
