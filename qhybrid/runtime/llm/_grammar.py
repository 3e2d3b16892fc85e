"""Grammar-constrained sampling: a JSON Schema as a token-level constraint over a vocabulary.

Three objects, from the most shared to the most private:

- :class:`JsonGrammar` (:func:`compile_json_schema`): a schema compiled to a byte-level
  context-free grammar, independent of any model. Raises :class:`GrammarError` for a schema
  it cannot guarantee (naming the keyword and where it is).
- :class:`TokenGrammar` (``grammar.for_vocabulary(vocab)``): the grammar bound to one model's
  :class:`TokenVocabulary`; it caches the allowed-token masks of the parser states it has seen,
  so requests with the same schema share the work.
- :class:`TokenConstraint` (``token_grammar.start()``): one request's parser state. Each step,
  :meth:`~TokenConstraint.mask` says which tokens may come next (as a boolean array over the
  vocabulary; the end-of-sequence tokens only once the document is complete) and
  :meth:`~TokenConstraint.advance` consumes the token that was picked.

Any text a constraint lets through to its end parses as JSON and validates against the schema.
The output is compact (no whitespace between tokens of the JSON syntax) and an object's
properties come in the schema's order: required ones always, optional ones when the model
chooses, none that the schema does not name (which validates whatever
``additionalProperties`` says). ``oneOf`` is matched as ``anyOf``.

How it works (the approach of llama.cpp's ``llama-grammar.cpp``): the grammar is rules of
alternatives, each a sequence of byte classes and rule references; a parser state is a set of
stacks of positions in those rules, advanced one byte at a time (a reference in tail position
is not kept on the stack, so repetition runs in constant depth and states recur). A token is
allowed when its bytes, fed one by one from the current state, never leave the grammar; the
vocabulary is walked as a trie so that a shared prefix is fed once, and byte transitions and
masks are memoised per state.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

__all__ = [
    "GrammarError",
    "JsonGrammar",
    "TokenConstraint",
    "TokenGrammar",
    "TokenVocabulary",
    "compile_json_schema",
]

Mask = npt.NDArray[np.bool_]

# An element: a byte class (a 256-entry tuple of bools would be slow to build; a frozenset of
# byte values is hashed once) or a rule reference (an int).
_Class = frozenset[int]
_Element = _Class | int
_Position = tuple[int, int, int]  # (rule, alternative, index of the next element)
_Stack = tuple[_Position, ...]
_ACCEPT: _Stack = ()

#: Keywords that only annotate: they never change what validates.
_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "format",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$defs",
        "definitions",
        "strict",
    }
)
_SUPPORTED = _ANNOTATIONS | {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "minLength",
    "maxLength",
    "$ref",
    "nullable",
}
_MAX_DEPTH = 256  # nesting of a parser stack: deeper is dropped
_MAX_UNROLL = 512  # largest minLength/maxLength/minItems/maxItems written out as a sequence


class GrammarError(ValueError):
    """A schema the grammar cannot enforce; the message names the keyword and its place."""


def _cls(chars: Iterable[int]) -> _Class:
    return frozenset(chars)


def _rng(lo: int, hi: int) -> _Class:
    return frozenset(range(lo, hi + 1))


_DIGIT = _rng(0x30, 0x39)
_DIGIT19 = _rng(0x31, 0x39)
_HEX = _DIGIT | _rng(0x41, 0x46) | _rng(0x61, 0x66)
_PLAIN = frozenset(range(0x20, 0x80)) - {0x22, 0x5C} - {0x7F}  # printable ASCII but " and \
_CONT = _rng(0x80, 0xBF)


class JsonGrammar:
    """A JSON Schema compiled to a byte-level grammar (see the module docstring)."""

    def __init__(self, schema: Mapping[str, Any] | bool | None, *, root_object: bool) -> None:
        self.rules: list[list[tuple[_Element, ...]]] = []
        self._named: dict[str, int] = {}
        self._defs: Mapping[str, Any] = {}
        self._ref_rules: dict[str, int] = {}
        self.schema = schema
        if isinstance(schema, Mapping):
            defs = dict(schema.get("definitions") or {})
            defs.update(schema.get("$defs") or {})
            self._defs = defs
        root = self._rule()
        if schema is None or schema is True or schema == {}:
            value = self._object_any() if root_object else self._any()
        else:
            value = self._schema(schema, "$")
        self.rules[root] = [(value,)]
        self.root = root

    # -- building rules ---------------------------------------------------------------------
    def _rule(self, alternatives: Sequence[tuple[_Element, ...]] = ()) -> int:
        self.rules.append(list(alternatives))
        return len(self.rules) - 1

    def _literal(self, text: str) -> tuple[_Element, ...]:
        return tuple(_cls((b,)) for b in text.encode("utf-8"))

    def _shared(self, name: str, build: Any) -> int:
        if name not in self._named:
            rid = self._rule()
            self._named[name] = rid
            self.rules[rid] = build()
        return self._named[name]

    def _char(self) -> int:
        """One JSON string character: plain ASCII, an escape, or a whole UTF-8 sequence."""

        def build() -> list[tuple[_Element, ...]]:
            esc = _cls(b'"\\/bfnrt')
            return [
                (_PLAIN,),
                (_cls((0x5C,)), esc),
                (_cls((0x5C,)), _cls((0x75,)), _HEX, _HEX, _HEX, _HEX),
                # well-formed UTF-8 only (RFC 3629: no overlongs, no surrogates)
                (_rng(0xC2, 0xDF), _CONT),
                (_cls((0xE0,)), _rng(0xA0, 0xBF), _CONT),
                (_rng(0xE1, 0xEC) | _cls((0xEE, 0xEF)), _CONT, _CONT),
                (_cls((0xED,)), _rng(0x80, 0x9F), _CONT),
                (_cls((0xF0,)), _rng(0x90, 0xBF), _CONT, _CONT),
                (_rng(0xF1, 0xF3), _CONT, _CONT, _CONT),
                (_cls((0xF4,)), _rng(0x80, 0x8F), _CONT, _CONT),
            ]

        return self._shared("char", build)

    def _chars(self) -> int:
        if "chars" not in self._named:
            rid = self._rule()
            self._named["chars"] = rid
            self.rules[rid] = [(self._char(), rid), ()]
        return self._named["chars"]

    def _string(self, min_len: int = 0, max_len: int | None = None) -> int:
        key = f"string:{min_len}:{max_len}"
        if key in self._named:
            return self._named[key]
        quote = _cls((0x22,))
        if min_len == 0 and max_len is None:
            body: tuple[_Element, ...] = (self._chars(),)
        else:
            if max(min_len, max_len or 0) > _MAX_UNROLL:
                raise GrammarError(f"string lengths above {_MAX_UNROLL} are not supported")
            char = self._char()
            tail: int
            if max_len is None:
                tail = self._chars()
            else:
                # opt_k = char opt_{k-1} | ε, for the max_len - min_len optional characters
                tail = self._rule([()])
                for _ in range(max_len - min_len):
                    tail = self._rule([(char, tail), ()])
            body = (*([char] * min_len), tail)
        rid = self._rule([(quote, *body, quote)])
        self._named[key] = rid
        return rid

    def _upto(self, cls: _Class, n: int) -> int:
        """Zero to ``n`` bytes of ``cls``."""
        rid = self._rule([()])
        for _ in range(n):
            rid = self._rule([(cls, rid), ()])
        return rid

    def _number(self, integer: bool) -> int:
        # Digits are bounded so that every number the model writes is a finite double.
        def build() -> list[tuple[_Element, ...]]:
            minus = self._rule([(_cls((0x2D,)),), ()])
            int_part = self._rule([(_cls((0x30,)),), (_DIGIT19, self._upto(_DIGIT, 15))])
            if integer:
                return [(minus, int_part)]
            frac = self._rule([(_cls((0x2E,)), _DIGIT, self._upto(_DIGIT, 15)), ()])
            sign = self._rule([(_cls(b"+-"),), ()])
            exp = self._rule([(_cls(b"eE"), sign, _DIGIT, self._upto(_DIGIT, 1)), ()])
            return [(minus, int_part, frac, exp)]

        return self._shared("integer" if integer else "number", build)

    def _any(self) -> int:
        if "any" in self._named:
            return self._named["any"]
        rid = self._rule()
        self._named["any"] = rid
        alts: list[tuple[_Element, ...]] = [
            (self._object_any(),),
            (self._array_of(rid, 0, None),),
            (self._string(),),
            (self._number(False),),
            self._literal("true"),
            self._literal("false"),
            self._literal("null"),
        ]
        self.rules[rid] = alts
        return rid

    def _object_any(self, value: int | None = None) -> int:
        key = f"object_any:{value}"
        if key in self._named:
            return self._named[key]
        rid = self._rule()
        self._named[key] = rid
        value = self._any() if value is None else value
        kv = (self._string(), _cls((0x3A,)), value)
        more = self._rule()
        self.rules[more] = [(_cls((0x2C,)), *kv, more), ()]
        body = self._rule([(*kv, more), ()])
        self.rules[rid] = [(_cls((0x7B,)), body, _cls((0x7D,)))]
        return rid

    def _array_of(self, item: int, min_items: int, max_items: int | None) -> int:
        comma = _cls((0x2C,))
        if max(min_items, max_items or 0) > _MAX_UNROLL:
            raise GrammarError(f"array lengths above {_MAX_UNROLL} are not supported")
        if max_items is None:
            more = self._rule()
            self.rules[more] = [(comma, item, more), ()]
            tail: tuple[_Element, ...] = (more,)
        else:
            opt = self._rule([()])
            for _ in range(max_items - max(min_items, 1)):
                opt = self._rule([(comma, item, opt), ()])
            tail = (opt,)
        if min_items == 0:
            first = (item, *tail) if max_items != 0 else ()
            body = self._rule([first, ()] if first else [()])
        else:
            need: tuple[_Element, ...] = (item,) + (comma, item) * (min_items - 1)
            body = self._rule([(*need, *tail)])
        return self._rule([(_cls((0x5B,)), body, _cls((0x5D,)))])

    def _enum(self, values: Sequence[Any], where: str) -> int:
        alts = []
        for v in values:
            try:
                text = json.dumps(v, ensure_ascii=True, separators=(",", ":"))
            except (TypeError, ValueError):
                raise GrammarError(f"{where}: an enum value is not JSON") from None
            alts.append(self._literal(text))
        if not alts:
            raise GrammarError(f"{where}: enum is empty")
        return self._rule(alts)

    def _schema(self, schema: Any, where: str) -> int:
        if schema is True or schema == {}:
            return self._any()
        if schema is False:
            raise GrammarError(f"{where}: the schema false accepts nothing")
        if not isinstance(schema, Mapping):
            raise GrammarError(f"{where}: a schema must be an object, got {type(schema).__name__}")
        unknown = sorted(set(schema) - _SUPPORTED)
        if unknown:
            raise GrammarError(f"{where}: the keyword {unknown[0]!r} is not supported")
        if "$ref" in schema:
            return self._ref(str(schema["$ref"]), where)
        if "const" in schema:
            return self._enum([schema["const"]], where)
        if "enum" in schema:
            return self._enum(list(schema["enum"]), where)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                branches = schema[key]
                if not isinstance(branches, list) or not branches:
                    raise GrammarError(f"{where}.{key}: expected a non-empty list of schemas")
                rest = {k: v for k, v in schema.items() if k != key and k not in _ANNOTATIONS}
                if rest:
                    raise GrammarError(
                        f"{where}: {key} beside {sorted(rest)[0]!r} is not supported"
                    )
                return self._rule(
                    [(self._schema(b, f"{where}.{key}[{i}]"),) for i, b in enumerate(branches)]
                )
        kind = schema.get("type")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else None
        if kind is None:
            return self._any()
        kinds = [kind] if isinstance(kind, str) else list(kind)
        if schema.get("nullable") is True and "null" not in kinds:
            kinds.append("null")
        alts = [(self._typed(k, schema, where),) for k in kinds]
        return alts[0][0] if len(alts) == 1 else self._rule(alts)

    def _ref(self, ref: str, where: str) -> int:
        if ref in self._ref_rules:
            return self._ref_rules[ref]
        for prefix in ("#/$defs/", "#/definitions/"):
            if ref.startswith(prefix) and ref[len(prefix) :] in self._defs:
                rid = self._rule()
                self._ref_rules[ref] = rid  # before building: recursive schemas refer back
                self.rules[rid] = [(self._schema(self._defs[ref[len(prefix) :]], ref),)]
                return rid
        if ref == "#" and isinstance(self.schema, Mapping):
            rid = self._rule()
            self._ref_rules[ref] = rid
            self.rules[rid] = [(self._schema(self.schema, "#"),)]
            return rid
        raise GrammarError(f"{where}: $ref {ref!r} does not name a definition of this schema")

    def _typed(self, kind: Any, schema: Mapping[str, Any], where: str) -> int:
        if kind == "string":
            lo = int(schema.get("minLength", 0))
            hi = schema.get("maxLength")
            if hi is not None and int(hi) < lo:
                raise GrammarError(f"{where}: maxLength is below minLength")
            return self._string(lo, None if hi is None else int(hi))
        if kind in ("number", "integer"):
            return self._number(kind == "integer")
        if kind == "boolean":
            return self._rule([self._literal("true"), self._literal("false")])
        if kind == "null":
            return self._rule([self._literal("null")])
        if kind == "array":
            items = schema.get("items", True)
            item = self._schema(items, f"{where}.items")
            lo = int(schema.get("minItems", 0))
            hi = schema.get("maxItems")
            if hi is not None and int(hi) < lo:
                raise GrammarError(f"{where}: maxItems is below minItems")
            return self._array_of(item, lo, None if hi is None else int(hi))
        if kind == "object":
            return self._object(schema, where)
        raise GrammarError(f"{where}: unknown type {kind!r}")

    def _object(self, schema: Mapping[str, Any], where: str) -> int:
        props = dict(schema.get("properties") or {})
        required = list(schema.get("required") or [])
        for name in required:
            props.setdefault(name, True)
        additional = schema.get("additionalProperties", True)
        if not props:
            if additional is False:
                return self._rule([self._literal("{}")])
            value = None if additional in (True, {}) else self._schema(additional, where)
            return self._object_any(value)
        names = list(props)
        req = set(required)
        kvs = [
            (
                *self._literal(json.dumps(n, ensure_ascii=True) + ":"),
                self._schema(props[n], f"{where}.properties.{n}"),
            )
            for n in names
        ]
        comma = _cls((0x2C,))
        # first[i]: the properties from i on, none written yet; after[i]: some already were.
        first = [self._rule() for _ in range(len(names) + 1)]
        after = [self._rule() for _ in range(len(names) + 1)]
        self.rules[first[-1]] = [()]
        self.rules[after[-1]] = [()]
        for i in range(len(names) - 1, -1, -1):
            take_first = (*kvs[i], after[i + 1])
            take_after = (comma, *kvs[i], after[i + 1])
            if names[i] in req:
                self.rules[first[i]] = [take_first]
                self.rules[after[i]] = [take_after]
            else:
                self.rules[first[i]] = [take_first, (first[i + 1],)]
                self.rules[after[i]] = [take_after, (after[i + 1],)]
        return self._rule([(_cls((0x7B,)), first[0], _cls((0x7D,)))])

    # -- binding ----------------------------------------------------------------------------
    def for_vocabulary(self, vocab: TokenVocabulary) -> TokenGrammar:
        """This grammar over one model's tokens."""
        return TokenGrammar(self, vocab)


def compile_json_schema(
    schema: Mapping[str, Any] | bool | None, *, root_object: bool = False
) -> JsonGrammar:
    """Compile a JSON Schema (``None``: any JSON value; with ``root_object``, ``None`` means any
    JSON object, OpenAI's ``json_object`` mode). Raises :class:`GrammarError`."""
    return JsonGrammar(schema, root_object=root_object)


class _Trie:
    """The vocabulary's tokens as a trie of byte edges, in flat lists indexed by node (the
    root is 0): ``children[n]`` maps a byte to a node, ``ends[n]`` are the tokens spelled by
    the path to ``n``, ``below[n]`` is a bitset of every byte under ``n``, and the tokens of
    ``n``'s subtree are ``order[lo[n]:hi[n]]``. Dicts and tuples of ints only: the cyclic
    collector does not track them, so a 50k-token trie (about 200k nodes) costs it nothing."""

    __slots__ = ("below", "children", "ends", "hi", "lo", "order")

    def __init__(self, pieces: Sequence[bytes]) -> None:
        children: list[dict[int, int]] = [{}]
        ends: list[list[int]] = [[]]
        for tid, piece in enumerate(pieces):
            if not piece:
                continue  # control tokens write no text: never part of a document
            node = 0
            for byte in piece:
                nxt = children[node].get(byte)
                if nxt is None:
                    nxt = children[node][byte] = len(children)
                    children.append({})
                    ends.append([])
                node = nxt
            ends[node].append(tid)
        n = len(children)
        self.children = children
        self.ends: list[tuple[int, ...]] = [tuple(e) for e in ends]
        self.below = [0] * n
        self.lo = [0] * n
        self.hi = [0] * n
        order: list[int] = []
        stack: list[tuple[int, bool]] = [(0, False)]
        while stack:
            node, done = stack.pop()
            if done:
                self.hi[node] = len(order)
                below = 0
                for byte, child in children[node].items():
                    below |= (1 << byte) | self.below[child]
                self.below[node] = below
                continue
            self.lo[node] = len(order)
            order.extend(self.ends[node])
            stack.append((node, True))
            stack.extend((child, False) for child in children[node].values())
        self.order = np.asarray(order, dtype=np.int64)


class _HasTokenBytes(Protocol):
    n_vocab: int

    def token_bytes(self, token: int) -> bytes: ...


@dataclass
class TokenVocabulary:
    """A model's tokens as bytes, walked as a trie; ``eos_ids`` end a complete document."""

    pieces: Sequence[bytes]
    eos_ids: frozenset[int]
    trie: _Trie

    @property
    def n_vocab(self) -> int:
        return len(self.pieces)

    @classmethod
    def from_tokens(cls, pieces: Sequence[bytes], eos_ids: Iterable[int]) -> TokenVocabulary:
        trie = _Trie(pieces)
        return cls(list(pieces), frozenset(int(t) for t in eos_ids), trie)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> TokenVocabulary:
        """From a :class:`~._tokenizer.Tokenizer` (its token bytes and end-of-generation ids);
        the result is cached on the tokenizer."""
        cached = getattr(tokenizer, "_qh_token_vocabulary", None)
        if isinstance(cached, TokenVocabulary):
            return cached
        tok: _HasTokenBytes = tokenizer
        pieces = [tok.token_bytes(i) for i in range(tok.n_vocab)]
        vocab = cls.from_tokens(pieces, getattr(tokenizer, "eog_ids", ()))
        try:
            tokenizer._qh_token_vocabulary = vocab
        except AttributeError:
            pass
        return vocab


class TokenGrammar:
    """A :class:`JsonGrammar` bound to a :class:`TokenVocabulary`, with memoised parser states
    and masks. Not thread-safe: the engine's thread uses it."""

    def __init__(self, grammar: JsonGrammar, vocab: TokenVocabulary) -> None:
        self.grammar = grammar
        self.vocab = vocab
        self._rules = grammar.rules
        self._states: dict[frozenset[_Stack], int] = {}
        self._stacks: list[frozenset[_Stack]] = []
        self._trans: dict[tuple[int, int], int] = {}  # (state, byte) -> state, -1 = dead
        self._masks: dict[int, Mask] = {}
        self._loops: dict[int, int] = {}  # state -> bitset of the bytes that lead back to it
        self._leaves: list[list[tuple[_Stack, _Class]]] = []
        self.initial = self._intern(self._expand([((grammar.root, 0, 0),)]))

    def start(self) -> TokenConstraint:
        """A new request's constraint, at the start of the document."""
        return TokenConstraint(self)

    # -- the byte-level parser -------------------------------------------------------------
    def _expand(self, stacks: Iterable[_Stack]) -> frozenset[_Stack]:
        """Every stack whose top is a byte class (or the accepting empty stack)."""
        out: set[_Stack] = set()
        todo = list(stacks)
        seen: set[_Stack] = set()
        rules = self._rules
        while todo:
            stack = todo.pop()
            if stack in seen:
                continue
            seen.add(stack)
            if not stack:
                out.add(_ACCEPT)
                continue
            if len(stack) > _MAX_DEPTH:
                continue  # a left-recursive schema ($ref to itself first) has no end
            rule, alt, idx = stack[-1]
            seq = rules[rule][alt]
            if idx == len(seq):
                todo.append(stack[:-1])
                continue
            element = seq[idx]
            if isinstance(element, frozenset):
                out.add(stack)
                continue
            # A reference: the caller resumes after it, unless that is the end of its sequence
            # (a tail call: nothing to resume, so repetition keeps a constant depth).
            base = stack[:-1] if idx + 1 == len(seq) else (*stack[:-1], (rule, alt, idx + 1))
            for a in range(len(rules[element])):
                todo.append((*base, (element, a, 0)))
        return frozenset(out)

    def _intern(self, stacks: frozenset[_Stack]) -> int:
        sid = self._states.get(stacks)
        if sid is None:
            sid = len(self._stacks)
            self._states[stacks] = sid
            self._stacks.append(stacks)
            leaves = []
            for stack in stacks:
                if stack:
                    rule, alt, idx = stack[-1]
                    element = self._rules[rule][alt][idx]
                    assert isinstance(element, frozenset)
                    leaves.append((stack, element))
            self._leaves.append(leaves)
        return sid

    def step_byte(self, sid: int, byte: int) -> int:
        """The state after ``byte``, or -1 when the grammar does not allow it."""
        key = (sid, byte)
        nxt = self._trans.get(key)
        if nxt is not None:
            return nxt
        moved = [
            (*stack[:-1], (stack[-1][0], stack[-1][1], stack[-1][2] + 1))
            for stack, cls in self._leaves[sid]
            if byte in cls
        ]
        nxt = self._intern(self._expand(moved)) if moved else -1
        self._trans[key] = nxt
        return nxt

    def accepts(self, sid: int) -> bool:
        """The text so far is a complete document."""
        return _ACCEPT in self._stacks[sid]

    def can_continue(self, sid: int) -> bool:
        """More text may follow."""
        return bool(self._leaves[sid])

    def mask(self, sid: int) -> Mask:
        """The tokens allowed in state ``sid`` (end of sequence only when it accepts)."""
        mask = self._masks.get(sid)
        if mask is not None:
            return mask
        mask = self._walk(sid, shortcut=True)
        if self.accepts(sid):
            mask[list(self.vocab.eos_ids)] = True
        mask.setflags(write=False)
        self._masks[sid] = mask
        return mask

    def _walk(self, sid: int, *, shortcut: bool) -> Mask:
        """The tokens whose bytes the grammar takes from ``sid`` (EOS aside). With
        ``shortcut``, a subtree all of whose bytes lead a state back to itself (the characters
        of a JSON string, the digits of a number) is taken whole, not walked token by token:
        inside a string that leaves only the tokens with a quote, a backslash or a non-ASCII
        byte to walk."""
        mask = np.zeros(self.vocab.n_vocab, dtype=np.bool_)
        if not self.can_continue(sid):
            return mask
        trie = self.vocab.trie
        children, ends, below, lo, hi = trie.children, trie.ends, trie.below, trie.lo, trie.hi
        order = trie.order
        todo: list[tuple[int, int]] = [(0, sid)]
        step = self.step_byte
        while todo:
            node, state = todo.pop()
            for byte, child in children[node].items():
                nxt = step(state, byte)
                if nxt < 0:
                    continue
                if shortcut and below[child] & ~self._loop_bytes(nxt) == 0:
                    mask[order[lo[child] : hi[child]]] = True
                    continue
                if ends[child]:
                    mask[list(ends[child])] = True
                if children[child]:
                    todo.append((child, nxt))
        return mask

    def _loop_bytes(self, sid: int) -> int:
        loops = self._loops.get(sid)
        if loops is None:
            loops = 0
            for byte in range(256):
                if self.step_byte(sid, byte) == sid:
                    loops |= 1 << byte
            self._loops[sid] = loops
        return loops


class TokenConstraint:
    """One request's place in the grammar: :meth:`mask` before sampling, :meth:`advance` after.

    ``complete``: the text so far is a whole valid document; ``finished``: it is complete and
    nothing may follow (the engine ends the request there, as at an end-of-sequence token).
    """

    def __init__(self, grammar: TokenGrammar) -> None:
        self.grammar = grammar
        self.state = grammar.initial
        self._eos = grammar.vocab.eos_ids

    def mask(self) -> Mask:
        return self.grammar.mask(self.state)

    def advance(self, token: int) -> None:
        """Consume ``token``; ``ValueError`` if the grammar does not allow it here."""
        if token in self._eos:
            if not self.complete:
                raise ValueError("end of sequence before the document is complete")
            return
        sid = self.state
        piece = self.grammar.vocab.pieces[token]
        if not piece:
            raise ValueError(f"token {token} writes no text: not allowed inside a document")
        for byte in piece:
            sid = self.grammar.step_byte(sid, byte)
            if sid < 0:
                raise ValueError(f"token {token} ({piece!r}) is not allowed by the grammar here")
        self.state = sid

    @property
    def complete(self) -> bool:
        return self.grammar.accepts(self.state)

    @property
    def finished(self) -> bool:
        return self.complete and not self.grammar.can_continue(self.state)
