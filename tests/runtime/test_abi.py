"""The ABI's one description (qhybrid/runtime/wasm_pool/abi/abi.toml) and what is made from
it: CI fails when the docs' tables, the C header or the Rust/AssemblyScript bindings drift."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from qhybrid.runtime.wasm_pool._abi import (
    ABI_VERSIONS,
    HOST_FUNCTIONS,
    IMPORT_SINCE,
    OPTIONAL_EXPORTS,
    REQUIRED_EXPORTS,
)
from tests.conftest import ROOT

I32, I64, F32 = "i32", "i64", "f32"
#: Version 1 as it shipped: v1 modules must keep loading, so this never changes.
V1_IMPORTS = {
    "send": ((I32, I32, I32, I32), (I32,)),
    "log": ((I32, I32, I32), ()),
    "random_u64": ((), (I64,)),
    "now": ((), (I64,)),
    "self_id": ((), (I32,)),
    "agent_count": ((), (I32,)),
    "peer_count": ((), (I32,)),
    "peer": ((I32,), (I32,)),
    "lookup": ((I32, I32), (I32,)),
    "snapshot_put": ((I32, I32), ()),
    "tensor_open": ((I32, I32), (I32,)),
    "tensor_info": ((I32, I32), (I32,)),
    "tensor_read": ((I32, I32, I32, I32), (I32,)),
    "tensor_write": ((I32, I32, I32, I32), (I32,)),
    "tensor_create": ((I32, I32, I32, I32, I32), (I32,)),
    "gpu_submit": ((I32, I32, I32, I32, I32, I32, F32), (I32,)),
    "llm_complete": ((I32, I32, I32, I32), (I32,)),
}


#: Long-term memory (issue 13), added to version 1: the host's own table must agree.
MEMORY_IMPORTS = {
    "mem_get": ((I32, I32, I32, I32), (I32,)),
    "mem_put": ((I32, I32, I32, I32), (I32,)),
    "mem_delete": ((I32, I32), (I32,)),
    "mem_list": ((I32, I32, I32, I32), (I32,)),
}


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("qh_sdk_abi", ROOT / "sdk" / "abi.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["qh_sdk_abi"] = module
    spec.loader.exec_module(module)
    return module


def test_version_1_is_unchanged() -> None:
    assert {n: HOST_FUNCTIONS[n] for n in V1_IMPORTS} == V1_IMPORTS
    assert {n for n, v in IMPORT_SINCE.items() if v == 1} == set(V1_IMPORTS) | set(MEMORY_IMPORTS)
    from qhybrid.runtime.wasm_pool._memory_abi import MEMORY_FUNCTIONS

    assert MEMORY_FUNCTIONS == MEMORY_IMPORTS
    assert {n: HOST_FUNCTIONS[n] for n in MEMORY_IMPORTS} == MEMORY_IMPORTS
    assert set(REQUIRED_EXPORTS) == {"qh_abi_version", "qh_alloc", "qh_on_message"}
    assert set(OPTIONAL_EXPORTS) == {"qh_init", "qh_snapshot", "qh_restore", "_initialize"}
    assert set(ABI_VERSIONS) == {1, 2}


def test_generated_files_match_the_description(capsys: pytest.CaptureFixture[str]) -> None:
    gen = load_generator()
    assert gen.main(["--check"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    ("target", "old", "new"),
    [
        ("DOC", "| `reply` |", "| `reply_to_all` |"),
        ("C_HEADER", "QH_IMPORT(send) int32_t qh_send(", "QH_IMPORT(send) int64_t qh_send("),
        ("RUST_ABI", "pub fn send(", "pub fn send_it("),
        ("AS_ABI", "export declare function send(", "export declare function sent("),
    ],
)
def test_a_hand_edit_of_a_generated_part_fails_the_check(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    target: str,
    old: str,
    new: str,
) -> None:
    gen = load_generator()
    original: Path = getattr(gen, target)
    copy = tmp_path / original.name
    shutil.copy(original, copy)
    text = copy.read_text("utf-8")
    assert old in text
    copy.write_text(text.replace(old, new, 1), "utf-8")
    monkeypatch.setattr(gen, target, copy)
    monkeypatch.setattr(gen, "REPO_ROOT", tmp_path.parent)
    assert gen.main(["--check"]) == 1
    assert copy.name in capsys.readouterr().err
    # Regenerating puts it right.
    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0


def test_a_missing_marker_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = load_generator()
    copy = tmp_path / "agent-abi.md"
    copy.write_text(gen.DOC.read_text("utf-8").replace("<!-- abi:kinds:end -->", ""), "utf-8")
    monkeypatch.setattr(gen, "DOC", copy)
    with pytest.raises(SystemExit) as exc:
        gen.main(["--check"])
    assert "agent-abi.md: no block marked <!-- abi:kinds:begin" in str(exc.value)
