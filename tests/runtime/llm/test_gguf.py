"""Loading GGUF files: the config and tensor views, and a clear ModelError for each bad file."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter

from qhybrid.runtime.llm import ModelError, load_model, read_model_info
from qhybrid.runtime.llm._random_model import RandomModelSpec, write_random_model
from qhybrid.runtime.wgpu_thread import _reference as ref


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_config_from_metadata_and_tensors(random_model, arch: str) -> None:
    model = load_model(random_model(arch=arch, qtype="q4_k", n_head_kv=1, tied=True))
    c = model.config
    assert (c.arch, c.n_layer, c.n_embd, c.n_head, c.n_head_kv) == (arch, 2, 256, 4, 1)
    assert (c.head_dim, c.n_ff, c.n_vocab, c.n_ctx_train) == (64, 512, 320, 512)
    assert c.rope_mode == ("normal" if arch == "llama" else "neox")
    assert c.rope_freq_base == 10000.0
    assert c.rms_eps == pytest.approx(1e-5)
    assert c.tied_embeddings
    assert c.attn_bias == (arch == "qwen2")
    assert model.output_weight().name == "token_embd.weight"
    assert model.metadata["tokenizer.ggml.model"] == "gpt2"
    assert model.name == f"random-{arch}-q4_k"


@pytest.mark.parametrize("qtype", ["f32", "f16", "q8_0", "q4_0", "q4_k", "q6_k"])
def test_tensors_are_views_of_the_mapped_file(random_model, qtype: str) -> None:
    path = random_model(qtype=qtype)
    model = load_model(path)
    t = model.layer_tensor(0, "ffn_down.weight")
    assert (t.qtype, t.rows, t.cols) == (qtype, 256, 512)
    assert t.data.dtype == np.uint8
    assert t.data.shape == (256, ref.row_nbytes(qtype, 512))
    assert not t.data.flags.owndata and not t.data.flags.writeable
    base = t.data
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    assert isinstance(base, mmap.mmap)  # the file's pages, not a copy
    # The same values gguf's reader and dequantizer give.
    raw = next(x for x in GGUFReader(path).tensors if x.name == t.name)
    from gguf import quants

    np.testing.assert_array_equal(t.dense(), quants.dequantize(raw.data, raw.tensor_type))
    assert model.tensor("output_norm.weight").vector().shape == (256,)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such file"):
        load_model(tmp_path / "nope.gguf")
    with pytest.raises(ModelError, match="is a directory"):
        load_model(tmp_path)


def test_bad_magic_and_empty_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(ModelError, match=r"model\.gguf: not a GGUF file"):
        load_model(bad)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match=r"not a GGUF file.*empty"):
        load_model(empty)


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.02, 0.001])
def test_truncated_file(random_model, tmp_path: Path, keep: float) -> None:
    data = random_model(qtype="q8_0").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: max(8, int(len(data) * keep))])
    with pytest.raises(ModelError, match=r"cut\.gguf: (truncated|corrupt)") as info:
        load_model(cut)
    if keep >= 0.5:  # the header is whole: the message names the tensor that runs past EOF
        assert "tensor 'blk." in str(info.value) or "tensor 'output" in str(info.value)


def test_corrupt_tensor_offset(random_model, tmp_path: Path) -> None:
    path = random_model(qtype="f32")
    reader = GGUFReader(path)
    field = reader.tensors[3].field
    offset_part = field.parts[5]
    data = bytearray(path.read_bytes())
    at = int(offset_part.ctypes.data - reader.data.ctypes.data)
    data[at : at + 8] = (1 << 40).to_bytes(8, "little")
    bad = tmp_path / "offset.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=f"tensor '{reader.tensors[3].name}' needs bytes"):
        load_model(bad)


def _minimal(path: Path, arch: str, extra: dict[str, tuple[np.ndarray, str | None]]) -> Path:
    w = GGUFWriter(path, arch)
    w.add_block_count(1)
    w.add_embedding_length(32)
    w.add_feed_forward_length(32)
    w.add_head_count(2)
    for name, (array, qtype) in extra.items():
        raw_dtype = GGMLQuantizationType[qtype.upper()] if qtype else None
        w.add_tensor(name, array, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unsupported_architecture(tmp_path: Path) -> None:
    path = _minimal(tmp_path / "m.gguf", "mamba", {})
    supported = "llama, qwen2, qwen3, gemma2, gemma3, phi3"
    with pytest.raises(
        ModelError, match=rf"'mamba' \(a state-space model\) is not supported.*{supported}"
    ):
        load_model(path)
    info = read_model_info(path)
    assert not info.supported
    assert info.arch == "mamba"
    assert "not supported" in (info.reason or "")


def test_unsupported_quant_type_names_the_tensor(tmp_path: Path) -> None:
    iq2 = np.zeros((320, 66), dtype=np.uint8)  # IQ2_XXS: 256 per block, 66 bytes
    path = _minimal(tmp_path / "m.gguf", "llama", {"token_embd.weight": (iq2, "iq2_xxs")})
    with pytest.raises(ModelError, match=r"'token_embd.weight' is IQ2_XXS.*not support.*IQ4_XS"):
        load_model(path)


def test_missing_tensor_and_metadata(random_model, tmp_path: Path) -> None:
    emb = np.zeros((320, 32), dtype=np.float32)
    path = _minimal(tmp_path / "m.gguf", "llama", {"token_embd.weight": (emb, None)})
    with pytest.raises(ModelError, match=r"missing tensor 'output_norm\.weight'"):
        load_model(path)
    bare = tmp_path / "bare.gguf"
    w = GGUFWriter(bare, "llama")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelError, match=r"missing metadata key 'llama\.block_count'"):
        load_model(bare)


def test_inconsistent_shapes(tmp_path: Path) -> None:
    spec = RandomModelSpec(n_head=4)
    path = write_random_model(tmp_path / "m.gguf", spec)
    data = bytearray(path.read_bytes())
    # Claim 8 heads: head_dim becomes 32, so attn_k (2 kv heads x 64 rows) no longer fits.
    key = b"llama.attention.head_count"
    at = data.index(key) + len(key) + 4
    data[at : at + 4] = (8).to_bytes(4, "little")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(
        ModelError, match=r"tensor 'blk.0.attn_k.weight' is 128x256 .*expected 64x256"
    ):
        load_model(bad)


def test_read_model_info(random_model, tmp_path: Path) -> None:
    path = random_model(arch="qwen2", qtype="q6_k")
    info = read_model_info(path)
    assert info.supported and info.reason is None
    assert (info.arch, info.name, info.quant) == ("qwen2", "random-qwen2-q6_k", "Q6_K")
    assert info.size_bytes == path.stat().st_size
    assert info.n_params == sum(t.n_elements for t in GGUFReader(path).tensors)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    bad = read_model_info(junk)
    assert not bad.supported and "truncated" in (bad.reason or "")


def test_metadata_equals_the_stock_readers(random_model) -> None:
    """The reader keeps each array as one part (a numpy view, or bytes per string) instead of
    numpy views per element; the values are the same as gguf's own GGUFReader gives."""
    from qhybrid.runtime.llm._gguf import _Metadata

    path = random_model(qtype="q8_0")
    ours, stock = read_metadata_of(path), _Metadata(GGUFReader(path))
    assert list(ours) == list(stock)
    for key in ours:
        if isinstance(ours[key], np.ndarray):
            assert ours[key].dtype == stock[key].dtype
            np.testing.assert_array_equal(ours[key], stock[key])
        else:
            assert ours[key] == stock[key], key
    assert len(ours["tokenizer.ggml.tokens"]) == 320


def read_metadata_of(path: Path):
    from qhybrid.runtime.llm._gguf import read_metadata

    return read_metadata(path)
