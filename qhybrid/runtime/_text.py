"""Text from agents, models and files, made safe to show to a person.

An agent's log line, its WASI stdout, an error message quoting it or an LLM answer can hold
control characters: on a terminal ESC sequences clear the screen, set the window title or
move the cursor, and ``\\r`` or ``\\n`` forge whole lines; bidi overrides reorder what a reader
sees. :func:`printable` writes each such character as a visible escape (``\\x1b``, ``\\r``,
``\\u202e``). Every human output path (the terminal, the window) shows text through it; the
machine-readable outputs (``--json``, ``--trace``) keep the exact text.
"""

from __future__ import annotations

import unicodedata

__all__ = ["printable", "printable_lines"]

_NAMED = {"\n": "\\n", "\r": "\\r"}


def _escape(c: str) -> str:
    named = _NAMED.get(c)
    if named is not None:
        return named
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _safe(c: str) -> bool:
    # Python's printable excludes Cc, Cf (bidi overrides, zero-width), Cs, Co, Cn, Zl, Zp and
    # every space but " ": keep the tab and the other spaces (no-break, em, ...), which only
    # move text along its line.
    return c.isprintable() or c == "\t" or unicodedata.category(c) == "Zs"


def printable(text: str) -> str:
    """``text`` on one line, with every control or direction-changing character escaped."""
    if text.isprintable():
        return text
    return "".join(c if _safe(c) else _escape(c) for c in text)


def printable_lines(text: str) -> str:
    """Like :func:`printable`, but keeps line breaks (for multi-line messages of our own)."""
    return "\n".join(printable(line) for line in text.split("\n"))
