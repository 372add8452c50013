"""Hostile input through the trace readers: every outcome is a correct table or one clear error.

Small valid traces are mutated at random (characters deleted, duplicated or inserted, cells
replaced by huge numbers, NaN, negatives, text, quotes, line breaks inside quotes) and read the
ways the CLI reads them: in memory, streamed in chunks (convert) and in dask blocks (stats), and
through the CLI itself.  An accepted file must give the table a plain csv-module reading of the
same text predicts; a refused one must fail with a WattlasError / one ``Error:`` line.
"""

from __future__ import annotations

import csv
import io
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolkit.cli import cli
from toolkit.errors import WattlasError
from toolkit.traces.formats import MAX_GAP_S, convert_trace_streaming, read_trace
from toolkit.traces.large import summarize_csv_chunked
from toolkit.traces.stats import finalize, summarize_trace
from toolkit.validation import MAX_TOKENS

AZURE = (
    "TIMESTAMP,ContextTokens,GeneratedTokens\n"
    "2023-11-16 18:17:03.9799600,4808,10\n"
    "2023-11-16 18:17:04.0319600,3180,8\n"
    "2023-11-16 18:17:05.0000000,100,1\n"
)
WATTLAS = "arrival_s,input_tokens,output_tokens,priority\n0,10,2,high\n1.5,20,3,low\n2.25,7,1,\n"
VIDUR = "arrived_at,num_prefill_tokens,num_decode_tokens\n1700000000.5,591,140\n1700000000.625,547,248\n"
TOKEN_COLUMNS = {"azure": ("ContextTokens", "GeneratedTokens"), "wattlas": ("input_tokens", "output_tokens"),
                 "vidur": ("num_prefill_tokens", "num_decode_tokens")}

CELLS = st.sampled_from([
    "1e30", "9223372036854775808", "-9223372036854775809", str(MAX_TOKENS), str(MAX_TOKENS + 1), "NaN", "nan",
    "inf", "-1", "-0", "0", "1.5", "1e3", "twelve", "", " ", '"', '""', '"a\nb"', '"1\n"', "0x10", "1_000",
    "2033-11-16 18:17:04", "1500-01-01 00:00:00", "2263-01-01", "now", "today", "2023-11-16T18:17:04+02:00",
    "2023-11-16 18:17:04.123456789", "1700000000", "HIGH", "urgent", "\x00", "\u00e9",
])
INSERTS = st.sampled_from([",", '"', "\n", "\r", "\r\n", " ", "\t", "0", "9", "-", ".", "e", ":", "x", "\x00", "\u00e9", "\ufeff"])


@st.composite
def mutated(draw, base: str) -> bytes:
    """``base`` with a few cells replaced and a few characters deleted, duplicated or inserted."""
    rows = [line.split(",") for line in base.strip("\n").split("\n")]
    for _ in range(draw(st.integers(0, 3))):
        r = draw(st.integers(1, len(rows) - 1))  # data cells: the header gets its share of character edits
        c = draw(st.integers(0, len(rows[r]) - 1))
        rows[r][c] = draw(CELLS)
    text = "\n".join(",".join(row) for row in rows) + "\n"
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["delete", "duplicate", "insert"]))
        i = draw(st.integers(0, max(len(text) - 1, 0)))
        if op == "delete":
            text = text[:i] + text[i + 1:]
        elif op == "duplicate":
            text = text[:i] + text[i:i + 1] + text[i:]
        else:
            text = text[:i] + draw(INSERTS) + text[i:]
    return text.encode("utf-8")


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _reference_rows(data: bytes) -> tuple[list[str], list[list[str]]]:
    """Header and data records as the csv module reads the text (blank lines skipped, as pandas does)."""
    text = data.decode("utf-8-sig")
    records = []
    for fields in csv.reader(io.StringIO(text, newline=""), skipinitialspace=True):
        if fields and not (len(fields) == 1 and not fields[0].strip(" \t")):
            records.append(fields)
    return [f.strip() for f in records[0]], records[1:]


def _check_accepted(table, data: bytes, fmt: str) -> None:
    """An accepted file's table holds what the text says, within every rule of the canonical trace."""
    arrival = table.column("arrival_s").to_numpy()
    assert np.all(np.isfinite(arrival)) and np.all(np.diff(arrival) >= 0) and np.all(arrival >= 0)
    assert np.all(np.diff(arrival) <= MAX_GAP_S)
    if fmt != "wattlas":
        assert arrival[0] == 0.0
    else:
        assert arrival[0] <= MAX_GAP_S
    header, rows = _reference_rows(data)
    assert table.num_rows == len(rows)
    for column, name in zip(TOKEN_COLUMNS[fmt], ("input_tokens", "output_tokens")):
        values = table.column(name).to_pylist()
        index = header.index(column)
        for row, value in zip(rows, values):
            cell = row[index].strip()
            assert NUMBER.fullmatch(cell), f"accepted {cell!r} as a token count"
            assert float(cell) == value and 0 <= value <= MAX_TOKENS
    if fmt == "azure":
        stamps = [row[header.index("TIMESTAMP")].strip() for row in rows]
        assert all(re.match(r"[+-]?\d{4}", s) for s in stamps), stamps


def _outcome(read):
    """('ok', result) or ('error', message); anything but a WattlasError fails the test."""
    try:
        return "ok", read()
    except WattlasError as exc:
        message = str(exc)
        assert "\n" not in message and message.strip(), repr(message)
        return "error", message


# Quoted line breaks that straddle a dask block boundary cannot be split there (documented)
SPLIT_QUOTE = "spans two blocks"
HEADER_LINE = "header alone on the first line"
# A reader in pieces meets a broken CSV structure only when it gets there, after the rows before
# it were checked; a whole-file parse meets it first.  Either way the file is refused.
STRUCTURE = ("fields, but the header has", "unterminated quote", "malformed CSV")


def _same_error(a: str, b: str) -> bool:
    return a == b or any(s in a for s in STRUCTURE) or any(s in b for s in STRUCTURE)


def _check_all_readers(tmp_path, data: bytes, fmt: str, name: str = "t.csv") -> None:
    path = tmp_path / name
    path.write_bytes(data)
    kind, memory = _outcome(lambda: read_trace(path))
    if kind == "ok":
        _check_accepted(memory, data, fmt)
    # dask blocks: one block, then blocks of a few lines
    for blocksize in (1 << 20, 40):
        chunk_kind, chunked = _outcome(lambda: finalize(summarize_csv_chunked(path, blocksize=blocksize)))
        if chunk_kind == "error" and (SPLIT_QUOTE in chunked or HEADER_LINE in chunked):
            continue
        assert chunk_kind == kind, (blocksize, memory, chunked)
        if kind == "ok":
            expected = summarize_trace(memory)
            for key in ("requests", "total_input_tokens", "total_output_tokens", "duration_s"):
                assert chunked[key] == pytest.approx(expected[key]), key
        else:
            assert _same_error(chunked, memory), (chunked, memory)
    # streaming convert, two rows per chunk
    out = tmp_path / "out.parquet"
    stream_kind, streamed = _outcome(lambda: convert_trace_streaming(path, out, chunk_rows=2))
    assert stream_kind == kind, (memory, streamed)
    if kind == "ok":
        columns = ["request_id", "arrival_s", "input_tokens", "output_tokens"]
        assert pq.read_table(out).select(columns).equals(memory.select(columns))
        out.unlink()
    else:
        assert _same_error(streamed, memory), (streamed, memory)
        assert not out.exists()


@SETTINGS
@given(mutated(AZURE))
def test_mutated_azure_csv_is_read_or_refused_clearly(tmp_path_factory, data):
    _check_all_readers(tmp_path_factory.mktemp("az"), data, "azure")


@SETTINGS
@given(mutated(WATTLAS))
def test_mutated_wattlas_csv_is_read_or_refused_clearly(tmp_path_factory, data):
    _check_all_readers(tmp_path_factory.mktemp("wa"), data, "wattlas")


@SETTINGS
@given(mutated(VIDUR))
def test_mutated_vidur_csv_is_read_or_refused_clearly(tmp_path_factory, data):
    _check_all_readers(tmp_path_factory.mktemp("vi"), data, "vidur")


@SETTINGS
@given(st.binary(max_size=300), st.sampled_from(["", AZURE.split("\n")[0] + "\n"]))
def test_random_bytes_are_refused_clearly(tmp_path_factory, data, prefix):
    tmp_path = tmp_path_factory.mktemp("rb")
    path = tmp_path / "r.csv"
    path.write_bytes(prefix.encode() + data)
    for read in (lambda: read_trace(path), lambda: summarize_csv_chunked(path, blocksize=64),
                 lambda: convert_trace_streaming(path, tmp_path / "o.parquet", chunk_rows=2)):
        _outcome(read)  # the header plus random bytes may even form a valid trace; it must not crash


def _cli_one_line(result) -> None:
    assert "Traceback" not in result.output
    if result.exit_code != 0:
        lines = result.output.strip().splitlines()
        assert lines and lines[-1].startswith("Error:"), result.output
        assert len(lines) == 1, result.output


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(mutated(AZURE), mutated(WATTLAS), st.binary(max_size=120)), st.sampled_from(["memory", "chunked"]),
       st.booleans())
def test_cli_reports_one_line_or_succeeds(tmp_path_factory, data, mode, gz):
    import gzip

    tmp_path = tmp_path_factory.mktemp("cli")
    path = tmp_path / ("t.csv.gz" if gz else "t.csv")
    path.write_bytes(gzip.compress(data) if gz else data)
    runner = CliRunner()
    result = runner.invoke(cli, ["trace", "stats", "--mode", mode, "--json", str(path)])
    _cli_one_line(result)
    if result.exit_code == 0:
        import json

        def refuse(constant):
            raise AssertionError(f"{constant} is not JSON")

        json.loads(result.output, parse_constant=refuse)
    result = runner.invoke(cli, ["trace", "convert", "--mode", mode, str(path), str(tmp_path / "o.parquet")])
    _cli_one_line(result)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=200), st.integers(1, 199))
def test_damaged_gzip_is_one_line(tmp_path_factory, junk, cut):
    import gzip

    path = tmp_path_factory.mktemp("gz") / "t.csv.gz"
    packed = gzip.compress(AZURE.encode())
    for data in (packed[:cut], junk, packed[:10] + junk):
        path.write_bytes(data)
        for mode in ("memory", "chunked"):
            result = CliRunner().invoke(cli, ["trace", "stats", "--mode", mode, str(path)])
            _cli_one_line(result)


@st.composite
def quoted_trace(draw):
    """(CSV text with quoted multi-line notes and blank lines, bad row, its first text line)."""
    n = draw(st.integers(1, 8))
    bad = draw(st.integers(1, n))
    text = "arrival_s,input_tokens,output_tokens,note\n"
    line = 2
    for row in range(1, n + 1):
        gap = draw(st.sampled_from(["", "\n", "   \n", "\n\t\n"]))
        text += gap
        line += gap.count("\n")
        if row == bad:
            bad_line = line
        note = draw(st.text(alphabet='ab ,"\n', max_size=12))
        cell = '"' + note.replace('"', '""') + '"'
        text += f"{row},{-5 if row == bad else row},1,{cell}\n"
        line += 1 + note.count("\n")
    return text, bad, bad_line


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(quoted_trace())
def test_errors_name_the_true_text_line(tmp_path_factory, case):
    text, row, line = case
    tmp_path = tmp_path_factory.mktemp("ql")
    path = tmp_path / "q.csv"
    path.write_text(text)
    expected = f"q.csv: row {row} (line {line}): column input_tokens: negative value -5 (must be >= 0)"
    reads = [lambda: read_trace(path), lambda: convert_trace_streaming(path, tmp_path / "o.parquet", chunk_rows=2),
             lambda: summarize_csv_chunked(path, blocksize=1 << 20), lambda: summarize_csv_chunked(path, blocksize=32)]
    for read in reads:
        kind, message = _outcome(read)
        assert kind == "error"
        assert message.endswith(expected) or SPLIT_QUOTE in message, (message, expected)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet='a1, \t\n"\r', max_size=80), st.integers(1, 12))
def test_byte_counted_lines_agree_with_the_csv_scan(tmp_path_factory, text, row):
    import contextlib

    from toolkit.traces.formats import line_locator

    path = tmp_path_factory.mktemp("pl") / "p.csv"
    path.write_text(text, newline="")
    scan = line_locator(lambda: contextlib.nullcontext(io.StringIO(text, newline="")))
    fast = line_locator(lambda: contextlib.nullcontext(io.StringIO(text, newline="")), path)
    assert fast(row) == scan(row)
