"""packaging/build.py's logic (versions, targets, the AppImage header, the .deb control file),
and the packaging scripts and release workflow as files: shellcheck-clean, well-formed."""

from __future__ import annotations

import importlib.util
import itertools
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"


def _load_build() -> ModuleType:
    # By path: the folder is not a package, and "packaging" is also PyPI's packaging library.
    spec = importlib.util.spec_from_file_location("qhybrid_packaging_build", PACKAGING / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build = _load_build()


@pytest.mark.parametrize(
    ("pep440", "debian"),
    [
        ("1.2.0", "1.2.0"),
        ("1.2.0rc1", "1.2.0~rc1"),
        ("0.1.1.dev83+ga15a1a55b.d20261201", "0.1.1~dev83+ga15a1a55b.d20261201"),
        ("2.0.post1", "2.0+post1"),
    ],
)
def test_debian_versions_follow_pep_440(pep440: str, debian: str) -> None:
    assert build.debian_version(pep440) == debian


def test_debian_versions_sort_like_the_releases() -> None:
    dpkg = shutil.which("dpkg")
    if dpkg is None:
        pytest.skip("dpkg is not installed (not a Debian system)")
    ordered = ["0.9.0", "1.0.0.dev3+g12", "1.0.0rc1", "1.0.0", "1.0.0.post1", "1.0.1"]
    for lower, higher in itertools.pairwise(ordered):
        a, b = build.debian_version(lower), build.debian_version(higher)
        assert subprocess.run([dpkg, "--compare-versions", a, "lt", b]).returncode == 0, (a, b)


def test_numeric_and_file_versions() -> None:
    assert build.numeric_version("0.1.1.dev83+gabc") == "0.1.1"
    assert build.numeric_version("2") == "2.0.0"
    assert build.numeric_version("1.2.3.4", parts=4) == "1.2.3.4"
    assert build.file_version("0.1.1.dev3+gabc.d2026") == "0.1.1.dev3-gabc.d2026"
    with pytest.raises(build.BuildError, match="not a PEP 440"):
        build.debian_version("latest")


def test_targets_expand_per_os_and_other_oses_are_refused() -> None:
    assert build.resolve_targets([], "linux") == ["deb", "appimage"]
    assert build.resolve_targets(["all-for-this-os"], "darwin") == ["dmg"]
    assert build.resolve_targets(["appimage", "deb", "appimage"], "linux") == ["appimage", "deb"]
    with pytest.raises(build.BuildError, match="cannot be built on linux"):
        build.resolve_targets(["dmg"], "linux")
    with pytest.raises(build.BuildError, match="nothing"):
        build.resolve_targets([], "sunos5")


def test_a_target_for_another_os_exits_2_with_a_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    other = "dmg" if sys.platform != "darwin" else "deb"
    assert build.main(["--target", other]) == 2
    assert f"--target {other} cannot be built" in capsys.readouterr().err


def test_the_appimage_magic_goes_into_the_elf_padding(tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    shutil.copyfile(sys.executable, runtime)
    build.mark_appimage(runtime)
    head = runtime.read_bytes()[:16]
    assert head[:4] == b"\x7fELF" and head[8:11] == b"AI\x02"
    not_elf = tmp_path / "x"
    not_elf.write_bytes(b"#!/bin/sh\n" + bytes(16))
    with pytest.raises(build.BuildError, match="not an ELF"):
        build.mark_appimage(not_elf)


def test_the_deb_control_file_is_what_dpkg_reads() -> None:
    control = build.deb_control("0.2.0rc1", "amd64", 1234, "2.36")
    fields = dict(line.split(": ", 1) for line in control.splitlines() if not line[0].isspace())
    assert fields["Package"] == "qhybrid"
    assert fields["Version"] == "0.2.0~rc1"
    assert fields["Architecture"] == "amd64"
    assert fields["Installed-Size"] == "1234"
    assert fields["Depends"].startswith("libc6 (>= 2.36), ")
    assert "libxcb-cursor0" in fields["Depends"]
    assert control.endswith("\n")


def test_icons_are_made_with_every_size(tmp_path: Path) -> None:
    from PIL import Image as pil  # in the test extra (and the packaging extra)

    icons = build.make_icons(tmp_path)
    with pil.open(icons["ico"]) as ico:
        assert {(s, s) for s in build.ICON_SIZES} <= set(ico.info["sizes"])
    assert icons["icns"].read_bytes()[:4] == b"icns"


def _scripts() -> list[Path]:
    return sorted(PACKAGING.rglob("*.sh"))


def test_packaging_scripts_are_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck is not None, "shellcheck is missing: scripts/test.sh installs it (Debian)"
    scripts = _scripts()
    assert len(scripts) >= 4
    proc = subprocess.run(
        [shellcheck, "--severity=style", *map(str, scripts)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_release_workflow_is_well_formed() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
    # PyYAML reads the bare key `on` as True.
    triggers = workflow.get("on", workflow.get(True))
    assert "tags" in triggers["push"] and "workflow_dispatch" in triggers
    build_job = workflow["jobs"]["build"]
    oses = {entry["os"].split("-")[0] for entry in build_job["strategy"]["matrix"]["include"]}
    assert oses == {"ubuntu", "macos", "windows"}
    steps = build_job["steps"]
    for step in steps:
        assert ("uses" in step) != ("run" in step), step
    runs = "\n".join(step.get("run", "") for step in steps)
    # Every script the workflow calls exists; every smoke test is the headless hash.
    for script in ("smoke.sh", "smoke_headless.sh", "macos/sign.sh", "windows/sign.sh"):
        assert f"packaging/{script}" in runs
        assert (PACKAGING / script).is_file()
    assert runs.count("smoke_headless.sh") == 2 and "smoke.sh" in runs
    # Signing is driven by secrets, passed as environment variables, never inline.
    signing = [s for s in steps if "sign.sh" in s.get("run", "")]
    assert signing and all("secrets." in str(s.get("env", {})) for s in signing)
    assert "secrets." not in runs
    assert any(s.get("uses", "").startswith("actions/upload-artifact") for s in steps)
    assert workflow["jobs"]["publish"]["needs"] == "build"


def test_signing_scripts_skip_without_their_secrets(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for script, args in (("macos/sign.sh", ["app", "x.app"]), ("windows/sign.sh", ["x.exe"])):
        proc = subprocess.run(
            ["bash", str(PACKAGING / script), *args], env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        assert "unsigned" in proc.stdout
    bad = subprocess.run(["bash", str(PACKAGING / "macos" / "sign.sh")], capture_output=True)
    assert bad.returncode == 2
