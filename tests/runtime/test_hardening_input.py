"""Bad input from the environment and from model settings: exit 2 with a message, no traceback.

What users rely on: ``QHYBRID_WORKERS`` and ``QHYBRID_DEVICE`` are checked like the flags they
stand for, by the headless run and the window alike.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qhybrid.cli import main
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("QHYBRID_WORKERS", "abc", "expected a positive integer, got 'abc'"),
        ("QHYBRID_WORKERS", "-3", "expected a positive integer, got -3"),
        ("QHYBRID_WORKERS", "0", "expected a positive integer, got 0"),
        ("QHYBRID_DEVICE", "bogus", "must be one of auto, gpu, cpu; got 'bogus'"),
    ],
)
@pytest.mark.parametrize("headless", [True, False])
def test_bad_environment_values_exit_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    value: str,
    expected: str,
    headless: bool,
) -> None:
    monkeypatch.setenv(name, value)
    code = main(["--headless"] if headless else [])
    err = capsys.readouterr().err
    assert code == 2
    assert f"environment variable {name}" in err and expected in err
    assert "Traceback" not in err


def test_a_flag_overrides_a_bad_environment_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The flag wins, as documented: a bad QHYBRID_DEVICE does not matter with --device cpu.
    monkeypatch.setenv("QHYBRID_DEVICE", "bogus")
    monkeypatch.setenv("QHYBRID_WORKERS", "abc")
    code = main(["--headless", "--device", "cpu", "--workers", "1", "/nonexistent.toml"])
    err = capsys.readouterr().err
    assert code == 2
    assert "QHYBRID" not in err and "nonexistent.toml" in err


# -- the KV cache is checked against memory before it is allocated ---------------------------

TINY = ROOT / "resources" / "models" / "tiny-stories.gguf"


def test_generate_with_a_huge_context_says_what_fits(capsys: pytest.CaptureFixture[str]) -> None:
    from qhybrid.runtime.llm._generate_cli import main as generate_main

    code = generate_main([str(TINY), "hi", "--n-ctx", "1000000000", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "MemoryError" not in err
    assert "tiny-stories.gguf" in err
    assert "KV cache" in err and "1 slot" in err and "1000000000 positions" in err
    assert "available" in err and "at most" in err


def test_kv_cache_check_names_what_fits() -> None:
    from qhybrid.runtime.llm import ModelError, load_model
    from qhybrid.runtime.llm._memory import check_kv_cache, kv_cache_bytes

    model = load_model(TINY)
    try:
        c = model.config
        per_position = c.n_layer * 2 * c.n_head_kv * c.head_dim * 4
        assert kv_cache_bytes(c, 3, 100) == 3 * 100 * per_position
        check_kv_cache(model, 8, 256, available=10 * 8 * 256 * per_position)
        with pytest.raises(ModelError) as info:
            check_kv_cache(model, 256, 1 << 20, available=100 * per_position * 256)
        text = str(info.value)
        # 80 % of the budget: 80 positions per slot with 256 slots, or 0 slots of 1M.
        assert "256 slots x 1048576 positions" in text
        assert "at most 80 positions with 256 slots" in text
        with pytest.raises(ModelError, match="largest GPU buffer"):
            check_kv_cache(model, 8, 256, available=1 << 40, max_buffer=1000)
    finally:
        model.close()


def test_scenario_llm_with_too_large_a_kv_cache_exits_2(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    scenario = tmp_path / "big.toml"
    scenario.write_text(
        f"""name = "big"
seed = 1
[llm]
model = "{TINY.as_posix()}"
device = "cpu"
slots = 256
n_ctx = 1048576
[[agents]]
name = "echo"
module = "{(ROOT / "resources" / "agents" / "echo.wasm").as_posix()}"
[stop]
max_ticks = 1
""",
        encoding="utf-8",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "qhybrid", "--headless", "--workers", "1", str(scenario)],
        capture_output=True, text=True, env=cli_env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "big.toml" in proc.stderr and "llm" in proc.stderr
    assert "KV cache" in proc.stderr and "256 slots x 1048576 positions" in proc.stderr


# -- mutated GGUF files: a bad tokenizer is a bad model file ---------------------------------


def _mutant(tmp_path: Path, field: bytes, old: bytes, new: bytes) -> Path:
    data = TINY.read_bytes()
    at = data.index(old, data.index(field))
    path = tmp_path / "mutant.gguf"
    path.write_bytes(data[:at] + new + data[at + len(old) :])
    return path


MUTANTS = {
    # a merge without its separating space: the tokenizer's own check
    "bad merge": (b"tokenizer.ggml.merges", b"\xc4\xa0 t", b"\xc4\xa0`t"),
    # the token "Ġ" renamed: its merges refer to a token out of the vocabulary (tokenizers)
    "out of vocabulary": (
        b"tokenizer.ggml.tokens",
        b"\x02\x00\x00\x00\x00\x00\x00\x00\xc4\xa0",
        b"\x02\x00\x00\x00\x00\x00\x00\x00\xc4\xa1",
    ),
}


@pytest.mark.parametrize("what", sorted(MUTANTS))
def test_generate_with_a_broken_tokenizer_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str
) -> None:
    from qhybrid.runtime.llm._generate_cli import main as generate_main

    path = _mutant(tmp_path, *MUTANTS[what])
    code = generate_main([str(path), "hi", "--device", "cpu", "--max-tokens", "2"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert "mutant.gguf" in err and "tokenizer" in err and what in err


def test_scenario_llm_with_a_broken_tokenizer_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _mutant(tmp_path, *MUTANTS["out of vocabulary"])
    scenario = tmp_path / "broken.toml"
    scenario.write_text(
        f"""name = "broken"
seed = 1
[llm]
model = "{model.as_posix()}"
device = "cpu"
slots = 1
[[agents]]
name = "echo"
module = "{(ROOT / "resources" / "agents" / "echo.wasm").as_posix()}"
[stop]
max_ticks = 1
""",
        encoding="utf-8",
    )
    code = main(["--headless", "--workers", "1", "--device", "cpu", str(scenario)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "broken.toml" in err and "llm.model" in err and "mutant.gguf" in err
    assert "tokenizer" in err
