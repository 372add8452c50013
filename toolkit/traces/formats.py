"""Read request traces of the public formats into the canonical ``request_trace`` table.

Supported inputs, detected from the header (or named with ``fmt``):

========== ======================= ================== =================== =========================
format     arrival column           input tokens       output tokens       arrival meaning
========== ======================= ================== =================== =========================
azure      TIMESTAMP                ContextTokens      GeneratedTokens     wall-clock timestamp
splitwise  arrival_timestamp        prompt_size        token_size          seconds
vidur      arrived_at               num_prefill_tokens num_decode_tokens   seconds
wattlas    arrival_s                input_tokens       output_tokens       seconds since start
========== ======================= ================== =================== =========================

Azure 2023 files have naive timestamps at 100 ns resolution; the 2024 week-long files have
UTC-offset timestamps whose fractional part is omitted on whole seconds.  Both parse with ISO 8601
rules.  Wall-clock traces become seconds since their first request, the first timestamp kept in the
table metadata as ``wattlas.trace_start``.  An optional ``priority`` column (``high``/``low``) is kept.
"""

from __future__ import annotations

import codecs
import gzip
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError
from ..parquet_io import atomic_write_table
from ..schemas import REQUEST_TRACE
from ..validation import RowContext, validate_frame

PRIORITIES = ("high", "low")


@dataclass(frozen=True)
class TraceFormat:
    name: str
    arrival: str
    input: str
    output: str
    wall_clock: bool  # arrival column holds timestamps rather than seconds

    @property
    def columns(self) -> tuple[str, str, str]:
        return (self.arrival, self.input, self.output)

    def source_columns(self) -> dict[str, str]:
        return {"arrival_s": self.arrival, "input_tokens": self.input, "output_tokens": self.output}


FORMATS: dict[str, TraceFormat] = {
    f.name: f
    for f in (
        TraceFormat("azure", "TIMESTAMP", "ContextTokens", "GeneratedTokens", wall_clock=True),
        TraceFormat("splitwise", "arrival_timestamp", "prompt_size", "token_size", wall_clock=False),
        TraceFormat("vidur", "arrived_at", "num_prefill_tokens", "num_decode_tokens", wall_clock=False),
        TraceFormat("wattlas", "arrival_s", "input_tokens", "output_tokens", wall_clock=False),
    )
}


def detect_format(columns: list[str], source: str | Path | None, fmt: str = "auto") -> TraceFormat:
    """The format whose columns the header holds; a missing-column error against the closest one otherwise."""
    if fmt != "auto":
        if fmt not in FORMATS:
            raise InputError(source, f"unknown trace format {fmt!r} (known: {', '.join(FORMATS)})")
        candidates = [FORMATS[fmt]]
    else:
        candidates = list(FORMATS.values())
    present = set(columns)
    for candidate in candidates:
        if present.issuperset(candidate.columns):
            return candidate
    closest = max(candidates, key=lambda f: len(present & set(f.columns)))
    missing = next(c for c in closest.columns if c not in present)
    found = ", ".join(map(str, columns)) or "none"
    raise InputError(
        source,
        f"missing required column for the {closest.name} trace format (expects {', '.join(closest.columns)}; found: {found})",
        column=missing,
    )


# --------------------------------------------------------------------------- text decoding


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def locate_encoding_error(path: Path, block_size: int = 1 << 24) -> InputError | None:
    """Scan a file in blocks for the first non-UTF-8 byte; None when it is clean UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines_before = 0
    offset = 0
    with _open_binary(path) as handle:
        head = handle.read(2)
        if head in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
            return InputError(path, "file is UTF-16 text; wattlas reads UTF-8 (re-save the file as UTF-8)", line=1)
        handle.seek(0)
        while block := handle.read(block_size):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                line = lines_before + block[: exc.start].count(b"\n") + 1
                return InputError(
                    path, f"not UTF-8 text: byte 0x{block[exc.start:exc.start + 1].hex()} at offset {offset + exc.start}",
                    row=line - 1 if line > 1 else None, line=line,
                )
            lines_before += block.count(b"\n")
            offset += len(block)
    return None


def _read_csv_text(path: Path) -> str:
    with _open_binary(path) as handle:
        data = handle.read()
    if not data.strip():
        raise InputError(path, "file is empty")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # one locator for every read path; re-reading is confined to the error case
        raise locate_encoding_error(path) or InputError(path, "not UTF-8 text") from None


def _read_csv(path: Path) -> pd.DataFrame:
    text = _read_csv_text(path)
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""], skipinitialspace=True)
    except pd.errors.ParserError as exc:
        raise InputError(path, f"malformed CSV: {exc}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


# --------------------------------------------------------------------------- normalization


def parse_wall_clock(raw: pd.Series, ctx: RowContext, column: str) -> pd.Series:
    """ISO 8601 timestamps -> datetime64[ns]; mixed naive/offset files are read as UTC."""
    try:
        parsed = pd.to_datetime(raw, format="ISO8601", errors="coerce")
    except (ValueError, TypeError):
        parsed = pd.to_datetime(raw, format="ISO8601", errors="coerce", utc=True)
    bad = parsed.isna().to_numpy()
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        value = raw.iloc[pos]
        raise ctx.error("missing value" if pd.isna(value) else f"not a timestamp: {value!r}", pos, column)
    if parsed.dt.tz is not None:
        parsed = parsed.dt.tz_convert("UTC")
    return parsed.dt.as_unit("ns")


def first_timestamp(raw: pd.Series, ctx: RowContext, column: str) -> pd.Timestamp:
    return parse_wall_clock(raw.iloc[:1], ctx, column).iloc[0]


def normalize_frame(
    raw: pd.DataFrame, fmt: TraceFormat, ctx: RowContext, origin: pd.Timestamp | None = None, allow_unsorted: bool = False
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Raw rows of ``fmt`` -> canonical columns (not yet validated) and trace metadata.

    ``origin`` is the wall-clock time that becomes second 0 (the file's first timestamp when
    reading in chunks); ``None`` takes this frame's first row.
    """
    meta: dict[str, str] = {"wattlas.trace_format": fmt.name}
    if fmt.wall_clock:
        stamps = parse_wall_clock(raw[fmt.arrival], ctx, fmt.arrival)
        if origin is None:
            origin = stamps.iloc[0] if len(stamps) else None
        if origin is not None:
            if origin.tzinfo is None and stamps.dt.tz is not None:
                origin = origin.tz_localize("UTC")
            arrival = (stamps - origin).dt.total_seconds().to_numpy()
            meta["wattlas.trace_start"] = origin.isoformat()
        else:
            arrival = np.empty(0)
        if not allow_unsorted:
            pos = np.flatnonzero(np.diff(arrival) < 0)
            if pos.size:
                p = int(pos[0]) + 1
                raise ctx.error(
                    f"timestamps not sorted: {raw[fmt.arrival].iloc[p]} comes after {raw[fmt.arrival].iloc[p - 1]} (use --allow-unsorted to sort)",
                    p, fmt.arrival,
                )
    else:
        arrival = raw[fmt.arrival]
    # wattlas files keep their ids; every other format's id is the row's position in the file
    keeps_ids = fmt.name == "wattlas" and "request_id" in raw.columns
    out = pd.DataFrame(
        {
            "request_id": raw["request_id"] if keeps_ids else np.arange(ctx.row_offset, ctx.row_offset + len(raw), dtype="int64"),
            "arrival_s": arrival,
            "input_tokens": raw[fmt.input],
            "output_tokens": raw[fmt.output],
        }
    )
    if "priority" in raw.columns:
        prio = raw["priority"].astype("string").str.strip().str.lower()
        bad = ~prio.isin(PRIORITIES) & prio.notna()
        if bad.any():
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            raise ctx.error(f"unknown priority {raw['priority'].iloc[pos]!r} (expected high or low)", pos, "priority")
        out["priority"] = prio.to_numpy(dtype=object, na_value=None)
    return out, meta


def to_trace_table(
    raw: pd.DataFrame, fmt: TraceFormat, ctx: RowContext, origin: pd.Timestamp | None = None,
    allow_unsorted: bool = False, extra_metadata: dict[str, str] | None = None,
) -> pa.Table:
    frame, meta = normalize_frame(raw, fmt, ctx, origin, allow_unsorted)
    meta.update(extra_metadata or {})
    if allow_unsorted:
        # Validate before sorting so error rows still point into the file as written.
        validate_frame(frame, _unsorted_schema(), ctx)
        frame = frame.assign(arrival_s=pd.to_numeric(frame["arrival_s"])).sort_values("arrival_s", kind="stable")
        ctx = RowContext(ctx.source, ctx.row_offset, None, ctx.source_columns)
    return validate_frame(frame.reset_index(drop=True), REQUEST_TRACE, ctx, meta)


def _unsorted_schema():
    from dataclasses import replace

    return replace(REQUEST_TRACE, sorted_by=None)


# --------------------------------------------------------------------------- public readers


def read_raw(path: str | Path) -> tuple[pd.DataFrame, int | None, dict[str, str]]:
    """Rows of a trace file as strings/values, the header line count (None for Parquet) and its metadata."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir() or path.suffix == ".parquet":
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(path, f"not a readable Parquet file ({exc})") from None
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items() if k.startswith(b"wattlas.")}
        if table.num_rows == 0:
            raise InputError(path, "file has no data rows")
        return table.to_pandas(), None, meta
    raw = _read_csv(path)
    if raw.empty:
        raise InputError(path, "file has a header but no data rows")
    return raw, 1, {}


def read_trace(path: str | Path, fmt: str = "auto", allow_unsorted: bool = False) -> pa.Table:
    """Read and validate a whole trace file into a ``request_trace`` Arrow table."""
    raw, header_lines, meta = read_raw(path)
    trace_format = detect_format(list(raw.columns), path, fmt)
    ctx = RowContext(path, 0, header_lines, trace_format.source_columns())
    origin = pd.Timestamp(meta["wattlas.trace_start"]) if trace_format.name == "wattlas" and "wattlas.trace_start" in meta else None
    meta.pop("wattlas.schema", None)
    meta.pop("wattlas.schema_version", None)
    return to_trace_table(raw, trace_format, ctx, origin, allow_unsorted, extra_metadata={**meta, "wattlas.source": Path(path).name})


def iter_csv_chunks(path: str | Path, fmt: str = "auto", chunk_rows: int = 1_000_000) -> Iterator[tuple[pd.DataFrame, RowContext, TraceFormat]]:
    """Stream a large CSV trace in chunks with row offsets, so memory stays bounded."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty")
    offset = 0
    try:
        reader = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], chunksize=chunk_rows,
                             encoding="utf-8-sig", skipinitialspace=True)
        trace_format = None
        for chunk in reader:
            chunk.columns = [str(c).strip() for c in chunk.columns]
            if trace_format is None:
                trace_format = detect_format(list(chunk.columns), path, fmt)
            yield chunk, RowContext(path, offset, 1, trace_format.source_columns()), trace_format
            offset += len(chunk)
    except UnicodeDecodeError:
        raise locate_encoding_error(path) or InputError(path, "not UTF-8 text") from None
    except pd.errors.EmptyDataError:
        raise InputError(path, "file is empty") from None
    except pd.errors.ParserError as exc:
        raise InputError(path, f"malformed CSV: {exc}") from None
    if offset == 0:
        raise InputError(path, "file has a header but no data rows")


def convert_trace_streaming(src: str | Path, dst: str | Path, fmt: str = "auto", chunk_rows: int = 1_000_000) -> int:
    """Convert a CSV trace of any size to a canonical Parquet file in bounded memory; returns rows written.

    Chunks are validated as they stream; the output appears (atomically) only once every row passed.
    """
    import os
    import tempfile

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dst.name + ".tmp-", dir=dst.parent)
    os.close(fd)
    writer = None
    origin = None
    previous_last = None
    rows = 0
    try:
        for chunk, ctx, trace_format in iter_csv_chunks(src, fmt, chunk_rows):
            if trace_format.wall_clock and origin is None:
                origin = first_timestamp(chunk[trace_format.arrival], ctx, trace_format.arrival)
            table = to_trace_table(chunk, trace_format, ctx, origin, extra_metadata={"wattlas.source": Path(src).name})
            arrivals = table.column("arrival_s")
            if previous_last is not None and len(arrivals) and arrivals[0].as_py() < previous_last:
                raise ctx.error("not sorted: arrival goes back in time at a chunk boundary", 0, "arrival_s")
            previous_last = arrivals[-1].as_py() if len(arrivals) else previous_last
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
            writer.write_table(table.cast(writer.schema))
            rows += table.num_rows
        writer.close()
        writer = None
        os.replace(tmp, dst)
    finally:
        if writer is not None:
            writer.close()
        Path(tmp).unlink(missing_ok=True)
    return rows


def write_trace(table: pa.Table, path: str | Path) -> Path:
    """Write a canonical trace (Parquet, or CSV in the wattlas format when the suffix is .csv)."""
    path = Path(path)
    if path.suffix == ".csv":
        import os

        import pyarrow.csv as pacsv

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        pacsv.write_csv(table, tmp)
        os.replace(tmp, path)
        return path
    return atomic_write_table(table, path)
