"""Where the files under the top-level ``resources/`` folder are at run time.

Pure standard library and Qt-free: the headless CLI uses it too.

An installed wheel maps ``resources/`` to the package data folder ``qhybrid/_resources``
(see ``[tool.hatch.build.targets.wheel.force-include]`` in ``pyproject.toml``), and so does the
PyInstaller bundle (``packaging/qhybrid.spec``). A source checkout or an editable install has
no such folder, and the files are read from ``resources/`` beside the package instead.

That data folder shares its name with this module: Python still imports this module, since a
module file wins over a folder without ``__init__.py``, so ``resources/`` must never get one.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

__all__ = ["resource_path"]

# The source checkout's resources/ folder: qhybrid/_resources.py -> qhybrid/ -> repository root.
_SOURCE_RESOURCES = Path(__file__).resolve().parent.parent / "resources"


def resource_path(*parts: str) -> Path:
    """Return the path of a file or folder under ``resources/``.

    ``resource_path("icons", "qhybrid.svg")`` is ``.../_resources/icons/qhybrid.svg`` in an
    installed wheel or a PyInstaller bundle, and ``<checkout>/resources/icons/qhybrid.svg`` in a
    source checkout. The path is returned whether or not the file exists, so that callers can
    report which file was missing.
    """
    packaged = _packaged_resources()
    base = packaged if packaged is not None else _SOURCE_RESOURCES
    return base.joinpath(*parts)


def _packaged_resources() -> Path | None:
    """The wheel's or bundle's ``qhybrid/_resources`` folder, or None where there is none."""
    try:
        packaged = importlib.resources.files("qhybrid") / "_resources"
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - qhybrid has no resource reader
        return None
    # Only a folder on the file system can be handed out as a Path; a zipped install
    # (files() answers with a zipfile.Path) falls back to the source layout.
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return None
