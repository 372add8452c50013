import pyarrow.parquet as pq
import pytest

from toolkit.errors import InputError
from toolkit.parquet_io import artifact_metadata
from toolkit.traces.formats import read_trace, write_trace

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
    assert table.column("arrival_s").to_pylist() == [1.0, 2.0]
    assert table.column("request_id").to_pylist() == [1, 0]  # ids still point at source rows


def test_gzip_csv(tmp_path):
    import gzip

    path = tmp_path / "t.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(AZURE_2023)
    assert read_trace(path).num_rows == 3
