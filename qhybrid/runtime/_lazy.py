"""Lazy package facades (PEP 562): a package's public names imported from their modules on
first use, so that importing one part of a package does not import all of it.

A facade keeps ``__all__`` and a ``TYPE_CHECKING`` block naming every name (for mypy and
editors), a table ``name -> module``, and ``__getattr__, __dir__ = lazy_names(__name__,
table, __all__)``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(
    package: str, table: Mapping[str, str], public: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package``: ``table[name]`` is the module
    a name comes from; a name is imported once, then kept in the package's namespace."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *public})

    return __getattr__, __dir__
