"""Check a DataFrame against an artifact schema and turn it into a typed Arrow table.

Every failure is an :class:`~toolkit.errors.InputError` that names the source file, the first
offending row and the column as the *source* spells it (``ContextTokens``, not
``input_tokens``), so the user can go straight to the bad cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    """

    source: str | Path | None
    row_offset: int = 0
    header_lines: int | None = None
    source_columns: dict[str, str] | None = None

    def column(self, name: str) -> str:
        return (self.source_columns or {}).get(name, name)

    def error(self, message: str, position: int | None = None, column: str | None = None) -> InputError:
        row = None if position is None else self.row_offset + int(position) + 1
        line = None if row is None or self.header_lines is None else row + self.header_lines
        return InputError(self.source, message, row=row, column=None if column is None else self.column(column), line=line)


def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def check_columns_present(columns: list[str], schema: ArtifactSchema, ctx: RowContext) -> None:
    missing = [c for c in schema.required_names if c not in columns]
    if missing:
        found = ", ".join(map(str, columns)) or "none"
        raise ctx.error(f"missing required column (found: {found})", column=missing[0])


def _numeric(series: pd.Series, name: str, ctx: RowContext) -> tuple[np.ndarray, list[tuple[int, str]]]:
    problems: list[tuple[int, str]] = []
    values = pd.to_numeric(series, errors="coerce")
    raw_missing = series.isna().to_numpy()
    not_numeric = values.isna().to_numpy() & ~raw_missing
    pos = _first(not_numeric)
    if pos is not None:
        problems.append((pos, f"not a number: {series.iloc[pos]!r}"))
    return values.to_numpy(dtype="float64", na_value=np.nan), problems


def validate_frame(df: pd.DataFrame, schema: ArtifactSchema, ctx: RowContext, metadata: dict[str, str] | None = None) -> pa.Table:
    """Validate ``df`` (canonical column names) and return it as an Arrow table of ``schema``."""
    check_columns_present(list(df.columns), schema, ctx)
    problems: list[tuple[int, str, str]] = []  # (position, column, message)
    arrays: dict[str, pa.Array] = {}
    for col in schema.columns:
        if col.name not in df.columns:
            continue
        series = df[col.name]
        if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
            values, found = _numeric(series, col.name, ctx)
            problems += [(p, col.name, m) for p, m in found]
            missing = np.isnan(values)
            if not col.nullable:
                pos = _first(missing & series.isna().to_numpy())
                if pos is not None:
                    problems.append((pos, col.name, "missing value"))
            present = ~missing
            pos = _first(present & np.isinf(values))
            if pos is not None:
                problems.append((pos, col.name, f"infinite value {values[pos]}"))
            if col.integral:
                pos = _first(present & np.isfinite(values) & (values != np.round(values)))
                if pos is not None:
                    problems.append((pos, col.name, f"not an integer: {values[pos]!r}"))
            if col.minimum is not None:
                pos = _first(present & (values < col.minimum))
                if pos is not None:
                    kind = "negative value" if col.minimum == 0 else "value"
                    problems.append((pos, col.name, f"{kind} {values[pos]:g} (must be >= {col.minimum:g})"))
            if col.integral:
                safe = np.where(present & np.isfinite(values), values, 0).astype("int64")
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
                (pos + 1, schema.sorted_by, f"not sorted: {values[pos + 1]!r} comes after {values[pos]!r}")
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
    number = float(value)
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
