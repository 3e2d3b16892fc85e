# ruff: noqa: T201 - a build script: it reports progress on stdout.
"""Build qhybrid's frozen app (PyInstaller) and its installers into dist/.

    python packaging/build.py [--target appimage|deb|dmg|windows|all-for-this-os] ...

Linux: ``deb`` (dpkg-deb) and ``appimage`` (squashfs-tools plus packaging/appimage/runtime.c,
compiled against Debian's static libsquashfuse). macOS: ``dmg`` (an .app with the JIT
entitlements, in a .dmg made by hdiutil). Windows: ``windows`` (qhybrid.exe for the terminal,
qhybrid-window.exe without a console, and an Inno Setup installer when ``iscc`` is on PATH).
The version is the package metadata's (set from the git tag by hatch-vcs). PyInstaller's work
folder is kept under ~/.cache/qhybrid/pyinstaller/ (QHYBRID_BUILD_CACHE) so that a later build
reuses its analysis. Run with the Python of the environment that has qhybrid installed
(``pip install -e '.[packaging]'``). Exit code 2 for bad input or a missing tool, with a message.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGING = REPO_ROOT / "packaging"
RESOURCES = REPO_ROOT / "resources"
APP_ID = "io.github.qhybrid.qhybrid"
TARGETS = ("appimage", "deb", "dmg", "windows", "all-for-this-os")
TARGETS_BY_OS = {"linux": ("deb", "appimage"), "darwin": ("dmg",), "win32": ("windows",)}
ICON_SIZES = (16, 24, 32, 48, 64, 128, 256)
# What the frozen app needs on a Debian/Ubuntu system besides itself: the X11/xcb libraries
# Qt's xcb plugin loads (not in PySide6's wheels), OpenGL/EGL, fontconfig, D-Bus.
DEB_DEPENDS = (
    "libegl1, libgl1, libfontconfig1, libdbus-1-3, libglib2.0-0, "
    "libxkbcommon0, libxkbcommon-x11-0, libxcb-cursor0, libxcb-icccm4, libxcb-keysyms1"
)
DEB_RECOMMENDS = "libvulkan1, mesa-vulkan-drivers"
RUNTIME_LIBS = ("-lsquashfuse", "-lzstd", "-llzma", "-llz4", "-llzo2", "-lz")


class BuildError(Exception):
    """A missing tool or bad input: reported as one line, exit code 2."""


# --- versions ---------------------------------------------------------------------------------


def project_version() -> str:
    """The installed qhybrid's version (its metadata, which hatch-vcs set from the git tag)."""
    try:
        return importlib.metadata.version("qhybrid")
    except importlib.metadata.PackageNotFoundError:
        raise BuildError(
            f"qhybrid is not installed in {sys.executable}'s environment: "
            "run `pip install -e '.[packaging]'` first"
        ) from None


_PEP440 = re.compile(
    r"^(?P<release>\d+(?:\.\d+)*)(?P<pre>(?:a|b|rc)\d+)?(?:\.post(?P<post>\d+))?"
    r"(?:\.dev(?P<dev>\d+))?(?:\+(?P<local>[a-z0-9.]+))?$"
)


def _parse(version: str) -> re.Match[str]:
    match = _PEP440.match(version)
    if match is None:
        raise BuildError(f"version {version!r} is not a PEP 440 version this script understands")
    return match


def debian_version(version: str) -> str:
    """PEP 440 to a Debian version that sorts the same way: 1.2.0rc1 -> 1.2.0~rc1,
    0.1.1.dev3+gabc -> 0.1.1~dev3+gabc (a tilde sorts before the release)."""
    m = _parse(version)
    out = m["release"]
    if m["pre"]:
        out += "~" + m["pre"]
    if m["post"]:
        out += "+post" + m["post"]
    if m["dev"]:
        out += "~dev" + m["dev"]
    if m["local"]:
        out += "+" + m["local"]
    return out


def numeric_version(version: str, parts: int = 3) -> str:
    """The release part padded or cut to ``parts`` numbers (macOS bundle versions and Windows
    file versions take only numbers): 0.1.1.dev3+gabc -> 0.1.1."""
    numbers = [*_parse(version)["release"].split("."), "0", "0", "0"]
    return ".".join(str(int(n)) for n in numbers[:parts])


def file_version(version: str) -> str:
    """A file-name-safe version: the local part's '+' becomes '-'."""
    return _parse(version).string.replace("+", "-")


# --- helpers ----------------------------------------------------------------------------------


def _run(cmd: Sequence[str | Path], **kwargs: object) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    try:
        subprocess.run([str(c) for c in cmd], check=True, **kwargs)  # type: ignore[call-overload]
    except FileNotFoundError:
        raise BuildError(f"{cmd[0]} not found on PATH") from None
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"{cmd[0]} failed with exit code {exc.returncode}") from None


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BuildError(f"{tool} not found on PATH (install {package})")
    return path


def tree_size(path: Path) -> tuple[int, int]:
    """Bytes and number of files under ``path`` (links not followed)."""
    total = count = 0
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
            count += 1
    return total, count


def make_icons(out_dir: Path) -> dict[str, Path]:
    """qhybrid.ico (16..256 px) and qhybrid.icns from resources/icons/qhybrid.png, with Pillow."""
    try:
        from PIL import Image
    except ImportError:
        raise BuildError("Pillow is needed for the .ico/.icns icons: pip install pillow") from None
    source = RESOURCES / "icons" / "qhybrid.png"
    out_dir.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as img:
        rgba = img.convert("RGBA")
        if rgba.size != (256, 256):
            rgba = rgba.resize((256, 256), Image.Resampling.LANCZOS)
        ico = out_dir / "qhybrid.ico"
        rgba.save(ico, format="ICO", sizes=[(s, s) for s in ICON_SIZES])
        icns = out_dir / "qhybrid.icns"
        rgba.save(icns, format="ICNS")
    return {"ico": ico, "icns": icns}


# --- the frozen app ---------------------------------------------------------------------------


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "qhybrid" / "pyinstaller"
    return Path(os.environ.get("QHYBRID_BUILD_CACHE") or default)


def freeze(dist: Path, version: str, *, aot: bool = True) -> Path:
    """Run PyInstaller over packaging/qhybrid.spec; returns the bundle (dist/qhybrid/ or, on
    macOS, dist/qhybrid.app)."""
    work = cache_dir() / f"{sys.platform}-{platform.machine()}"
    icons = make_icons(work / "icons")
    started = time.monotonic()
    env = dict(os.environ, QHYBRID_VERSION=version, QHYBRID_ICON_DIR=str(icons["ico"].parent))
    env.pop("QHYBRID_AOT_MODULE", None)
    if aot:
        env["QHYBRID_AOT_MODULE"] = str(aot_kernels(work / "aot"))
    _run(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--noconfirm",
            "--log-level",
            "WARN",
            "--distpath",
            dist,
            "--workpath",
            work / "build",
            PACKAGING / "qhybrid.spec",
        ],
        env=env,
        cwd=REPO_ROOT,
    )
    bundle = dist / ("qhybrid.app" if sys.platform == "darwin" else "qhybrid")
    if sys.platform == "linux":
        strip_debug_info(dist / "qhybrid")
    size, files = tree_size(dist / "qhybrid")
    print(
        f"frozen app: {dist / 'qhybrid'}: {size / 2**20:.1f} MiB in {files} files, "
        f"{time.monotonic() - started:.0f} s",
        flush=True,
    )
    return bundle


def aot_kernels(out: Path) -> Path:
    """The CPU path's numba kernels compiled ahead of time (packaging/aot.py), so that the
    frozen app leaves numba and LLVM out. Rebuilt when the LLM package's sources (the kernels,
    and the callers whose argument types make the signatures), numba or the Python version
    change; returns the extension module."""
    sources = sorted((REPO_ROOT / "qhybrid" / "runtime" / "llm").glob("*.py"))
    sources.append(PACKAGING / "aot.py")
    digest = hashlib.sha256(sys.version.encode())
    digest.update(importlib.metadata.version("numba").encode())
    for path in sources:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    stamp = out / "sources.sha256"
    manifest = out / "aot-kernels.json"
    if stamp.exists() and manifest.exists() and stamp.read_text() == digest.hexdigest():
        module = out / json.loads(manifest.read_text())["module"]
        if module.exists():
            print(f"aot kernels: {module} is up to date", flush=True)
            return module
    shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()
    try:
        _run([sys.executable, PACKAGING / "aot.py", "--out", out], cwd=REPO_ROOT)
    except BuildError as exc:
        raise BuildError(f"{exc} (--no-aot bundles numba instead)") from exc
    module = out / json.loads(manifest.read_text())["module"]
    stamp.write_text(digest.hexdigest())
    print(f"aot kernels: {module}, {time.monotonic() - started:.0f} s", flush=True)
    return module


# --- Linux ------------------------------------------------------------------------------------


def _has_debug_info(path: Path) -> bool:
    """Whether an ELF file carries DWARF sections (a locally built libpython does: 23 MB, of
    which 16 MB debug info)."""
    try:
        with path.open("rb") as f:
            if f.read(4) != b"\x7fELF":
                return False
            f.seek(0)
            data = f.read()
    except OSError:
        return False
    return b".debug_info" in data


def strip_debug_info(frozen: Path) -> None:
    """``strip --strip-debug`` the bundle's ELF files that have debug sections, except those
    under ``*.libs/`` (auditwheel's vendored libraries, which strip can break after patchelf);
    symbols stay, so nothing that loads them changes. Without ``strip`` it says so and skips."""
    strip = shutil.which("strip")
    if strip is None:
        print("strip not found (binutils): the bundle keeps its debug info", flush=True)
        return
    saved = count = 0
    for path in sorted(frozen.rglob("*")):
        if not path.is_file() or path.is_symlink() or any(p.endswith(".libs") for p in path.parts):
            continue
        if not _has_debug_info(path):
            continue
        before = path.stat().st_size
        try:
            subprocess.run([strip, "--strip-debug", str(path)], check=True)
        except subprocess.CalledProcessError as exc:
            raise BuildError(f"strip --strip-debug {path} failed ({exc.returncode})") from None
        saved += before - path.stat().st_size
        count += 1
    print(f"strip --strip-debug: {count} files, {saved / 2**20:.1f} MiB less", flush=True)


def _install(src: Path, dest: Path, mode: int = 0o644) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    dest.chmod(mode)


def _desktop_integration(root: Path) -> None:
    """The .desktop entry and the hicolor icon theme entries under root/usr/share."""
    share = root / "usr" / "share"
    _install(RESOURCES / "qhybrid.desktop", share / "applications" / "qhybrid.desktop")
    _install(RESOURCES / "icons" / "qhybrid.png", share / "icons/hicolor/256x256/apps/qhybrid.png")
    _install(RESOURCES / "icons" / "qhybrid.svg", share / "icons/hicolor/scalable/apps/qhybrid.svg")


def deb_control(version: str, arch: str, installed_kib: int, glibc: str = "2.28") -> str:
    """DEBIAN/control. ``glibc``: the build machine's, which the bundled libraries need."""
    return (
        "Package: qhybrid\n"
        f"Version: {debian_version(version)}\n"
        "Section: science\n"
        "Priority: optional\n"
        f"Architecture: {arch}\n"
        f"Installed-Size: {installed_kib}\n"
        f"Depends: libc6 (>= {glibc}), {DEB_DEPENDS}\n"
        f"Recommends: {DEB_RECOMMENDS}\n"
        "Maintainer: qhybrid developers <qhybrid@users.noreply.github.com>\n"
        "Homepage: https://github.com/qhybrid/qhybrid\n"
        "Description: local-first runtime for multi-agent systems and LLM inference\n"
        " WebAssembly agents in worker processes, a wgpu compute thread, shared-memory\n"
        " tensors, a deterministic orchestrator and a Qt window (qhybrid), or the same\n"
        " runtime without a window (qhybrid --headless). A self-contained build.\n"
    )


LAUNCHER = """#!/bin/sh
# qhybrid's launcher, installed by the qhybrid package: the frozen app lives in /usr/lib/qhybrid.
exec /usr/lib/qhybrid/qhybrid "$@"
"""


def build_deb(frozen: Path, dist: Path, version: str, work: Path) -> Path:
    dpkg_deb = _need("dpkg-deb", "dpkg")
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], check=True, capture_output=True, text=True
    ).stdout.strip()
    root = work / "deb-root"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(frozen, root / "usr" / "lib" / "qhybrid", symlinks=True)
    launcher = root / "usr" / "bin" / "qhybrid"
    launcher.parent.mkdir(parents=True)
    launcher.write_text(LAUNCHER)
    launcher.chmod(0o755)
    _desktop_integration(root)
    doc = root / "usr" / "share" / "doc" / "qhybrid" / "copyright"
    doc.parent.mkdir(parents=True)
    doc.write_text(
        "qhybrid is licensed under the Apache License 2.0;\n"
        "see /usr/share/common-licenses/Apache-2.0.\n"
    )
    size, _ = tree_size(root)
    control = root / "DEBIAN" / "control"
    control.parent.mkdir()
    glibc = platform.libc_ver()[1] or "2.28"
    control.write_text(deb_control(version, arch, size // 1024 + 1, glibc))
    out = dist / f"qhybrid_{debian_version(version)}_{arch}.deb"
    _run([dpkg_deb, "--root-owner-group", "-Zxz", "-z6", "--build", root, out])
    return out


APPRUN = """#!/bin/sh
# AppRun of qhybrid's AppImage: the runtime sets APPDIR to the extracted (or mounted) AppDir.
HERE="${APPDIR:-$(dirname "$(readlink -f "$0")")}"
exec "$HERE/usr/lib/qhybrid/qhybrid" "$@"
"""


def build_runtime(work: Path) -> Path:
    """Compile packaging/appimage/runtime.c statically against Debian's libsquashfuse."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise BuildError("no C compiler (cc, gcc or clang) on PATH for the AppImage runtime")
    header = Path("/usr/include/squashfuse/squashfuse.h")
    if not header.is_file():
        raise BuildError(
            f"{header} not found: install libsquashfuse-dev (and zlib1g-dev, "
            "liblzma-dev, libzstd-dev, liblz4-dev, liblzo2-dev)"
        )
    out = work / "appimage-runtime"
    _run(
        [
            cc,
            "-O2",
            "-s",
            "-static",
            "-I/usr/include/squashfuse",
            "-o",
            out,
            PACKAGING / "appimage" / "runtime.c",
            *RUNTIME_LIBS,
        ]
    )
    mark_appimage(out)
    return out


def mark_appimage(runtime: Path) -> None:
    """Write the AppImage type 2 magic, 'AI' 0x02, at offset 8 (the ELF ident's padding)."""
    with runtime.open("r+b") as f:
        head = f.read(16)
        if head[:4] != b"\x7fELF":
            raise BuildError(f"{runtime} is not an ELF file")
        f.seek(8)
        f.write(b"AI\x02")


#: mksquashfs's xz branch/call/jump filters, by machine.
_BCJ = {"x86_64": "x86", "armv7l": "armthumb"}


def build_appimage(frozen: Path, dist: Path, version: str, work: Path) -> Path:
    mksquashfs = _need("mksquashfs", "squashfs-tools")
    appdir = work / "qhybrid.AppDir"
    shutil.rmtree(appdir, ignore_errors=True)
    shutil.copytree(frozen, appdir / "usr" / "lib" / "qhybrid", symlinks=True)
    _desktop_integration(appdir)
    (appdir / "AppRun").write_text(APPRUN)
    (appdir / "AppRun").chmod(0o755)
    _install(RESOURCES / "qhybrid.desktop", appdir / "qhybrid.desktop")
    _install(RESOURCES / "icons" / "qhybrid.png", appdir / "qhybrid.png")
    (appdir / ".DirIcon").symlink_to("qhybrid.png")
    image = work / "qhybrid.squashfs"
    image.unlink(missing_ok=True)
    _run(
        [
            mksquashfs,
            appdir,
            image,
            "-root-owned",
            "-noappend",
            "-quiet",
            "-no-progress",
            "-comp",
            "xz",
            # The branch/call filter of this CPU: shared libraries compress about 10% smaller.
            *(["-Xbcj", _BCJ[platform.machine()]] if platform.machine() in _BCJ else []),
            "-b",
            "1M",
            "-processors",
            str(os.cpu_count() or 1),
        ]
    )
    runtime = build_runtime(work)
    out = dist / f"qhybrid-{file_version(version)}-{platform.machine()}.AppImage"
    with out.open("wb") as f:
        f.write(runtime.read_bytes())
        with image.open("rb") as src:
            shutil.copyfileobj(src, f, 1 << 20)
    out.chmod(0o755)
    return out


# --- macOS ------------------------------------------------------------------------------------


def build_dmg(bundle: Path, dist: Path, version: str) -> Path:
    out = dist / f"qhybrid-{file_version(version)}-macos-{platform.machine()}.dmg"
    _run(["bash", PACKAGING / "macos" / "make_dmg.sh", bundle, out])
    return out


# --- Windows ----------------------------------------------------------------------------------


def build_windows_installer(frozen: Path, dist: Path, version: str) -> Path | None:
    iscc = shutil.which("iscc") or shutil.which("ISCC")
    default = Path(os.environ.get("PROGRAMFILES(X86)", r"C:\Program Files (x86)"))
    candidate = default / "Inno Setup 6" / "ISCC.exe"
    if iscc is None and candidate.is_file():
        iscc = str(candidate)
    if iscc is None:
        raise BuildError("Inno Setup's iscc not found (choco install innosetup)")
    icons = cache_dir() / f"{sys.platform}-{platform.machine()}" / "icons"
    _run(
        [
            iscc,
            f"/DAppVersion={numeric_version(version)}",
            f"/DAppFullVersion={version}",
            f"/DSourceDir={frozen}",
            f"/DOutputDir={dist}",
            f"/DIconFile={icons / 'qhybrid.ico'}",
            f"/DOutputBaseName=qhybrid-{file_version(version)}-windows-setup",
            PACKAGING / "windows" / "qhybrid.iss",
        ]
    )
    return dist / f"qhybrid-{file_version(version)}-windows-setup.exe"


# --- the command ------------------------------------------------------------------------------


def resolve_targets(requested: Sequence[str], os_name: str) -> list[str]:
    """The targets to build, in order; 'all-for-this-os' expands; a target for another OS is
    refused (PyInstaller cannot cross-build)."""
    own = TARGETS_BY_OS.get(os_name, ())
    out: list[str] = []
    for target in requested or ["all-for-this-os"]:
        names = own if target == "all-for-this-os" else (target,)
        for name in names:
            if name not in own:
                raise BuildError(
                    f"--target {name} cannot be built on {os_name}; "
                    f"this OS builds: {', '.join(own) or 'nothing'}"
                )
            if name not in out:
                out.append(name)
    if not out:
        raise BuildError(f"nothing to build on {os_name}")
    return out


def _compressed_size(path: Path) -> int:
    """Bytes of a gzip tarball of ``path`` (the issue's "compressed" measure of a folder)."""
    out = path.parent / (path.name + ".measure.tar.gz")
    with tarfile.open(out, "w:gz", compresslevel=6) as tar:
        tar.add(path, arcname=path.name)
    size = out.stat().st_size
    out.unlink()
    return size


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="packaging/build.py", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--target",
        action="append",
        choices=TARGETS,
        default=[],
        help="what to build (repeatable; default: all-for-this-os)",
    )
    parser.add_argument(
        "--dist",
        type=Path,
        default=REPO_ROOT / "dist",
        help="where the installers go (default: dist/)",
    )
    stage = parser.add_mutually_exclusive_group()
    stage.add_argument(
        "--no-installer",
        action="store_true",
        help="only freeze the app (then sign it, then run again with --installer-only)",
    )
    stage.add_argument(
        "--installer-only",
        action="store_true",
        help="reuse the frozen app already in --dist and build only the installers",
    )
    parser.add_argument(
        "--measure", action="store_true", help="also print the frozen folder's gzipped size (slow)"
    )
    parser.add_argument(
        "--no-aot",
        action="store_true",
        help="bundle numba and LLVM (+38 MiB compressed) instead of compiling the CPU path's "
        "kernels ahead of time (packaging/aot.py), e.g. where numba.pycc cannot build",
    )
    args = parser.parse_args(argv)
    try:
        targets = resolve_targets(args.target, sys.platform)
        version = project_version()
        print(f"qhybrid {version}: building {', '.join(targets)}", flush=True)
        dist: Path = args.dist.resolve()
        dist.mkdir(parents=True, exist_ok=True)
        frozen = dist / "qhybrid"
        if args.installer_only:
            bundle = dist / ("qhybrid.app" if sys.platform == "darwin" else "qhybrid")
            if not bundle.is_dir():
                raise BuildError(f"--installer-only: no frozen app at {bundle}")
        else:
            bundle = freeze(dist, version, aot=not args.no_aot)
        if args.no_installer:
            return 0
        if args.measure:
            print(f"frozen app, gzipped: {_compressed_size(frozen) / 2**20:.1f} MiB", flush=True)
        work = cache_dir() / f"{sys.platform}-{platform.machine()}"
        outputs: list[Path | None] = []
        for target in targets:
            started = time.monotonic()
            if target == "deb":
                outputs.append(build_deb(frozen, dist, version, work))
            elif target == "appimage":
                outputs.append(build_appimage(frozen, dist, version, work))
            elif target == "dmg":
                outputs.append(build_dmg(bundle, dist, version))
            elif target == "windows":
                outputs.append(build_windows_installer(frozen, dist, version))
            print(f"{target}: {time.monotonic() - started:.0f} s", flush=True)
        for out in outputs:
            if out is not None:
                print(f"built {out} ({out.stat().st_size / 2**20:.1f} MiB)", flush=True)
    except BuildError as exc:
        print(f"packaging/build.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
