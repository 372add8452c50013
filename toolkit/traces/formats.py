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
rules (a cell must start with a four-digit year) at microsecond resolution.  Arrivals become seconds since the first request: wall-clock traces keep their first
timestamp in the table metadata as ``wattlas.trace_start``, Splitwise and Vidur traces (seconds
on any base, epoch seconds included) the first arrival as ``wattlas.arrival_offset_s``.  wattlas
files are already relative to their trace start and are kept as they are (a synthetic trace's
first request may come after second 0).  An optional ``priority`` column (``high``/``low``) is kept.

Input rules beyond the schema (each refusal is one :class:`~toolkit.errors.InputError` naming the
file, row, text line and column):

* token counts are integers in ``[0, MAX_TOKENS]`` (the schema's ``maximum``);
* consecutive requests (and, in wattlas files, the trace start and the first request) are at most
  :data:`MAX_GAP_S` apart - a larger gap is a mistyped year or epoch seconds in a relative column;
* the header ends within the first :data:`HEAD_BYTES` of the (decompressed) file and has at most
  :data:`MAX_COLUMNS` distinct column names; a NUL byte means the file is not a text CSV;
* a row has no more fields than the header (pandas would otherwise shift the columns silently).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import io
import os
import re
import tempfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, ContextManager, Iterator, TextIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import InputError
from ..parquet_io import atomic_write_table
from ..schemas import REQUEST_TRACE
from ..validation import RowContext, format_value, validate_frame

PRIORITIES = ("high", "low")
HEAD_BYTES = 64 * 1024  # the header must end within this many bytes: real headers are < 200 bytes
MAX_COLUMNS = 2048  # traces have a handful of columns; 10**6 of them took 99 s and 2 GB to refuse
MAX_GAP_S = 366 * 86400.0  # more than a (leap) year between two requests is a typo, not a trace
CSV_OPTIONS = dict(dtype=str, keep_default_na=False, na_values=[""], skipinitialspace=True)


@dataclass(frozen=True)
class TraceFormat:
    """A request-trace layout: the source's names for the arrival, input-token and output-token
    columns, and whether arrivals are wall-clock timestamps or seconds."""

    name: str
    arrival: str
    input: str
    output: str
    wall_clock: bool  # arrival column holds timestamps rather than seconds

    @property
    def columns(self) -> tuple[str, str, str]:
        """The source's (arrival, input tokens, output tokens) column names."""
        return (self.arrival, self.input, self.output)

    @property
    def rebased(self) -> bool:
        """Whether arrivals in seconds are shifted so the first request is at 0 (not wattlas files)."""
        return not self.wall_clock and self.name != "wattlas"

    def source_columns(self) -> dict[str, str]:
        """Canonical column name -> the source's name for it, for error messages."""
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
    if len(found) > 200:  # a hostile header must not make a screen-long message
        found = found[:197] + "..."
    raise InputError(
        source,
        f"missing required column for the {closest.name} trace format (expects {', '.join(closest.columns)}; found: {found})",
        column=missing,
    )


# --------------------------------------------------------------------------- bytes and text


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


@contextlib.contextmanager
def decompression_errors(path: str | Path) -> Iterator[None]:
    """Turn gzip failures (not gzip at all, truncated, corrupt) inside the block into one-line InputErrors."""
    try:
        yield
    except gzip.BadGzipFile as exc:
        if str(exc).startswith("Not a gzipped file"):
            raise InputError(path, "not gzip data although the name ends in .gz") from None
        raise InputError(path, f"corrupt gzip data ({exc})") from None
    except EOFError:
        raise InputError(path, "truncated gzip file: the compressed data ends before its end marker") from None
    except zlib.error as exc:
        raise InputError(path, f"corrupt gzip data ({exc})") from None


@contextlib.contextmanager
def open_file_text(path: Path) -> Iterator[TextIO]:
    """The (decompressed) text of a CSV file for the record locators below, bad bytes replaced:
    they only count records and lines, so a bad byte must not stop them."""
    with _open_binary(path) as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="") as text:
        yield text


TextOpener = Callable[[], ContextManager[TextIO]]


def _memory_text(text: str) -> TextOpener:
    return lambda: contextlib.nullcontext(io.StringIO(text, newline=""))


def locate_encoding_error(path: Path, block_size: int = 1 << 24) -> InputError | None:
    """Scan a file in blocks for the first non-UTF-8 byte; None when it is clean UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines_before = 0
    offset = 0
    with decompression_errors(path), _open_binary(path) as handle:
        head = handle.read(2)
        if head in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
            return InputError(path, "file is UTF-16 text; wattlas reads UTF-8 (re-save the file as UTF-8)", line=1)
        handle.seek(0)
        while block := handle.read(block_size):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                line = lines_before + block[: exc.start].count(b"\n") + 1
                record = _find_record(lambda: open_file_text(path), lambda r: r.start <= line <= r.end)
                return InputError(
                    path, f"not UTF-8 text: byte 0x{block[exc.start:exc.start + 1].hex()} at offset {offset + exc.start}",
                    row=record.row if record is not None and record.row else None, line=line,
                )
            lines_before += block.count(b"\n")
            offset += len(block)
    return None


# --------------------------------------------------------------------------- records and lines
# pandas does not say on which text line a row starts.  On the error path only, the text is
# scanned again with the csv module set up like pandas' parser (same quoting, blank lines
# skipped), which does know.


@dataclass(frozen=True)
class _Record:
    index: int  # 0-based record number as pandas' tokenizer counts (header and blank lines included)
    row: int | None  # 0 for the header, the 1-based data row after it, None for a blank line pandas skips
    start: int  # first and last text line (1-based)
    end: int
    fields: list[str]


def _records(handle: TextIO) -> Iterator[_Record]:
    last_line = [""]

    def lines() -> Iterator[str]:
        for line in handle:
            last_line[0] = line
            yield line

    reader = csv.reader(lines(), skipinitialspace=True)
    end, row = 0, -1
    for index, fields in enumerate(reader):
        start, end = end + 1, reader.line_num
        # pandas skips empty and whitespace-only lines, but keeps a quoted empty field ("")
        blank = not fields or (len(fields) == 1 and not fields[0].strip(" \t") and '"' not in last_line[0])
        if not blank:
            row += 1
        yield _Record(index, None if blank else row, start, end, fields)


def _find_record(open_text: TextOpener, wanted: Callable[[_Record], bool]) -> _Record | None:
    """The first record ``wanted`` accepts; None when there is none or the text cannot be scanned."""
    try:
        with open_text() as handle:
            return next((r for r in _records(handle) if wanted(r)), None)
    except (csv.Error, OSError, EOFError, zlib.error):
        return None  # a locator refines a message; it never adds a failure of its own


_BLANK_LINE = re.compile(rb"\n[ \t]*\n")


def _plain_line(path: Path, row: int) -> int | None:
    """Line of data row ``row`` where the text before it is plain - header on line 1, no quote, CR
    or blank line, so that every line is one record: then it is ``row + 1``, found at the speed
    of reading the file.  None where the text is not plain (or ends before the row)."""
    lines, last = 0, b"\n"  # lines ended so far; the byte before the block (a blank first line shows)
    with _open_binary(path) as handle:
        while block := handle.read(1 << 24):
            if b'"' in block or b"\r" in block or _BLANK_LINE.search(last + block):
                return None
            lines += block.count(b"\n")
            if lines > row:  # the line starting data row ``row`` has ended
                return row + 1
            last = block[-1:]
    return None


def line_locator(open_text: TextOpener, path: Path | None = None) -> Callable[[int], int | None]:
    """row -> first text line of that data row, for :class:`RowContext`.

    With ``path``, plain text (the usual trace) is counted by bytes; quoted fields, blank lines
    and CR line ends take a slower scan with the csv module (33 MB/s).
    """

    def locate(row: int) -> int | None:
        try:
            with decompression_errors(path):
                line = _plain_line(path, row) if path is not None else None
        except (InputError, OSError):
            line = None
        if line is not None:
            return line
        record = _find_record(open_text, lambda r: r.row == row)
        return None if record is None else record.start

    return locate


def malformed_error(path: Path, exc: Exception | None, open_text: TextOpener, columns: int) -> InputError:
    """The InputError for a CSV pandas could not split into the header's columns, located by a rescan.

    ``exc`` is pandas' ParserError from a whole-file parse (its record numbers are file-global), or
    None where pandas silently took an extra first field as the index.
    """
    longer = _find_record(open_text, lambda r: bool(r.row) and len(r.fields) > columns)
    if longer is not None:
        return InputError(path, f"{len(longer.fields)} fields, but the header has {columns}", row=longer.row, line=longer.start)
    message = " ".join(str(exc or "").split())
    unterminated = re.search(r"EOF inside string starting at row (\d+)", message)
    if unterminated:
        record = _find_record(open_text, lambda r: r.index == int(unterminated.group(1)))
        if record is not None:
            return InputError(path, "unterminated quote: the quoted field runs to the end of the file",
                              row=record.row or None, line=record.start)
    # pandas' own "line N" counts records, not text lines: leave it out rather than mislead
    message = re.sub(r"^Error tokenizing data\. C error: ", "", message)
    message = re.sub(r"\s+(in|at|starting at) (line|row) \d+", "", message)
    return InputError(path, f"malformed CSV: {message or 'rows do not match the header'}")


@dataclass(frozen=True)
class CsvHeader:
    """The header record of a CSV trace: its column names and the text lines (1-based) it spans."""

    names: list[str]  # stripped column names
    start: int  # first and last text line of the header record
    end: int


def read_header(path: Path) -> CsvHeader:
    """Column names of a CSV trace, from a bounded read of its start.

    Refuses before anything large is read or parsed: binary input (a NUL byte, gzip data under a
    plain name, UTF-16), an empty file, a header that does not end within :data:`HEAD_BYTES`, more
    than :data:`MAX_COLUMNS` columns, and a column name given twice.
    """
    with decompression_errors(path), _open_binary(path) as handle:
        head = handle.read(HEAD_BYTES)
    if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        raise InputError(path, "file is UTF-16 text; wattlas reads UTF-8 (re-save the file as UTF-8)", line=1)
    if head[:2] == b"\x1f\x8b":
        raise InputError(path, "gzip-compressed data: name the file *.gz")
    complete = len(head) < HEAD_BYTES
    _refuse_nul(path, head)
    try:
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(head, final=complete)
    except UnicodeDecodeError:
        raise locate_encoding_error(path) or InputError(path, "not UTF-8 text") from None
    if not text.strip():
        raise InputError(path, "file is empty" if complete else f"no header within the first {HEAD_BYTES // 1024} KiB")
    records = (r for r in _records(io.StringIO(text, newline="")) if r.row is not None)
    header = next(records, None)
    if header is None:
        raise InputError(path, "file is empty")
    if len(header.fields) > MAX_COLUMNS:
        more = "" if complete or next(records, None) is not None else "at least "
        raise InputError(path, f"header has {more}{len(header.fields)} columns (at most {MAX_COLUMNS})", line=header.start)
    if not complete and next(records, None) is None:
        raise InputError(path, f"header line longer than {HEAD_BYTES // 1024} KiB: not a trace CSV", line=header.start)
    names = [field.strip() for field in header.fields]
    seen: set[str] = set()
    for name in names:
        if name and name in seen:
            shown = name if name.isprintable() else format_value(name)  # a quoted line break must not split the message
            raise InputError(path, "column name appears twice in the header", column=shown, line=header.start)
        seen.add(name)
    return CsvHeader(names, header.start, header.end)


def _refuse_nul(path: Path, data: bytes) -> None:
    nul = data.find(b"\0")
    if nul >= 0:
        raise InputError(path, f"not a text CSV: NUL byte at offset {nul}", line=data.count(b"\n", 0, nul) + 1)


def _read_csv(path: Path, fmt: str) -> tuple[pd.DataFrame, Callable[[int], int | None]]:
    header = read_header(path)
    detect_format(header.names, path, fmt)  # refuse a wrong header before reading the whole file
    with decompression_errors(path), _open_binary(path) as handle:
        data = handle.read()
    _refuse_nul(path, data)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # one locator for every read path; re-reading is confined to the error case
        raise locate_encoding_error(path) or InputError(path, "not UTF-8 text") from None
    del data
    open_text = _memory_text(text)
    try:
        frame = pd.read_csv(io.StringIO(text), **CSV_OPTIONS)
    except pd.errors.ParserError as exc:
        raise malformed_error(path, exc, open_text, len(header.names)) from None
    except pd.errors.EmptyDataError:
        raise InputError(path, "file is empty") from None
    if not isinstance(frame.index, pd.RangeIndex):  # rows one field longer than the header
        raise malformed_error(path, None, open_text, len(header.names))
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame, line_locator(open_text, path)


# --------------------------------------------------------------------------- normalization


def _to_datetime(raw: pd.Series) -> pd.Series:
    """ISO 8601 cells -> datetime64[us] (UTC if any cell has an offset), NaT where a cell does not parse."""
    try:
        parsed = pd.to_datetime(raw, format="ISO8601", errors="coerce")
    except (ValueError, TypeError):
        # mixed naive/offset or mixed offsets: one common time zone, UTC
        parsed = pd.to_datetime(raw, format="ISO8601", errors="coerce", utc=True)
    if parsed.dt.tz is not None:
        parsed = parsed.dt.tz_convert("UTC")
    return parsed.dt.floor("us").dt.as_unit("us")


def _parse_wall_clock(raw: pd.Series, ctx: RowContext, column: str) -> tuple[pd.Series, InputError | None]:
    """(timestamps with NaT where a cell is bad, the error for the first bad cell or None).

    Timestamps are read at microseconds (finer digits are dropped; the Azure 2023 files write a
    seventh digit that is always 0), whatever the other cells of a piece look like, so that
    every way of reading a file in pieces gives the same seconds.
    """
    text = raw.astype("string")
    # in Arrow's regex engine: pandas' .str.match runs Python's per cell, a third of the read time
    cells = pa.array(text, type=pa.string(), from_pandas=True)
    looks_iso = pc.match_substring_regex(cells, r"^\s*[+-]?\d{4}").fill_null(False).to_numpy(zero_copy_only=False)
    parsed = _to_datetime(raw)
    if (parsed.isna().to_numpy() & looks_iso).any():
        # Sub-microsecond digits make pandas parse at nanoseconds, which end in 1677 and 2262:
        # without them a mistyped year parses, and the gap rule names it.
        parsed = _to_datetime(text.str.replace(r"(\.\d{6})\d+", r"\1", regex=True))
    bad = parsed.isna().to_numpy() | ~looks_iso
    if not bad.any():
        return parsed, None
    parsed = parsed.where(~bad)
    pos = int(np.flatnonzero(bad)[0])
    value = raw.iloc[pos]
    return parsed, ctx.error("missing value" if pd.isna(value) else f"not a timestamp: {format_value(value)}", pos, column)


def parse_wall_clock(raw: pd.Series, ctx: RowContext, column: str) -> pd.Series:
    """ISO 8601 timestamps -> datetime64[us] (in UTC when any has an offset).

    Values must start with a four-digit year: pandas would otherwise read ``now`` and ``today``
    as the current time.  The first bad cell is an InputError naming its row.
    """
    parsed, error = _parse_wall_clock(raw, ctx, column)
    if error is not None:
        raise error
    return parsed


def _seconds_since(stamps: pd.Series, origin: pd.Timestamp) -> np.ndarray:
    """Seconds from ``origin`` to each stamp (NaN for NaT), exact to the microsecond (+-290,000 years)."""
    if stamps.dt.tz is not None and origin.tzinfo is None:
        origin = origin.tz_localize("UTC")
    elif stamps.dt.tz is None and origin.tzinfo is not None:
        stamps = stamps.dt.tz_localize("UTC")
    delta = stamps.dt.as_unit("us") - origin.as_unit("us")
    return delta.dt.total_seconds().to_numpy(dtype="float64", na_value=np.nan)


def trace_origin(raw: pd.DataFrame, fmt: TraceFormat, ctx: RowContext) -> pd.Timestamp | float | None:
    """What becomes second 0 when a trace is read in pieces: the first request's timestamp
    (wall-clock formats) or arrival (Splitwise, Vidur).  None for wattlas files (already relative)
    and when the first arrival is not a number (validating the first piece then names it)."""
    if raw.empty or not (fmt.wall_clock or fmt.rebased):
        return None
    first = raw[fmt.arrival].iloc[:1]
    if fmt.wall_clock:
        return parse_wall_clock(first, ctx, fmt.arrival).iloc[0]
    value = float(_seconds(first)[0])
    return value if np.isfinite(value) else None


def _seconds(cells: pd.Series) -> np.ndarray:
    """Cells as float seconds, NaN where not a number (validation names those)."""
    return pd.to_numeric(cells, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


Neighbour = tuple[float, object]  # (arrival in seconds as a piece computes it, the cell as the file writes it)


def arrival_at(raw: pd.DataFrame, position: int, fmt: TraceFormat, origin: pd.Timestamp | float | None) -> Neighbour:
    """The arrival of one row of a piece, for checking order across the boundary to the next piece
    (NaN seconds where the cell is bad: that row's own error is reported instead)."""
    cell = raw[fmt.arrival].iloc[position:position + 1]
    if fmt.wall_clock:
        stamps, _ = _parse_wall_clock(cell, RowContext(None), fmt.arrival)
        seconds = _seconds_since(stamps, origin)[0] if origin is not None and stamps.notna().all() else np.nan
    else:
        seconds = _seconds(cell)[0]
    return float(seconds), cell.iloc[0]


def _shown(cell: object) -> str:
    """A cell as the file writes it, on one line and cut to 60 characters."""
    text = " ".join(str(cell).split())
    return text if len(text) <= 60 else text[:57] + "..."


def order_problem(arrival: np.ndarray, labels: pd.Series, ctx: RowContext, before: Neighbour | None,
                   positions: np.ndarray | None = None) -> InputError | None:
    """The first arrival that goes back in time or comes more than MAX_GAP_S after the one before
    it, as an InputError; None if all are in order.

    ``arrival`` holds seconds (NaN for cells that are bad anyway) and ``labels`` the cells as the
    file writes them; ``before`` is the request before the first one (the previous piece's last;
    a None cell stands for the trace start of a wattlas file); ``positions`` maps a sorted
    ``arrival`` back to file positions.
    """
    if not arrival.size:
        return None
    with np.errstate(invalid="ignore"):  # inf - inf: that cell is refused as infinite anyway
        gaps = np.diff(arrival, prepend=before[0] if before is not None else arrival[0])
    hits = np.flatnonzero((gaps < 0) | (gaps > MAX_GAP_S))  # NaN compares False: no false alarms
    if not hits.size:
        return None
    p = int(hits[0])
    at = (lambda i: int(positions[i])) if positions is not None else (lambda i: i)
    this = _shown(labels.iloc[at(p)])
    if p == 0 and before[1] is None:
        return ctx.error(f"first request {this} s after the trace start: more than {MAX_GAP_S / 86400:g} days "
                         "(arrival_s counts seconds since the trace start, not since the epoch)", at(0), "arrival_s")
    previous = _shown(before[1] if p == 0 else labels.iloc[at(p - 1)])
    if gaps[p] < 0:
        return ctx.error(f"not sorted: {this} comes after {previous} (use --allow-unsorted to sort)", at(p), "arrival_s")
    return ctx.error(f"{this} comes {gaps[p] / 86400:,.0f} days after {previous}: more than {MAX_GAP_S / 86400:g} days between "
                     "two requests (a mistyped date?)", at(p), "arrival_s")


def normalize_frame(
    raw: pd.DataFrame, fmt: TraceFormat, ctx: RowContext, origin: pd.Timestamp | None = None, allow_unsorted: bool = False
) -> tuple[pd.DataFrame, dict[str, str], list[InputError]]:
    """Raw rows of ``fmt`` -> canonical columns (not yet validated), trace metadata and the problems found.

    Wall-clock arrivals become seconds since ``origin`` (the file's first timestamp when reading
    in chunks; ``None`` takes this frame's first row, its earliest with ``allow_unsorted``).  A bad
    timestamp or priority is returned, not raised, so that the caller can report whichever
    problem of all comes first in the file.
    """
    meta: dict[str, str] = {"wattlas.trace_format": fmt.name}
    problems: list[InputError] = []
    if fmt.wall_clock:
        stamps, error = _parse_wall_clock(raw[fmt.arrival], ctx, fmt.arrival)
        problems += [error] if error is not None else []
        if origin is None and stamps.notna().any():
            origin = stamps.min() if allow_unsorted else stamps.dropna().iloc[0]
        if origin is not None:
            arrival = _seconds_since(stamps, origin)
            meta["wattlas.trace_start"] = origin.isoformat()
        else:
            arrival = np.full(len(raw), np.nan)
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
            problems.append(ctx.error(f"unknown priority {format_value(raw['priority'].iloc[pos])} (expected high or low)", pos, "priority"))
        out["priority"] = prio.where(~bad).to_numpy(dtype=object, na_value=None)
    return out, meta, problems


def to_trace_table(
    raw: pd.DataFrame, fmt: TraceFormat, ctx: RowContext, origin: pd.Timestamp | float | None = None,
    allow_unsorted: bool = False, extra_metadata: dict[str, str] | None = None, first_piece: bool = True,
    previous: Neighbour | None = None,
) -> pa.Table:
    """Validate raw rows of ``fmt`` into a canonical ``request_trace`` table; the first problem in the file is raised.

    ``origin`` (see :func:`trace_origin`) becomes second 0; None takes this frame's first request.
    For a file read in pieces, ``first_piece`` is False after the first (only the first holds the
    first request, whose distance from the trace start is checked in wattlas files) and
    ``previous`` is the request before this piece where it is known (see :func:`arrival_at`).
    """
    frame, meta, problems = normalize_frame(raw, fmt, ctx, origin if fmt.wall_clock else None, allow_unsorted)
    meta.update(extra_metadata or {})
    arrival = _seconds(frame["arrival_s"])
    if previous is None and fmt.name == "wattlas" and first_piece:
        previous = (0.0, None)
    labels = raw[fmt.arrival]
    if not allow_unsorted:
        # first in the list: on a tie it wins, as it does at the block boundaries of chunked reads
        problems.insert(0, order_problem(arrival, labels, ctx, previous))
    try:
        # sorted_by is checked above with the file's own spelling of the arrivals
        table = validate_frame(frame, _unsorted_schema(), ctx, meta)
    except InputError as err:
        problems.append(err)
    raise_first(problems)
    if allow_unsorted:
        order = np.argsort(arrival, kind="stable")
        table, arrival = table.take(order), arrival[order]
        raise_first([order_problem(arrival, labels, ctx, previous, positions=order)])
    if fmt.rebased and len(arrival):
        shift = float(arrival[0]) if origin is None else float(origin)
        index = table.schema.get_field_index("arrival_s")
        table = table.set_column(index, table.schema.field(index), pa.array(arrival - shift))
        table = table.replace_schema_metadata({**table.schema.metadata, b"wattlas.arrival_offset_s": repr(shift).encode()})
    return table


def raise_first(problems: list[InputError | None]) -> None:
    """Raise the problem of the earliest row (whole-file problems first); on a tie the one listed first."""
    first = min((p for p in problems if p is not None), key=lambda p: p.row or 0, default=None)
    if first is not None:
        raise first


def _unsorted_schema():
    return replace(REQUEST_TRACE, sorted_by=None)


# --------------------------------------------------------------------------- public readers


def read_raw(path: str | Path, fmt: str = "auto") -> tuple[pd.DataFrame, Callable[[int], int | None] | None, dict[str, str]]:
    """Rows of a trace file as strings/values, a row -> text line locator (None for Parquet) and its metadata.

    A CSV's header must hold the columns of ``fmt`` (any known format for ``auto``).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir() or path.suffix == ".parquet":
        try:
            table = pq.read_table(path)
            frame = table.to_pandas()
        except (pa.ArrowException, OSError) as exc:
            raise InputError(path, f"not a readable Parquet file ({' '.join(str(exc).split())[:200]})") from None
        if len(set(table.column_names)) != len(table.column_names):
            twice = next(c for c in table.column_names if table.column_names.count(c) > 1)
            raise InputError(path, "column name appears twice", column=twice)
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items() if k.startswith(b"wattlas.")}
        if table.num_rows == 0:
            raise InputError(path, "file has no data rows")
        return frame, None, meta
    raw, locate = _read_csv(path, fmt)
    if raw.empty:
        raise InputError(path, "file has a header but no data rows")
    return raw, locate, {}


def read_trace(path: str | Path, fmt: str = "auto", allow_unsorted: bool = False) -> pa.Table:
    """Read and validate a whole trace file into a ``request_trace`` Arrow table."""
    raw, locate, meta = read_raw(path, fmt)
    trace_format = detect_format(list(raw.columns), path, fmt)
    ctx = RowContext(path, 0, None if locate is None else 1, trace_format.source_columns(), locate_line=locate)
    meta.pop("wattlas.schema", None)
    meta.pop("wattlas.schema_version", None)
    return to_trace_table(raw, trace_format, ctx, None, allow_unsorted, extra_metadata={**meta, "wattlas.source": Path(path).name})


def check_csv_source(path: str | Path) -> Path:
    """``path`` as a Path if it names a readable file, an InputError otherwise."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if not path.is_file():
        raise InputError(path, "not a file")
    return path


def iter_csv_chunks(path: str | Path, fmt: str = "auto", chunk_rows: int = 1_000_000) -> Iterator[tuple[pd.DataFrame, RowContext, TraceFormat]]:
    """Stream a large CSV trace in chunks with row offsets, so memory stays bounded."""
    path = check_csv_source(path)
    header = read_header(path)
    trace_format = detect_format(header.names, path, fmt)
    open_text = lambda: open_file_text(path)  # noqa: E731 - rescanned on the error path only
    locate = line_locator(open_text, path)
    offset = 0
    try:
        with decompression_errors(path), pd.read_csv(path, chunksize=chunk_rows, encoding="utf-8-sig", **CSV_OPTIONS) as reader:
            for chunk in reader:
                if not isinstance(chunk.index, pd.RangeIndex):  # rows one field longer than the header
                    raise malformed_error(path, None, open_text, len(header.names))
                chunk.columns = [str(c).strip() for c in chunk.columns]
                yield chunk, RowContext(path, offset, 1, trace_format.source_columns(), locate_line=locate), trace_format
                offset += len(chunk)
    except UnicodeDecodeError:
        raise locate_encoding_error(path) or InputError(path, "not UTF-8 text") from None
    except pd.errors.EmptyDataError:
        raise InputError(path, "file is empty") from None
    except pd.errors.ParserError as exc:
        raise malformed_error(path, exc, open_text, len(header.names)) from None
    if offset == 0:
        raise InputError(path, "file has a header but no data rows")


def streaming_parquet(path: str | Path) -> pq.ParquetFile:
    """A Parquet file to read a batch at a time in bounded memory: without pre-buffering, which
    keeps what it read (a 5 M-row file read batch by batch grew the process by 0.5 GB)."""
    return pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)


def iter_trace(path: str | Path, fmt: str = "auto", chunk_rows: int = 1_000_000) -> Iterator[tuple[pa.Table, int]]:
    """Read a trace of any size in validated pieces: (``request_trace`` table, rows before it).

    A Parquet file is read a batch of ``chunk_rows`` rows at a time, a CSV in chunks of as many;
    each piece is checked as :func:`read_trace` checks a whole file (order across the boundary to
    the previous piece included), so the first bad row is named with its file row, and everything
    before it has already been yielded.
    """
    path = Path(path)
    if path.suffix != ".parquet":
        origin = previous = None
        for chunk, ctx, trace_format in iter_csv_chunks(path, fmt, chunk_rows):
            first = ctx.row_offset == 0
            if first:
                origin = trace_origin(chunk, trace_format, ctx)
            table = to_trace_table(chunk, trace_format, ctx, origin, extra_metadata={"wattlas.source": path.name},
                                   first_piece=first, previous=previous)
            if len(chunk):
                previous = arrival_at(chunk, len(chunk) - 1, trace_format, origin)
            yield table, ctx.row_offset
        return
    if not path.exists():
        raise InputError(path, "no such file")
    try:
        parquet = streaming_parquet(path)
        names = parquet.schema_arrow.names
    except (pa.ArrowException, OSError) as exc:
        raise InputError(path, f"not a readable Parquet file ({' '.join(str(exc).split())[:200]})") from None
    if parquet.metadata.num_rows == 0:
        raise InputError(path, "file has no data rows")
    trace_format = detect_format(names, path, fmt)
    meta = {k.decode(): v.decode() for k, v in (parquet.schema_arrow.metadata or {}).items()
            if k.startswith(b"wattlas.") and k not in (b"wattlas.schema", b"wattlas.schema_version")}
    origin = previous = None
    offset = 0
    try:
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            chunk = batch.to_pandas()
            ctx = RowContext(path, offset, None, trace_format.source_columns())
            if offset == 0:
                origin = trace_origin(chunk, trace_format, ctx)
            table = to_trace_table(chunk, trace_format, ctx, origin, extra_metadata={**meta, "wattlas.source": path.name},
                                   first_piece=offset == 0, previous=previous)
            previous = arrival_at(chunk, len(chunk) - 1, trace_format, origin)
            yield table, offset
            offset += len(chunk)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(path, f"not a readable Parquet file ({' '.join(str(exc).split())[:200]})", row=offset + 1) from None


@contextlib.contextmanager
def writing(dst: Path) -> Iterator[None]:
    """Report a failure to write ``dst`` (read-only or missing directory, full disk) as one line naming it."""
    try:
        yield
    except (FileExistsError, NotADirectoryError):
        # mkdir's own word ("File exists") would not tell which part of the path is wrong
        raise InputError(dst, "cannot write the output: a part of its directory path is a file, not a directory") from None
    except OSError as exc:
        raise InputError(dst, f"cannot write the output: {exc.strerror or ' '.join(str(exc).split())}") from None


def convert_trace_streaming(src: str | Path, dst: str | Path, fmt: str = "auto", chunk_rows: int = 1_000_000,
                            select: Callable[[pa.Table], tuple[pa.Table, bool]] | None = None) -> int:
    """Convert a CSV trace of any size to a canonical Parquet file in bounded memory; returns rows written.

    Chunks are validated as they stream; the output appears (atomically) only once every row passed.
    ``select`` (e.g. :func:`toolkit.traces.week.subset_selector`) maps each validated chunk, in file
    order, to (the rows to write, whether to stop reading after it).
    """
    src, dst = check_csv_source(src), Path(dst)
    with writing(dst):
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=dst.name + ".tmp-", dir=dst.parent)
        os.close(fd)
    writer = None
    rows = 0
    try:
        for table, _ in iter_trace(src, fmt, chunk_rows):
            table, stop = select(table) if select is not None else (table, False)
            with writing(dst):
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
                writer.write_table(table.cast(writer.schema))
            rows += table.num_rows
            if stop:
                break
        with writing(dst):
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
    with writing(path):
        if path.suffix == ".csv":
            import pyarrow.csv as pacsv

            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
            try:
                pacsv.write_csv(table, tmp)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            return path
        return atomic_write_table(table, path)
