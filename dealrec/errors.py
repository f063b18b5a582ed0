"""User-facing errors: one line that names the file, the line (or row) and the field.

The CLI prints a ``DealrecError`` as ``error: <message>`` with no traceback and exits 2.
Anything else that escapes is a bug and keeps its traceback.
"""
from __future__ import annotations

from pathlib import Path


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
