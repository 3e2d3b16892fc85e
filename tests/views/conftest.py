"""Window tests run on Qt's offscreen platform, with settings kept in a temporary folder."""

from __future__ import annotations

import os

# Before anything creates the QApplication (pytest-qt's qapp fixture does, lazily).
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path

import pytest
from PySide6.QtCore import QCoreApplication, QSettings


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path) -> Path:
    """Point every QSettings scope and format at a fresh folder: no test reads or writes the
    user's configuration, and none sees what an earlier test saved."""
    settings_dir = tmp_path / "settings"
    settings_dir.mkdir()
    for settings_format in (QSettings.Format.NativeFormat, QSettings.Format.IniFormat):
        for scope in (QSettings.Scope.UserScope, QSettings.Scope.SystemScope):
            QSettings.setPath(settings_format, scope, str(settings_dir))
    QCoreApplication.setOrganizationName("qhybrid-tests")
    QCoreApplication.setApplicationName("qhybrid-tests")
    return settings_dir


@pytest.fixture(autouse=True)
def isolated_run_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The window's Runs panel reads a store of the test's own, never the user's."""
    path = tmp_path / "runs.sqlite"
    monkeypatch.setenv("QHYBRID_STORE", str(path))
    return path


@pytest.fixture(autouse=True)
def isolated_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The window's kept chats (platformdirs' data folder): the test's own, never the user's."""
    path = tmp_path / "data"
    monkeypatch.setenv("XDG_DATA_HOME", str(path))
    return path
