"""User-facing errors: one line that names the file, the line (or row) and the field.

The CLI prints a ``DealrecError`` as ``error: <message>`` with no traceback and exits 2.
Anything else that escapes is a bug and keeps its traceback.
"""
from __future__ import annotations

import unicodedata
from pathlib import Path


def one_line(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``, ``\\u2028``...): a message that
    echoes a user's id, title or path stays one line and cannot drive the terminal."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch == " ":
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Zl", "Zp"):   # control bytes, line/paragraph separators
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)   # other unprintables (format characters such as a zero-width joiner) are harmless
    return "".join(out)


class DealrecError(Exception):
    """An error in the user's input or request, worth one line to the user."""


class InputError(DealrecError):
    """Bad input data, located as precisely as we can: file, line or row, field."""

    def __init__(self, file: str | Path, message: str, *, line: int | None = None,
                 row: int | None = None, field: str | None = None):
        self.file = str(file)
        self.line = line
        self.row = row
        self.field = field
        where = self.file
        if line is not None:
            where += f", line {line}"
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")
