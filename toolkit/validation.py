"""Check a DataFrame against an artifact schema and turn it into a typed Arrow table.

Every failure is an :class:`~toolkit.errors.InputError` that names the source file, the first
offending row and the column as the *source* spells it (``ContextTokens``, not
``input_tokens``), so the user can go straight to the bad cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection

import numpy as np
import pandas as pd
import pyarrow as pa

from .errors import InputError
from .schemas import ArtifactSchema


@dataclass(frozen=True)
class RowContext:
    """Where a frame's rows came from, for error messages.

    ``row_offset`` is the number of data rows before this frame (chunked reads);
    ``header_lines`` the lines before the first data row in a text file, None for binary files.
    ``locate_line`` maps a 1-based file row to its text line where rows and lines do not simply
    differ by ``header_lines`` (quoted fields spanning lines, blank lines); it returns None where
    the line cannot be known, and then no line is reported rather than a wrong one.
    """

    source: str | Path | None
    row_offset: int = 0
    header_lines: int | None = None
    source_columns: dict[str, str] | None = None
    locate_line: Callable[[int], int | None] | None = None

    def column(self, name: str) -> str:
        """The source file's spelling of canonical column ``name`` (``name`` itself if not renamed)."""
        return (self.source_columns or {}).get(name, name)

    def line_of(self, row: int | None) -> int | None:
        """The text line of file row ``row`` (1-based), None where unknown or not a text file."""
        if row is None:
            return None
        if self.locate_line is not None:
            return self.locate_line(row)
        return None if self.header_lines is None else row + self.header_lines

    def error(self, message: str, position: int | None = None, column: str | None = None) -> InputError:
        """An :class:`InputError` (returned, not raised) about the frame row at 0-based ``position``
        and canonical column ``column``, naming the file row, its text line and the source's
        column name where known; None leaves that part out."""
        row = None if position is None else self.row_offset + int(position) + 1
        return InputError(self.source, message, row=row, column=None if column is None else self.column(column),
                          line=self.line_of(row))


INT64_LIMIT = 2.0**63  # |value| >= this does not fit an int64 (exact in float64: a power of two)


def format_value(value: object) -> str:
    """A cell value as a person reads it: ``3.5``, ``1e+30``, ``-3`` for -3.0, strings quoted and
    cut to 60 characters; never ``np.float64(3.5)``."""
    if isinstance(value, (float, np.floating)) and np.isfinite(value) and float(value).is_integer() and abs(value) < 2**53:
        value = int(value)
    return _show(value)


def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def check_columns_present(columns: list[str], schema: ArtifactSchema, ctx: RowContext) -> None:
    """Raise an :class:`InputError` naming the first of ``schema``'s required columns that is
    not in ``columns`` (canonical names), with the columns found."""
    missing = [c for c in schema.required_names if c not in columns]
    if missing:
        found = ", ".join(map(str, columns)) or "none"
        raise ctx.error(f"missing required column (found: {found})", column=missing[0])


def _numeric(series: pd.Series) -> tuple[np.ndarray, np.ndarray | None, list[tuple[int, str]]]:
    """(values as float64, the exact int64 values when every cell is an integer that fits, problems)."""
    problems: list[tuple[int, str]] = []
    values = pd.to_numeric(series, errors="coerce")
    raw_missing = series.isna().to_numpy()
    not_numeric = values.isna().to_numpy() & ~raw_missing
    pos = _first(not_numeric)
    if pos is not None:
        problems.append((pos, f"not a number: {format_value(series.iloc[pos])}"))
    # float64 holds integers exactly only up to 2**53: ids such as 64-bit hashes keep their int64 values
    exact = values.to_numpy(dtype="int64", na_value=0) if values.dtype.kind == "i" else None
    return values.to_numpy(dtype="float64", na_value=np.nan), exact, problems


def validate_frame(df: pd.DataFrame, schema: ArtifactSchema, ctx: RowContext, metadata: dict[str, str] | None = None) -> pa.Table:
    """Validate ``df`` (canonical column names) and return it as an Arrow table of ``schema``.

    Numeric columns must be numbers, finite, within the column's ``minimum``/``maximum``, and
    integral columns whole numbers within int64; the first offending row of all is reported.
    """
    check_columns_present(list(df.columns), schema, ctx)
    problems: list[tuple[int, str, str]] = []  # (position, column, message)
    arrays: dict[str, pa.Array] = {}
    for col in schema.columns:
        if col.name not in df.columns:
            continue
        series = df[col.name]
        if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
            values, exact, found = _numeric(series)
            problems += [(p, col.name, m) for p, m in found]
            missing = np.isnan(values)
            if not col.nullable:
                pos = _first(missing & series.isna().to_numpy())
                if pos is not None:
                    problems.append((pos, col.name, "missing value"))
            present = ~missing
            finite = present & np.isfinite(values)
            pos = _first(present & np.isinf(values))
            if pos is not None:
                problems.append((pos, col.name, f"infinite value {format_value(values[pos])}"))
            if col.integral:
                pos = _first(finite & (values != np.round(values)))
                if pos is not None:
                    problems.append((pos, col.name, f"not an integer: {format_value(values[pos])}"))
            if col.minimum is not None:
                pos = _first(present & (values < col.minimum))
                if pos is not None:
                    kind = "negative value" if col.minimum == 0 else "value"
                    problems.append((pos, col.name, f"{kind} {format_value(values[pos])} (must be >= {format_value(col.minimum)})"))
            if col.maximum is not None:
                pos = _first(present & (values > col.maximum))
                if pos is not None:
                    problems.append((pos, col.name, f"value {format_value(values[pos])} out of range (must be <= {format_value(col.maximum)})"))
            if col.integral:
                # Nothing outside int64 may reach the cast, which would silently wrap it to INT64_MIN.
                # (int64 cells parsed exactly fit by construction: their float images may round up to 2**63)
                fits = finite if exact is not None else finite & (values >= -INT64_LIMIT) & (values < INT64_LIMIT)
                pos = _first(finite & ~fits)
                if pos is not None:
                    problems.append((pos, col.name, f"value {format_value(values[pos])} out of range for a 64-bit integer"))
                safe = exact if exact is not None else np.where(fits, values, 0).astype("int64")
                arrays[col.name] = pa.array(safe, type=col.type, mask=missing)
            else:
                arrays[col.name] = pa.array(values, type=col.type, mask=missing)
        elif pa.types.is_boolean(col.type):
            arrays[col.name] = pa.array(series.to_numpy(dtype=object), type=col.type, from_pandas=True)
        else:
            if not col.nullable:
                pos = _first(series.isna().to_numpy())
                if pos is not None:
                    problems.append((pos, col.name, "missing value"))
            arrays[col.name] = pa.array(series.astype(object).where(series.notna(), None).tolist(), type=col.type)
    if schema.sorted_by and schema.sorted_by in arrays and not problems:
        values = arrays[schema.sorted_by].to_numpy(zero_copy_only=False)
        pos = _first(np.diff(values) < 0)
        if pos is not None:
            problems.append(
                (pos + 1, schema.sorted_by, f"not sorted: {format_value(values[pos + 1])} comes after {format_value(values[pos])}")
            )
    if problems:
        pos, column, message = min(problems, key=lambda p: p[0])
        raise ctx.error(message, pos, column)
    names = [c.name for c in schema.columns if c.name in arrays]
    return pa.Table.from_arrays([arrays[n] for n in names], schema=schema.arrow(names, metadata))


# ---------------------------------------------------------------------------- scalar settings
# Every number that enters from a file (TOML settings, JSON bundles, marker lines) passes here,
# so the same rules - type, finiteness, sign, range - and the same one-line message apply.

MAX_TOKENS = 2**31 - 1  # token counts and lengths: far above any context served, far below int64 overflow


def check_number(
    value: object,
    source: str | Path | None,
    key: str,
    *,
    integer: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    line: int | None = None,
) -> float | int:
    """``value`` as a finite int/float within bounds, or an :class:`InputError` naming ``key``.

    Booleans and strings are refused (TOML ``instances = "2"`` or ``true`` is a mistake, not a
    number); an integral float (``2.0``) is accepted where an integer is wanted, ``2.5`` is not.
    """
    def fail(rule: str) -> InputError:
        return InputError(source, f"{rule} (got {_show(value)})", key=key, line=line)

    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise fail("must be an integer" if integer else "must be a number")
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits: TOML and JSON both parse those
        raise fail("out of range") from None
    if not np.isfinite(number):
        raise fail("must be finite")
    if integer:
        if number != np.floor(number):
            raise fail("must be an integer")
        if abs(number) >= 2**63:
            raise fail("out of range")
        number = int(value)
    if minimum is not None and (number <= minimum if exclusive_minimum else number < minimum):
        raise fail(f"must be {'>' if exclusive_minimum else '>='} {_show(minimum)}")
    if maximum is not None and number > maximum:
        raise fail(f"must be <= {_show(maximum)}")
    return number


def _show(value: object) -> str:
    """A value as a person reads it: ``3.5``, not ``np.float64(3.5)``; long strings cut."""
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------- structured files
# TOML tables and JSON objects: every value is read through one accessor that checks its type,
# numbers through check_number, and names the value by its full path (``pool[0].instances``,
# ``models[2].groups[0].coef[3]``), so a hostile or mistyped file fails as one line.

_REQUIRED = object()  # an accessor's default meaning "this key must be there"
MAX_CLOCK_MHZ = 10_000.0  # SM clocks (settings, model groups): today's GPUs run below 2.5 GHz


def _kind(value: object) -> str:
    """What a settings value is, in the file's words (TOML/JSON), for "must be X (got Y)"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table/object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return _show(value)


def read_csv_table(path: str | Path) -> "pd.DataFrame":
    """A CSV file as a pandas frame, or an :class:`InputError` naming the file and why not (missing,
    unreadable, not UTF-8, empty, malformed) - one line, whatever pandas raised."""
    import pandas as pd

    path = Path(path)
    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except UnicodeDecodeError:
        raise InputError(path, "not UTF-8 text") from None
    except pd.errors.EmptyDataError:
        raise InputError(path, "file is empty") from None
    except pd.errors.ParserError as exc:
        raise InputError(path, f"malformed CSV: {' '.join(str(exc).split())}") from None
    except OSError as exc:  # a directory, no permission
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None


def read_text(path: str | Path, max_bytes: int) -> str:
    """The UTF-8 text of a settings file (TOML, JSON) of at most ``max_bytes``, or an InputError
    saying why it cannot be read: missing, a directory, unreadable, too large, not UTF-8, empty."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)  # bounded: a device or a runaway file never hangs the read
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, not a file") from None
    except PermissionError:
        raise InputError(path, "permission denied") from None
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise InputError(path, f"larger than {max_bytes // 2**20} MiB: not a settings file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    if not text.strip():
        raise InputError(path, "empty file")
    return text


def check_text(value: object, source: str | Path | None, key: str) -> str:
    """``value`` as a non-empty string, or an InputError naming ``key``."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(source, f"must be a non-empty string (got {_kind(value)})", key=key)
    return value


def check_choice(value: object, source: str | Path | None, key: str, choices: Collection[str]) -> str:
    """``value`` as one of the strings ``choices``, or an InputError listing them."""
    if not isinstance(value, str) or value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise InputError(source, f"must be one of {listed} (got {_kind(value)})", key=key)
    return value


def check_flag(value: object, source: str | Path | None, key: str) -> bool:
    """``value`` as a boolean (``true``/``false``; not 1, not "yes")."""
    if not isinstance(value, bool):
        raise InputError(source, f"must be true or false (got {_kind(value)})", key=key)
    return value


def check_list(value: object, source: str | Path | None, key: str, *, min_length: int = 0,
               max_length: int | None = None) -> list:
    """``value`` as a list (a JSON array or TOML array; a tuple from code) of bounded length."""
    if not isinstance(value, (list, tuple)):
        raise InputError(source, f"must be a list (got {_kind(value)})", key=key)
    if len(value) < min_length:
        raise InputError(source, f"must have at least {min_length} entr{'y' if min_length == 1 else 'ies'} "
                                 f"(got {len(value)})", key=key)
    if max_length is not None and len(value) > max_length:
        raise InputError(source, f"must have at most {max_length} entries (got {len(value)})", key=key)
    return list(value)


def check_numbers(value: object, source: str | Path | None, key: str, *, min_length: int = 0,
                  max_length: int | None = None, increasing: bool = False, **rules: Any) -> list:
    """A list of numbers, each through :func:`check_number` with ``rules`` (its key ``key[i]``);
    ``increasing``: each strictly above the one before."""
    numbers = [check_number(v, source, f"{key}[{i}]", **rules)
               for i, v in enumerate(check_list(value, source, key, min_length=min_length, max_length=max_length))]
    if increasing:
        for i in range(1, len(numbers)):
            if numbers[i] <= numbers[i - 1]:
                raise InputError(source, f"must be increasing ({_show(numbers[i])} after {_show(numbers[i - 1])})",
                                 key=f"{key}[{i}]")
    return numbers


class Settings:
    """A TOML table or JSON object under validation.

    Each accessor reads one key, checks it and returns it - or ``default`` when the key is absent
    (or null in JSON) and a default is given; without a default the key is required.  Errors name
    the key by its path below ``where`` (``pool[0].instances``).
    """

    def __init__(self, data: object, source: str | Path | None, where: str = "",
                 known: Collection[str] | None = None) -> None:
        if not isinstance(data, dict):
            raise InputError(source, f"must be a table/object (got {_kind(data)})", key=where or None)
        self.data, self.source, self.where = data, source, where
        if known is not None:
            self.reject_unknown(known)

    def path(self, name: str | int) -> str:
        """The full key of ``name`` (a key, or an index into a list) below this table."""
        if isinstance(name, int):
            return f"{self.where}[{name}]"
        return f"{self.where}.{name}" if self.where else name

    def error(self, name: str | None, message: str) -> InputError:
        """An InputError about ``name`` (None: this table as a whole)."""
        return InputError(self.source, message, key=self.path(name) if name is not None else (self.where or None))

    def reject_unknown(self, known: Collection[str]) -> None:
        """Refuse keys outside ``known`` (a misspelt setting is not silently a default)."""
        import difflib

        for name in self.data:
            if name not in known:
                near = difflib.get_close_matches(str(name), list(known), n=1)
                hint = f"did you mean {near[0]}? " if near else ""
                raise InputError(self.source, f"unknown key {self.path(str(name))} ({hint}known: {', '.join(sorted(known))})")

    def has(self, name: str) -> bool:
        """Whether ``name`` is set (present and not null)."""
        return self.data.get(name) is not None

    def _lookup(self, name: str, default: object) -> tuple[bool, object]:
        """(found, value): the value as written, or (False, default) when absent or null and a
        default is given; a required key that is absent fails."""
        value = self.data.get(name)
        if value is None and default is not _REQUIRED:
            return False, default
        if name not in self.data:
            raise self.error(name, "missing (required)")
        return True, value

    def number(self, name: str, default: object = _REQUIRED, **rules: Any):
        """A number through :func:`check_number` (``rules``: integer, minimum, maximum, exclusive_minimum)."""
        found, value = self._lookup(name, default)
        return check_number(value, self.source, self.path(name), **rules) if found else value

    def numbers(self, name: str, default: object = _REQUIRED, **rules: Any) -> list:
        """A list of numbers (see :func:`check_numbers`)."""
        found, value = self._lookup(name, default)
        return check_numbers(value, self.source, self.path(name), **rules) if found else value

    def text(self, name: str, default: object = _REQUIRED) -> str:
        """A non-empty string."""
        found, value = self._lookup(name, default)
        return check_text(value, self.source, self.path(name)) if found else value

    def choice(self, name: str, choices: Collection[str], default: object = _REQUIRED) -> str:
        """One of the strings ``choices``."""
        found, value = self._lookup(name, default)
        return check_choice(value, self.source, self.path(name), choices) if found else value

    def flag(self, name: str, default: object = _REQUIRED) -> bool:
        """A boolean."""
        found, value = self._lookup(name, default)
        return check_flag(value, self.source, self.path(name)) if found else value

    def sequence(self, name: str, default: object = _REQUIRED, **bounds: int | None) -> list:
        """A list of anything (``bounds``: min_length, max_length); its entries are checked by the caller."""
        found, value = self._lookup(name, default)
        return check_list(value, self.source, self.path(name), **bounds) if found else value

    def table(self, name: str, default: object = _REQUIRED, known: Collection[str] | None = None) -> "Settings":
        """A nested table as Settings (absent, with a default: the default as a table)."""
        return Settings(self._lookup(name, default)[1], self.source, self.path(name), known)

    def tables(self, name: str, default: object = _REQUIRED, known: Collection[str] | None = None,
               **bounds: int | None) -> list["Settings"]:
        """A list of tables (TOML ``[[name]]``, a JSON array of objects), each keyed ``name[i]``."""
        key = self.path(name)
        return [Settings(item, self.source, f"{key}[{i}]", known) for i, item in enumerate(self.sequence(name, default, **bounds))]
