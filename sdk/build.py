#!/usr/bin/env python3
"""Build the sample agents (C, Rust, AssemblyScript) into WebAssembly, reproducibly.

    python sdk/build.py                 # resources/agents/*.c -> resources/agents/*.wasm
    python sdk/build.py --check         # exit 1 if a shipped .wasm is stale or missing
    python sdk/build.py --tests         # tests/agents/*.c -> tests/agents/*.wasm (not committed)
    python sdk/build.py --agents-dir DIR [--out DIR] [--clang PATH] [--sysroot DIR]

Each ``NAME.c`` becomes ``NAME.wasm``: one clang invocation for the wasm32-wasi target in the
reactor model (no ``main``; the module exports ``_initialize``, which the runtime calls first),
with ``sdk/c`` on the include path. The output depends only on the source, the header and the
compiler version: no paths (``-ffile-prefix-map``, no debug info), no timestamps. So
``--check`` can rebuild into a temporary directory and compare bytes.

Exit status: 0 done; 1 ``--check`` found stale, missing or orphaned .wasm files; 2 the
toolchain is missing (or bad usage); 3 a source failed to compile.

Each ``NAME.rs`` is built with Debian's ``rustc`` (``libstd-rust-dev-wasm32``; target
``wasm32-unknown-unknown``, no cargo) against ``sdk/rust``; each ``NAME.ts`` with the
AssemblyScript compiler that ``sdk/assemblyscript/install.sh`` puts in
``sdk/assemblyscript/node_modules`` (npm). A toolchain is looked for only when there are
sources for it.

Needs Debian's (or Ubuntu's) packages ``clang lld wasi-libc libclang-rt-14-dev-wasm32``
(and ``rustc libstd-rust-dev-wasm32``, ``nodejs npm`` for the other languages);
Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SDK_INCLUDE = REPO_ROOT / "sdk" / "c"
SAMPLES_DIR = REPO_ROOT / "resources" / "agents"
TEST_AGENTS_DIR = REPO_ROOT / "tests" / "agents"

DEBIAN_PACKAGES = "clang lld wasi-libc libclang-rt-14-dev-wasm32"
INSTALL_HINT = f"install it with: sudo apt-get install {DEBIAN_PACKAGES}"
#: Where Debian's wasi-libc puts the sysroot: headers in include/wasm32-wasi, libraries in
#: lib/wasm32-wasi. A wasi-sdk sysroot (share/wasi-sysroot) has the same lib layout.
DEFAULT_SYSROOT = Path("/usr")
TARGET = "wasm32-wasi"

EXIT_OK = 0
EXIT_STALE = 1
EXIT_TOOLCHAIN = 2
EXIT_COMPILE = 3


class ToolchainError(Exception):
    """clang, the wasm32 sysroot or the compiler runtime is missing; the message says what."""


@dataclass(frozen=True)
class Toolchain:
    clang: str
    sysroot: Path
    include_dir: Path
    version: str

    def command(self, source: Path, output: Path) -> list[str]:
        """The clang command line that compiles ``source`` into ``output``, run from
        ``source.parent``."""
        return [
            self.clang,
            f"--target={TARGET}",
            f"--sysroot={self.sysroot}",
            # Only the sysroot's headers and clang's own: never /usr/include or
            # /usr/local/include of the build machine, which Debian's clang also searches.
            "-nostdlibinc",
            "-idirafter",
            str(self.include_dir),
            "-mexec-model=reactor",
            "-std=c11",
            "-O2",
            "-Wall",
            "-Wextra",
            # Sources are compiled from their own folder by file name (see build_one), so
            # __FILE__ is "echo.c" wherever the checkout is; the header's path is mapped too.
            f"-ffile-prefix-map={REPO_ROOT}=.",
            f"-I{SDK_INCLUDE}",
            # The C stack below the data: an overflow runs off address 0 and traps, instead of
            # silently overwriting the agent's globals.
            "-Wl,--stack-first",
            # No DWARF (it holds paths); the name section stays, so traps name the function.
            "-Wl,--strip-debug",
            "-o",
            str(output),
            source.name,
        ]


def find_toolchain(clang: str | None, sysroot: Path | None) -> Toolchain:
    """Locate clang, the wasm32-wasi sysroot and compiler runtime, or raise ToolchainError."""
    if clang is None:
        found = shutil.which("clang") or next(
            (p for v in range(20, 13, -1) if (p := shutil.which(f"clang-{v}"))), None
        )
        if found is None:
            raise ToolchainError(f"clang was not found on PATH; {INSTALL_HINT}")
        clang = found
    elif os.sep in clang or (os.altsep and os.altsep in clang):
        if not Path(clang).is_file():
            raise ToolchainError(f"clang not found at {clang}; {INSTALL_HINT}")
    elif shutil.which(clang) is None:
        raise ToolchainError(f"{clang} was not found on PATH; {INSTALL_HINT}")

    try:
        proc = subprocess.run(
            [clang, "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError as exc:
        raise ToolchainError(f"cannot run {clang}: {exc.strerror or exc}; {INSTALL_HINT}") from None
    if proc.returncode != 0 or "clang" not in proc.stdout:
        raise ToolchainError(f"{clang} --version failed or is not clang; {INSTALL_HINT}")
    version = proc.stdout.splitlines()[0].strip()

    root = sysroot if sysroot is not None else DEFAULT_SYSROOT
    include_dir = root / "include" / TARGET
    if not include_dir.is_dir():
        include_dir = root / "include"  # a wasi-sdk style sysroot
    libdir = root / "lib" / TARGET
    missing = [
        str(p)
        for p in (include_dir / "stdio.h", libdir / "libc.a", libdir / "crt1-reactor.o")
        if not p.is_file()
    ]
    if missing:
        raise ToolchainError(
            f"the {TARGET} sysroot (wasi-libc) is missing under {root}: no {', '.join(missing)}; "
            f"{INSTALL_HINT} (or give another one with --sysroot)"
        )

    # The compiler runtime (libclang_rt.builtins-wasm32.a) ships apart from clang on Debian.
    proc = subprocess.run(
        [clang, f"--target={TARGET}", f"--sysroot={root}", "-print-libgcc-file-name"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    builtins = Path(proc.stdout.strip()) if proc.returncode == 0 else None
    if builtins is None or not builtins.is_file():
        raise ToolchainError(
            f"the wasm32 compiler runtime {builtins or 'libclang_rt.builtins-wasm32.a'} is "
            f"missing; {INSTALL_HINT} (the libclang-rt-N-dev-wasm32 matching your clang)"
        )
    if shutil.which("wasm-ld") is None and not any(
        shutil.which(f"wasm-ld-{v}") for v in range(14, 21)
    ):
        raise ToolchainError(f"the WebAssembly linker wasm-ld (lld) is missing; {INSTALL_HINT}")
    return Toolchain(clang=clang, sysroot=root, include_dir=include_dir, version=version)


class CompileError(Exception):
    """A source failed to compile; clang's diagnostics are in the message."""


RUST_SDK = REPO_ROOT / "sdk" / "rust" / "src" / "lib.rs"
RUST_TARGET = "wasm32-unknown-unknown"
RUST_HINT = "install it with: sudo apt-get install rustc libstd-rust-dev-wasm32"
AS_DIR = REPO_ROOT / "sdk" / "assemblyscript"
AS_HINT = "install it with: sdk/assemblyscript/install.sh (needs node and npm)"
#: asc options: the incremental GC (the stub runtime never frees: a long run runs out of
#: memory), and aborts routed to a log line before the trap.
AS_OPTIONS = (
    "-O3",
    "--runtime",
    "incremental",
    "--use",
    "abort=sdk/assemblyscript/assembly/index/qhAbort",
)


@dataclass(frozen=True)
class RustToolchain:
    rustc: str
    version: str
    rlib_dir: Path

    def command(self, source: Path, output: Path) -> list[str]:
        return [
            self.rustc,
            "--edition",
            "2021",
            "--crate-type",
            "cdylib",
            "-O",
            f"--target={RUST_TARGET}",
            "--extern",
            f"qhybrid={self.rlib_dir / 'libqhybrid.rlib'}",
            "-C",
            "strip=debuginfo",
            "-C",
            "metadata=qhybrid-agent",
            f"--remap-path-prefix={REPO_ROOT}=.",
            f"--remap-path-prefix={self.rlib_dir}=.",
            "-o",
            str(output),
            source.name,
        ]


def find_rust(work: Path) -> RustToolchain:
    """Debian's rustc with the wasm32 standard library; builds the SDK crate into ``work``."""
    candidates = ["/usr/bin/rustc", shutil.which("rustc") or ""]
    for rustc in dict.fromkeys(c for c in candidates if c and Path(c).is_file()):
        proc = subprocess.run(
            [rustc, "--print", "sysroot"], capture_output=True, text=True, timeout=60, check=False
        )
        if proc.returncode != 0:
            continue
        if not (Path(proc.stdout.strip()) / "lib" / "rustlib" / RUST_TARGET).is_dir():
            continue
        version = subprocess.run(
            [rustc, "--version"], capture_output=True, text=True, timeout=60, check=False
        ).stdout.strip()
        build = subprocess.run(
            [
                rustc,
                "--edition",
                "2021",
                "--crate-type",
                "rlib",
                "--crate-name",
                "qhybrid",
                "-O",
                f"--target={RUST_TARGET}",
                "-C",
                "metadata=qhybrid-sdk",
                f"--remap-path-prefix={REPO_ROOT}=.",
                "-o",
                str(work / "libqhybrid.rlib"),
                str(RUST_SDK),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if build.returncode != 0:
            raise CompileError(f"{RUST_SDK}: rustc failed:\n{build.stderr}")
        return RustToolchain(rustc, version, work)
    raise ToolchainError(f"no rustc with the {RUST_TARGET} standard library; {RUST_HINT}")


@dataclass(frozen=True)
class AscToolchain:
    asc: str
    version: str

    def command(self, source: Path, output: Path) -> list[str]:
        try:
            name = str(source.resolve().relative_to(REPO_ROOT))
        except ValueError:
            name = str(source)
        return [self.asc, name, "-o", str(output), *AS_OPTIONS]


def find_asc() -> AscToolchain:
    asc = AS_DIR / "node_modules" / ".bin" / "asc"
    if not asc.is_file():
        raise ToolchainError(f"the AssemblyScript compiler {asc} is missing; {AS_HINT}")
    proc = subprocess.run(
        [str(asc), "--version"], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise ToolchainError(f"{asc} --version failed: {proc.stderr.strip()}; {AS_HINT}")
    return AscToolchain(str(asc), proc.stdout.strip())


#: Source suffix -> language, for the languages besides C.
SUFFIXES = (".c", ".rs", ".ts")


def build_one(tc: Toolchain, source: Path, output: Path) -> str:
    """Compile one agent; returns clang's warnings (empty when clean)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the target and rename: a reader never sees a half-written module.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.stem}.", suffix=".wasm", dir=output.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        proc = subprocess.run(
            tc.command(source, tmp),
            cwd=REPO_ROOT if isinstance(tc, AscToolchain) else source.parent,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if proc.returncode != 0:
            tool = Path(tc.command(source, tmp)[0]).name
            raise CompileError(f"{source}: {tool} failed (exit {proc.returncode}):\n{proc.stderr}")
        tmp.chmod(0o644)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return proc.stderr


LANGS = {"c": (".c",), "rust": (".rs",), "as": (".ts",), "all": SUFFIXES}
_LANG = ["all"]


def sources_of(sources_dir: Path) -> list[Path]:
    suffixes = LANGS[_LANG[0]]
    return sorted(p for suffix in suffixes for p in sources_dir.glob(f"*{suffix}"))


def build_dir(tc: Toolchain, sources_dir: Path, out_dir: Path) -> list[Path]:
    """Compile every ``*.c``, ``*.rs`` and ``*.ts`` of ``sources_dir`` into ``out_dir``;
    returns the outputs."""
    outputs = []
    with tempfile.TemporaryDirectory(prefix="qh-rust-") as work:
        tools: dict[str, Any] = {".c": tc}
        for source in sources_of(sources_dir):
            if source.suffix not in tools:
                tools[source.suffix] = (
                    find_rust(Path(work)) if source.suffix == ".rs" else find_asc()
                )
            output = out_dir / f"{source.stem}.wasm"
            warnings = build_one(tools[source.suffix], source, output)
            if warnings and source.suffix == ".c":
                sys.stderr.write(warnings)
            outputs.append(output)
    return outputs


def check_dir(tc: Toolchain, sources_dir: Path, shipped_dir: Path) -> list[str]:
    """Rebuild into a temporary directory; one line per stale, missing or orphaned .wasm."""
    problems = []
    with tempfile.TemporaryDirectory(prefix="qh-agents-") as tmp:
        fresh = {p.name: p for p in build_dir(tc, sources_dir, Path(tmp))}
        for name, path in sorted(fresh.items()):
            shipped = shipped_dir / name
            if not shipped.is_file():
                problems.append(f"{shipped}: missing (built from {source_name(sources_dir, path)})")
            elif shipped.read_bytes() != path.read_bytes():
                problems.append(
                    f"{shipped}: differs from a fresh build of {source_name(sources_dir, path)}"
                )
    for shipped in sorted(shipped_dir.glob("*.wasm")):
        if shipped.name not in fresh and (_LANG[0] == "all" or _LANG[0] == "c"):
            if _LANG[0] == "c" and source_name(sources_dir, shipped) != f"{shipped.stem}.c":
                continue
            problems.append(f"{shipped}: has no source {shipped.stem}.c in {sources_dir}")
    return problems


def source_name(sources_dir: Path, built: Path) -> str:
    for suffix in SUFFIXES:
        if (sources_dir / f"{built.stem}{suffix}").is_file():
            return f"{built.stem}{suffix}"
    return f"{built.stem}.c"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sdk/build.py",
        description="Compile C agents (NAME.c -> NAME.wasm) for qhybrid with clang.",
        epilog="Exit status: 0 ok, 1 --check found stale files, 2 toolchain missing, "
        f"3 compile error. Toolchain on Debian/Ubuntu: apt-get install {DEBIAN_PACKAGES}",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="rebuild into a temporary directory and compare with the shipped .wasm files; "
        "exit 1 listing each one that is stale, missing or has no source",
    )
    parser.add_argument(
        "--tests",
        action="store_true",
        help=f"build the test-only agents of {TEST_AGENTS_DIR.relative_to(REPO_ROOT)} "
        "instead of the samples",
    )
    parser.add_argument(
        "--agents-dir",
        type=Path,
        help=f"where the .c sources are (default {SAMPLES_DIR.relative_to(REPO_ROOT)})",
    )
    parser.add_argument(
        "--out", type=Path, help="where the .wasm files go (default: beside the sources)"
    )
    parser.add_argument(
        "--lang",
        choices=sorted(LANGS),
        default="all",
        help="build only the sources of one language (default: all of them)",
    )
    parser.add_argument("--clang", help="the clang to use (default: clang on PATH)")
    parser.add_argument(
        "--sysroot",
        type=Path,
        help=f"the {TARGET} sysroot (default {DEFAULT_SYSROOT}, where Debian's wasi-libc is)",
    )
    parser.add_argument(
        "--print-command", action="store_true", help="print each clang command line"
    )
    args = parser.parse_args(argv)
    if args.tests and args.agents_dir is not None:
        parser.error("give --tests or --agents-dir, not both")
    return args


def _say(line: str) -> None:
    """The script's report goes to stdout (errors to stderr)."""
    sys.stdout.write(line + "\n")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    _LANG[0] = args.lang
    sources_dir: Path = args.agents_dir or (TEST_AGENTS_DIR if args.tests else SAMPLES_DIR)
    sources_dir = sources_dir.resolve()
    out_dir: Path = (args.out or sources_dir).resolve()
    if not sources_dir.is_dir():
        sys.stderr.write(f"error: {sources_dir}: no such directory\n")
        return EXIT_TOOLCHAIN
    if not sources_of(sources_dir):
        sys.stderr.write(f"error: {sources_dir}: no .c, .rs or .ts sources to build\n")
        return EXIT_TOOLCHAIN
    try:
        tc = find_toolchain(args.clang, args.sysroot)
    except ToolchainError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_TOOLCHAIN
    if args.print_command:
        for source in sorted(sources_dir.glob("*.c")):
            cmd = tc.command(source, out_dir / f"{source.stem}.wasm")
            _say(f"(cd {source.parent} && {' '.join(cmd)})")
    try:
        if args.check:
            problems = check_dir(tc, sources_dir, out_dir)
            if problems:
                sys.stderr.write(
                    "stale agent modules (rebuild with `python sdk/build.py` and commit them):\n"
                )
                for line in problems:
                    sys.stderr.write(f"  {line}\n")
                sys.stderr.write(f"compiler: {tc.version}\n")
                return EXIT_STALE
            count = len(sources_of(sources_dir))
            _say(f"{count} agent modules in {out_dir} match their sources ({tc.version})")
            return EXIT_OK
        for output in build_dir(tc, sources_dir, out_dir):
            _say(f"built {output} ({output.stat().st_size} bytes)")
    except CompileError as exc:
        sys.stderr.write(f"error: {exc}")
        return EXIT_COMPILE
    except ToolchainError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_TOOLCHAIN
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
