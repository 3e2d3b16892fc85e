"""The value types of scenario files: each check once, with its message and its JSON Schema.

Each class here is pydantic metadata for ``Annotated`` (``count: Annotated[int, IntRange(1,
100_000)]``): it validates one value the way the file's readers expect to be told about it
("expected an integer from 1 to 100000, got -1", "write 3 without a decimal point"), and gives the
same constraint to the JSON Schema, so the message and the published schema cannot disagree.
Pydantic's own messages are written for Python programmers; these are written for the person
editing the TOML file. A failed check raises :func:`~qhybrid.runtime._scenario_errors.problem`.
"""

from __future__ import annotations

import math
import posixpath
import re
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from qhybrid.runtime._scenario_errors import describe, problem, quoted, suggest
from qhybrid.runtime.tensors import OPS

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "Array",
    "ArrayOfTables",
    "Flag",
    "GuestPath",
    "HexBytes",
    "Identifier",
    "IntRange",
    "MessageKind",
    "MiB",
    "ModulePath",
    "NonNegativeNumber",
    "Numbers",
    "OneOf",
    "OpName",
    "PathText",
    "PositiveNumber",
    "Settings",
    "Shape",
    "Text",
    "Variables",
]

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
IDENTIFIER_PATTERN = "^[A-Za-z_][A-Za-z0-9_]*$"


class _Plain:
    """A check that takes the raw TOML value and returns the checked one (or raises)."""

    def validate(self, value: Any) -> Any:
        raise NotImplementedError

    def json_schema(self) -> JsonSchemaValue:
        raise NotImplementedError

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(self.validate)

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return self.json_schema()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- scalars --------------------------------------------------------------------------------------


class IntRange(_Plain):
    """An integer from ``low`` to ``high`` (TOML has no unsigned type; 64 bits at most)."""

    def __init__(self, low: int, high: int = INT64_MAX, *, expected: str | None = None) -> None:
        self.low = low
        self.high = high
        if expected is None:
            expected = (
                f"an integer >= {low}" if high >= INT64_MAX else f"an integer from {low} to {high}"
            )
        self.expected = expected

    def validate(self, value: Any) -> int:
        expected = self.expected
        if not _is_int(value):
            hint = ""
            if isinstance(value, float) and value.is_integer():
                hint = f"; write {int(value)} without a decimal point"
            raise problem(f"expected {expected}, got {describe(value)}{hint}")
        if value < self.low:
            raise problem(f"expected {expected}, got {value}")
        if value > self.high:
            if self.high >= INT64_MAX and expected.startswith("an integer >="):
                expected += " that fits in 64 bits"
            raise problem(f"expected {expected}, got {value}")
        return int(value)

    def json_schema(self) -> JsonSchemaValue:
        return {"type": "integer", "minimum": self.low, "maximum": self.high}


class MessageKind(IntRange):
    """A message kind an agent may use: below the runtime's own kinds."""

    def __init__(self, reserved_base: int) -> None:
        super().__init__(0, reserved_base - 1)

    def validate(self, value: Any) -> int:
        if _is_int(value) and value > self.high:
            raise problem(
                f"kind {value} is reserved for the runtime (kinds from 0x{self.high + 1:X} "
                f"up); use 0 to {self.high}"
            )
        return super().validate(value)


class PositiveNumber(_Plain):
    """A finite number > 0 (an integer is read as a float), optionally at most ``at_most``."""

    def __init__(self, at_most: float | None = None) -> None:
        self.at_most = at_most

    def validate(self, value: Any) -> float:
        if not _is_number(value):
            raise problem(f"expected a number > 0, got {describe(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float's range
            number = math.inf
        if not math.isfinite(number) or number <= 0:
            raise problem(f"expected a finite number > 0, got {describe(value)}")
        if self.at_most is not None and number > self.at_most:
            raise problem(f"expected a number in (0, {self.at_most:g}], got {number:g}")
        return number

    def json_schema(self) -> JsonSchemaValue:
        schema: JsonSchemaValue = {"type": "number", "exclusiveMinimum": 0}
        if self.at_most is not None:
            schema["maximum"] = self.at_most
        return schema


class NonNegativeNumber(_Plain):
    """A finite number >= 0; ``note`` says what 0 means."""

    def __init__(self, note: str = "") -> None:
        self.note = note

    def validate(self, value: Any) -> float:
        if not _is_number(value):
            raise problem(f"expected a number >= 0, got {describe(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number) or number < 0:
            raise problem(f"expected a finite number >= 0{self.note}, got {value}")
        return number

    def json_schema(self) -> JsonSchemaValue:
        return {"type": "number", "minimum": 0}


class MiB(_Plain):
    """A number of MiB (a fraction allowed), > 0 and at most ``high``."""

    def __init__(self, high: int) -> None:
        self.high = high

    def validate(self, value: Any) -> int | float:
        expected = f"a number of MiB, > 0 and at most {self.high}"
        # `0 < value <= high` is also false for nan, and compares a huge int without float().
        if not _is_number(value) or not 0 < value <= self.high:
            raise problem(f"expected {expected}, got {describe(value)}")
        return float(value) if isinstance(value, float) else int(value)

    def json_schema(self) -> JsonSchemaValue:
        return {"type": "number", "exclusiveMinimum": 0, "maximum": self.high}


class Flag(_Plain):
    def validate(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise problem(f"expected true or false, got {describe(value)}")
        return value

    def json_schema(self) -> JsonSchemaValue:
        return {"type": "boolean"}


class Text(_Plain):
    """A string; ``non_empty``: not blank (``blank_ok``: only not ``""``)."""

    def __init__(self, *, non_empty: bool = False, blank_ok: bool = False) -> None:
        self.non_empty = non_empty
        self.blank_ok = blank_ok

    def validate(self, value: Any) -> str:
        if not isinstance(value, str):
            raise problem(f"expected a string, got {describe(value)}")
        if self.non_empty and not (value if self.blank_ok else value.strip()):
            raise problem("expected a non-empty string")
        return value

    def json_schema(self) -> JsonSchemaValue:
        schema: JsonSchemaValue = {"type": "string"}
        if self.non_empty:
            schema["minLength"] = 1
        return schema


class Identifier(Text):
    """A name made of letters, digits and ``_``, not starting with a digit."""

    def validate(self, value: Any) -> str:
        name = super().validate(value)
        if not _IDENTIFIER.fullmatch(name):
            raise problem(
                "expected a name made of letters, digits and '_' that does not start with a "
                f"digit, got {describe(name)}"
            )
        return name

    def json_schema(self) -> JsonSchemaValue:
        return {"type": "string", "pattern": IDENTIFIER_PATTERN}


class PathText(Text):
    """A host path as written (relative to the scenario's folder, or absolute); not resolved."""

    def __init__(self) -> None:
        super().__init__(non_empty=True)

    def validate(self, value: Any) -> str:
        text = super().validate(value)
        if "\0" in text:
            raise problem("a path cannot contain a NUL character")
        return text


class ModulePath(PathText):
    """A ``.wasm`` or ``.wat`` file, or a Python agent's ``.py`` source."""

    SUFFIXES = (".wasm", ".wat", ".py")

    def validate(self, value: Any) -> str:
        text = Text.validate(self, value)
        if Path(text).suffix.lower() not in self.SUFFIXES:
            raise problem(f"expected a .wasm, .wat or .py file, got {describe(text)}")
        return super().validate(text)

    def json_schema(self) -> JsonSchemaValue:
        return {"type": "string", "pattern": r"\.([Ww][Aa]([Ss][Mm]|[Tt])|[Pp][Yy])$"}


class GuestPath(Text):
    """An absolute POSIX path inside the sandbox, normalised (no ``.``, ``..``, ``//``)."""

    def __init__(self) -> None:
        super().__init__(non_empty=True)

    def validate(self, value: Any) -> str:
        text = super().validate(value)
        if not text.startswith("/"):
            raise problem(
                f'expected an absolute POSIX path (starting with "/"), got {describe(text)}'
            )
        if "\0" in text or "\\" in text:
            raise problem(f"a guest path cannot contain NUL or '\\', got {describe(text)}")
        parts = [part for part in text.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise problem(f"a guest path cannot contain '..', got {describe(text)}")
        return posixpath.join("/", *parts)

    def json_schema(self) -> JsonSchemaValue:
        return {"type": "string", "pattern": "^/"}


class OneOf(_Plain):
    """One of a few strings; a near miss gets "did you mean"."""

    def __init__(self, *choices: str) -> None:
        self.choices = choices

    def validate(self, value: Any) -> str:
        if not isinstance(value, str) or value not in self.choices:
            hint = suggest(value, self.choices) if isinstance(value, str) else ""
            raise problem(f"expected one of {quoted(self.choices)}, got {describe(value)}{hint}")
        return value

    def json_schema(self) -> JsonSchemaValue:
        return {"type": "string", "enum": list(self.choices)}


class OpName(Text):
    """A tensor op known to :mod:`qhybrid.runtime.tensors`."""

    def validate(self, value: Any) -> str:
        op = super().validate(value)
        if op not in OPS:
            raise problem(f"unknown op {describe(op)}{suggest(op, OPS)}; known: {', '.join(OPS)}")
        return op

    def json_schema(self) -> JsonSchemaValue:
        return {"type": "string", "enum": list(OPS)}


class HexBytes(_Plain):
    """Bytes written as pairs of hex digits, spaces allowed between them."""

    def validate(self, value: Any) -> bytes:
        text = Text().validate(value)
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise problem(
                'expected pairs of hex digits such as "00ff" (spaces allowed between bytes), '
                f"got {describe(text)}"
            ) from None

    def json_schema(self) -> JsonSchemaValue:
        return {"type": "string", "pattern": r"^\s*([0-9A-Fa-f]{2}\s*)*$"}


# --- arrays and tables ----------------------------------------------------------------------------


class _Wrap:
    """A check around pydantic's own validation of the annotated type (arrays, tables)."""

    def before(self, value: Any) -> None:
        """Raise for what pydantic's message would not explain well."""

    def after(self, value: Any) -> Any:
        return value

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        def check(value: Any, inner: core_schema.ValidatorFunctionWrapHandler) -> Any:
            self.before(value)
            return self.after(inner(value))

        return core_schema.no_info_wrap_validator_function(check, handler(source))


class ArrayOfTables(_Wrap):
    """``[[header]]`` entries (or an inline array of inline tables)."""

    def __init__(self, header: str) -> None:
        self.header = header

    def before(self, value: Any) -> None:
        header = self.header
        if isinstance(value, dict):
            raise problem(
                f"expected an array of tables, got a table: write [[{header}]] for each entry, "
                f"not [{header}]"
            )
        if not isinstance(value, list):
            raise problem(f"expected an array of tables ([[{header}]]), got {describe(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise problem(f"expected a table, got {describe(item)}", index)


class Array(_Wrap):
    """An array; ``what`` names it in the message for anything else."""

    def __init__(self, what: str) -> None:
        self.what = what

    def before(self, value: Any) -> None:
        if not isinstance(value, list):
            raise problem(f"expected {self.what}, got {describe(value)}")


class Shape(_Wrap):
    """A tensor shape: 1 to ``max_rank`` positive integers, at most ``max_elements`` in all."""

    def __init__(self, max_rank: int, max_elements: int) -> None:
        self.max_rank = max_rank
        self.max_elements = max_elements

    def before(self, value: Any) -> None:
        if not isinstance(value, list) or not 1 <= len(value) <= self.max_rank:
            raise problem(
                f"expected an array of 1 to {self.max_rank} positive integers, "
                f"got {describe(value)}"
                + (f" of length {len(value)}" if isinstance(value, list) else "")
            )

    def after(self, value: Any) -> Any:
        count = math.prod(value)
        if count > self.max_elements:
            raise problem(
                f"shape {list(value)} has {count} elements; "
                f"at most {self.max_elements} (2**{self.max_elements.bit_length() - 1}) "
                "are allowed"
            )
        return value

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        result = handler(schema)
        result.update(minItems=1, maxItems=self.max_rank)
        return result


class Settings(_Plain):
    """An agent's ``config``: strings, 64-bit integers, finite floats, booleans, or arrays of them.

    Arrays become tuples, so the settings stay immutable.
    """

    _SCALAR: JsonSchemaValue = {
        "anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}]
    }

    def validate(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise problem(f"expected a table of settings, got {describe(value)}")
        settings: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(item, dict):  # nested tables, read at run time with config_get
                try:
                    settings[key] = MappingProxyType(self.validate(item))
                except PydanticCustomError as exc:
                    ctx = exc.context or {}
                    below = tuple(ctx.get("below", ()))
                    raise problem(str(ctx.get("message", exc)), key, *below) from None
            elif isinstance(item, list):
                settings[key] = tuple(
                    self._scalar(element, key, i) for i, element in enumerate(item)
                )
            else:
                settings[key] = self._scalar(item, key)
        return settings

    @staticmethod
    def _scalar(value: object, *below: str | int) -> str | int | float | bool:
        if isinstance(value, bool | str):
            return value
        if isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:
                raise problem(f"expected an integer that fits in 64 bits, got {value}", *below)
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise problem(f"expected a finite number, got {value!r}", *below)
            return value
        raise problem(
            "expected a string, integer, float, boolean or an array of those, "
            f"got {describe(value)}",
            *below,
        )

    def json_schema(self) -> JsonSchemaValue:
        scalar = self._SCALAR
        return {
            "type": "object",
            "additionalProperties": {
                "anyOf": [*scalar["anyOf"], {"type": "array", "items": scalar}, {"type": "object"}]
            },
        }


class Variables(_Plain):
    """Environment variables: ``NAME = "value"``, sorted by name into ``(name, value)`` pairs."""

    def validate(self, value: Any) -> tuple[tuple[str, str], ...]:
        if not isinstance(value, dict):
            raise problem(f'expected a table of NAME = "value" strings, got {describe(value)}')
        env: list[tuple[str, str]] = []
        for name, item in value.items():
            if not _IDENTIFIER.fullmatch(name):
                raise problem(
                    "expected a variable name made of letters, digits and '_' that does not "
                    f"start with a digit, got {describe(name)}",
                    name,
                )
            if not isinstance(item, str):
                raise problem(f"expected a string, got {describe(item)}", name)
            if "\0" in item:
                raise problem("an environment value cannot contain a NUL character", name)
            env.append((name, item))
        return tuple(sorted(env))

    def json_schema(self) -> JsonSchemaValue:
        return {
            "type": "object",
            "propertyNames": {"pattern": IDENTIFIER_PATTERN},
            "additionalProperties": {"type": "string"},
        }


class Numbers(_Plain):
    """A table of finite numbers (an op's parameters), each read as a float."""

    def validate(self, value: Any) -> dict[str, float]:
        if not isinstance(value, dict):
            raise problem(f"expected a table of numbers, got {describe(value)}")
        numbers: dict[str, float] = {}
        for key, item in value.items():
            if not _is_number(item):
                raise problem(f"expected a number, got {describe(item)}", key)
            try:
                number = float(item)
            except OverflowError:  # an integer beyond float's range
                number = math.inf
            if not math.isfinite(number):
                raise problem(f"expected a finite number, got {describe(item)}", key)
            numbers[key] = number
        return numbers

    def json_schema(self) -> JsonSchemaValue:
        return {"type": "object", "additionalProperties": {"type": "number"}}
