"""Week-long Azure 2024 presets (``wattlas trace synth --preset azure2024-*-week``) and the reader
for the real week files (``convert --days --sample``).

Count tolerances come from the renewal variance: given the seed (which fixes the burst/idle
modulation), the full-rate count over a span of expected count L has variance ~ cv^2 L (gamma
renewal), and keeping each request with probability F gives variance F (1 - F) L + F^2 cv^2 L.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.conftest import shared_file
from toolkit.errors import InputError
from toolkit.parquet_io import artifact_metadata
from toolkit.traces.formats import read_trace
from toolkit.traces.week import (
    DAY_S, QUANTILE_PROBS, WEEK_PRESETS, convert_week_file, day_labels, day_weights, expected_per_day, token_quantiles,
    week_intensity, write_week_trace,
)

CONV, CODE = WEEK_PRESETS["azure2024-conv-week"], WEEK_PRESETS["azure2024-code-week"]


def thinned_sd(expected_full: float, sample: float, cv: float) -> float:
    """Standard deviation of the count of a span with ``expected_full`` requests at full rate, thinned."""
    return float(np.sqrt(sample * (1 - sample) * expected_full + sample**2 * cv**2 * expected_full))


@pytest.fixture(scope="module")
def conv_two_days(tmp_path_factory):
    """Sunday and Monday of the conv week at 2 %, row groups of at most 20,000 requests."""
    path = tmp_path_factory.mktemp("week") / "conv2.parquet"
    result = write_week_trace("azure2024-conv-week", path, days=2, sample=0.02, seed=0, row_group_rows=20_000)
    return path, result, pq.read_table(path)


# --------------------------------------------------------------------------- published counts and dates


@pytest.mark.parametrize("preset,requests,start,weekend", [(CONV, 27_303_999, "2024-05-12 Sun", [0, 6]),
                                                          (CODE, 16_803_695, "2024-05-10 Fri", [1, 2])])
@pytest.mark.parametrize("seed", [0, 3])
def test_expected_total_is_the_published_count_on_the_published_dates(preset, requests, start, weekend, seed):
    per_day = expected_per_day(preset, seed)
    assert per_day.sum() == pytest.approx(requests, rel=1e-9)
    assert day_labels(preset)[0] == start and len(per_day) == 7
    weights = day_weights(preset)
    assert np.flatnonzero(weights < 1).tolist() == weekend
    assert weights[weekend] / weights.max() == pytest.approx(preset.weekend_factor)


def test_conv_weekday_expectation_without_modulation_is_exact():
    # no bursts or idle periods in conv: each day is its weight times the published mean day
    assert expected_per_day(CONV, 0) == pytest.approx(27_303_999 / 7 * day_weights(CONV), rel=1e-9)


@pytest.mark.parametrize("preset", [CONV, CODE])
def test_one_day_at_one_per_mille_matches_the_published_rate(preset, tmp_path):
    sample = 0.001
    result = write_week_trace(preset, tmp_path / "d.parquet", days=1, sample=sample, seed=5)
    full = expected_per_day(preset, 5)[0]
    if preset is CONV:  # a Sunday: the weekend share of 27.3 M / 7
        assert full == pytest.approx(27_303_999 / 7 * 7 * 0.75 / 6.5, rel=1e-9)
    got = result.per_day[0]
    assert abs(got - sample * full) < 5 * thinned_sd(full, sample, preset.arrival.cv), (got, sample * full)
    assert pq.read_metadata(tmp_path / "d.parquet").num_rows == got


def test_counts_per_day_and_weekend_ratio(conv_two_days):
    path, result, table = conv_two_days
    sample, cv = 0.02, CONV.arrival.cv
    full = expected_per_day(CONV, 0)[:2]
    day = (table.column("arrival_s").to_numpy() // DAY_S).astype(int)
    assert np.bincount(day).tolist() == result.per_day  # the day split is by arrival time
    for got, want in zip(result.per_day, full):
        assert abs(got - sample * want) < 5 * thinned_sd(want, sample, cv)
    # Sunday / Monday = the weekend factor; delta-method standard deviation of the ratio
    sunday, monday = result.per_day
    ratio = sunday / monday
    sd = ratio * np.sqrt(sum(thinned_sd(w, sample, cv) ** 2 / (sample * w) ** 2 for w in full))
    assert abs(ratio - CONV.weekend_factor) < 5 * sd, (ratio, sd)
    assert 5 * sd < 0.05  # the test can tell 0.75 from 0.8


def test_diurnal_shape_has_the_configured_phase_and_amplitude(conv_two_days):
    _, _, table = conv_two_days
    arrival = table.column("arrival_s").to_numpy()
    monday = arrival[(arrival >= DAY_S) & (arrival < 2 * DAY_S)] - DAY_S
    hourly = np.bincount((monday // 3600).astype(int), minlength=24)
    grid, cumulative = week_intensity(CONV, 0)
    expected = 0.02 * np.diff(np.interp(DAY_S + np.arange(25) * 3600.0, grid, cumulative))
    sd = np.array([thinned_sd(e / 0.02, 0.02, CONV.arrival.cv) for e in expected])
    assert np.max(np.abs(hourly - expected) / sd) < 5
    # first Fourier harmonic of the hourly counts: peak time and relative amplitude of the cosine
    z = np.sum(hourly * np.exp(1j * 2 * np.pi * (np.arange(24) + 0.5) / 24))  # ~ N A / 2 * exp(i 2 pi peak / 24)
    peak_h = (np.angle(z) * 24 / (2 * np.pi)) % 24
    amplitude = 2 * abs(z) / hourly.sum() / np.sinc(1 / 24)  # hour bins smooth the cosine a little
    assert peak_h == pytest.approx(CONV.arrival.peak_time_s / 3600, abs=0.3)
    assert amplitude == pytest.approx(CONV.arrival.diurnal_amplitude, abs=0.03)


# --------------------------------------------------------------------------- determinism, thinning, prefixes


def test_same_seed_same_trace_other_seed_differs(tmp_path):
    a = write_week_trace("azure2024-code-week", tmp_path / "a.parquet", days=1, sample=0.005, seed=11)
    b = write_week_trace("azure2024-code-week", tmp_path / "b.parquet", days=1, sample=0.005, seed=11)
    c = write_week_trace("azure2024-code-week", tmp_path / "c.parquet", days=1, sample=0.005, seed=12)
    ta, tb, tc = (pq.read_table(r.path) for r in (a, b, c))
    assert ta.equals(tb)
    assert not ta.select(["arrival_s"]).equals(tc.select(["arrival_s"]))


def test_thinning_is_nested_and_keeps_the_shape(conv_two_days, tmp_path):
    _, big_result, big = conv_two_days
    small_result = write_week_trace("azure2024-conv-week", tmp_path / "s.parquet", days=2, sample=0.005, seed=0)
    small = pq.read_table(small_result.path)
    # a subset: same ids, same arrivals and lengths for them
    big_rows = big.to_pandas().set_index("request_id")
    sub = small.to_pandas().set_index("request_id")
    assert sub.index.isin(big_rows.index).all()
    pd.testing.assert_frame_equal(big_rows.loc[sub.index], sub)
    # the kept share is 0.005 / 0.02 in every 6-hour window (binomial thinning of the larger sample)
    window = lambda t: np.bincount((t.column("arrival_s").to_numpy() // 21600).astype(int), minlength=8)  # noqa: E731
    n_big, n_small = window(big), window(small)
    p = 0.25
    assert np.all(np.abs(n_small - p * n_big) < 5 * np.sqrt(n_big * p * (1 - p)))
    # token lengths keep their distribution (medians of the 2023 tables)
    assert np.median(small.column("input_tokens").to_numpy()) == pytest.approx(CONV.input.values[12], rel=0.05)
    assert np.median(small.column("output_tokens").to_numpy()) == pytest.approx(CONV.output.values[12], rel=0.08)


def test_fewer_days_is_a_prefix_of_the_same_week(conv_two_days, tmp_path):
    _, _, two = conv_two_days
    one = pq.read_table(write_week_trace("azure2024-conv-week", tmp_path / "one.parquet", days=1, sample=0.02,
                                         seed=0).path)
    assert one.num_rows and one.equals(two.slice(0, one.num_rows).replace_schema_metadata(one.schema.metadata))
    assert two.column("arrival_s")[one.num_rows].as_py() >= DAY_S


# --------------------------------------------------------------------------- file layout and memory


def test_row_groups_are_bounded_and_never_span_a_day(conv_two_days):
    path, result, _ = conv_two_days
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == result.row_groups >= 2 * int(np.ceil(min(result.per_day) / 20_000))
    arrival_col = meta.schema.to_arrow_schema().get_field_index("arrival_s")
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        stats = group.column(arrival_col).statistics
        assert 0 < group.num_rows <= 20_000
        assert stats.min // DAY_S == stats.max // DAY_S


def test_metadata_marks_synthetic_and_records_the_start(conv_two_days, run_cli):
    path, _, _ = conv_two_days
    meta = artifact_metadata(pq.read_schema(path))
    assert meta["wattlas.synthetic"] == "true"
    assert meta["wattlas.synth_preset"] == "azure2024-conv-week"
    assert meta["wattlas.trace_start"] == "2024-05-12T00:00:00+00:00"
    assert meta["wattlas.sample_fraction"] == "0.02" and meta["wattlas.days"] == "2"
    assert pd.Timestamp(meta["wattlas.trace_start"]).day_name() == "Sunday"
    table = read_trace(path)  # a valid canonical trace
    assert table.column("request_id").to_numpy()[0] >= 0
    assert "[synthetic]" in run_cli("trace", "stats", path).output


def test_generation_memory_is_bounded_by_the_block_not_the_day(tmp_path):
    # a full-rate day (2.6 M requests, ~90 MB as numpy columns) through 64 K blocks and 128 K row groups
    tracemalloc.start()
    try:
        result = write_week_trace("azure2024-code-week", tmp_path / "f.parquet", days=1, sample=1.0, seed=0,
                                  block=1 << 16, row_group_rows=1 << 17, summarize=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rows = result.requests
    assert rows > 2_000_000 and result.row_groups >= rows // (1 << 17)
    assert peak < 0.25 * rows * 33, f"peak {peak / 2**20:.0f} MiB for {rows:,} rows"


# --------------------------------------------------------------------------- token lengths


@pytest.mark.parametrize("name,preset", [("conv", CONV), ("code", CODE)])
def test_token_tables_are_the_2023_quantiles(name, preset):
    frame = pd.read_csv(shared_file("azure_llm", f"AzureLLMInferenceTrace_{name}.csv"))
    assert token_quantiles(frame["ContextTokens"].to_numpy()) == pytest.approx(preset.input.values)
    assert token_quantiles(frame["GeneratedTokens"].to_numpy()) == pytest.approx(preset.output.values)


def test_token_draws_follow_the_quantile_table():
    rng = np.random.default_rng(0)
    draws = CODE.input.sample(rng, 200_000)
    for p, value in zip(QUANTILE_PROBS[1:-1], CODE.input.values[1:-1]):
        assert np.mean(draws <= value) == pytest.approx(p, abs=0.01)
    assert draws.min() >= CODE.input.values[0] and draws.max() <= CODE.input.values[-1]


# --------------------------------------------------------------------------- CLI


def test_cli_week_synth_prints_days_and_refuses_what_does_not_apply(run_cli, tmp_path):
    out = tmp_path / "w.parquet"
    result = run_cli("trace", "synth", "--preset", "azure2024-code-week", "--days", "2", "--sample", "0.002",
                     "--seed", "1", "-o", out)
    assert result.exit_code == 0, result.output
    assert "2024-05-10 Fri" in result.output and "2024-05-11 Sat" in result.output and "[synthetic]" in result.output
    assert pq.read_metadata(out).num_rows > 0
    for args, word in [(["--duration", "60"], "--duration"), (["--rate", "3"], "--rate"),
                       (["--start-hour", "3"], "--start-hour"), (["--sample", "1.5"], "sample"),
                       (["--days", "8"], "--days")]:
        bad = run_cli("trace", "synth", "--preset", "azure2024-conv-week", *args, "-o", tmp_path / "x.parquet")
        assert bad.exit_code != 0 and word in bad.output, (args, bad.output)
    bad = run_cli("trace", "synth", "--preset", "conv", "--sample", "0.5", "-o", tmp_path / "x.parquet")
    assert bad.exit_code != 0 and "week presets" in bad.output
    assert not (tmp_path / "x.parquet").exists()


def test_cli_week_overrides_change_the_shape(run_cli, tmp_path):
    result = run_cli("trace", "synth", "--preset", "azure2024-conv-week", "--days", "1", "--sample", "0.001",
                     "--weekend-factor", "1", "-o", tmp_path / "w.parquet")
    assert result.exit_code == 0, result.output
    assert "(3,901)" in result.output  # weekend factor 1: every day is 27,303,999 / 7 x 0.001


# --------------------------------------------------------------------------- real week files

# The 2024 files' timestamps: UTC offsets, the fraction omitted on whole seconds, up to 7 digits.
WEEK_CSV_ROWS = [
    ("2024-05-12 00:00:00.0001234+00:00", 1452, 3),
    ("2024-05-12 00:00:01+00:00", 584, 3),
    ("2024-05-12 00:00:01.5+00:00", 862, 38),
    ("2024-05-12T02:00:02+02:00", 1569, 3),  # = 00:00:02 UTC
    ("2024-05-12 23:59:59.995460+00:00", 617, 104),
    ("2024-05-12 17:00:00-07:00", 1224, 11),  # = 2024-05-13 00:00:00 UTC: the second day
    ("2024-05-13 12:00:00+00:00", 283, 56),
    ("2024-05-14 00:00:00.5+00:00", 336, 8),  # third day
    ("2024-05-14 06:00:00Z", 3152, 264),
]


def week_csv(rows) -> str:
    return "TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(f"{t},{i},{o}\n" for t, i, o in rows)


@pytest.mark.parametrize("chunk_rows", [1, 2, 4, 1000])
def test_real_week_file_mixed_formats_and_offsets(write_text, tmp_path, chunk_rows):
    src = write_text("AzureLLMInferenceTrace_conv_1week.csv", week_csv(WEEK_CSV_ROWS))
    dst = tmp_path / "w.parquet"
    assert convert_week_file(src, dst, chunk_rows=chunk_rows) == len(WEEK_CSV_ROWS)
    table = pq.read_table(dst)
    start = pd.Timestamp("2024-05-12 00:00:00.000123", tz="UTC")  # finer digits are dropped
    want = [(pd.Timestamp(t).tz_convert("UTC") - start).total_seconds() for t, _, _ in WEEK_CSV_ROWS]
    assert table.column("arrival_s").to_pylist() == pytest.approx(want, abs=1e-6)
    assert table.column("arrival_s").to_pylist()[5] == pytest.approx(DAY_S - 0.000123)
    assert table.column("input_tokens").to_pylist() == [i for _, i, _ in WEEK_CSV_ROWS]
    meta = artifact_metadata(table.schema)
    assert meta["wattlas.trace_start"] == "2024-05-12T00:00:00.000123+00:00"
    assert meta["wattlas.trace_format"] == "azure"
    # --days 2 keeps the first two days after the first request and stops there
    assert convert_week_file(src, dst, days=2, chunk_rows=chunk_rows) == 7
    assert pq.read_table(dst).column("arrival_s").to_numpy().max() < 2 * DAY_S


def test_real_week_file_thinning_does_not_depend_on_the_chunks(write_text, tmp_path):
    rng = np.random.default_rng(0)
    seconds = rng.uniform(0, 3 * DAY_S, 3000)
    seconds[::3] = np.floor(seconds[::3])  # whole seconds: written without a fraction, as in the 2024 files
    stamps = pd.Timestamp("2024-05-10", tz="UTC") + pd.to_timedelta(np.sort(seconds), unit="s")
    rows = [(s.isoformat(sep=" "), 100 + i, 1 + i % 50) for i, s in enumerate(stamps)]
    assert sum("." not in t for t, _, _ in rows) >= 900
    src = write_text("code_1week.csv", week_csv(rows))
    kept = []
    for chunk_rows in (7, 500, 10_000):
        n = convert_week_file(src, tmp_path / f"s{chunk_rows}.parquet", days=2, sample=0.3, seed=4, chunk_rows=chunk_rows)
        kept.append(pq.read_table(tmp_path / f"s{chunk_rows}.parquet").column("request_id").to_pylist())
        assert n == len(kept[-1])
    assert kept[0] == kept[1] == kept[2]
    in_two_days = int(np.sum(stamps < stamps[0] + pd.Timedelta(days=2)))
    assert abs(len(kept[0]) - 0.3 * in_two_days) < 5 * np.sqrt(in_two_days * 0.3 * 0.7)
    meta = artifact_metadata(pq.read_schema(tmp_path / "s7.parquet"))
    assert meta["wattlas.sample_fraction"] == "0.3" and meta["wattlas.days"] == "2"


@pytest.mark.parametrize("bad,column,message", [
    ("2024-05-12 24:00:01+00:00,10,1", "TIMESTAMP", "not a timestamp"),
    ("2024-05-12 00:00:09+00:00Z,10,1", "TIMESTAMP", "not a timestamp"),
    ("2024-05-12 00:00:09+00:00,12.5,1", "ContextTokens", "integer"),
    ("2024-05-12 00:00:09+00:00,10,-4", "GeneratedTokens", "negative"),
])
@pytest.mark.parametrize("chunk_rows", [2, 1000])
def test_real_week_file_bad_row_is_one_line_naming_file_row_line_column(write_text, tmp_path, bad, column, message,
                                                                       chunk_rows):
    text = week_csv(WEEK_CSV_ROWS[:4]) + bad + "\n" + week_csv(WEEK_CSV_ROWS[4:]).split("\n", 1)[1]
    src = write_text("conv_1week.csv", text)
    with pytest.raises(InputError) as err:
        convert_week_file(src, tmp_path / "o.parquet", sample=0.5, chunk_rows=chunk_rows)
    shown = str(err.value)
    assert "\n" not in shown
    assert shown.startswith(f"{src}: row 5 (line 6): column {column}: "), shown
    assert message in shown
    assert not (tmp_path / "o.parquet").exists()


def test_cli_convert_days_and_sample(run_cli, write_text, tmp_path):
    src = write_text("conv_1week.csv", week_csv(WEEK_CSV_ROWS))
    result = run_cli("trace", "convert", src, tmp_path / "o.parquet", "--days", "1")
    # days count from the first request (00:00:00.000123): 2024-05-13 00:00 UTC is still inside day 1
    assert result.exit_code == 0 and "wrote 6 requests" in result.output, result.output
    bad = run_cli("trace", "convert", src, tmp_path / "o.csv", "--sample", "0.5")
    assert bad.exit_code != 0 and "--days/--sample" in bad.output
    bad = run_cli("trace", "convert", src, tmp_path / "o.parquet", "--sample", "0")
    assert bad.exit_code != 0 and "sample must be in (0, 1]" in bad.output


def test_cli_lists_every_week_preset():
    from toolkit.traces.cli import WEEK_PRESET_NAMES

    assert set(WEEK_PRESET_NAMES) == set(WEEK_PRESETS)
