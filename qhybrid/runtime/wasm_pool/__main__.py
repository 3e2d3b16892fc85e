"""``python -m qhybrid.runtime.wasm_pool``: one worker process of the pool (see ``_worker``)."""

from __future__ import annotations

from qhybrid.runtime.wasm_pool._worker import main

if __name__ == "__main__":
    raise SystemExit(main())
