"""Reading a scenario file: a bounded regular file, UTF-8, TOML, and where each field is.

:func:`read_scenario_text` refuses what is not a regular file (``/dev/zero``, a FIFO, a
directory) and files over :data:`MAX_SCENARIO_BYTES`, before reading a byte of them;
:func:`parse_toml` turns tomllib's errors into :class:`ScenarioError` with the line; and
:func:`scan_field_lines` maps every field path (``agents[0].limits.fuel``) to the line it starts
on, which tomllib does not report, so that every later error can name its line.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any

from qhybrid.runtime._scenario_errors import ScenarioError, join_field

__all__ = ["MAX_SCENARIO_BYTES", "parse_toml", "read_scenario_text", "scan_field_lines"]

#: A scenario is a description, not data: 16 MiB holds 100,000 agent entries several times over.
MAX_SCENARIO_BYTES = 16 * 2**20

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def read_scenario_text(path: str | os.PathLike[str]) -> str:
    """The text of the scenario file at ``path``, checked to be a bounded regular UTF-8 file."""
    display = os.fspath(path)
    file = Path(path)
    try:
        # stat before open: opening a FIFO would block, and /dev/zero never ends.
        info = file.stat()
        if stat.S_ISDIR(info.st_mode):
            raise ScenarioError("is a directory, not a scenario file", path=display)
        if not stat.S_ISREG(info.st_mode):
            raise ScenarioError(
                f"not a regular file ({_file_kind(info.st_mode)}), so not a scenario file",
                path=display,
            )
        if info.st_size > MAX_SCENARIO_BYTES:
            raise ScenarioError(_too_large(info.st_size), path=display)
        with file.open("rb") as stream:
            data = stream.read(MAX_SCENARIO_BYTES + 1)  # it may have grown since the stat
    except FileNotFoundError:
        raise ScenarioError(f"scenario file not found ({file.absolute()})", path=display) from None
    except IsADirectoryError:
        raise ScenarioError("is a directory, not a scenario file", path=display) from None
    except OSError as exc:
        raise ScenarioError(
            f"cannot read the scenario file: {exc.strerror or exc}", path=display
        ) from None
    if len(data) > MAX_SCENARIO_BYTES:
        raise ScenarioError(_too_large(len(data)), path=display)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ScenarioError(
            f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            path=display,
            line=line,
        ) from None


def _file_kind(mode: int) -> str:
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a plain file"


def _too_large(size: int) -> str:
    return (
        f"the file is too large for a scenario ({size} bytes or more; "
        f"at most {MAX_SCENARIO_BYTES} bytes, {MAX_SCENARIO_BYTES // 2**20} MiB)"
    )


def parse_toml(text: str, display: str | None) -> dict[str, Any]:
    """tomllib's table for ``text``; its errors as :class:`ScenarioError` with a line."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(str(exc), text, display) from None
    except RecursionError:
        raise ScenarioError(
            "invalid TOML: values nest too deeply", path=display, line=_first_deep_line(text)
        ) from None
    except ValueError as exc:  # an integer too long to convert (over 4300 digits)
        raise ScenarioError(
            f"invalid TOML: {exc}", path=display, line=_longest_number_line(text)
        ) from None


def _first_deep_line(text: str) -> int:
    """The line where brackets first nest 100 deep (tomllib gives up well beyond that)."""
    depth = 0
    for index, char in enumerate(text):
        if char in "[{":
            depth += 1
            if depth >= 100:
                return text.count("\n", 0, index) + 1
        elif char in "]}":
            depth = max(0, depth - 1)
    return 1


def _longest_number_line(text: str) -> int:
    runs = list(re.finditer(r"[0-9_]{4000,}", text))
    if not runs:
        return 1
    longest = max(runs, key=lambda m: m.end() - m.start())
    return text.count("\n", 0, longest.start()) + 1


_AT_LINE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_AT_END = re.compile(r"\s*\(at end of document\)\s*$")


def _syntax_error(message: str, text: str, display: str | None) -> ScenarioError:
    found = _AT_LINE.search(message)
    if found is not None:
        core = message[: found.start()]
        return ScenarioError(
            f"invalid TOML: {core} (column {found.group(2)})",
            path=display,
            line=int(found.group(1)),
        )
    found = _AT_END.search(message)
    if found is not None:
        core = message[: found.start()]
        return ScenarioError(
            f"invalid TOML: {core} (at the end of the file)",
            path=display,
            line=text.count("\n") + 1,
        )
    return ScenarioError(f"invalid TOML: {message}", path=display)


# --- field path -> line ---------------------------------------------------------------------------


def scan_field_lines(text: str) -> dict[str, int]:
    """Map field paths to 1-based lines by scanning TOML text that tomllib has accepted."""
    scanner = _LineScanner(text)
    # Best effort: on a surprise, keep what was found before the scanner lost its way.
    with contextlib.suppress(IndexError, ValueError, RecursionError):
        scanner.run()
    return scanner.lines


_SCALAR = re.compile(r"[^,\]}\r\n#]*")


class _LineScanner:
    """A small TOML walker that records where tables, keys and array elements start.

    It follows table headers (counting ``[[x]]`` occurrences for the index), ``key = value``
    lines, dotted keys, inline tables and arrays (also across lines), and skips strings and
    comments; it does not interpret values.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.breaks = [m.start() for m in re.finditer("\n", text)]
        self.lines: dict[str, int] = {}
        self.array_counts: dict[str, int] = {}

    def line(self) -> int:
        return bisect.bisect_left(self.breaks, self.pos) + 1

    def run(self) -> None:
        text = self.text
        table = ""
        while self.pos < len(text):
            start = self.pos
            self._skip_blank()
            if self.pos >= len(text):
                break
            char = text[self.pos]
            if char in "\r\n":
                self.pos += 1
                continue
            if char == "#":
                self._skip_to_eol()
                continue
            if char == "[":
                table = self._header()
            else:
                self._keyval(table)
            self._skip_to_eol()
            if self.pos == start:
                self.pos += 1

    def _skip_blank(self) -> None:
        text = self.text
        while self.pos < len(text) and text[self.pos] in " \t":
            self.pos += 1

    def _skip_to_eol(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end

    def _skip_space_and_comments(self) -> None:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t\r\n":
                self.pos += 1
            elif char == "#":
                self._skip_to_eol()
            else:
                return

    def _header(self) -> str:
        line = self.line()
        is_array = self.text.startswith("[[", self.pos)
        self.pos += 2 if is_array else 1
        keys = self._dotted_key()
        path = ""
        for i, key in enumerate(keys):
            path = join_field(path, key)
            if i < len(keys) - 1:
                # [ages.grants] creates "ages" too: an error about it points at this header.
                self.lines.setdefault(path, line)
                # [agents.config] after [[agents]] belongs to the latest agents entry.
                if path in self.array_counts:
                    path = f"{path}[{self.array_counts[path] - 1}]"
        if is_array:
            count = self.array_counts.get(path, 0)
            self.array_counts[path] = count + 1
            self.lines.setdefault(path, line)
            path = f"{path}[{count}]"
        self.lines[path] = line
        return path

    def _dotted_key(self) -> list[str]:
        text = self.text
        keys: list[str] = []
        while True:
            self._skip_blank()
            if text[self.pos] in "\"'":
                keys.append(self._string())
            else:
                found = _BARE_KEY.match(text, self.pos)
                if found is None:
                    raise ValueError("not a key")
                keys.append(found.group())
                self.pos = found.end()
            self._skip_blank()
            if self.pos < len(text) and text[self.pos] == ".":
                self.pos += 1
                continue
            return keys

    def _keyval(self, prefix: str) -> None:
        line = self.line()
        keys = self._dotted_key()
        path = prefix
        for key in keys[:-1]:
            path = join_field(path, key)
            self.lines.setdefault(path, line)
        path = join_field(path, keys[-1])
        self.lines[path] = line
        self._skip_blank()
        if self.text[self.pos] != "=":
            raise ValueError("expected '='")
        self.pos += 1
        self._value(path)

    def _value(self, path: str) -> None:
        self._skip_blank()
        char = self.text[self.pos]
        if char in "\"'":
            self._string()
        elif char == "[":
            self._array(path)
        elif char == "{":
            self._inline_table(path)
        else:
            found = _SCALAR.match(self.text, self.pos)
            if found is not None:
                self.pos = found.end()

    def _array(self, path: str) -> None:
        text = self.text
        self.pos += 1
        index = 0
        while True:
            self._skip_space_and_comments()
            if text[self.pos] == "]":
                self.pos += 1
                return
            element = f"{path}[{index}]"
            self.lines[element] = self.line()
            self._value(element)
            self._skip_space_and_comments()
            if text[self.pos] == ",":
                self.pos += 1
                index += 1
            elif text[self.pos] == "]":
                self.pos += 1
                return
            else:
                raise ValueError("expected ',' or ']'")

    def _inline_table(self, path: str) -> None:
        text = self.text
        self.pos += 1
        while True:
            self._skip_space_and_comments()
            if text[self.pos] == "}":
                self.pos += 1
                return
            self._keyval(path)
            self._skip_space_and_comments()
            if text[self.pos] == ",":
                self.pos += 1
            elif text[self.pos] == "}":
                self.pos += 1
                return
            else:
                raise ValueError("expected ',' or '}'")

    def _string(self) -> str:
        """Skip the string at the cursor; return its text (exact for keys, which are one line)."""
        text = self.text
        start = self.pos
        for quote in ('"""', "'''"):
            if text.startswith(quote, start):
                end = start + 3
                while not text.startswith(quote, end):
                    end += 2 if quote == '"""' and text[end] == "\\" else 1
                    if end >= len(text):
                        raise ValueError("unterminated string")
                end += 3
                # Up to two quotes right before the delimiter belong to the string.
                extra = 0
                while extra < 2 and end < len(text) and text[end] == quote[0]:
                    end += 1
                    extra += 1
                self.pos = end
                return text[start + 3 : end - 3]
        if text[start] == "'":
            end = text.index("'", start + 1)
            self.pos = end + 1
            return text[start + 1 : end]
        end = start + 1
        while text[end] != '"':
            end += 2 if text[end] == "\\" else 1
        self.pos = end + 1
        raw = text[start : end + 1]
        try:
            decoded = json.loads(raw, strict=False)
        except ValueError:
            return raw[1:-1]  # a TOML-only escape such as \U0001F600: close enough
        return decoded if isinstance(decoded, str) else raw[1:-1]
