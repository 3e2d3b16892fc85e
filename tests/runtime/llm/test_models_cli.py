"""``qhybrid models``: fake Ollama, LM Studio and Hugging Face stores in a temporary home."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from gguf import GGUFWriter

from qhybrid.cli import main


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, random_model) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_CACHE", "OLLAMA_MODELS", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    llama = random_model(arch="llama", qtype="q8_0")
    qwen = random_model(arch="qwen2", qtype="q4_k")

    # Ollama: blobs named by digest, manifests naming them.
    ollama = home / ".ollama" / "models"
    (ollama / "blobs").mkdir(parents=True)
    shutil.copy(llama, ollama / "blobs" / "sha256-aaa")
    (ollama / "blobs" / "sha256-bbb").write_bytes(b"not a model at all")
    for name, digest in (("tiny", "sha256:aaa"), ("broken", "sha256:bbb")):
        manifest = ollama / "manifests" / "registry.ollama.ai" / "library" / name / "latest"
        manifest.parent.mkdir(parents=True)
        layers = [
            {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:ccc"},
            {"mediaType": "application/vnd.ollama.image.model", "digest": digest},
        ]
        manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))

    # Hugging Face hub cache: snapshots link to blobs.
    repo = tmp_path / "hf" / "hub" / "models--someone--Tiny-GGUF"
    (repo / "blobs").mkdir(parents=True)
    shutil.copy(qwen, repo / "blobs" / "0123abcd")
    snap = repo / "snapshots" / "deadbeef"
    snap.mkdir(parents=True)
    (snap / "tiny-q4_k.gguf").symlink_to(repo / "blobs" / "0123abcd")

    # LM Studio: a model of an architecture qhybrid does not run.
    lms = home / ".lmstudio" / "models" / "pub" / "repo"
    lms.mkdir(parents=True)
    w = GGUFWriter(lms / "mamba.gguf", "mamba")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return home


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict], str]:
    code = main(["models", *args, "--json"])
    out, err = capsys.readouterr()
    rows = json.loads(out)["models"]
    return code, [r for r in rows if r["source"] != "qhybrid"], err  # minus the shipped model


def test_lists_the_usual_places(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, rows, _ = run_json(capsys)
    assert code == 0
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {
        "tiny:latest",
        "broken:latest",
        "someone/Tiny-GGUF/tiny-q4_k.gguf",
        "pub/repo/mamba.gguf",
    }
    tiny = by_name["tiny:latest"]
    assert (tiny["source"], tiny["arch"], tiny["quant"], tiny["supported"]) == (
        "ollama",
        "llama",
        "Q8_0",
        True,
    )
    assert tiny["n_params"] > 0 and tiny["size_bytes"] > 0
    assert tiny["path"].endswith("blobs/sha256-aaa")
    hf = by_name["someone/Tiny-GGUF/tiny-q4_k.gguf"]
    assert (hf["source"], hf["arch"], hf["quant"], hf["supported"]) == (
        "huggingface",
        "qwen2",
        "Q4_K",
        True,
    )
    broken = by_name["broken:latest"]
    assert not broken["supported"] and "not a GGUF file" in broken["reason"]
    mamba = by_name["pub/repo/mamba.gguf"]
    assert mamba["arch"] == "mamba" and not mamba["supported"]
    assert "architecture 'mamba' (a state-space model) is not supported" in mamba["reason"]


def test_given_paths_only(
    home: Path, tmp_path: Path, random_model, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(random_model(arch="qwen2", qtype="f16"), folder / "a.gguf")
    data = random_model(arch="llama", qtype="q4_0").read_bytes()
    (folder / "cut.gguf").write_bytes(data[: len(data) // 2])
    (folder / "notes.txt").write_text("ignored")
    code, rows, _ = run_json(capsys, str(folder), "--only")
    assert code == 0
    assert [(Path(r["path"]).name, r["supported"], r["source"]) for r in rows] == [
        ("a.gguf", True, "path"),
        ("cut.gguf", False, "path"),
    ]
    assert "truncated" in rows[1]["reason"]
    code, rows, err = run_json(
        capsys, str(folder / "missing.gguf"), str(folder / "a.gguf"), "--only"
    )
    assert code == 2 and len(rows) == 1
    assert "no such file or folder" in err


def test_table_output(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "tiny:latest" in out and "not a GGUF file" in out and "mamba" in out


def test_names_resolve_as_the_listing_shows_them(home: Path) -> None:
    from qhybrid.runtime.llm._models_cli import ModelNameError, resolve_model

    ollama_blob = home / ".ollama" / "models" / "blobs" / "sha256-aaa"
    assert resolve_model("tiny:latest") == ollama_blob
    assert resolve_model("TINY") == ollama_blob  # Ollama's ":latest" is implied, any case
    hf = resolve_model("someone/Tiny-GGUF")  # a Hugging Face repository ...
    assert hf.name == "tiny-q4_k.gguf"
    assert resolve_model("tiny-q4_k") == hf  # ... or its file's stem
    assert resolve_model("mamba").name == "mamba.gguf"  # LM Studio, by stem ...
    assert resolve_model("pub/repo").name == "mamba.gguf"  # ... or its publisher/model folder
    with pytest.raises(ModelNameError) as ambiguous:
        resolve_model("t")
    names = {m.name for m in ambiguous.value.candidates}
    assert {"tiny:latest", "someone/Tiny-GGUF/tiny-q4_k.gguf"} <= names
    with pytest.raises(ModelNameError, match="no model file or model named 'zzz'"):
        resolve_model("zzz")


def test_the_download_cache_is_listed(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys, random_model
) -> None:
    cache = home / "qh-cache"
    monkeypatch.setenv("QHYBRID_CACHE", str(cache))
    (cache / "models").mkdir(parents=True)
    shutil.copy(
        random_model(arch="gemma3", n_layer=6, sliding_window=4), cache / "models" / "g3.gguf"
    )
    code, rows, _ = run_json(capsys)
    assert code == 0
    row = next(r for r in rows if r["source"] == "cache")
    assert (row["name"], row["arch"], row["supported"]) == ("g3.gguf", "gemma3", True)


def test_generate_takes_a_name_and_lists_candidates_when_ambiguous(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", "tiny", "hi", "--max-tokens", "3", "--device", "cpu", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"].endswith("sha256-aaa") and len(summary["tokens"]) == 3
    assert main(["generate", "t", "hi", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "'t' matches" in err and "tiny:latest" in err and "someone/Tiny-GGUF" in err
