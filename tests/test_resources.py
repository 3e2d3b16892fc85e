"""resource_path: where the files of resources/ are, in a checkout and in an installed wheel.

No Qt here: the headless CLI relies on this module too.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import qhybrid
from qhybrid._resources import resource_path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_icon_is_found() -> None:
    icon = resource_path("icons", "qhybrid.svg")
    assert icon.is_file(), icon
    assert icon.parts[-2:] == ("icons", "qhybrid.svg")
    assert "<svg" in icon.read_text(encoding="utf-8")


def test_source_checkout_uses_top_level_resources() -> None:
    # This test suite runs from a checkout (editable install), where qhybrid/_resources/ does
    # not exist and the files come from resources/ beside the package.
    assert not (Path(qhybrid.__file__).parent / "_resources").is_dir()
    assert resource_path() == REPO_ROOT / "resources"
    icon = resource_path("icons", "qhybrid.svg")
    assert icon == REPO_ROOT / "resources" / "icons" / "qhybrid.svg"


def test_missing_file_gives_a_path_not_an_error() -> None:
    missing = resource_path("no-such-folder", "no-such-file.txt")
    assert not missing.exists()
    assert missing.name == "no-such-file.txt"


def test_installed_wheel_layout_uses_package_data(tmp_path: Path) -> None:
    # Lay out qhybrid as the wheel does: resources/ copied to qhybrid/_resources/, next to the
    # module qhybrid/_resources.py (which must still be what `import qhybrid._resources` finds).
    package = tmp_path / "site" / "qhybrid"
    package.mkdir(parents=True)
    for name in ("__init__.py", "_resources.py"):
        shutil.copy(REPO_ROOT / "qhybrid" / name, package / name)
    data_icon = package / "_resources" / "icons" / "qhybrid.svg"
    data_icon.parent.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "resources" / "icons" / "qhybrid.svg", data_icon)

    code = textwrap.dedent(
        """
        import qhybrid._resources as r
        print(r.__file__)
        print(r.resource_path("icons", "qhybrid.svg"))
        """
    )
    # PYTHONPATH comes before site-packages, so this copy wins over the editable install; the
    # working directory (first on sys.path with -c) must not be the checkout.
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(package.parent)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    module_file, icon = result.stdout.splitlines()
    assert Path(module_file) == package / "_resources.py"
    assert Path(icon) == data_icon


def test_resources_and_package_import_no_qt() -> None:
    code = (
        "import sys, qhybrid, qhybrid._resources\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'PySide6', 'shiboken6'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def test_desktop_entry_is_complete() -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(resource_path("qhybrid.desktop"), encoding="utf-8")
    entry = parser["Desktop Entry"]
    assert entry["Type"] == "Application"
    assert entry["Name"] == "qhybrid"
    assert entry["Exec"] == "qhybrid %f"
    assert entry["Icon"] == "qhybrid"
    assert entry["Categories"] == "Development;Science;"
