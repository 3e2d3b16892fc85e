"""qhybrid: a local-first runtime for multi-agent systems and LLM inference.

WebAssembly agents run sandboxed in worker processes, GPU work runs on one wgpu thread,
tensors move through shared memory, and a deterministic orchestrator joins them. The same
runtime runs headless (``qhybrid --headless``) or under a Qt window (``qhybrid``).

Importing this package stays cheap and Qt-free: it imports no subpackage. Import what you
need from ``qhybrid.runtime`` (the runtime), ``qhybrid.app`` (the window) or ``qhybrid.cli``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__: str = version("qhybrid")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.1.0"

del PackageNotFoundError, version
