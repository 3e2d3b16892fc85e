"""The compiled-module cache is native code that wasmtime trusts: every entry is verified.

What users rely on: a cached artifact with a flipped byte, or another module's artifact copied
under this module's key, is never run; it is compiled again and replaced. The cache folder and
its entries are readable and writable by their owner only.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import wasmtime

from qhybrid.runtime.wasm_pool import load_module, make_engine
from qhybrid.runtime.wasm_pool._cache import cache_key

ROOT = Path(__file__).resolve().parents[2]
AGENTS = ROOT / "resources" / "agents"


def _exports(module: wasmtime.Module) -> set[str]:
    return {e.name for e in module.exports}


def _entry(cache: Path, module_path: Path) -> Path:
    return cache / f"{cache_key(module_path.read_bytes())}.cwasm"


def test_cache_serves_an_intact_entry(tmp_path: Path) -> None:
    engine = make_engine()
    cache = tmp_path / "modules"
    _, _, _, cached = load_module(engine, AGENTS / "echo.wasm", cache)
    assert not cached
    module, _, _, cached = load_module(engine, AGENTS / "echo.wasm", cache)
    assert cached
    assert "qh_on_message" in _exports(module)


@pytest.mark.parametrize("where", [0, 40, -1, "middle"])
def test_a_flipped_byte_is_detected_and_recompiled(tmp_path: Path, where: int | str) -> None:
    engine = make_engine()
    cache = tmp_path / "modules"
    load_module(engine, AGENTS / "echo.wasm", cache)
    entry = _entry(cache, AGENTS / "echo.wasm")
    data = bytearray(entry.read_bytes())
    pos = len(data) // 2 if where == "middle" else int(where)
    data[pos] ^= 0x01
    entry.write_bytes(bytes(data))
    module, _, _, cached = load_module(engine, AGENTS / "echo.wasm", cache)
    assert not cached, "a corrupt entry was deserialized"
    assert "qh_on_message" in _exports(module)
    # ... and the entry was replaced by a good one.
    _, _, _, cached = load_module(engine, AGENTS / "echo.wasm", cache)
    assert cached


def test_another_modules_entry_under_this_key_is_not_run(tmp_path: Path) -> None:
    engine = make_engine()
    cache = tmp_path / "modules"
    victim, intruder = AGENTS / "echo.wasm", AGENTS / "ping.wat"
    load_module(engine, victim, cache)
    load_module(engine, intruder, cache)
    _entry(cache, victim).write_bytes(_entry(cache, intruder).read_bytes())
    module, _, _, cached = load_module(engine, victim, cache)
    assert not cached, "another module's artifact was accepted under this module's key"
    assert module.serialize() is not None
    # The module that runs is the victim's own (its exports, not the intruder's).
    want = _exports(wasmtime.Module.from_file(engine, str(victim)))
    assert _exports(module) == want


def test_the_cache_folder_and_entries_are_owner_only(tmp_path: Path) -> None:
    cache = tmp_path / "modules"
    cache.mkdir(mode=0o777)
    os.chmod(cache, 0o777)  # as a careless umask or a shared folder would leave it
    load_module(make_engine(), AGENTS / "echo.wasm", cache)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    entry = _entry(cache, AGENTS / "echo.wasm")
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600


def test_a_symlinked_entry_is_not_followed(tmp_path: Path) -> None:
    engine = make_engine()
    cache = tmp_path / "modules"
    load_module(engine, AGENTS / "ping.wat", cache)
    load_module(engine, AGENTS / "echo.wasm", cache)
    victim = _entry(cache, AGENTS / "echo.wasm")
    victim.unlink()
    victim.symlink_to(_entry(cache, AGENTS / "ping.wat"))
    module, _, _, cached = load_module(engine, AGENTS / "echo.wasm", cache)
    assert not cached
    assert "qh_on_message" in _exports(module)
    assert not victim.is_symlink()


def test_a_truncated_entry_is_recompiled(tmp_path: Path) -> None:
    engine = make_engine()
    cache = tmp_path / "modules"
    load_module(engine, AGENTS / "echo.wasm", cache)
    entry = _entry(cache, AGENTS / "echo.wasm")
    entry.write_bytes(entry.read_bytes()[:10])
    _, _, _, cached = load_module(engine, AGENTS / "echo.wasm", cache)
    assert not cached
