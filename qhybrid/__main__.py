"""``python -m qhybrid``: the same entry point as the ``qhybrid`` console script."""

from __future__ import annotations

from qhybrid.cli import main

raise SystemExit(main())
