"""The CPU kernels compiled ahead of time into ~/.cache/qhybrid/kernels (a pip install's or a
checkout's): the cache's key, hits and misses, atomic builds, broken entries, the JIT
fallback, and the compiled kernels giving numba's JIT results on the real models.

The machine's entry itself is built by scripts/test.sh before the tests (about 80 s on two
cores, once per change of the kernels); :func:`machine_entry` builds it where it is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from qhybrid.runtime.llm import _aot_cache, _jit
from qhybrid.runtime.llm._aot_cache import MANIFEST, build, cache_key, find


def fake_compile(calls: list[str], delay: float = 0.0) -> Callable[[Path], str]:
    """A stand-in for the real build: writes a module file and a manifest, slowly."""

    def compile_into(folder: Path) -> str:
        calls.append(folder.name)
        time.sleep(delay)
        (folder / "_aot_kernels.so").write_bytes(b"not really a module")
        (folder / MANIFEST).write_text(json.dumps({"cpu": "host", "kernels": {}}))
        return "_aot_kernels.so"

    return compile_into


def test_the_key_follows_the_sources_and_nothing_else(tmp_path: Path) -> None:
    source = tmp_path / "_cpu_kernels.py"
    source.write_text("x = 1\n")
    key = cache_key((source,))
    assert key == cache_key((source,)) and len(key) == 32
    source.write_text("x = 2\n")
    assert cache_key((source,)) != key
    # the machine's real key covers the kernels and the modules that make their arguments
    names = {p.name for p in _aot_cache.KEY_SOURCES}
    assert {"_cpu_kernels.py", "_cpu_ops.py", "_jit.py", "_numpy_model.py"} <= names
    assert all(p.is_file() for p in _aot_cache.KEY_SOURCES)


def test_a_build_makes_an_entry_that_later_lookups_hit(tmp_path: Path) -> None:
    calls: list[str] = []
    assert find(tmp_path, "k1") is None  # miss: nothing there
    module = build(fake_compile(calls), root=tmp_path, key="k1")
    assert module == tmp_path / "k1" / "_aot_kernels.so"
    assert find(tmp_path, "k1") == module
    manifest = json.loads((tmp_path / "k1" / MANIFEST).read_text())
    assert manifest["key"] == "k1" and manifest["module"] == "_aot_kernels.so"
    assert build(fake_compile(calls), root=tmp_path, key="k1") == module
    assert len(calls) == 1  # the second build found it
    # stale: another key (other sources, numba, Python or CPU) does not use it
    assert find(tmp_path, "k2") is None


def test_an_entry_whose_manifest_or_module_is_wrong_is_a_miss_and_is_rebuilt(
    tmp_path: Path,
) -> None:
    calls: list[str] = []
    module = build(fake_compile(calls), root=tmp_path, key="k1")
    assert module is not None
    manifest = tmp_path / "k1" / MANIFEST
    good = manifest.read_text()
    manifest.write_text(good.replace('"k1"', '"k0"'))  # copied from another key
    assert find(tmp_path, "k1") is None
    manifest.write_text("{not json")
    assert find(tmp_path, "k1") is None
    manifest.write_text(good)
    module.unlink()
    assert find(tmp_path, "k1") is None
    assert build(fake_compile(calls), root=tmp_path, key="k1") == module
    assert len(calls) == 2 and module.is_file()


def test_two_builders_at_once_compile_once_and_leave_one_whole_entry(tmp_path: Path) -> None:
    calls: list[str] = []
    results: list[Path | None] = []
    # flock locks are per open file, so two threads contend as two processes would
    threads = [
        threading.Thread(
            target=lambda: results.append(build(fake_compile(calls, 0.3), root=tmp_path, key="k1"))
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls and len(calls) == 1
    assert results == [tmp_path / "k1" / "_aot_kernels.so"] * 2
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["k1"]


def test_a_background_builder_leaves_when_another_holds_the_lock(tmp_path: Path) -> None:
    calls: list[str] = []
    started = threading.Event()

    def slow(folder: Path) -> str:
        started.set()
        return fake_compile(calls, 0.5)(folder)

    first = threading.Thread(target=lambda: build(slow, root=tmp_path, key="k1"))
    first.start()
    started.wait(5)
    assert build(fake_compile(calls), root=tmp_path, key="k1", wait=False) is None
    first.join()
    assert len(calls) == 1 and find(tmp_path, "k1") is not None


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    def broken(folder: Path) -> str:
        (folder / "half-written.o").write_bytes(b"...")
        raise RuntimeError("the C compiler failed")

    with pytest.raises(RuntimeError, match="C compiler"):
        build(broken, root=tmp_path, key="k1")
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_old_entries_are_pruned(tmp_path: Path) -> None:
    calls: list[str] = []
    for i in range(4):
        build(fake_compile(calls), root=tmp_path, key=f"k{i}", keep=2)
        os.utime(tmp_path / f"k{i}", (i, i))  # k3 newest
    build(fake_compile(calls), root=tmp_path, key="k4", keep=2)
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert left == ["k3", "k4"]


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def test_a_broken_cached_module_means_the_jit_and_is_discarded(tmp_path: Path) -> None:
    key = cache_key()
    calls: list[str] = []
    module = build(fake_compile(calls), root=tmp_path / "kernels", key=key)
    assert module is not None
    result = run_python(
        """
        import logging, sys
        logging.basicConfig(level=logging.WARNING)
        from qhybrid.runtime.llm import _jit
        print(_jit.mode(), "numba" in sys.modules)
        """,
        QHYBRID_CACHE=str(tmp_path),
        QHYBRID_CPU_KERNELS="auto",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["jit", "True"]
    assert "the cached CPU kernels do not load" in result.stderr
    assert not module.parent.exists()  # moved aside: the next build replaces it


def test_qhybrid_cpu_kernels_is_checked(tmp_path: Path) -> None:
    result = run_python(
        "from qhybrid.runtime.llm import _jit",
        QHYBRID_CACHE=str(tmp_path),
        QHYBRID_CPU_KERNELS="fast",
    )
    assert result.returncode != 0
    assert "QHYBRID_CPU_KERNELS='fast': expected auto, jit or aot" in result.stderr
    result = run_python(
        "from qhybrid.runtime.llm import _jit",
        QHYBRID_CACHE=str(tmp_path),
        QHYBRID_CPU_KERNELS="aot",
    )
    assert "no CPU kernels are compiled ahead of time" in result.stderr
    assert "python -m qhybrid.runtime.llm._aot_build --cache" in result.stderr


def test_generate_refuses_a_bad_choice_with_exit_code_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from qhybrid._resources import resource_path
    from qhybrid.runtime.llm._generate_cli import main

    monkeypatch.setenv("QHYBRID_CPU_KERNELS", "fastest")
    model = resource_path("models", "tiny-stories.gguf")
    assert main([str(model), "Once upon a time"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qhybrid generate: error: QHYBRID_CPU_KERNELS='fastest'")
    # unset: nothing compiled and builds off (the tests' default), so the JIT, silently
    monkeypatch.setenv("QHYBRID_CACHE", str(tmp_path))
    monkeypatch.delenv("QHYBRID_CPU_KERNELS")
    assert _aot_cache.prepare() is None


@pytest.fixture(scope="module")
def machine_entry() -> Path:
    """This machine's compiled kernels (built here, ~80 s, where scripts/test.sh did not)."""
    found = find()
    if found is None:
        env = os.environ.get(_aot_cache.BUILD_ENV)
        os.environ[_aot_cache.BUILD_ENV] = "1"
        try:
            found = _aot_cache.ensure_built()
        finally:
            if env is None:
                del os.environ[_aot_cache.BUILD_ENV]
            else:
                os.environ[_aot_cache.BUILD_ENV] = env
    assert found is not None, "the CPU kernels could not be compiled ahead of time"
    return found


def test_this_test_process_runs_the_cached_kernels(machine_entry: Path) -> None:
    if _jit.mode() == "jit" and os.environ.get("QHYBRID_CPU_KERNELS") != "jit":
        # the entry was built by this session's fixture after the kernels had loaded
        assert _jit.source() is None
        return
    assert _jit.mode() == "aot" and _jit.source() == machine_entry


REAL_RUN = """
import sys, json
import numpy as np
from qhybrid.runtime.llm import NumpyRunner, SeqInput, Tokenizer, load_model
from qhybrid.runtime.llm import _jit
out = {}
for path in sys.argv[1:]:
    model = load_model(path)
    tok = Tokenizer.from_metadata(model.metadata)
    ids = np.array(tok.encode("The capital of France is Paris. The capital of Italy is"), np.int32)
    runner = NumpyRunner(model, 2, 64, exact=False)
    rows = [runner.logits([SeqInput(0, ids, 0)])[-1]]
    pos = len(ids)
    for step in range(3):  # decode, one sequence then two (the fused path, batched)
        nxt = np.array([int(np.argmax(rows[-1]))], np.int32)
        items = [SeqInput(0, nxt, pos)] + ([SeqInput(1, ids[:4], 0)] if step == 1 else [])
        items += [SeqInput(1, nxt, 4)] if step == 2 else []
        rows.append(runner.logits(items)[0])
        pos += 1
    exact = NumpyRunner(model, 1, 64, exact=True)
    rows.append(exact.logits([SeqInput(0, ids, 0)])[-1])
    out[path] = [r.tolist() for r in rows]
    model.close()
json.dump({"mode": _jit.mode(), "numba": "numba" in sys.modules, "logits": out}, sys.stdout)
"""


def test_compiled_and_jit_kernels_agree_on_the_real_models(
    machine_entry: Path, real_model: Callable[[str], Path]
) -> None:
    paths = [str(real_model("smollm2")), str(real_model("gemma3-270m"))]
    runs = {}
    for choice in ("aot", "jit"):
        result = subprocess.run(
            [sys.executable, "-c", REAL_RUN, *paths],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "QHYBRID_CPU_KERNELS": choice},
        )
        assert result.returncode == 0, result.stderr[-2000:]
        runs[choice] = json.loads(result.stdout)
    # The compiled run never imported numba: every signature the real models use was built.
    assert runs["aot"]["mode"] == "aot" and runs["aot"]["numba"] is False
    assert runs["jit"]["mode"] == "jit" and runs["jit"]["numba"] is True
    for path in paths:
        ours = np.array(runs["aot"]["logits"][path], dtype=np.float32)
        jitted = np.array(runs["jit"]["logits"][path], dtype=np.float32)
        assert ours.shape == jitted.shape and ours.shape[0] == 5
        np.testing.assert_allclose(ours, jitted, rtol=0, atol=1e-4 * np.abs(jitted).max())
        assert (ours.argmax(axis=1) == jitted.argmax(axis=1)).all()


def test_a_call_no_compiled_variant_takes_falls_back_to_the_jit(machine_entry: Path) -> None:
    result = run_python(
        """
        import logging, sys
        import numpy as np
        logging.basicConfig(level=logging.WARNING)
        from qhybrid.runtime.llm import _cpu_act, _jit
        assert _jit.mode() == "aot" and "numba" not in sys.modules
        x = np.linspace(-3, 3, 64, dtype=np.float32).reshape(1, 64)
        base = _cpu_act.quantize_act(x)  # compiled: float32
        assert "numba" not in sys.modules
        q = np.empty((1, 64), np.int8); d = np.empty((1, 2), np.float32)
        qsum = np.empty((1, 2), np.int64); xsum = np.empty((1, 2), np.float32)
        _cpu_act._quantize(x.astype(np.float64), q, d, qsum, xsum)  # never compiled: float64
        assert "numba" in sys.modules
        assert (q == base.q).all() and np.allclose(d, base.d), (q, base.q)
        assert isinstance(_cpu_act._quantize, _jit.AotKernel)  # the module keeps its kernel
        print("ok")
        """,
        QHYBRID_CPU_KERNELS="aot",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert "_cpu_act._quantize was not compiled ahead of time for (float64[2d, C]" in (
        result.stderr
    )


def test_a_command_does_not_start_a_second_build_while_one_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QHYBRID_CACHE", str(tmp_path))
    monkeypatch.setenv(_aot_cache.BUILD_ENV, "1")
    monkeypatch.delenv("QHYBRID_CPU_KERNELS", raising=False)
    root = _aot_cache.cache_root()
    root.mkdir(parents=True)
    with _aot_cache._lock(root / f".{cache_key()}.lock", wait=True):  # a builder at work
        note = _aot_cache.prepare()
    assert note is not None and "another process is compiling them ahead of time" in note
    assert not (root / "build.log").exists()  # nothing started, no log overwritten


def test_generate_on_the_cpu_imports_neither_numba_nor_the_orchestrator(
    machine_entry: Path,
) -> None:
    from qhybrid._resources import resource_path

    model = resource_path("models", "tiny-stories.gguf")
    result = run_python(
        f"""
        import sys
        from qhybrid.cli import main
        code = main(["generate", "--device", "cpu", "--max-tokens", "4", {str(model)!r}, "Once"])
        unwanted = ("numba", "llvmlite", "wgpu", "pydantic", "wasmtime",
                    "qhybrid.runtime._orchestrator", "qhybrid.runtime.wasm_pool")
        print("\\nexit", code, [m for m in unwanted if m in sys.modules])
        """,
        QHYBRID_CPU_KERNELS="auto",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "exit 0 []"


def test_after_a_failed_build_the_commands_do_not_start_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QHYBRID_CACHE", str(tmp_path))
    monkeypatch.setenv(_aot_cache.BUILD_ENV, "1")
    monkeypatch.delenv("QHYBRID_CPU_KERNELS", raising=False)
    marker = _aot_cache.failure_marker()
    marker.parent.mkdir(parents=True)
    marker.write_text("CompileError: no C compiler\n")  # what the builder leaves
    assert _aot_cache.prepare() is None  # no process started: nothing would be left to reap
    assert not (marker.parent / "build.log").exists()
