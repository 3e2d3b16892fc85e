"""JSON Schema -> token constraint: whatever a constraint lets through parses and validates."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from qhybrid._resources import resource_path
from qhybrid.runtime.llm import (
    GenerationParams,
    GrammarError,
    LlmEngine,
    NumpyRunner,
    SamplingParams,
    Tokenizer,
    TokenVocabulary,
    compile_json_schema,
    load_model,
)

SCHEMAS = [
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 2, "maxLength": 6},
            "age": {"type": "integer"},
            "score": {"type": ["number", "null"]},
            "tags": {"type": "array", "items": {"enum": ["a", "b", 3, None]}, "maxItems": 3},
            "ok": {"type": "boolean"},
            "nested": {"type": "object", "properties": {"x": {"const": "é"}}, "required": ["x"]},
        },
        "required": ["name", "age", "nested"],
        "additionalProperties": False,
    },
    {
        "anyOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", "items": {"$ref": "#/$defs/n"}, "minItems": 2, "maxItems": 4},
        ],
        "$defs": {"n": {"type": "number"}},
    },
    {"type": "object", "additionalProperties": {"type": "integer"}},
    {"type": "array", "items": {"$ref": "#"}, "maxItems": 2},  # recursive
]


def _vocab() -> TokenVocabulary:
    # Single bytes, common multi-byte pieces, and pieces that cross JSON syntax boundaries.
    pieces = [b"", b"</s>"[:0]] + [bytes([b]) for b in range(256)]
    pieces += [
        b'{"',
        b'":',
        b'",',
        b'"}',
        b"true",
        b"fals",
        b"e}",
        b"null",
        b'"a',
        b"12",
        b"3.5",
        b"e-7",
        b"[1,",
        b"]]",
        b"\xc3",
        b"\xa9",
        b"\xc3\xa9",
        b' "',
        b"name",
        b'name":"',
        b"\\u00",
        b"4f",
    ]
    return TokenVocabulary.from_tokens(pieces, eos_ids=[1])


def _walk(schema: object, seed: int, vocab: TokenVocabulary, *, root_object: bool = False):
    grammar = compile_json_schema(schema, root_object=root_object).for_vocabulary(vocab)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    c = grammar.start()
    out = b""
    for step in range(400):
        allowed = np.flatnonzero(c.mask())
        assert allowed.size, f"no token allowed after {out!r}"
        if 1 in allowed and (step > 30 or rng.random() < 0.3):
            c.advance(1)
            return out, True
        choice = int(rng.choice([t for t in allowed if t != 1] or allowed))
        c.advance(choice)
        out += vocab.pieces[choice]
        if c.finished:
            return out, True
    return out, False


@pytest.mark.parametrize("schema", [*SCHEMAS, None])
def test_every_complete_document_validates(schema: object) -> None:
    vocab = _vocab()
    complete = 0
    for seed in range(40):
        out, done = _walk(schema, seed, vocab, root_object=schema is None)
        if not done:
            continue
        complete += 1
        doc = json.loads(out.decode("utf-8"))
        if schema is None:
            assert isinstance(doc, dict)
        else:
            jsonschema.validate(doc, schema)
    assert complete >= 20


def test_disallowed_tokens_are_refused_and_eos_only_at_the_end() -> None:
    vocab = _vocab()
    grammar = compile_json_schema({"type": "boolean"}).for_vocabulary(vocab)
    c = grammar.start()
    mask = c.mask()
    assert mask[ord("t") + 2] and mask[ord("f") + 2] and not mask[1] and not mask[ord("x") + 2]
    with pytest.raises(ValueError, match="not allowed"):
        c.advance(ord("x") + 2)
    with pytest.raises(ValueError, match="end of sequence"):
        c.advance(1)
    c.advance(vocab.pieces.index(b"true"))
    assert c.complete and c.finished and c.mask()[1]


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "string", "pattern": "^a"}, "'pattern' is not supported"),
        ({"type": "object", "properties": {"a": {"type": "wat"}}}, "$.properties.a: unknown type"),
        ({"$ref": "#/$defs/missing"}, "does not name a definition"),
        ({"enum": []}, "enum is empty"),
        ({"type": "string", "minLength": 5, "maxLength": 2}, "maxLength is below minLength"),
    ],
)
def test_unsupported_schemas_are_named(schema: object, message: str) -> None:
    with pytest.raises(GrammarError) as err:
        compile_json_schema(schema)  # type: ignore[arg-type]
    assert message in str(err.value)


def test_engine_constrains_a_request_and_leaves_the_others_alone() -> None:
    model = load_model(resource_path("models", "tiny-stories.gguf"))
    try:
        tok = Tokenizer.from_metadata(model.metadata)
        runner = NumpyRunner(model, n_slots=3, n_ctx=256)
        engine = LlmEngine(runner, tok.incremental, tok.eog_ids)
        schema = SCHEMAS[0]
        grammar = compile_json_schema(schema).for_vocabulary(TokenVocabulary.from_tokenizer(tok))
        prompt = tok.encode("Once upon a time")
        hot = SamplingParams(temperature=1.0, top_k=0, top_p=1.0)
        free = engine.submit(prompt, GenerationParams(max_tokens=20, sampling=hot, seed=1))
        constrained = [
            GenerationParams(max_tokens=200, sampling=hot, seed=s, grammar=grammar) for s in (1, 2)
        ]
        ids = [engine.submit(prompt, p) for p in constrained]
        results = {}
        while engine.has_work():
            for u in engine.step():
                if u.done:
                    results[u.request_id] = u.result
        for rid in ids:
            assert results[rid].finish == "stop"
            jsonschema.validate(json.loads(results[rid].text), schema)
        # The unconstrained request sampled exactly as it does alone (same seed, same tokens).
        alone = LlmEngine(NumpyRunner(model, n_slots=1, n_ctx=256), tok.incremental, tok.eog_ids)
        rid = alone.submit(prompt, GenerationParams(max_tokens=20, sampling=hot, seed=1))
        solo = None
        while alone.has_work():
            for u in alone.step():
                if u.done and u.request_id == rid:
                    solo = u.result
        assert solo is not None and solo.tokens == results[free].tokens
    finally:
        model.close()


@pytest.mark.parametrize("schema", [*SCHEMAS, None])
def test_the_subtree_shortcut_allows_exactly_what_a_full_walk_allows(schema: object) -> None:
    vocab = _vocab()
    grammar = compile_json_schema(schema, root_object=schema is None).for_vocabulary(vocab)  # type: ignore[arg-type]
    rng = np.random.default_rng(7)
    for _ in range(10):
        c = grammar.start()
        for _ in range(60):
            sid = c.state
            full = grammar._walk(sid, shortcut=False)
            assert np.array_equal(grammar._walk(sid, shortcut=True), full)
            allowed = [t for t in np.flatnonzero(c.mask()) if t != 1]
            if not allowed or c.finished:
                break
            c.advance(int(rng.choice(allowed)))
