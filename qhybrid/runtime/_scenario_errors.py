"""Scenario errors: ``file:line: field: message``, the words for values, and "did you mean".

:class:`ScenarioError` is what every check raises. The value checks in
:mod:`~qhybrid.runtime._scenario_types` and the tables in :mod:`~qhybrid.runtime._scenario_models`
raise :func:`problem` (a pydantic custom error carrying the finished message, and the keys below
the failing value it is about, if any); :func:`from_validation_error` turns the first error of a
pydantic ``ValidationError`` into a :class:`ScenarioError` located at its field path and line.
"""

from __future__ import annotations

import datetime
import difflib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

__all__ = [
    "ScenarioError",
    "describe",
    "from_validation_error",
    "join_field",
    "line_for",
    "problem",
    "quoted",
    "suggest",
]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
#: The error type of :func:`problem`; any other pydantic error is an unexpected gap in the checks.
_PROBLEM = "qhybrid_scenario"


class ScenarioError(Exception):
    """A scenario that cannot run: where (file, line, field) and what is wrong.

    ``str()`` gives ``"path:line: field: message"``, leaving out the parts that are unknown
    (without a path, the line reads ``"line 12"``).
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line
        self.field = field

    def __str__(self) -> str:
        parts: list[str] = []
        if self.path is not None:
            parts.append(self.path if self.line is None else f"{self.path}:{self.line}")
        elif self.line is not None:
            parts.append(f"line {self.line}")
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)

    def __reduce__(self) -> tuple[Any, ...]:
        # The keyword-only arguments would be lost by the default pickling of exceptions.
        return (_rebuild_error, (self.message, self.path, self.line, self.field))


def _rebuild_error(
    message: str, path: str | None, line: int | None, field: str | None
) -> ScenarioError:
    return ScenarioError(message, path=path, line=line, field=field)


def problem(message: str, *below: str | int) -> PydanticCustomError:
    """A validation error with a finished message, raised from a check inside pydantic.

    ``below`` are the keys (or indexes) under the value being checked that the message is about,
    for a check made on a whole table or array: ``problem("unknown field", "cuont")``.
    """
    # The message goes in the context, not the template: "{" in a user's value stays as it is.
    return PydanticCustomError(_PROBLEM, "{message}", {"message": message, "below": below})


def from_validation_error(
    exc: ValidationError, path: str | None, lines: Mapping[str, int]
) -> ScenarioError:
    """The first of pydantic's errors in the file (by line, then in field order), located."""
    located = [_located(error, path, lines) for error in exc.errors(include_url=False)]
    never = 1 << 62
    return min(located, key=lambda error: never if error.line is None else error.line)


def _located(error: Any, path: str | None, lines: Mapping[str, int]) -> ScenarioError:
    loc: list[str | int] = list(error["loc"])
    ctx = error.get("ctx") or {}
    if error["type"] == _PROBLEM:
        loc.extend(ctx.get("below", ()))
        message = str(ctx["message"])
    else:  # a pydantic check with no message of ours: still located, still no traceback
        text = str(error["msg"])
        message = f"{text[:1].lower()}{text[1:]}, got {describe(error['input'])}"
    field = field_path(loc)
    return ScenarioError(message, path=path, line=line_for(lines, field), field=field or None)


def field_path(loc: Sequence[str | int]) -> str:
    """``("agents", 0, "config", "odd key")`` -> ``agents[0].config."odd key"``."""
    field = ""
    for part in loc:
        field = f"{field}[{part}]" if isinstance(part, int) else join_field(field, part)
    return field


def join_field(parent: str, key: str) -> str:
    """The field path of ``key`` inside ``parent``: ``agents[0].count``, ``config."a b"``."""
    part = key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)
    return f"{parent}.{part}" if parent else part


def _parent(field: str) -> str:
    cut = field.rfind("[") if field.endswith("]") else field.rfind(".")
    return field[:cut] if cut > 0 else ""


def line_for(lines: Mapping[str, int], field: str) -> int | None:
    """The line of ``field``, else of its nearest parent that has one."""
    while field:
        line = lines.get(field)
        if line is not None:
            return line
        field = _parent(field)
    return None


def describe(value: object) -> str:
    """A value as the user wrote it, for "expected X, got Y"."""
    if isinstance(value, bool):
        return f"{'true' if value else 'false'} (a boolean)"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return json.dumps(shown, ensure_ascii=False)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and math.isfinite(value):
            return f"{value!r} (a float)"
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return f"a date/time ({value.isoformat()})"
    return type(value).__name__


def quoted(names: Iterable[str]) -> str:
    return ", ".join(json.dumps(n, ensure_ascii=False) for n in names)


def suggest(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean "x"?)`` for the closest candidate, or nothing."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {json.dumps(close[0], ensure_ascii=False)}?)" if close else ""
