"""GGUF model files: the metadata, the model's shape and its weights as memory-mapped views.

:func:`load_model` opens a file with the ``gguf`` package's :class:`~gguf.GGUFReader` (which
memory-maps it) and checks everything the forward pass relies on before any weight is read:
the architecture, every tensor's presence, type and shape, and that each tensor's bytes lie
inside the file. Weights stay in the file's pages: :class:`TensorData` is a view, never a copy.

:func:`read_model_info` reads only what a listing needs (``qhybrid models``) and does not fail
on a model qhybrid cannot run; it says why instead.

GGUF stores a 2-D weight with ``ne0`` = the row length (columns) first; a ``[rows, cols]``
matrix of ``W`` in ``y = x @ W.T`` has ``ne = [cols, rows]``: ``attn_q.weight`` of a model with
``n_embd`` 4096 is ``ne [4096, n_head * head_dim]``.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType

from qhybrid.runtime.llm._arch import (
    SUPPORTED_ARCHS,
    Activation,
    arch_config,
    unsupported_arch_message,
)
from qhybrid.runtime.llm._strings import StringArray
from qhybrid.runtime.wgpu_thread import _reference as ref

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
#: Weight formats the runtime reads (the kernels' :data:`~._reference.QTYPES`).
SUPPORTED_QTYPES: tuple[str, ...] = ref.QTYPES
RopeMode = Literal["normal", "neox"]


class ModelError(Exception):
    """A model file that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class ModelConfig:
    """The shape and hyper-parameters of a model, from its GGUF metadata and tensors."""

    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    rope_freq_base: float
    rope_mode: RopeMode
    #: Leading elements of each head that rotate (``{arch}.rope.dimension_count``).
    rope_dims: int
    #: Positions are multiplied by this (``1 / rope.scaling.factor`` for linear scaling).
    rope_freq_scale: float
    rms_eps: float
    #: No ``output.weight``: the output projection is ``token_embd.weight``.
    tied_embeddings: bool
    #: ``attn_q/k/v.bias`` present (qwen2 always).
    attn_bias: bool
    #: ``rope_freqs.weight`` present (Llama 3.1+ long-context factors: per pair, divide theta).
    rope_freq_factors: bool = False
    #: Per-head RMSNorm of q and k before rope (qwen3, gemma3).
    qk_norm: bool = False
    #: RMSNorm of the attention output and of the FFN output before each residual (gemma).
    post_norms: bool = False
    #: The FFN's gate activation: SwiGLU (silu) or GeGLU (gelu, tanh approximation).
    activation: Activation = "silu"
    #: The token embeddings are multiplied by this (gemma: sqrt(n_embd)).
    embd_scale: float = 1.0
    #: Queries are scaled by this before q.k (1/sqrt(head_dim) but for gemma's 27B sizes).
    attn_scale: float = 0.0
    #: Attention scores become ``c * tanh(s / c)`` when c > 0 (gemma2).
    attn_softcap: float = 0.0
    #: Logits become ``c * tanh(l / c)`` when c > 0 (gemma2).
    final_softcap: float = 0.0
    #: Sliding window of the local layers (a query at p sees keys p - window < k <= p).
    swa_window: int = 0
    #: Per layer: True for a sliding-window (local) layer; empty: none is.
    swa_layers: tuple[bool, ...] = ()
    #: Rope base and scale of the local layers (gemma3: 10000, unscaled).
    rope_freq_base_swa: float = 0.0
    rope_freq_scale_swa: float = 1.0
    #: One ``attn_qkv.weight`` instead of q, k, v (phi3).
    fused_qkv: bool = False
    #: ``ffn_up.weight`` holds the gate rows then the up rows (phi3).
    fused_up: bool = False

    @property
    def query_scale(self) -> float:
        return self.attn_scale or 1.0 / math.sqrt(self.head_dim)

    def is_swa(self, layer: int) -> bool:
        return self.swa_window > 0 and bool(self.swa_layers) and self.swa_layers[layer]

    def layer_rope(self, layer: int) -> tuple[float, float]:
        """(freq_base, freq_scale) of a layer's rope."""
        if self.is_swa(layer):
            return self.rope_freq_base_swa or self.rope_freq_base, self.rope_freq_scale_swa
        return self.rope_freq_base, self.rope_freq_scale

    @property
    def n_embd_q(self) -> int:
        return self.n_head * self.head_dim

    @property
    def n_embd_kv(self) -> int:
        return self.n_head_kv * self.head_dim


@dataclass(frozen=True)
class TensorData:
    """One tensor of the file as a read-only view into the mapped file (no copy).

    ``data`` is ``uint8[rows, row_bytes]``: row ``r`` holds ``cols`` elements in ``qtype``
    (blocks for the quantized types; raw little-endian values for f32/f16). A 1-D tensor is one
    row. :meth:`dense` dequantizes (a copy, float32).
    """

    name: str
    qtype: str
    rows: int
    cols: int
    data: npt.NDArray[np.uint8]

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def dense(self) -> npt.NDArray[np.float32]:
        """The tensor as float32 ``[rows, cols]``, dequantized with gguf's own code."""
        out = ref.dequantize(self.data, self.qtype, self.rows, self.cols)
        if out.base is not None or not out.flags.writeable:
            out = np.array(out, dtype=np.float32)  # f32 views of the map: an owned copy
        return out

    def vector(self) -> npt.NDArray[np.float32]:
        """A 1-D tensor (norm weight, bias) as float32 ``[cols]``."""
        return self.dense().reshape(-1)


@dataclass(frozen=True)
class ModelInfo:
    """What a listing shows about a GGUF file, whether or not qhybrid can run it."""

    path: Path
    size_bytes: int
    name: str | None
    arch: str | None
    n_params: int
    quant: str | None
    supported: bool
    reason: str | None = None
    n_ctx_train: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "name": self.name,
            "arch": self.arch,
            "n_params": self.n_params,
            "quant": self.quant,
            "supported": self.supported,
            "reason": self.reason,
            "n_ctx_train": self.n_ctx_train,
        }


class _Metadata(Mapping[str, Any]):
    """The file's key/value metadata as Python values, converted on first access.

    Strings are ``str``; arrays of strings a :class:`~._strings.StringArray` (a ``Sequence[str]``
    in one buffer); numeric arrays numpy arrays (tokenizer scores and types have ~150k entries:
    a list of floats would be wasteful).
    """

    def __init__(self, reader: Any) -> None:
        self._fields: Mapping[str, Any] = reader.fields
        self._cache: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key in self._cache:
            return self._cache[key]
        value = _field_value(self._fields[key])
        self._cache[key] = value
        return value

    def __iter__(self) -> Iterator[str]:
        return (k for k in self._fields if not k.startswith("GGUF."))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _field_value(fld: Any) -> Any:
    types = fld.types
    if not types:
        return None
    if types[0] == GGUFValueType.ARRAY:
        if len(types) < 2:
            return []  # empty array: no element type recorded
        if types[-1] == GGUFValueType.STRING:
            if len(fld.data) == 1 and isinstance(fld.parts[fld.data[0]], StringArray):
                return fld.parts[fld.data[0]]
            return [bytes(fld.parts[i]).decode("utf-8", errors="replace") for i in fld.data]
        if len(types) > 2:
            raise ValueError(f"nested arrays are not supported ({fld.name})")
        if not fld.data:
            return np.zeros(0)
        if len(fld.data) == 1:  # our reader's one part: a read-only view of the file, no copy
            return np.asarray(fld.parts[fld.data[0]])
        return np.concatenate([fld.parts[i] for i in fld.data])
    if types[0] == GGUFValueType.STRING:
        return bytes(fld.parts[-1]).decode("utf-8", errors="replace")
    return fld.parts[-1].tolist()[0]


class ModelFile:
    """A loaded GGUF model: its :class:`ModelConfig`, metadata and tensors (mapped views).

    Made by :func:`load_model`. The weights live in the file's pages, shared with the page
    cache; :meth:`close` drops the mapping (views handed out before keep it alive).
    """

    def __init__(
        self,
        path: Path,
        reader: Any,
        config: ModelConfig,
        tensors: dict[str, TensorData],
    ) -> None:
        self.path = path
        self.config = config
        self.metadata: Mapping[str, Any] = _Metadata(reader)
        self.tensors: Mapping[str, TensorData] = tensors
        self._reader: Any = reader

    def __repr__(self) -> str:
        c = self.config
        return (
            f"ModelFile({str(self.path)!r}, arch={c.arch}, layers={c.n_layer}, "
            f"embd={c.n_embd}, vocab={c.n_vocab})"
        )

    @property
    def name(self) -> str:
        value = self.metadata.get("general.name")
        return str(value) if value else self.path.stem

    @property
    def n_params(self) -> int:
        return sum(t.rows * t.cols for t in self.tensors.values())

    def tensor(self, name: str) -> TensorData:
        try:
            return self.tensors[name]
        except KeyError:
            raise ModelError(f"{self.path}: missing tensor {name!r}") from None

    def layer_tensor(self, layer: int, kind: str) -> TensorData:
        """``blk.{layer}.{kind}``, e.g. ``layer_tensor(0, "attn_q.weight")``."""
        return self.tensor(f"blk.{layer}.{kind}")

    def output_weight(self) -> TensorData:
        """The output projection: ``output.weight``, or the token embeddings when tied."""
        return self.tensor("token_embd.weight" if self.config.tied_embeddings else "output.weight")

    def release_header_pages(self) -> None:
        """Drop the header's mapped pages (metadata, vocabulary, tensor infos) from this
        process's resident set, once what is needed from them has been read (the vocabulary
        is a copy). They are clean pages of the file, still in the page cache: a later read of
        a metadata value faults its page back in. Gemma 3's header is 6 MB."""
        data = getattr(self._reader, "data", None)
        mapping = getattr(data, "_mmap", None)
        if mapping is None or not hasattr(mapping, "madvise"):
            return
        end = int(self._reader.data_offset) // mmap.PAGESIZE * mmap.PAGESIZE
        if end > 0:
            try:
                mapping.madvise(mmap.MADV_DONTNEED, 0, end)
            except (OSError, ValueError) as exc:  # an advice, not a necessity
                logger.debug("%s: madvise of the header failed: %s", self.path, exc)

    def close(self) -> None:
        self._reader = None
        self.tensors = {}


# -- opening and checking ---------------------------------------------------------------------
def _open_reader(path: Path) -> Any:
    """A GGUFReader over ``path``, or a :class:`ModelError` that says what is wrong."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(4)
    except FileNotFoundError:
        raise ModelError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ModelError(f"{path}: is a directory, not a GGUF file") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if head != GGUF_MAGIC:
        shown = head.hex() if head else "empty file"
        raise ModelError(f"{path}: not a GGUF file (magic {shown}, expected 'GGUF')")
    if size < 24:
        raise ModelError(f"{path}: truncated GGUF file ({size} bytes, shorter than the header)")
    try:
        return _CheckedReader(path, size)
    except ModelError:
        raise
    except (ValueError, IndexError, KeyError, OverflowError, TypeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: corrupt or truncated GGUF file ({exc})") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot map the file: {exc.strerror or exc}") from None


class _CheckedReader(GGUFReader):
    """GGUFReader that checks each tensor's type and extent before it makes its views.

    The stock reader fails on a truncated file with numpy's "cannot reshape" message; this one
    names the tensor and the byte ranges (and an unknown type number) instead.
    """

    def __init__(self, path: Path, size: int) -> None:
        self._path = path
        self._size = size
        super().__init__(path, "r")

    def _get_field_parts(
        self, orig_offs: int, raw_type: int
    ) -> tuple[int, list[Any], list[int], list[Any]]:
        """As the stock reader, but an array is one part: a numpy view for numbers, ``bytes``
        per string. The stock reader makes one or two numpy views per element: ~160 MB for a
        150k-token vocabulary and its merges, more than a small model's weights."""
        if raw_type != GGUFValueType.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        raw_itype = self._get(orig_offs, np.uint32)
        alen = self._get(orig_offs + 4, np.uint64)
        n = int(alen[0])
        offs = orig_offs + 12
        itype = GGUFValueType(int(raw_itype[0]))
        if n == 0:
            return offs - orig_offs, [raw_itype, alen], [], [GGUFValueType.ARRAY]
        if itype == GGUFValueType.STRING and self.byte_order == "I":
            # One buffer and an offset per string (a vocabulary as bytes objects and the stock
            # reader's index list kept ~25 MB for Gemma 3's 262k pieces).
            strings, end = StringArray.from_gguf(self.data.data, offs, n)
            parts = [raw_itype, alen, strings]
            return end - orig_offs, parts, [2], [GGUFValueType.ARRAY, itype]
        nptype = self.gguf_scalar_to_np.get(itype)
        if nptype is None:  # nested arrays: the stock way
            return super()._get_field_parts(orig_offs, raw_type)
        values = self._get(offs, nptype, n)
        return 12 + int(values.nbytes), [raw_itype, alen, values], [2], [GGUFValueType.ARRAY, itype]

    def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:
        for fld in fields:
            try:
                _len, name_data, _n_dims, dims, raw_dtype, offset = fld.parts
            except ValueError:
                break  # another gguf layout: leave the checks to the reader itself
            name = bytes(name_data).decode("utf-8", errors="replace")
            try:
                ggml_type = GGMLQuantizationType(int(raw_dtype[0]))
            except ValueError:
                raise ModelError(
                    f"{self._path}: tensor {name!r} has unknown ggml type {int(raw_dtype[0])} "
                    "(corrupt file, or a newer format than the gguf package knows)"
                ) from None
            block, type_size = GGML_QUANT_SIZES[ggml_type]
            n_elems = math.prod(int(d) for d in dims)
            if n_elems % block:
                raise ModelError(
                    f"{self._path}: tensor {name!r} has {n_elems} elements, not a multiple of "
                    f"{ggml_type.name}'s block of {block}"
                )
            begin = int(start_offs) + int(offset[0])
            end = begin + n_elems // block * type_size
            if end > self._size:
                raise ModelError(
                    f"{self._path}: truncated or corrupt: tensor {name!r} needs bytes "
                    f"{begin}..{end} but the file has {self._size}"
                )
        super()._build_tensors(start_offs, fields)


def _qtype_name(ggml_type: Any) -> str:
    return str(ggml_type.name).lower()


def _tensor_view(path: Path, reader: Any, t: Any) -> TensorData:
    qtype = _qtype_name(t.tensor_type)
    dims = [int(d) for d in t.shape]
    cols = dims[0] if dims else 1
    rows = int(np.prod(dims[1:])) if len(dims) > 1 else 1
    if qtype not in ref.BLOCK:
        raise ModelError(
            f"{path}: tensor {t.name!r} is {qtype.upper()}, which qhybrid does not support "
            f"(supported: {', '.join(q.upper() for q in SUPPORTED_QTYPES)})"
        )
    try:
        row_bytes = ref.row_nbytes(qtype, cols)
    except ValueError as exc:
        raise ModelError(f"{path}: tensor {t.name!r}: {exc}") from None
    begin = int(t.data_offset)
    raw = reader.data[begin : begin + rows * row_bytes]
    if raw.size != rows * row_bytes:
        raise ModelError(f"{path}: truncated: tensor {t.name!r} runs past the end of the file")
    data = np.asarray(raw).view(np.uint8).reshape(rows, row_bytes)
    return TensorData(t.name, qtype, rows, cols, data)


@dataclass
class _Meta:
    path: Path
    meta: Mapping[str, Any]
    arch: str = field(default="")

    def get(self, key: str, default: Any = None) -> Any:
        return self.meta.get(key.format(arch=self.arch), default)

    def need(self, key: str, kind: type[Any] = int) -> Any:
        full = key.format(arch=self.arch)
        value = self.meta.get(full)
        if value is None:
            raise ModelError(f"{self.path}: missing metadata key {full!r}")
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise ModelError(
                f"{self.path}: metadata {full!r} is {value!r}, expected {kind.__name__}"
            ) from None


def read_metadata(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    """The key/value metadata of any GGUF file (no architecture or tensor checks)."""
    return _Metadata(_open_reader(Path(path)))


def load_model(path: str | os.PathLike[str]) -> ModelFile:
    """Open a GGUF model of a supported architecture; raises :class:`ModelError` if it is not
    one, naming the file and what is wrong. The weights are mapped, not read."""
    p = Path(path)
    return _load(p, _open_reader(p))


def _load(p: Path, reader: Any) -> ModelFile:
    meta = _Meta(p, _Metadata(reader))
    arch = meta.get("general.architecture")
    if arch is None:
        raise ModelError(f"{p}: missing metadata key 'general.architecture'")
    if arch not in SUPPORTED_ARCHS:
        raise ModelError(f"{p}: {unsupported_arch_message(str(arch))}")
    meta.arch = str(arch)
    raw_tensors = {t.name: t for t in reader.tensors}
    views: dict[str, TensorData] = {}

    def need(name: str) -> TensorData:
        if name not in views:
            t = raw_tensors.get(name)
            if t is None:
                raise ModelError(f"{p}: missing tensor {name!r} (needed by {arch})")
            views[name] = _tensor_view(p, reader, t)
        return views[name]

    config = arch_config(p, meta, raw_tensors, need)
    logger.info("loaded %s: %s", p, config)
    return ModelFile(p, reader, config, views)


# -- listing ------------------------------------------------------------------------------------
def _quant_label(meta: Mapping[str, Any], tensors: list[Any]) -> str | None:
    file_type = meta.get("general.file_type")
    if file_type is not None:
        try:
            from gguf import LlamaFileType

            name = LlamaFileType(int(file_type)).name
            return name.removeprefix("MOSTLY_")
        except (ValueError, ImportError):
            pass
    by_type: dict[str, int] = {}
    for t in tensors:
        by_type[_qtype_name(t.tensor_type)] = by_type.get(_qtype_name(t.tensor_type), 0) + int(
            t.n_bytes
        )
    return max(by_type, key=lambda k: by_type[k]).upper() if by_type else None


def read_model_info(path: str | os.PathLike[str]) -> ModelInfo:
    """What ``qhybrid models`` lists about one file. Never raises for a bad file: an unreadable
    one comes back with ``supported=False`` and the reason."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        return ModelInfo(p, 0, None, None, 0, None, False, f"cannot read: {exc.strerror or exc}")
    try:
        reader = _open_reader(p)
    except ModelError as exc:
        return ModelInfo(p, size, None, None, 0, None, False, _strip_path(str(exc), p))
    meta = _Metadata(reader)
    arch = meta.get("general.architecture")
    name = meta.get("general.name")
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    quant = _quant_label(meta, reader.tensors)
    n_ctx = meta.get(f"{arch}.context_length") if arch else None
    reason: str | None = None
    try:
        _load(p, reader)
    except ModelError as exc:
        reason = _strip_path(str(exc), p)
    return ModelInfo(
        path=p,
        size_bytes=size,
        name=str(name) if name else None,
        arch=str(arch) if arch else None,
        n_params=n_params,
        quant=quant,
        supported=reason is None,
        reason=reason,
        n_ctx_train=int(n_ctx) if n_ctx is not None else None,
    )


def _strip_path(message: str, path: Path) -> str:
    return message.removeprefix(f"{path}: ")
