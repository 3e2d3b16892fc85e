"""The tokenizer from GGUF metadata, against known token ids.

Byte-level BPE: a small BPE is trained here with the ``tokenizers`` library, written into a
GGUF file with gguf's writer, read back, and must give the same ids as the trained object.
SentencePiece: a handcrafted vocabulary whose ids are worked out by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFWriter, TokenType
from tokenizers import Regex, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HfTokenizer

from qhybrid.runtime.llm import (
    ChatTemplateError,
    Tokenizer,
    TokenizerError,
    read_metadata,
)
from qhybrid.runtime.llm._tokenizer import PRE_NAMES, PRE_REGEXES, _byte_decoder

_BYTES = _byte_decoder()

CORPUS = [
    "Once upon a time, there was a little girl named Lily. She loved to play outside.",
    "The quick brown fox jumps over the lazy dog 12345 times!\nIt's 2024, isn't it?",
    "Q: What is the capital of France?\nA: Paris is the capital of France.",
    "café naïve résumé 東京 🙂 don't WE'LL they're",
]
SPECIALS = ["<|begin|>", "<|end|>", "<|im_start|>", "<|im_end|>"]
TEXTS = [
    "Once upon a time, Lily's dog met 1234567 foxes.",
    "  leading spaces\tand tabs\n\nnew lines ",
    "unseen words: zebra quokka ÆØÅ 東京 🙂🙃",
    "<|im_start|>user\nhello<|im_end|>",
    "",
]


def train_bpe(pre: str) -> HfTokenizer:
    tok = HfTokenizer(models.BPE(ignore_merges=pre == "llama3"))
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_REGEXES[pre]]
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=SPECIALS,
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    return tok


def write_bpe_gguf(path: Path, tok: HfTokenizer, pre_name: str, **extra: Any) -> Path:
    model = json.loads(tok.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    w = GGUFWriter(path, "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre_name)
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([TokenType.CONTROL if t in SPECIALS else TokenType.NORMAL for t, _ in vocab])
    w.add_token_merges([" ".join(m) for m in model["merges"]])
    w.add_bos_token_id(model["vocab"]["<|begin|>"])
    w.add_eos_token_id(model["vocab"]["<|end|>"])
    for key, value in extra.items():
        getattr(w, f"add_{key}")(value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize(
    ("pre_name", "pre"),
    [("llama-bpe", "llama3"), ("qwen2", "qwen2"), ("gpt-2", "gpt2"), ("default", "default")],
)
def test_byte_level_bpe_gives_the_trained_tokenizers_ids(
    tmp_path: Path, pre_name: str, pre: str
) -> None:
    hf = train_bpe(pre)
    path = write_bpe_gguf(tmp_path / "t.gguf", hf, pre_name)
    tok = Tokenizer.from_metadata(read_metadata(path))
    assert tok.kind == "gpt2" and tok.pre == pre
    assert tok.add_bos == (pre == "llama3")  # llama.cpp's default for these pre-tokenizers
    for text in [*TEXTS, *CORPUS]:
        want = hf.encode(text, add_special_tokens=False).ids
        assert tok.encode(text, add_bos=False) == want, text
        assert tok.decode(want) == text.replace("<|im_start|>", "").replace("<|im_end|>", "")


@pytest.mark.parametrize(
    ("pre_name", "want"),
    [
        # llama3: digits in runs of up to three, contractions in any case.
        ("llama-bpe", ["x", " ", "123", "456", "7", " WE", "'LL", "\n\n", "  ", " y"]),
        # qwen2: digits one by one.
        ("qwen2", ["x", " ", "1", "2", "3", "4", "5", "6", "7", " WE", "'LL", "\n\n", "  ", " y"]),
        # gpt-2: the digit run with its space; contractions in lower case only; no
        # separate newline rule.
        ("gpt-2", ["x", " 1234567", " WE", "'", "LL", "\n\n  ", " y"]),
    ],
)
def test_pre_tokenizer_splits_as_llama_cpp(tmp_path: Path, pre_name: str, want: list[str]) -> None:
    hf = train_bpe(PRE_NAMES[pre_name])
    tok = Tokenizer.from_metadata(read_metadata(write_bpe_gguf(tmp_path / "t.gguf", hf, pre_name)))
    split = tok._backend.pre_tokenizer.pre_tokenize_str("x 1234567 WE'LL\n\n   y")
    assert [bytes(_BYTES[c] for c in s).decode() for s, _ in split] == want


def test_special_tokens_parsed_in_prompts_and_not_decoded(tmp_path: Path) -> None:
    hf = train_bpe("qwen2")
    tok = Tokenizer.from_metadata(read_metadata(write_bpe_gguf(tmp_path / "t.gguf", hf, "qwen2")))
    im_start = hf.token_to_id("<|im_start|>")
    im_end = hf.token_to_id("<|im_end|>")
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>", add_bos=True)
    assert ids[0] == tok.bos_id and ids[1] == im_start and ids[-1] == im_end
    plain = tok.encode("<|im_start|>", parse_special=False, add_bos=False)
    assert im_start not in plain and len(plain) > 1
    assert tok.decode(ids) == "user\nhi"
    assert tok.is_control(im_end) and im_end in tok.eog_ids and tok.eos_id in tok.eog_ids


def test_add_bos_from_metadata_overrides_the_default(tmp_path: Path) -> None:
    hf = train_bpe("llama3")
    path = write_bpe_gguf(tmp_path / "t.gguf", hf, "llama-bpe", add_bos_token=False)
    tok = Tokenizer.from_metadata(read_metadata(path))
    assert not tok.add_bos
    assert tok.encode("hi") == hf.encode("hi").ids
    assert tok.encode("hi", add_bos=True)[0] == hf.token_to_id("<|begin|>")


def test_unknown_pre_tokenizer_falls_back_to_default_as_llama_cpp(tmp_path: Path, caplog) -> None:
    hf = train_bpe("default")
    tok = Tokenizer.from_metadata(read_metadata(write_bpe_gguf(tmp_path / "t.gguf", hf, "zzz")))
    assert tok.pre == "default"
    assert "unknown pre-tokenizer 'zzz'" in caplog.text


# -- SentencePiece ------------------------------------------------------------------------------
def spm_metadata(add_space_prefix: bool | None = None) -> dict[str, Any]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    scores = [0.0, 0.0, 0.0] + [0.0] * 256
    pieces = {
        "▁": -1.0, "h": -5.0, "e": -5.0, "l": -5.0, "o": -5.0, "w": -5.0, "r": -5.0, "d": -5.0,
        "▁h": -2.0, "▁he": -3.0, "ll": -2.5, "▁hell": -3.5, "▁hello": -4.0,
        "▁w": -2.0, "or": -2.2, "▁wor": -3.2, "ld": -2.4, "▁world": -4.2, "é": -6.0,
    }  # fmt: skip
    first = len(tokens)
    tokens += list(pieces)
    types += [TokenType.NORMAL] * len(pieces)
    scores += list(pieces.values())
    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [int(t) for t in types],
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.chat_template": "{% for m in messages %}[{{ m.role }}] {{ m.content }}"
        "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}",
    }
    if add_space_prefix is not None:
        meta["tokenizer.ggml.add_space_prefix"] = add_space_prefix
    meta["_first"] = first
    return meta


def test_sentencepiece_ids_by_hand() -> None:
    meta = spm_metadata()
    first = meta.pop("_first")
    tok = Tokenizer.from_metadata(meta)
    ids = {t: i for i, t in enumerate(meta["tokenizer.ggml.tokens"])}
    assert tok.kind == "llama" and tok.add_bos  # SentencePiece adds BOS by default
    assert tok.encode("hello world") == [1, ids["▁hello"], ids["▁world"]]
    # Byte fallback for characters outside the vocabulary: "ü" is C3 BC in UTF-8.
    assert tok.encode("hü", add_bos=False) == [ids["▁h"], 3 + 0xC3, 3 + 0xBC]
    assert tok.encode("é", add_bos=False) == [ids["▁"], ids["é"]]
    # A space prefix after each special token, as llama.cpp does.
    assert tok.encode("</s>hello", add_bos=False) == [2, ids["▁hello"]]
    assert tok.decode([1, ids["▁hello"], ids["▁world"], 2]) == "hello world"
    assert tok.decode([ids["▁h"], 3 + 0xC3, 3 + 0xBC]) == "hü"
    assert first > 3


def test_sentencepiece_without_space_prefix() -> None:
    meta = spm_metadata(add_space_prefix=False)
    meta.pop("_first")
    tok = Tokenizer.from_metadata(meta)
    ids = {t: i for i, t in enumerate(meta["tokenizer.ggml.tokens"])}
    assert tok.encode("hello", add_bos=False) == [ids["h"], ids["e"], ids["ll"], ids["o"]]


def test_incremental_decoder_waits_for_complete_utf8() -> None:
    meta = spm_metadata()
    meta.pop("_first")
    tok = Tokenizer.from_metadata(meta)
    ids = {t: i for i, t in enumerate(meta["tokenizer.ggml.tokens"])}
    stream = tok.incremental()
    # "🙂" is F0 9F 99 82: nothing comes out until its last byte.
    out = [stream.push(ids["▁world"])]
    out += [stream.push(3 + b) for b in "🙂".encode()]
    assert out == [" world", "", "", "", "🙂"]
    assert stream.push(3 + 0xF0) == ""
    assert stream.flush() == "\ufffd"  # a sequence that never completed


def test_chat_template() -> None:
    meta = spm_metadata()
    meta.pop("_first")
    tok = Tokenizer.from_metadata(meta)
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs) == "[user] hi[assistant]"
    assert tok.apply_chat_template(msgs, add_generation_prompt=False) == "[user] hi"
    strict = (
        "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}"
        "{{ raise_exception('unknown role ' + m.role) }}{% endif %}{{ bos_token }}{{ m.content }}"
        "{% endfor %}"
    )
    assert tok.apply_chat_template(msgs, template=strict) == "<s>hi"
    with pytest.raises(ChatTemplateError, match="unknown role tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], template=strict)
    with pytest.raises(ChatTemplateError, match="chat template error"):
        tok.apply_chat_template(msgs, template="{% for %}")
    # The sandbox refuses to reach Python internals.
    with pytest.raises(ChatTemplateError):
        tok.apply_chat_template(
            msgs, template="{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}"
        )
    del meta["tokenizer.chat_template"]
    with pytest.raises(ChatTemplateError, match="no chat template"):
        Tokenizer.from_metadata(meta).apply_chat_template(msgs)


def test_bad_tokenizer_metadata() -> None:
    with pytest.raises(TokenizerError, match="no tokenizer"):
        Tokenizer.from_metadata({})
    with pytest.raises(TokenizerError, match="'bert' is not supported"):
        Tokenizer.from_metadata({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]})


def test_random_model_tokenizer_round_trips(random_model) -> None:
    tok = Tokenizer.from_metadata(read_metadata(random_model()))
    text = "Hello, wörld! 🙂"
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id == 256
    assert tok.decode(ids) == text
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]).endswith("assistant\n")
