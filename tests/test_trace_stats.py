import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit.traces.formats import read_trace
from toolkit.traces.large import summarize_csv_chunked
from toolkit.traces.stats import TracePartial, finalize, quantile_from_counts, summarize_trace

from .conftest import shared_file


def _pandas_reference(df: pd.DataFrame) -> dict:
    """The same statistics computed the obvious way with pandas."""
    t = pd.to_datetime(df["TIMESTAMP"], format="ISO8601")
    arrival = (t - t.iloc[0]).dt.total_seconds()
    gaps = arrival.diff().dropna()
    return {
        "requests": len(df),
        "duration_s": arrival.iloc[-1],
        "interarrival_mean_s": gaps.mean(),
        "interarrival_cv": gaps.std() / gaps.mean(),
        "interarrival_median_s": gaps.median(),
        "input_p50": df["ContextTokens"].quantile(0.5),
        "input_p99": df["ContextTokens"].quantile(0.99),
        "output_p90": df["GeneratedTokens"].quantile(0.9),
        "output_mean": df["GeneratedTokens"].mean(),
        "corr": df["ContextTokens"].corr(df["GeneratedTokens"]),
    }


def _assert_matches(stats: dict, ref: dict) -> None:
    assert stats["requests"] == ref["requests"]
    assert stats["duration_s"] == pytest.approx(ref["duration_s"], abs=1e-6)
    assert stats["interarrival_mean_s"] == pytest.approx(ref["interarrival_mean_s"], rel=1e-9)
    assert stats["interarrival_cv"] == pytest.approx(ref["interarrival_cv"], rel=1e-6)
    assert stats["interarrival_median_s"] == pytest.approx(ref["interarrival_median_s"], abs=1e-6)
    assert stats["input_tokens"]["p50"] == pytest.approx(ref["input_p50"])
    assert stats["input_tokens"]["p99"] == pytest.approx(ref["input_p99"])
    assert stats["output_tokens"]["p90"] == pytest.approx(ref["output_p90"])
    assert stats["output_tokens"]["mean"] == pytest.approx(ref["output_mean"])
    assert stats["input_output_corr"] == pytest.approx(ref["corr"], abs=1e-9)


@pytest.mark.parametrize("name", ["AzureLLMInferenceTrace_conv.csv", "AzureLLMInferenceTrace_code.csv"])
def test_azure_2023_stats_match_pandas_in_memory_and_chunked(name):
    path = shared_file("azure_llm", name)
    ref = _pandas_reference(pd.read_csv(path))
    _assert_matches(summarize_trace(read_trace(path)), ref)
    _assert_matches(finalize(summarize_csv_chunked(path, blocksize=64 * 1024)), ref)


def test_cli_prints_19366_for_azure_conv(run_cli):
    path = shared_file("azure_llm", "AzureLLMInferenceTrace_conv.csv")
    result = run_cli("trace", "stats", path)
    assert result.exit_code == 0
    assert "19,366" in result.output


def azure_frame(seed: int, n: int, mean_gap_s: float, stamp_format: str, max_context: int, max_generated: int) -> pd.DataFrame:
    """A random Azure-format trace (TIMESTAMP, ContextTokens, GeneratedTokens)."""
    rng = np.random.default_rng(seed)
    stamps = pd.Timestamp("2024-05-10 00:00:00") + pd.to_timedelta(np.cumsum(rng.exponential(mean_gap_s, n)), unit="s")
    return pd.DataFrame({"TIMESTAMP": stamps.strftime(stamp_format),
                         "ContextTokens": rng.integers(1, max_context, n), "GeneratedTokens": rng.integers(1, max_generated, n)})


def test_stats_on_generated_file_match_pandas(write_text):
    df = azure_frame(3, 500, 0.3, "%Y-%m-%d %H:%M:%S.%f", 9000, 700)
    path = write_text("g.csv", df.to_csv(index=False))
    ref = _pandas_reference(df)
    _assert_matches(summarize_trace(read_trace(path)), ref)
    _assert_matches(finalize(summarize_csv_chunked(path, blocksize=2000)), ref)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=60), st.floats(0, 1))
def test_quantile_from_counts_equals_numpy(values, q):
    counts = pd.Series(values).value_counts()
    assert quantile_from_counts(counts, q) == pytest.approx(float(np.quantile(values, q)))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 5), min_size=2, max_size=80), st.integers(1, 79))
def test_partials_merge_exactly_at_any_split(gaps, split):
    arrival = np.cumsum(gaps)
    tokens = np.arange(arrival.size) % 7 + 1
    split = min(split, arrival.size - 1)
    whole = finalize(TracePartial.of(arrival, tokens, tokens[::-1]))
    merged = finalize(TracePartial.of(arrival[:split], tokens[:split], tokens[::-1][:split])
                      .merge(TracePartial.of(arrival[split:], tokens[split:], tokens[::-1][split:])))
    for key in ("requests", "duration_s", "interarrival_mean_s", "interarrival_median_s", "peak_per_s"):
        assert merged[key] == pytest.approx(whole[key], abs=1e-9, nan_ok=True)
    assert merged["interarrival_cv"] == pytest.approx(whole["interarrival_cv"], rel=1e-6, abs=1e-9, nan_ok=True)


def test_chunked_stats_on_a_dask_distributed_client(write_text):
    from distributed import Client, LocalCluster

    n = 300
    df = azure_frame(5, n, 0.2, "%Y-%m-%d %H:%M:%S.%f+00:00", 900, 90)
    path = write_text("d.csv", df.to_csv(index=False))
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        stats = finalize(summarize_csv_chunked(path, blocksize=1500, client=client))
    local = finalize(summarize_csv_chunked(path, blocksize=1500))
    for key in ("requests", "duration_s", "interarrival_cv", "interarrival_median_s", "input_output_corr"):
        assert stats[key] == pytest.approx(local[key]), key
    assert stats["requests"] == n
    assert stats["input_tokens"]["p50"] == pytest.approx(df["ContextTokens"].quantile(0.5))


def test_json_stats_are_strict_json(run_cli, write_text):
    import json

    path = write_text("one.csv", "arrival_s,input_tokens,output_tokens\n0,5,1\n")
    for mode in ("memory", "chunked"):
        result = run_cli("trace", "stats", "--json", "--mode", mode, path)
        assert result.exit_code == 0

        def refuse(constant):
            raise AssertionError(f"{constant} is not JSON")

        stats = json.loads(result.output, parse_constant=refuse)
        assert stats["requests"] == 1 and stats["rate_per_s"] is None and stats["interarrival_cv"] is None


def test_chunked_stats_with_huge_arrivals_never_overflow(write_text):
    import warnings

    from toolkit.errors import InputError

    rows = "".join(f"{t},1,1\n" for t in ("0", "1", "2", "9223372036854775808", "9223372036854775809"))
    path = write_text("w.csv", "arrival_s,input_tokens,output_tokens\n" + rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an int64 cast wrapping silently warns
        with pytest.raises(InputError) as err:
            summarize_csv_chunked(path, blocksize=40)
    assert "row 4 (line 5): column arrival_s: 9223372036854775808 comes" in str(err.value)
