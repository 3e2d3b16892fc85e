"""The C SDK: sdk/build.py, sdk/c/qhybrid.h and the C sample agents.

What users rely on: the shipped .wasm files are exactly what their sources build to (so CI
fails on a stale one); each has the ABI's exports and imports only what the ABI allows, with
the ABI's signatures; the build says clearly what to install when the toolchain is missing;
and the samples do what their comments say. The behaviour is checked under a small fake host
written here from docs/agent-abi.md, so these tests pin the SDK to the document rather than
to the runtime's implementation.

These tests need Debian's clang, lld, wasi-libc and libclang-rt-14-dev-wasm32; without them
they fail, naming the packages (CI installs them).
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import wasmtime

from qhybrid.runtime.wasm_pool._abi import (
    ABI_VERSION,
    HOST_FUNCTIONS,
    KIND_ENVELOPE,
    KIND_GPU_DONE,
    KIND_LLM_DONE,
    KIND_TASK_DONE,
    OPTIONAL_EXPORTS,
    REQUIRED_EXPORTS,
)

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "sdk" / "build.py"
SAMPLES = ROOT / "resources" / "agents"
TEST_AGENTS = ROOT / "tests" / "agents"
SAMPLE_NAMES = (
    "ask",
    "counter",
    "crew",
    "echo",
    "hop",
    "iterate",
    "manager",
    "notes",
    "planner",
    "prep",
    "spawner",
    "worker",
)
RUST_SAMPLES = ("rs_chat", "rs_echo", "rs_spawner", "rs_worker")
AS_SAMPLES = ("as_chat", "as_echo", "as_spawner", "as_worker")
TEST_AGENT_NAMES = ("bad_pointer", "fs_probe", "hog", "v2_probe")

# The runtime's own tables are the single source of truth the header must match.
ABI_IMPORTS = HOST_FUNCTIONS
ABI_EXPORTS = {**REQUIRED_EXPORTS, **OPTIONAL_EXPORTS}
REQUIRED_EXPORTS = {"memory", "qh_abi_version", "qh_alloc", "qh_on_message"}


def run_build(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BUILD), *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    """Assert a build succeeded without warnings; a missing toolchain fails with its hint."""
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
    assert "warning:" not in proc.stderr, proc.stderr
    return proc.stdout


def _signature(ty: wasmtime.FuncType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(map(str, ty.params)), tuple(map(str, ty.results))


@pytest.fixture(scope="module")
def engine() -> wasmtime.Engine:
    return wasmtime.Engine()


@pytest.fixture(scope="module")
def test_agents(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test-only agents, built on demand into a temporary directory."""
    out = tmp_path_factory.mktemp("test-agents")
    _ok(run_build("--tests", "--out", out))
    return out


# -- the build -------------------------------------------------------------------------------


def test_shipped_modules_match_their_sources() -> None:
    """The CI staleness check: every shipped .wasm is what its .c, .rs or .ts builds to, today
    (with Debian's clang and rustc, and the pinned AssemblyScript compiler)."""
    out = _ok(run_build("--check"))
    assert f"{len(SAMPLE_NAMES) + len(RUST_SAMPLES) + len(AS_SAMPLES)} agent modules" in out
    assert sorted(p.stem for p in SAMPLES.glob("*.c")) == sorted(SAMPLE_NAMES)
    assert sorted(p.stem for p in SAMPLES.glob("*.rs")) == sorted(RUST_SAMPLES)
    assert sorted(p.stem for p in SAMPLES.glob("*.ts")) == sorted(AS_SAMPLES)


def test_check_reports_stale_missing_and_orphaned_modules(tmp_path: Path) -> None:
    agents = tmp_path / "agents"
    agents.mkdir()
    for path in SAMPLES.glob("*.c"):
        shutil.copy(path, agents / path.name)
        shutil.copy(path.with_suffix(".wasm"), agents / f"{path.stem}.wasm")
    counter = agents / "counter.c"
    source = counter.read_text(encoding="utf-8")
    assert "KIND_VALUE = 3" in source
    counter.write_text(source.replace("KIND_VALUE = 3", "KIND_VALUE = 9"), encoding="utf-8")
    (agents / "worker.wasm").unlink()
    (agents / "stray.wasm").write_bytes(b"\0asm\1\0\0\0")

    proc = run_build("--check", "--lang", "c", "--agents-dir", agents)

    assert proc.returncode == 1, proc.stdout + proc.stderr
    problems = [line.strip() for line in proc.stderr.splitlines() if line.startswith("  ")]
    assert problems == [
        f"{agents / 'counter.wasm'}: differs from a fresh build of counter.c",
        f"{agents / 'worker.wasm'}: missing (built from worker.c)",
        f"{agents / 'stray.wasm'}: has no source stray.c in {agents}",
    ]
    # The copies elsewhere on disk still match: the build does not depend on where it runs.
    assert "echo.wasm" not in proc.stderr
    # --check never touches the shipped files.
    assert not (agents / "worker.wasm").exists()
    assert (agents / "counter.wasm").read_bytes() == (SAMPLES / "counter.wasm").read_bytes()


def test_build_is_reproducible(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    _ok(run_build("--lang", "c", "--out", first))
    _ok(run_build("--lang", "c", "--out", second))
    for name in SAMPLE_NAMES:
        assert (first / f"{name}.wasm").read_bytes() == (second / f"{name}.wasm").read_bytes()
        assert str(ROOT).encode() not in (first / f"{name}.wasm").read_bytes()


def test_missing_clang_says_what_to_install() -> None:
    proc = run_build("--clang", "/nonexistent/clang")
    assert proc.returncode == 2
    assert "/nonexistent/clang" in proc.stderr
    for package in ("clang", "lld", "wasi-libc", "libclang-rt-14-dev-wasm32"):
        assert package in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_sysroot_says_what_to_install(tmp_path: Path) -> None:
    proc = run_build("--sysroot", tmp_path)
    assert proc.returncode == 2
    assert "wasi-libc" in proc.stderr
    assert "libclang-rt-14-dev-wasm32" in proc.stderr


def test_missing_compiler_runtime_says_what_to_install(tmp_path: Path) -> None:
    """A clang without libclang_rt.builtins-wasm32.a (Debian ships it apart)."""
    fake = tmp_path / "clang"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        '  *--version*) echo "clang version 14.0.6";;\n'
        '  *-print-libgcc-file-name*) echo "$0.d/libclang_rt.builtins-wasm32.a";;\n'
        "  *) exit 1;;\n"
        "esac\n",
        encoding="utf-8",
    )
    fake.chmod(0o755)
    proc = run_build("--clang", fake)
    assert proc.returncode == 2
    assert "libclang_rt.builtins-wasm32.a" in proc.stderr
    assert "libclang-rt-14-dev-wasm32" in proc.stderr


def test_compile_error_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.c").write_text('#include "qhybrid.h"\nint x = ;\n', encoding="utf-8")
    proc = run_build("--agents-dir", tmp_path)
    assert proc.returncode == 3
    assert "broken.c" in proc.stderr
    assert not (tmp_path / "broken.wasm").exists()


# -- the modules against the ABI --------------------------------------------------------------


def _check_abi(engine: wasmtime.Engine, path: Path) -> None:
    module = wasmtime.Module.from_file(engine, str(path))
    exports = {e.name: e.type for e in module.exports}
    assert exports.keys() >= REQUIRED_EXPORTS, path
    assert isinstance(exports["memory"], wasmtime.MemoryType)
    for name, ty in exports.items():
        if name == "memory":
            continue
        assert name in ABI_EXPORTS, f"{path.name}: unexpected export {name}"
        assert isinstance(ty, wasmtime.FuncType)
        assert _signature(ty) == ABI_EXPORTS[name], f"{path.name}: export {name}"
    for imp in module.imports:
        assert imp.module in {"qhybrid", "wasi_snapshot_preview1"}, f"{path.name}: {imp.module}"
        if imp.module == "qhybrid":
            assert imp.name in ABI_IMPORTS, f"{path.name}: unknown import {imp.name}"
            assert isinstance(imp.type, wasmtime.FuncType)
            assert _signature(imp.type) == ABI_IMPORTS[imp.name or ""], f"{path.name}: {imp.name}"


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_has_the_abi_exports_and_imports(engine: wasmtime.Engine, name: str) -> None:
    _check_abi(engine, SAMPLES / f"{name}.wasm")


def test_test_agents_build_and_have_the_abi(engine: wasmtime.Engine, test_agents: Path) -> None:
    assert sorted(p.stem for p in test_agents.glob("*.wasm")) == sorted(TEST_AGENT_NAMES)
    for path in test_agents.glob("*.wasm"):
        _check_abi(engine, path)


def test_every_abi_import_is_declared_with_its_signature(
    engine: wasmtime.Engine, tmp_path: Path
) -> None:
    """An agent that calls every host function of qhybrid.h imports exactly the ABI's list,
    with the ABI's signatures (the header's C types map to the right WebAssembly types)."""
    calls = "\n".join(
        f"(void)qh_{name}({', '.join('0' for _ in params)});"
        for name, (params, _results) in ABI_IMPORTS.items()
    )
    source = (
        '#define QH_IMPLEMENTATION\n#include "qhybrid.h"\n'
        "int32_t qh_on_message(int32_t from, int32_t kind, const uint8_t *p, size_t len) {\n"
        f"(void)from; (void)kind; (void)p; (void)len;\n{calls}\nreturn 0; }}\n"
    )
    (tmp_path / "all.c").write_text(source, encoding="utf-8")
    _ok(run_build("--agents-dir", tmp_path))
    module = wasmtime.Module.from_file(engine, str(tmp_path / "all.wasm"))
    imported = {
        imp.name: _signature(imp.type)
        for imp in module.imports
        if imp.module == "qhybrid" and isinstance(imp.type, wasmtime.FuncType)
    }
    assert imported == ABI_IMPORTS


# -- a fake host, from docs/agent-abi.md -------------------------------------------------------


@dataclass
class Sent:
    sender: int
    to: int
    kind: int
    payload: bytes


@dataclass
class World:
    """What the agents of one test share: names, messages, logs, tensors, jobs."""

    names: dict[str, int] = field(default_factory=dict)
    outbox: list[Sent] = field(default_factory=list)
    logs: list[tuple[str, int, str]] = field(default_factory=list)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    gpu_jobs: list[tuple[str, list[str], str, float]] = field(default_factory=list)
    llm_requests: list[tuple[str, int, int]] = field(default_factory=list)

    def log_texts(self, agent: str) -> list[str]:
        return [text for name, _, text in self.logs if name == agent]


class FakeAgent:
    """One instance of an agent module under a minimal host (no runtime, no ticks)."""

    def __init__(
        self,
        engine: wasmtime.Engine,
        path: Path,
        world: World,
        name: str,
        config: dict[str, Any] | str | None = None,
    ) -> None:
        self.world, self.name = world, name
        self.id = world.names.setdefault(name, len(world.names))
        self.snapshot: bytes | None = None
        self.handles: list[str] = []
        self.pending_writes: list[tuple[str, int, bytes]] = []
        module = wasmtime.Module.from_file(engine, str(path))
        self.store = wasmtime.Store(engine)
        self.store.set_wasi(wasmtime.WasiConfig())  # no files, no environment
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        for imp in module.imports:
            if imp.module == "qhybrid":
                params, results = ABI_IMPORTS[imp.name or ""]
                ty = wasmtime.FuncType(
                    [getattr(wasmtime.ValType, p)() for p in params],
                    [getattr(wasmtime.ValType, r)() for r in results],
                )
                impl = getattr(self, f"_host_{imp.name}")
                linker.define_func("qhybrid", imp.name or "", ty, impl, access_caller=True)
        self.instance = linker.instantiate(self.store, module)
        self.exports = self.instance.exports(self.store)
        self.memory = self.exports["memory"]
        init = self.exports.get("_initialize")
        if init is not None:
            init(self.store)
        assert self.exports["qh_abi_version"](self.store) == ABI_VERSION
        if config is not None:
            text = config if isinstance(config, str) else json.dumps(config, sort_keys=True)
            self.init_result = self._call_with_bytes("qh_init", text.encode())

    # The agent side of the ABI.

    def _call_with_bytes(self, export: str, data: bytes, *head: int) -> int:
        ptr = self.exports["qh_alloc"](self.store, len(data))
        self.memory.write(self.store, data, ptr)
        result: int = self.exports[export](self.store, *head, ptr, len(data))
        return result

    def deliver(self, sender: int, kind: int, payload: bytes = b"") -> int:
        result = self._call_with_bytes("qh_on_message", payload, sender, kind)
        for name, offset, data in self.pending_writes:  # the end of the tick
            flat = self.world.tensors[name].reshape(-1).view(np.uint8)
            flat[offset : offset + len(data)] = np.frombuffer(data, np.uint8)
        self.pending_writes.clear()
        return result

    def take_snapshot(self) -> bytes:
        assert self.exports["qh_snapshot"](self.store) == 0
        assert self.snapshot is not None
        return self.snapshot

    def restore(self, state: bytes) -> int:
        return self._call_with_bytes("qh_restore", state)

    # The host functions (caller first, then the ABI's arguments).

    def _read(self, caller: wasmtime.Caller, ptr: int, length: int) -> bytes:
        memory = caller.get("memory")
        assert isinstance(memory, wasmtime.Memory)
        return bytes(memory.read(caller, ptr, ptr + length))

    def _write(self, caller: wasmtime.Caller, ptr: int, data: bytes) -> None:
        memory = caller.get("memory")
        assert isinstance(memory, wasmtime.Memory)
        memory.write(caller, data, ptr)

    def _host_send(self, caller: wasmtime.Caller, to: int, kind: int, ptr: int, n: int) -> int:
        if kind < 0 or kind >= 0x7F000000:
            return -2
        if to not in self.world.names.values():
            return -1
        self.world.outbox.append(Sent(self.id, to, kind, self._read(caller, ptr, n)))
        return 0

    def _host_log(self, caller: wasmtime.Caller, level: int, ptr: int, n: int) -> None:
        assert n <= 4096
        self.world.logs.append((self.name, level, self._read(caller, ptr, n).decode("utf-8")))

    def _host_self_id(self, caller: wasmtime.Caller) -> int:
        return self.id

    def _host_lookup(self, caller: wasmtime.Caller, ptr: int, n: int) -> int:
        return self.world.names.get(self._read(caller, ptr, n).decode("utf-8"), -1)

    def _host_snapshot_put(self, caller: wasmtime.Caller, ptr: int, n: int) -> None:
        self.snapshot = self._read(caller, ptr, n)

    def _handle(self, h: int) -> str | None:
        return self.handles[h] if 0 <= h < len(self.handles) else None

    def _host_tensor_open(self, caller: wasmtime.Caller, ptr: int, n: int) -> int:
        name = self._read(caller, ptr, n).decode("utf-8")
        if name not in self.world.tensors:
            return -1
        self.handles.append(name)
        return len(self.handles) - 1

    def _host_tensor_info(self, caller: wasmtime.Caller, h: int, out: int) -> int:
        name = self._handle(h)
        if name is None:
            return -1
        shape = self.world.tensors[name].shape
        dims = list(shape) + [0] * (4 - len(shape))
        self._write(caller, out, struct.pack("<6i", 0, len(shape), *dims))
        return 0

    def _host_tensor_read(
        self, caller: wasmtime.Caller, h: int, offset: int, dst: int, n: int
    ) -> int:
        name = self._handle(h)
        if name is None:
            return -1
        data = self.world.tensors[name].tobytes()
        if offset < 0 or offset + n > len(data):
            return -2
        self._write(caller, dst, data[offset : offset + n])
        return n

    def _host_tensor_write(
        self, caller: wasmtime.Caller, h: int, offset: int, src: int, n: int
    ) -> int:
        name = self._handle(h)
        if name is None:
            return -1
        if offset < 0 or offset + n > self.world.tensors[name].nbytes:
            return -2
        self.pending_writes.append((name, offset, self._read(caller, src, n)))
        return 0

    def _host_tensor_create(
        self, caller: wasmtime.Caller, ptr: int, n: int, dtype: int, ndim: int, shape_ptr: int
    ) -> int:
        name = self._read(caller, ptr, n).decode("utf-8")
        if name in self.world.tensors:
            return -5
        shape = struct.unpack(f"<{ndim}i", self._read(caller, shape_ptr, 4 * ndim))
        assert dtype == 0
        self.world.tensors[name] = np.zeros(shape, np.float32)
        self.handles.append(name)
        return len(self.handles) - 1

    def _host_gpu_submit(
        self,
        caller: wasmtime.Caller,
        op_ptr: int,
        op_len: int,
        inputs_ptr: int,
        n_inputs: int,
        out_ptr: int,
        out_len: int,
        param: float,
    ) -> int:
        handles = struct.unpack(f"<{n_inputs}i", self._read(caller, inputs_ptr, 4 * n_inputs))
        names = [self._handle(h) for h in handles]
        if None in names:
            return -1
        op = self._read(caller, op_ptr, op_len).decode("utf-8")
        out = self._read(caller, out_ptr, out_len).decode("utf-8")
        self.world.gpu_jobs.append((op, [n for n in names if n is not None], out, param))
        return len(self.world.gpu_jobs) - 1

    def _host_llm_complete(
        self, caller: wasmtime.Caller, ptr: int, n: int, max_tokens: int, tag: int
    ) -> int:
        prompt = self._read(caller, ptr, n).decode("utf-8")
        self.world.llm_requests.append((prompt, max_tokens, tag))
        return 100 + len(self.world.llm_requests) - 1


def i64s(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}q", *values)


def run_messages(world: World, agents: dict[int, FakeAgent], limit: int = 10_000) -> list[Sent]:
    """Deliver queued messages until none is left; returns those for ids without an agent."""
    undelivered = []
    for _ in range(limit):
        if not world.outbox:
            return undelivered
        batch, world.outbox = world.outbox, []
        for msg in batch:
            agent = agents.get(msg.to)
            if agent is None:
                undelivered.append(msg)
            else:
                assert agent.deliver(msg.sender, msg.kind, msg.payload) == 0
    raise AssertionError("messages kept coming")


# -- the samples ------------------------------------------------------------------------------


def sample(name: str) -> Path:
    return SAMPLES / f"{name}.wasm"


def test_echo_answers_agents_and_logs_the_runtime(engine: wasmtime.Engine) -> None:
    world = World(names={"other": 0})
    echo = FakeAgent(engine, sample("echo"), world, "echo")
    assert echo.deliver(0, 7, b"ping \x00\xff") == 0
    assert world.outbox == [Sent(echo.id, 0, 7, b"ping \x00\xff")]
    assert echo.deliver(-1, 3, b"hello") == 0
    assert echo.deliver(-1, KIND_TASK_DONE, b"\x01\x02") == 0
    assert world.log_texts("echo") == [
        'echo: from the runtime, kind 3: "hello"',
        f"echo: from the runtime, kind {KIND_TASK_DONE}, 2 bytes",
    ]
    assert len(world.outbox) == 1
    # A payload bigger than the first scratch buffer: qh_alloc grows it.
    big = bytes(range(256)) * 1000
    assert echo.deliver(0, 1, big) == 0
    assert world.outbox[-1].payload == big


def test_counter_counts_replies_and_survives_a_snapshot(engine: wasmtime.Engine) -> None:
    world = World(names={"asker": 0})
    counter = FakeAgent(engine, sample("counter"), world, "counter")
    for value in (5, -2, 40):
        assert counter.deliver(-1, 1, i64s(value)) == 0
    assert counter.deliver(0, 2) == 0
    assert world.outbox == [Sent(counter.id, 0, 3, i64s(43))]
    assert counter.deliver(-1, 2) == 0
    assert world.log_texts("counter") == ["counter: total = 43"]
    assert counter.deliver(-1, 1, b"\x01") == 1  # malformed: the message fails

    state = counter.take_snapshot()
    assert state == b"QHC1" + struct.pack("<iq", 1, 43)
    fresh = FakeAgent(engine, sample("counter"), world, "counter")
    assert fresh.restore(state) == 0
    assert fresh.deliver(0, 2) == 0
    assert world.outbox[-1] == Sent(counter.id, 0, 3, i64s(43))
    assert fresh.restore(b"not a counter state") == 1


def collatz_steps(n: int) -> int:
    steps = 0
    while n > 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


@pytest.mark.parametrize("workers", [1, 3])
def test_planner_fans_out_and_gathers(engine: wasmtime.Engine, workers: int) -> None:
    world = World(names={"sink": 0})
    planner = FakeAgent(
        engine, sample("planner"), world, "planner", {"report_to": "sink", "workers": "crew"}
    )
    assert planner.init_result == 0
    names = ["crew"] if workers == 1 else [f"crew-{i}" for i in range(workers)]
    crew = [FakeAgent(engine, sample("worker"), world, name) for name in names]
    agents = {a.id: a for a in [planner, *crew]}

    assert planner.deliver(-1, 1, i64s(10)) == 0
    items = [(m.to, struct.unpack("<q", m.payload)[0]) for m in world.outbox]
    assert items == [(crew[i % workers].id, i) for i in range(10)]  # round-robin
    reports = run_messages(world, agents)

    total = sum(collatz_steps(i + 1) for i in range(10))
    assert total == 67
    assert reports == [Sent(planner.id, 0, 4, i64s(total))]
    assert world.log_texts("planner")[-1] == f"planner: all 10 results in, total {total}"
    # A second job reuses the workers.
    assert planner.deliver(-1, 1, i64s(3)) == 0
    assert run_messages(world, agents) == [Sent(planner.id, 0, 4, i64s(0 + 1 + 7))]


def test_planner_refuses_bad_requests(engine: wasmtime.Engine) -> None:
    world = World()
    planner = FakeAgent(engine, sample("planner"), world, "planner", {})
    assert planner.deliver(-1, 1, i64s(4)) == 1  # no "worker" or "worker-0"
    worker = FakeAgent(engine, sample("worker"), world, "worker")
    assert planner.deliver(-1, 1, i64s(2)) == 0
    assert planner.deliver(-1, 1, i64s(2)) == 1  # still running
    assert planner.deliver(worker.id, 3, i64s(7, 1)) == 1  # no item 7
    assert planner.deliver(worker.id, 3, i64s(0, 5)) == 0
    assert planner.deliver(worker.id, 3, i64s(0, 5)) == 1  # twice
    assert planner.deliver(worker.id, 3, i64s(1, 6)) == 0
    assert world.log_texts("planner")[-1] == "planner: all 2 results in, total 11"


def test_worker_logs_items_from_the_runtime(engine: wasmtime.Engine) -> None:
    world = World()
    worker = FakeAgent(engine, sample("worker"), world, "worker")
    assert worker.deliver(-1, 2, i64s(26)) == 0
    assert worker.deliver(-1, 2, i64s(-1)) == 1
    assert world.log_texts("worker")[0] == "worker: item 26 -> 111"


@pytest.mark.parametrize(
    ("config", "accepted"),
    [
        ('{"workers": "crew"}', True),
        # Values before the key of any JSON type, escapes in keys and values, spacing.
        (
            '{ "a" : [1, "x]}\\"", {"b": [2]}, null], "b": -2.5e3, "c": true,'
            ' "report_to": "s\\u0069nk", "w\\u006frkers": "crew" }',
            True,
        ),
        ('{"workers": 3}', False),
        ('{"workers": ""}', False),
        ('{"workers": "' + "w" * 100 + '"}', False),
        ('{"workers": "crew"', False),  # cut short: the search for report_to fails
        ("[]", False),  # not an object
    ],
)
def test_config_json_reader(engine: wasmtime.Engine, config: str, accepted: bool) -> None:
    world = World(names={"sink": 0})
    planner = FakeAgent(engine, sample("planner"), world, "planner", config)
    assert (planner.init_result == 0) is accepted
    if not accepted:
        return
    workers = [FakeAgent(engine, sample("worker"), world, name) for name in ("crew", "worker")]
    assert planner.deliver(-1, 1, i64s(1)) == 0
    assert world.outbox[0].to == world.names["crew"]
    reports = run_messages(world, {a.id: a for a in [planner, *workers]})
    assert reports == ([Sent(planner.id, 0, 4, i64s(0))] if "s\\u0069nk" in config else [])


def test_prep_normalises_rows_and_submits_the_matmul(engine: wasmtime.Engine) -> None:
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((300, 70)) * 3 + 5).astype(np.float32)
    x[7] = 2.0  # a constant row becomes zeros, not NaN
    world = World(names={"sink": 0}, tensors={"x": x.copy(), "w": np.ones((70, 4), np.float32)})
    prep = FakeAgent(engine, sample("prep"), world, "prep", {"report_to": "sink"})
    assert prep.init_result == 0

    assert prep.deliver(-1, 1) == 0

    mean = x.mean(axis=1, keepdims=True, dtype=np.float64)
    var = x.var(axis=1, keepdims=True, dtype=np.float64)
    expected = ((x - mean) / np.sqrt(var + 1e-5)).astype(np.float32)
    np.testing.assert_allclose(world.tensors["x_norm"], expected, rtol=1e-5, atol=1e-5)
    assert not world.tensors["x_norm"][7].any()
    assert world.gpu_jobs == [("matmul", ["x_norm", "w"], "y", 0.0)]
    # The output can be made once.
    assert prep.deliver(-1, 1) == 1
    assert "prep: cannot create tensor x_norm: name already taken" in world.log_texts("prep")

    assert prep.deliver(-1, KIND_GPU_DONE, struct.pack("<ii", 0, 0)) == 0
    assert prep.deliver(-1, KIND_GPU_DONE, struct.pack("<ii", 1, 2) + b"shapes") == 0
    assert world.outbox == [
        Sent(prep.id, 0, 5, i64s(0, 0)),
        Sent(prep.id, 0, 5, i64s(1, 2)),
    ]
    assert world.log_texts("prep")[-2:] == [
        "prep: GPU job 0 done",
        "prep: GPU job 1 failed (status 2): shapes",
    ]


def test_prep_reports_missing_tensors(engine: wasmtime.Engine) -> None:
    world = World(tensors={"a": np.ones((2, 3), np.float32)})
    prep = FakeAgent(engine, sample("prep"), world, "prep", {"input": "a", "weights": "nope"})
    assert prep.deliver(-1, 1) == 1
    assert world.log_texts("prep")[-1] == "prep: no tensor named nope"
    prep2 = FakeAgent(engine, sample("prep"), world, "prep2", {"input": "b"})
    assert prep2.deliver(-1, 1) == 1
    assert world.log_texts("prep2") == ["prep: no tensor named b"]


def test_ask_calls_the_llm_and_logs_answers(engine: wasmtime.Engine) -> None:
    world = World()
    ask = FakeAgent(engine, sample("ask"), world, "ask", {"max_tokens": 7})
    assert ask.init_result == 0
    assert ask.deliver(-1, 1, "Bonjour, ça va ?".encode()) == 0
    assert ask.deliver(-1, 1, b"second") == 0
    assert world.llm_requests == [("Bonjour, ça va ?", 7, 0), ("second", 7, 1)]

    assert ask.deliver(-1, KIND_LLM_DONE, struct.pack("<iii", 100, 0, 0) + b"oui") == 0
    assert ask.deliver(-1, KIND_LLM_DONE, struct.pack("<iii", 101, 1, 1) + b"no model") == 0
    long_answer = "x" + "é" * 3000  # cut at 4096 bytes would split an é: cut at 4095
    done = struct.pack("<iii", 102, 2, 0) + long_answer.encode()
    assert ask.deliver(-1, KIND_LLM_DONE, done) == 0
    logs = world.logs[-3:]
    assert logs[0] == ("ask", 20, "answer: oui")
    assert logs[1] == ("ask", 30, "llm error: no model")
    assert logs[2][2] == "answer: x" + "é" * ((4095 - 9) // 2)
    assert len(logs[2][2].encode()) == 4095


@pytest.mark.parametrize(
    ("config", "ok"),
    [
        ({}, True),
        ({"max_tokens": 0}, False),
        ({"max_tokens": 2.5}, False),
        ({"max_tokens": "8"}, False),
        ({"max_tokens": 4096}, True),
    ],
)
def test_ask_checks_its_config(engine: wasmtime.Engine, config: dict[str, Any], ok: bool) -> None:
    ask = FakeAgent(engine, sample("ask"), World(), "ask", config)
    assert (ask.init_result == 0) is ok


# -- the test-only agents, under wasmtime's own WASI -------------------------------------------


def test_hog_printf_goes_to_stdout(
    engine: wasmtime.Engine, test_agents: Path, tmp_path: Path
) -> None:
    module = wasmtime.Module.from_file(engine, str(test_agents / "hog.wasm"))
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    wasi.stdout_file = str(tmp_path / "out")
    wasi.stderr_file = str(tmp_path / "err")
    store.set_wasi(wasi)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    log = wasmtime.FuncType([wasmtime.ValType.i32()] * 3, [])
    linker.define_func("qhybrid", "log", log, lambda *args: None)
    exports = linker.instantiate(store, module).exports(store)
    exports["_initialize"](store)
    on_message: Callable[..., int] = exports["qh_on_message"]
    assert on_message(store, -1, 4, 0, 0) == 0
    assert (tmp_path / "out").read_text() == "hog: hello from printf\n"
    assert (tmp_path / "err").read_text() == "hog: warning from stderr\n"


# -- Rust and AssemblyScript samples in the real host ------------------------------------------


def _host(name: str, memory_mb: int | None = None) -> Any:
    from qhybrid.runtime.wasm_pool import Limits
    from qhybrid.runtime.wasm_pool._agent import AgentHost, WorkerContext
    from qhybrid.runtime.wasm_pool._protocol import AgentLoad

    ctx = WorkerContext()
    ctx.set_directory([name, "peer"])
    engine = ctx.engine((None, True))
    module = wasmtime.Module.from_file(engine, str(SAMPLES / f"{name}.wasm"))
    ctx.add_module(name, bytes(module.serialize()), (SAMPLES / f"{name}.wasm").read_bytes())
    limits = Limits(memory_bytes=memory_mb << 20 if memory_mb else None)
    load = AgentLoad(0, name, name, (0,), 2, 5, b"{}", limits)
    return ctx, AgentHost(ctx, load)


@pytest.mark.parametrize("name", ["as_echo", "rs_echo"])
def test_echo_samples_do_not_run_out_of_memory_on_a_long_run(name: str) -> None:
    """The AssemblyScript runtime collects garbage (the stub runtime would grow until the
    limit); Rust frees as it goes."""
    ctx, echo = _host(name, memory_mb=2)
    try:
        payload = bytes(range(256)) * 16
        for i in range(3000):
            outcome = echo.deliver(i, 1, 7, payload)
            assert outcome.ok, (i, outcome.error)
            assert outcome.sent == ((1, 7, payload),)
        # Their agent-defined snapshot holds the count, and restores it.
        state = echo.snapshot()
        ctx2, fresh = _host(name)
        fresh.restore(state)
        assert fresh.deliver(0, 1, 7, b"x").ok
        ctx2.close()
    finally:
        ctx.close()


@pytest.mark.parametrize(
    ("name", "text"),
    [("rs_worker", "rs_worker: a job is"), ("as_worker", "as_worker: a job is")],
)
def test_worker_samples_reply_and_fail_with_their_own_text(name: str, text: str) -> None:
    ctx, worker = _host(name)
    try:
        ok = worker.deliver(1, 1, 10, b'{"n": 26}')
        assert ok.ok, ok.error
        ((to, kind, wire),) = ok.sent
        assert (to, kind) == (1, KIND_ENVELOPE)  # a reply: enveloped, with its correlation id
        assert wire.endswith(b'{"n":26,"steps":111}')
        bad = worker.deliver(2, 1, 10, b'{"n": -3}')
        assert not bad.ok and bad.error is not None and bad.error.startswith(text)
    finally:
        ctx.close()
