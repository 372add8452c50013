"""Errors that reach the user as one line naming the file, row and column at fault."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class WattlasError(Exception):
    """Any failure the CLI reports as a one-line message and a non-zero exit."""


@dataclass
class InputError(WattlasError):
    """Bad input data.

    ``row`` is the 1-based data row (header excluded); ``line`` the 1-based line in a text
    file when it is known (so editors can jump to it).  Either may be None when the problem
    concerns the whole file or a whole column.  ``key`` names a setting in a structured file
    (TOML, JSON): ``pool[0].instances``, ``models.prefill.coefficients``.
    """

    source: str | Path | None
    message: str
    row: int | None = None
    column: str | None = None
    line: int | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [" ".join(str(self.source).split()) if self.source is not None else "<input>"]
        if self.row is not None:
            parts.append(f"row {self.row}" + (f" (line {self.line})" if self.line is not None else ""))
        elif self.line is not None:
            parts.append(f"line {self.line}")
        if self.column is not None:  # names from the file itself may hold line breaks
            parts.append(f"column {' '.join(str(self.column).split())}")
        if self.key is not None:
            parts.append(f"key {' '.join(str(self.key).split())}")
        # One line, always: embedded newlines from library messages would split it.
        return ": ".join(parts) + ": " + " ".join(self.message.split())
