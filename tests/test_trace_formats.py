import gzip
import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from toolkit.errors import InputError
from toolkit.parquet_io import artifact_metadata
from toolkit.schemas import REQUEST_TRACE, ArtifactSchema, Column
from toolkit.traces.formats import MAX_COLUMNS, convert_trace_streaming, read_trace, write_trace
from toolkit.traces.large import summarize_csv_chunked
from toolkit.validation import MAX_TOKENS, RowContext, validate_frame

AZURE_2023 = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:17:03.9799600,4808,10
2023-11-16 18:17:04.0319600,3180,8
2023-11-16 18:17:05.0000000,100,1
"""

# 2024 week-long files: UTC offsets, fractional part dropped on whole seconds.
AZURE_2024 = """TIMESTAMP,ContextTokens,GeneratedTokens
2024-05-10 00:00:00.009930+00:00,2162,5
2024-05-10 00:00:01+00:00,2399,6
2024-05-10 00:00:01.500000+00:00,76,15
"""


def test_azure_2023_naive_timestamps_become_seconds_since_start(write_text):
    table = read_trace(write_text("a.csv", AZURE_2023))
    assert table.column("arrival_s").to_pylist() == pytest.approx([0.0, 0.052, 1.02004])
    assert table.column("input_tokens").to_pylist() == [4808, 3180, 100]
    assert table.column("request_id").to_pylist() == [0, 1, 2]
    meta = artifact_metadata(table.schema)
    assert meta["wattlas.trace_start"] == "2023-11-16T18:17:03.979960"
    assert meta["wattlas.trace_format"] == "azure"
    assert meta["wattlas.schema"] == "request_trace"


def test_azure_2024_mixed_fraction_utc_timestamps(write_text):
    table = read_trace(write_text("b.csv", AZURE_2024))
    assert table.column("arrival_s").to_pylist() == pytest.approx([0.0, 0.99007, 1.49007])
    assert artifact_metadata(table.schema)["wattlas.trace_start"].endswith("+00:00")


@pytest.mark.parametrize(
    "header,fmt",
    [
        ("request_id,request_type,application_id,arrival_timestamp,batch_size,prompt_size,token_size", "splitwise"),
        ("arrived_at,num_prefill_tokens,num_decode_tokens", "vidur"),
    ],
)
def test_relative_time_formats(write_text, header, fmt):
    if fmt == "splitwise":
        body = "0,2,0,1,1,4096,32\n1,2,0,3,1,2048,8\n"
    else:
        body = "0.0,591,140\n0.125,547,248\n"
    table = read_trace(write_text("t.csv", header + "\n" + body))
    assert artifact_metadata(table.schema)["wattlas.trace_format"] == fmt
    assert table.num_rows == 2
    assert table.column("input_tokens").to_pylist()[0] in (4096, 591)


def test_parquet_round_trip_keeps_priority_and_start(write_text, tmp_path):
    src = write_text("w.csv", "arrival_s,input_tokens,output_tokens,priority\n0,10,2,HIGH\n1.5,20,3,low\n")
    table = read_trace(src)
    out = write_trace(table, tmp_path / "w.parquet")
    again = read_trace(out)
    assert again.column("priority").to_pylist() == ["high", "low"]
    assert again.column("arrival_s").to_pylist() == [0.0, 1.5]
    assert pq.read_schema(out).metadata[b"wattlas.schema"] == b"request_trace"


def test_explicit_format_mismatch_names_missing_column(write_text):
    with pytest.raises(InputError) as err:
        read_trace(write_text("a.csv", AZURE_2023), fmt="vidur")
    assert "column arrived_at" in str(err.value)


def test_allow_unsorted_sorts_instead_of_failing(write_text):
    text = "arrived_at,num_prefill_tokens,num_decode_tokens\n2.0,1,1\n1.0,2,2\n"
    table = read_trace(write_text("u.csv", text), allow_unsorted=True)
    assert table.column("arrival_s").to_pylist() == [0.0, 1.0]  # rebased to the earliest request
    assert table.column("request_id").to_pylist() == [1, 0]  # ids still point at source rows
    assert artifact_metadata(table.schema)["wattlas.arrival_offset_s"] == "1.0"


def test_gzip_csv(tmp_path):
    import gzip

    path = tmp_path / "t.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(AZURE_2023)
    assert read_trace(path).num_rows == 3


# --------------------------------------------------------------------------- hostile input (issue #12)

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def _errors_of_every_reader(path, tmp_path) -> list[str]:
    """The error each read path gives: in memory, streamed (convert), dask blocks (stats)."""
    messages = []
    for read in (lambda: read_trace(path), lambda: convert_trace_streaming(path, tmp_path / "o.parquet", chunk_rows=1),
                 lambda: summarize_csv_chunked(path, blocksize=1 << 20), lambda: summarize_csv_chunked(path, blocksize=50)):
        with pytest.raises(InputError) as err:
            read()
        messages.append(str(err.value))
    assert not (tmp_path / "o.parquet").exists()
    return messages


def test_token_bound_is_the_validation_constant():
    assert REQUEST_TRACE.by_name["input_tokens"].maximum == MAX_TOKENS
    assert REQUEST_TRACE.by_name["output_tokens"].maximum == MAX_TOKENS


@pytest.mark.parametrize("value,shown", [("1e30", "1e+30"), ("9223372036854775808", "9.223372036854776e+18"),
                                         (str(MAX_TOKENS + 1), str(MAX_TOKENS + 1))])
def test_token_counts_above_max_tokens_are_refused(write_text, tmp_path, value, shown):
    path = write_text("big.csv", HEADER + "2023-11-16 18:17:03,4808,10\n" + f"2023-11-16 18:17:04,{value},10\n")
    for message in _errors_of_every_reader(path, tmp_path):
        assert message.endswith(f"big.csv: row 2 (line 3): column ContextTokens: value {shown} out of range (must be <= {MAX_TOKENS})")


def test_max_tokens_itself_is_accepted(write_text):
    table = read_trace(write_text("m.csv", HEADER + f"2023-11-16 18:17:03,{MAX_TOKENS},{MAX_TOKENS}\n"))
    assert table.column("input_tokens").to_pylist() == [MAX_TOKENS]


def test_integral_columns_never_wrap_at_the_int64_cast():
    schema = ArtifactSchema("t", 1, (Column("n", pa.int64(), integral=True),))
    with pytest.raises(InputError) as err:
        validate_frame(pd.DataFrame({"n": ["1", "1e19"]}), schema, RowContext("f.csv", 0, 1))
    assert str(err.value) == "f.csv: row 2 (line 3): column n: value 1e+19 out of range for a 64-bit integer"
    big = validate_frame(pd.DataFrame({"n": ["9223372036854775807", "1234567890123456789"]}), schema, RowContext("f.csv"))
    assert big.column("n").to_pylist() == [2**63 - 1, 1234567890123456789]  # exact, not via float


def test_messages_print_plain_numbers():
    schema = ArtifactSchema("t", 1, (Column("n", pa.int64(), integral=True, minimum=0),))
    with pytest.raises(InputError) as err:
        validate_frame(pd.DataFrame({"n": [3.5]}), schema, RowContext("f.csv"))
    assert str(err.value) == "f.csv: row 1: column n: not an integer: 3.5"


def test_wattlas_request_ids_keep_all_64_bits(write_text):
    table = read_trace(write_text("w.csv", "request_id,arrival_s,input_tokens,output_tokens\n1234567890123456789,0,1,1\n"))
    assert table.column("request_id").to_pylist() == [1234567890123456789]


SPLITWISE_EPOCH = ("request_id,request_type,application_id,arrival_timestamp,batch_size,prompt_size,token_size\n"
                   "0,2,0,1700000000.25,1,4096,32\n1,2,0,1700000003,1,2048,8\n2,2,0,1700000003.5,1,10,1\n")


def test_epoch_seconds_become_seconds_since_first_request(write_text, tmp_path):
    path = write_text("sw.csv", SPLITWISE_EPOCH)
    table = read_trace(path)
    assert table.column("arrival_s").to_pylist() == [0.0, 2.75, 3.25]
    assert artifact_metadata(table.schema)["wattlas.arrival_offset_s"] == "1700000000.25"
    streamed = tmp_path / "s.parquet"
    convert_trace_streaming(path, streamed, chunk_rows=2)
    assert pq.read_table(streamed).column("arrival_s").to_pylist() == [0.0, 2.75, 3.25]
    assert artifact_metadata(pq.read_schema(streamed))["wattlas.arrival_offset_s"] == "1700000000.25"
    from toolkit.traces.stats import finalize, summarize_trace

    assert finalize(summarize_csv_chunked(path, blocksize=60))["duration_s"] == summarize_trace(table)["duration_s"] == 3.25


def test_wattlas_arrivals_are_kept_relative_to_their_trace_start():
    path = Path(__file__).resolve().parents[1] / "sample_traces" / "synth_code_1h.parquet"
    assert read_trace(path).column("arrival_s")[0].as_py() == pq.read_table(path).column("arrival_s")[0].as_py() > 0


def test_wattlas_epoch_seconds_are_refused(write_text, tmp_path):
    path = write_text("w.csv", "arrival_s,input_tokens,output_tokens\n1700000000,1,1\n1700000001,1,1\n")
    for message in _errors_of_every_reader(path, tmp_path):
        assert "w.csv: row 1 (line 2): column arrival_s: first request 1700000000 s after the trace start" in message


@pytest.mark.parametrize(
    "rows,expected",
    [
        (["2023-11-16 18:17:03", "2023-11-16 18:17:04", "2033-11-16 18:17:05"],
         "row 3 (line 4): column TIMESTAMP: 2033-11-16 18:17:05 comes 3,653 days after 2023-11-16 18:17:04: more than 366 days"),
        (["2023-11-16 18:17:03", "2033-11-16 18:17:04", "2023-11-16 18:17:05"],
         "row 2 (line 3): column TIMESTAMP: 2033-11-16 18:17:04 comes 3,653 days after"),
        (["2023-11-16 18:17:03", "2023-11-16 18:17:04", "2013-11-16 18:17:05"],
         "row 3 (line 4): column TIMESTAMP: not sorted: 2013-11-16 18:17:05 comes after 2023-11-16 18:17:04"),
        (["2023-11-16 18:17:03.9799600", "1500-11-16 18:17:04.0319600"],
         "row 2 (line 3): column TIMESTAMP: not sorted: 1500-11-16 18:17:04.0319600 comes after 2023-11-16 18:17:03.9799600"),
        (["2023-11-16 18:17:03.9799600", "2263-11-16 18:17:04.0319600"],
         "row 2 (line 3): column TIMESTAMP: 2263-11-16 18:17:04.0319600 comes 87,658 days after 2023-11-16 18:17:03.9799600"),
        (["2023-11-16 18:17:03", "now"], "row 2 (line 3): column TIMESTAMP: not a timestamp: 'now'"),
        (["today", "2023-11-16 18:17:03"], "row 1 (line 2): column TIMESTAMP: not a timestamp: 'today'"),
    ],
)
def test_year_typos_are_one_line_naming_the_row(write_text, tmp_path, rows, expected):
    path = write_text("y.csv", HEADER + "".join(f"{r},1,1\n" for r in rows))
    messages = _errors_of_every_reader(path, tmp_path)
    assert all(expected in m for m in messages), messages
    assert len(set(messages)) == 1, messages


def test_allow_unsorted_starts_at_the_earliest_timestamp(write_text):
    text = HEADER + "2023-11-16 18:17:05,1,1\n2023-11-16 18:17:03,2,2\n"
    table = read_trace(write_text("u.csv", text), allow_unsorted=True)
    assert table.column("arrival_s").to_pylist() == [0.0, 2.0]
    assert artifact_metadata(table.schema)["wattlas.trace_start"] == "2023-11-16T18:17:03"


def test_allow_unsorted_still_refuses_a_year_gap_naming_the_file_row(write_text):
    text = HEADER + "2033-11-16 18:17:05,1,1\n2023-11-16 18:17:03,2,2\n"
    with pytest.raises(InputError) as err:
        read_trace(write_text("u.csv", text), allow_unsorted=True)
    assert "row 1 (line 2): column TIMESTAMP: 2033-11-16 18:17:05 comes 3,653 days after 2023-11-16 18:17:03" in str(err.value)


@pytest.mark.parametrize(
    "name,data,expected",
    [
        ("notgz.csv.gz", HEADER.encode(), "notgz.csv.gz: not gzip data although the name ends in .gz"),
        ("trunc.csv.gz", gzip.compress((HEADER + "2023-11-16 18:17:03,1,1\n" * 50).encode())[:60],
         "trunc.csv.gz: truncated gzip file"),
        ("crc.csv.gz", gzip.compress((HEADER + "2023-11-16 18:17:03,1,1\n").encode())[:-8] + b"\0" * 8,
         "crc.csv.gz: corrupt gzip data"),
        ("packed.csv", gzip.compress(HEADER.encode()), "packed.csv: gzip-compressed data: name the file *.gz"),
    ],
)
def test_broken_gzip_is_one_line_in_every_mode(run_cli, write_text, tmp_path, name, data, expected):
    path = write_text(name, data)
    for args in (["trace", "stats", "--mode", "memory"], ["trace", "stats", "--mode", "chunked"],
                 ["trace", "convert", "--mode", "chunked", path, tmp_path / "o.parquet"],
                 ["trace", "convert", "--mode", "memory", path, tmp_path / "o.parquet"]):
        result = run_cli(*(args + ([] if "convert" in args else [path])))
        assert result.exit_code != 0
        assert result.output.strip().splitlines() == [result.output.strip()]
        assert expected in result.output, result.output


@pytest.mark.parametrize(
    "content,expected",
    [
        (HEADER, "file has a header but no data rows"),
        (HEADER + "\n\n   \n", "file has a header but no data rows"),
        ("   \n\t\n", "file is empty"),
        (HEADER + "2023-11-16 18:17:03,1,1\n2023-11-16 18:17:04,1,1,7\n", "row 2 (line 3): 4 fields, but the header has 3"),
        # every row one field longer: pandas would take the first as an index and shift the columns
        (HEADER + "2023-11-16 18:17:03,1,1,7\n2023-11-16 18:17:04,1,1,7\n", "row 1 (line 2): 4 fields, but the header has 3"),
        (HEADER + '2023-11-16 18:17:03,1,1\n2023-11-16 18:17:04,"1,1\n', "row 2 (line 3): unterminated quote"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens,ContextTokens\n2023-11-16 18:17:03,1,1,1\n",
         "line 1: column ContextTokens: column name appears twice"),
    ],
)
def test_malformed_csv_is_one_line_in_every_mode(run_cli, write_text, tmp_path, content, expected):
    path = write_text("m.csv", content)
    outputs = []
    for mode in ("memory", "chunked"):
        outputs.append(run_cli("trace", "stats", "--mode", mode, path).output)
        outputs.append(run_cli("trace", "convert", "--mode", mode, path, tmp_path / "o.parquet").output)
    for output in outputs:
        assert output.startswith("Error: ") and output.count("\n") == 1 and "Traceback" not in output, output
        assert "m.csv: " + expected in output, output
    assert not (tmp_path / "o.parquet").exists()


def test_unwritable_output_is_one_line(run_cli, write_text, tmp_path, monkeypatch):
    src = write_text("one.csv", "arrival_s,input_tokens,output_tokens\n0,1,1\n")
    (tmp_path / "file").write_text("")
    for mode in ("memory", "chunked"):
        result = run_cli("trace", "convert", "--mode", mode, src, tmp_path / "file" / "x.parquet")
        assert result.exit_code != 0 and result.output.count("\n") == 1 and "Traceback" not in result.output
        assert result.output.startswith(f"Error: {tmp_path / 'file'}") and "cannot write" in result.output
    # the library calls (demo, scripts) name the destination too
    for write in (lambda dst: convert_trace_streaming(src, dst), lambda dst: write_trace(read_trace(src), dst)):
        for dst in (tmp_path / "file" / "x.parquet", tmp_path / "file" / "x.csv"):
            with pytest.raises(InputError) as err:
                write(dst)
            assert str(err.value) == f"{dst}: cannot write the output: a part of its directory path is a file, not a directory"
    import tempfile

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)  # a read-only directory, even for root
    for mode in ("memory", "chunked"):
        result = run_cli("trace", "convert", "--mode", mode, src, tmp_path / "ro" / "x.parquet")
        assert result.exit_code != 0 and result.output.count("\n") == 1
        assert "ro: cannot write" in result.output and "Permission denied" in result.output
    with pytest.raises(InputError) as err:
        convert_trace_streaming(src, tmp_path / "ro" / "x.parquet")
    assert str(err.value) == f"{tmp_path / 'ro' / 'x.parquet'}: cannot write the output: Permission denied"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_is_one_line(run_cli, write_text, tmp_path):
    src = write_text("one.csv", "arrival_s,input_tokens,output_tokens\n0,1,1\n")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        for mode in ("memory", "chunked"):
            result = run_cli("trace", "convert", "--mode", mode, src, ro / "x.parquet")
            assert result.exit_code != 0 and "x.parquet: cannot write the output" in result.output
    finally:
        ro.chmod(0o700)


# Quoted fields spanning lines and blank lines: rows and text lines part ways.
QUOTED = (
    "arrival_s,input_tokens,output_tokens,note\n"  # line 1
    "\n"                                          # 2 (blank: skipped)
    '0,1,1,"first\nnote"\n'                       # 3-4: row 1
    "   \n"                                       # 5 (whitespace only: skipped)
    '1,2,1,"x\n\ny"\n'                            # 6-8: row 2
    '2,3,1,""\n'                                  # 9: row 3
    "3,-5,1,z\n"                                  # 10: row 4
)


def test_error_lines_are_text_lines_in_every_mode(write_text, tmp_path):
    path = write_text("q.csv", QUOTED)
    messages = _errors_of_every_reader(path, tmp_path)
    for blocksize in (20, 30, 45):
        with pytest.raises(InputError) as err:
            summarize_csv_chunked(path, blocksize=blocksize)
        messages.append(str(err.value))
    for message in messages:
        # a block boundary inside the quotes is refused as such, never with a wrong location
        assert ("row 4 (line 10): column input_tokens: negative value -5" in message
                or "spans two blocks" in message), message
    assert sum("row 4 (line 10)" in m for m in messages) >= 5


def test_not_utf8_after_a_quoted_line_break_names_the_true_row(write_text):
    data = ('arrival_s,input_tokens,output_tokens,note\n0,1,1,"a\nb"\n1,1,1,caf').encode() + b"\xe9\n"
    with pytest.raises(InputError) as err:
        read_trace(write_text("l.csv", data))
    assert "l.csv: row 2 (line 4): not UTF-8 text" in str(err.value)


def test_huge_header_is_refused_before_parsing(write_text, tmp_path, monkeypatch):
    path = write_text("wide.csv", ",".join(f"c{i}" for i in range(10**6)) + "\n" + "1," * 10 + "\n")
    few = write_text("few.csv", ",".join(f"c{i}" for i in range(MAX_COLUMNS + 1)) + "\n")

    def parse(*args, **kwargs):
        raise AssertionError("pandas must not see this file")

    monkeypatch.setattr(pd, "read_csv", parse)
    with pytest.raises(InputError) as err:
        read_trace(path)
    assert "wide.csv: line 1: header has at least" in str(err.value) and f"(at most {MAX_COLUMNS})" in str(err.value)
    with pytest.raises(InputError) as err:
        summarize_csv_chunked(path)
    assert "header has at least" in str(err.value)
    with pytest.raises(InputError) as err:
        read_trace(few)
    assert f"header has {MAX_COLUMNS + 1} columns" in str(err.value)
    with pytest.raises(InputError) as err:
        read_trace(write_text("long.csv", "x" * 70_000 + "\n1\n"))
    assert "header line longer than 64 KiB" in str(err.value)


def test_nul_bytes_are_refused_before_reading_the_file(tmp_path, monkeypatch):
    path = tmp_path / "nul.csv"
    with open(path, "wb") as handle:
        handle.truncate(256 * 1024 * 1024)  # sparse: 256 MiB of NUL bytes, no disk used
    monkeypatch.setattr(pd, "read_csv", lambda *a, **k: pytest.fail("pandas must not see this file"))
    for read in (lambda: read_trace(path), lambda: summarize_csv_chunked(path),
                 lambda: convert_trace_streaming(path, tmp_path / "o.parquet")):
        with pytest.raises(InputError) as err:
            read()
        assert str(err.value) == f"{path}: line 1: not a text CSV: NUL byte at offset 0"


def test_nul_byte_after_the_head_is_refused_in_memory(write_text):
    data = (HEADER + "2023-11-16 18:17:03,1,1\n" * 3000).encode() + b"2023-11-16 18:17:03,1\x00,1\n"
    with pytest.raises(InputError) as err:
        read_trace(write_text("n.csv", data))
    assert "n.csv: line 3002: not a text CSV: NUL byte at offset" in str(err.value)


def test_allow_unsorted_with_chunked_mode_is_refused(run_cli, write_text):
    result = run_cli("trace", "stats", "--mode", "chunked", "--allow-unsorted", write_text("a.csv", AZURE_2023))
    assert result.exit_code != 0 and "--allow-unsorted" in result.output and "--mode memory" in result.output


def test_parquet_in_chunked_mode_is_read_whole(run_cli, tmp_path):
    path = Path(__file__).resolve().parents[1] / "sample_traces" / "synth_conv_1h.parquet"
    result = run_cli("trace", "stats", "--mode", "chunked", "--json", path)
    assert result.exit_code == 0 and json.loads(result.output)["requests"] > 100
