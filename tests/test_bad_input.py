"""Bad input: a one-line error naming file, row and column, and a non-zero exit."""

import pytest

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
GOOD = "2023-11-16 18:17:03.9799600,4808,10\n"


@pytest.mark.parametrize(
    "name,content,expected",
    [
        ("missing.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:00:00,5\n", ["column GeneratedTokens", "missing required column"]),
        ("negative.csv", HEADER + GOOD + "2023-11-16 18:17:04,-3,8\n", ["row 2 (line 3)", "column ContextTokens", "negative value -3"]),
        ("unsorted.csv", HEADER + GOOD + "2023-11-16 18:17:04,1,1\n2023-11-16 18:17:01,1,1\n", ["row 3 (line 4)", "column TIMESTAMP", "not sorted"]),
        ("nan.csv", HEADER + GOOD + "2023-11-16 18:17:04,,8\n", ["row 2 (line 3)", "column ContextTokens", "missing value"]),
        ("nan_literal.csv", HEADER + GOOD + "2023-11-16 18:17:04,12,NaN\n", ["row 2 (line 3)", "column GeneratedTokens", "not a number"]),
        ("text.csv", HEADER + GOOD + "2023-11-16 18:17:04,twelve,8\n", ["row 2", "column ContextTokens", "not a number: 'twelve'"]),
        ("fraction.csv", HEADER + GOOD + "2023-11-16 18:17:04,1.5,8\n", ["row 2", "column ContextTokens", "not an integer"]),
        ("badtime.csv", HEADER + GOOD + "yesterday,1,8\n", ["row 2", "column TIMESTAMP", "not a timestamp"]),
        ("empty.csv", "", ["file is empty"]),
        ("header_only.csv", HEADER, ["no data rows"]),
        ("latin1.csv", (HEADER + GOOD).encode() + "2023-11-16 18:17:04,1,8 caf\xe9\n".encode("latin-1"), ["row 2 (line 3)", "not UTF-8"]),
        ("utf16.csv", (HEADER + GOOD).encode("utf-16"), ["UTF-16"]),
        ("prio.csv", "arrival_s,input_tokens,output_tokens,priority\n0,1,1,urgent\n", ["row 1 (line 2)", "column priority", "unknown priority"]),
        ("vidur_neg_time.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n-1,1,1\n", ["row 1", "column arrived_at", "negative"]),
    ],
)
def test_bad_trace_is_one_clear_line(run_cli, write_text, name, content, expected):
    path = write_text(name, content)
    result = run_cli("trace", "stats", path)
    assert result.exit_code != 0
    message = result.output.strip()
    assert "\n" not in message, message
    assert name in message
    for fragment in expected:
        assert fragment in message, message
    assert "Traceback" not in result.output


def test_missing_file(run_cli, tmp_path):
    result = run_cli("trace", "stats", tmp_path / "nope.csv")
    assert result.exit_code != 0 and "no such file" in result.output


def test_not_a_parquet_file(run_cli, write_text):
    result = run_cli("trace", "stats", write_text("x.parquet", "not parquet"))
    assert result.exit_code != 0 and "x.parquet" in result.output and "Parquet" in result.output


def test_bad_chunked_convert_writes_nothing(run_cli, write_text, tmp_path):
    src = write_text("neg.csv", HEADER + GOOD * 3 + "2023-11-16 18:17:04,-1,8\n")
    dst = tmp_path / "out.parquet"
    result = run_cli("trace", "convert", "--mode", "chunked", src, dst)
    assert result.exit_code != 0 and "row 4" in result.output
    assert not dst.exists()
    assert list(tmp_path.glob("out.parquet.tmp-*")) == []


@pytest.mark.parametrize("blocksize", [60, 1 << 20])
def test_chunked_stats_reports_file_row(write_text, blocksize):
    from toolkit.errors import InputError
    from toolkit.traces.large import summarize_csv_chunked

    lines = [f"2023-11-16 18:17:{i:02d}.0000000,{100 + i},5\n" for i in range(40)]
    lines[33] = "2023-11-16 18:17:33.0000000,-7,5\n"
    path = write_text("big.csv", HEADER + "".join(lines))
    with pytest.raises(InputError) as err:
        summarize_csv_chunked(path, blocksize=blocksize)
    assert "row 34 (line 35)" in str(err.value) and "ContextTokens" in str(err.value)
