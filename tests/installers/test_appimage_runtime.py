"""packaging/appimage/runtime.c, built as packaging/build.py builds it, over a small AppDir:
what a user of the AppImage relies on (arguments, exit code, environment, clean-up)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.installers.test_build import build

APPRUN = """#!/bin/sh
echo "args:$*"
echo "appdir:$APPDIR"
echo "appimage:$APPIMAGE"
cat "$APPDIR/usr/share/hello.txt"
[ -L "$APPDIR/link" ] && echo "link:$(readlink "$APPDIR/link")"
exit "${EXIT_WITH:-0}"
"""


@pytest.fixture(scope="module")
def appimage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool in ("mksquashfs", "cc"):
        assert shutil.which(tool), f"{tool} is missing: scripts/test.sh installs it (Debian)"
    work = tmp_path_factory.mktemp("appimage")
    appdir = work / "AppDir"
    (appdir / "usr" / "share").mkdir(parents=True)
    (appdir / "AppRun").write_text(APPRUN)
    (appdir / "AppRun").chmod(0o755)
    (appdir / "usr" / "share" / "hello.txt").write_text("hello from the image\n")
    (appdir / "link").symlink_to("usr/share/hello.txt")
    image = work / "image.squashfs"
    subprocess.run(
        ["mksquashfs", appdir, image, "-root-owned", "-noappend", "-quiet", "-no-progress"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    runtime = build.build_runtime(work)
    out = work / "test.AppImage"
    out.write_bytes(runtime.read_bytes() + image.read_bytes())
    out.chmod(0o755)
    return out


def _run(appimage: Path, *args: str, tmp: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(appimage), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp), **env},
    )


def test_the_runtime_is_a_type_2_appimage(appimage: Path) -> None:
    head = appimage.read_bytes()[:16]
    assert head[:4] == b"\x7fELF" and head[8:11] == b"AI\x02"


def test_it_runs_apprun_with_the_arguments_and_cleans_up(appimage: Path, tmp_path: Path) -> None:
    proc = _run(appimage, "a", "b c", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "args:a b c"
    assert lines[1].startswith(f"appdir:{tmp_path}/.qhybrid-appimage-")
    assert lines[2] == f"appimage:{appimage}"
    assert "hello from the image" in lines
    assert "link:usr/share/hello.txt" in lines
    assert list(tmp_path.iterdir()) == []  # the extracted AppDir is gone


def test_extract_and_run_is_the_same_and_the_exit_code_comes_back(
    appimage: Path, tmp_path: Path
) -> None:
    proc = _run(appimage, "--appimage-extract-and-run", "x", tmp=tmp_path, EXIT_WITH="7")
    assert proc.returncode == 7
    assert proc.stdout.splitlines()[0] == "args:x"
    assert list(tmp_path.iterdir()) == []


def test_extract_and_offset(appimage: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(appimage), "--appimage-extract"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    root = tmp_path / "squashfs-root"
    assert (root / "usr" / "share" / "hello.txt").read_text() == "hello from the image\n"
    assert os.access(root / "AppRun", os.X_OK)
    assert os.readlink(root / "link") == "usr/share/hello.txt"
    offset = int(_run(appimage, "--appimage-offset", tmp=tmp_path).stdout)
    assert appimage.read_bytes()[offset : offset + 4] == b"hsqs"  # squashfs magic


def test_a_file_without_an_image_is_refused_with_a_message(appimage: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    offset = int(_run(appimage, "--appimage-offset", tmp=tmp_path).stdout)
    bare.write_bytes(appimage.read_bytes()[:offset])
    bare.chmod(0o755)
    proc = _run(bare, tmp=tmp_path)
    assert proc.returncode == 2
    assert "no squashfs image" in proc.stderr
