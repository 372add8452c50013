"""Replay memory follows a trace's events, not its time span; run-length bins agree with dense ones."""

import json
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from replay.config import ClusterConfig, PoolConfig, load_cluster
from replay.engine import Recorder, cluster_power, replay

from .test_replay import _load, linear_bundle, trace

TEN_YEARS_S = 10 * 365.25 * 86400


def dense_bins(timeline: pd.DataFrame, bin_s: float) -> np.ndarray:
    """instances x bins energy (J) of a run-length timeline: the layout the replay kept before."""
    rows = []
    for _, g in timeline.groupby("instance", sort=True):
        n = np.rint(g["duration_s"].to_numpy() / bin_s).astype(np.int64)
        rows.append(np.repeat(g["power_w"].to_numpy() * bin_s, n))
    return np.array(rows)


def assert_tiles_the_run(timeline: pd.DataFrame, duration_s: float, bin_s: float) -> None:
    for _, g in timeline.groupby("instance"):
        assert g["t_s"].iloc[0] == 0
        assert np.allclose(g["t_s"].to_numpy()[1:], (g["t_s"] + g["duration_s"]).to_numpy()[:-1])
        assert (g["t_s"] + g["duration_s"]).iloc[-1] == pytest.approx(np.ceil(duration_s / bin_s) * bin_s)


@pytest.mark.parametrize("arrivals", [[0.0, TEN_YEARS_S / 2, TEN_YEARS_S],  # a year typo, times a few
                                      [1.7e9, 1.7e9 + 5, 1.7e9 + 60]])  # epoch seconds
def test_three_requests_over_years_take_little_memory(arrivals):
    config = ClusterConfig(pools=[PoolConfig(instances=2)])
    tracemalloc.start()
    try:
        result = replay(trace(arrivals, [500, 500, 500], [20, 20, 20]), linear_bundle(), config)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # dense 1-s bins were 8 bytes x 2 instances x 1.5 x the span (> 6 GB for ten years)
    assert peak < 50 * 2**20
    summary, timeline = result.summary, result.timeline
    assert summary["finished"] == 3
    # a handful of rows per request and instance (busy bins, the idle stretches between), none per idle second
    assert len(timeline) <= 2 + 12 * len(arrivals)
    assert_tiles_the_run(timeline, summary["duration_s"], config.bin_s)
    balance = summary["conservation"]
    assert balance["timeline_j"] == pytest.approx(balance["instances_j"], rel=1e-9)
    idle_row_w = 2 * 80.0  # the linear bundle's decode power at zero load, both instances
    assert summary["row_power_p50_w"] == pytest.approx(idle_row_w)
    assert summary["peak_row_power_w"] > summary["row_power_p99_w"] >= idle_row_w


def test_run_length_bins_equal_dense_bins_bit_for_bit():
    """The recorder against a dense reference (the previous implementation's arithmetic)."""
    rng = np.random.default_rng(7)
    bin_s, n_instances = 0.7, 3
    rec = Recorder(n_instances, bin_s)
    dense = np.zeros((n_instances, 4000))
    for i in range(n_instances):
        t = 0.0
        for _ in range(400):
            gap = rng.choice([0.0, 0.0, rng.exponential(2.0), rng.exponential(200.0)])
            length = rng.choice([rng.exponential(0.05), rng.exponential(3.0), 5 * bin_s])
            t0, t1, power = t + gap, t + gap + length, float(rng.choice([80.0, 80.0, rng.uniform(100, 900)]))
            if t1 >= 4000 * bin_s - bin_s:
                break
            rec.add_energy(i, t0, t1, power)
            first, last = int(t0 // bin_s), int(t1 // bin_s)
            if first == last:
                dense[i, first] += power * (t1 - t0)
            else:
                dense[i, first] += power * ((first + 1) * bin_s - t0)
                dense[i, first + 1:last] += power * bin_s
                dense[i, last] += power * (t1 - last * bin_s)
            t = t1
    n_bins = dense.shape[1]
    stored = 0
    for i in range(n_instances):
        starts, counts, energy = rec.runs(i, n_bins)
        assert starts[0] == 0 and counts.sum() == n_bins and (starts[1:] == (starts + counts)[:-1]).all()
        assert np.array_equal(np.repeat(energy, counts), dense[i])
        stored += len(starts)
    assert stored < 0.5 * dense.size  # idle and powered-off stretches are single runs
    for first in range(0, n_bins, 97):
        for width in (1, 2, 5, 300):
            last = min(n_bins, first + width)
            assert rec.energy_in_bins(first, last) == pytest.approx(dense[:, first:last].sum(), rel=1e-12, abs=1e-9)
    with pytest.raises(ValueError, match="after later energy"):
        rec.add_energy(0, 0.0, 1.0, 100.0)


def test_row_power_percentiles_peak_and_carbon_equal_dense_computation(tmp_path):
    """Statistics over bins are computed on runs; they must equal the same statistics over the
    expanded bins (idle bins included), with a grid series whose points fall inside bins."""
    bin_s = 1.3
    arrivals = _load(400, rate=4)
    arrivals = arrivals.assign(arrival_s=arrivals["arrival_s"] + np.where(arrivals.index >= 200, 3000.0, 0.0))  # an idle gap
    grid = tmp_path / "grid.csv"
    grid.write_text("t_s,g_per_kwh\n0,300\n40.55,120\n2000.2,120\n2600.9,450\n3100,80\n")
    toml = tmp_path / "c.toml"
    toml.write_text(f"bin_s = {bin_s}\ncarbon_csv = 'grid.csv'\npue = 1.0\n[[pool]]\ninstances = 3\n")
    result = replay(arrivals, linear_bundle(), load_cluster(toml))
    summary = result.summary
    bins = dense_bins(result.timeline, bin_s)
    n_bins = int(np.ceil(summary["duration_s"] / bin_s))
    assert bins.shape == (3, n_bins)
    assert len(result.timeline) < 0.5 * bins.size  # the idle gap is one row per instance
    row_w = bins.sum(axis=0) / bin_s
    assert summary["peak_row_power_w"] == pytest.approx(row_w.max(), rel=1e-12)
    for q, key in ((0.5, "row_power_p50_w"), (0.99, "row_power_p99_w")):
        assert summary[key] == pytest.approx(np.quantile(row_w, q), rel=1e-12)
    assert summary["conservation"]["timeline_j"] == pytest.approx(bins.sum(), rel=1e-12)
    t_series, g_series = np.array([0, 40.55, 2000.2, 2600.9, 3100]), np.array([300, 120, 120, 450, 80.0])
    mid = (np.arange(n_bins) + 0.5) * bin_s
    dense_carbon = float((bins.sum(axis=0) / 3.6e6 * np.interp(mid, t_series, g_series)).sum()) / 1000.0
    assert summary["carbon_kg"] == pytest.approx(dense_carbon, rel=1e-12)


def test_cluster_power_sums_instances_over_their_change_points():
    timeline = pd.DataFrame({"pool": "p", "instance": [0, 0, 1, 1, 1],
                             "t_s": [0.0, 10.0, 0.0, 4.0, 6.0], "duration_s": [10.0, 2.0, 4.0, 2.0, 6.0],
                             "power_w": [100.0, 300.0, 50.0, 250.0, 50.0]})
    total = cluster_power(timeline)
    assert total["t_s"].tolist() == [0.0, 4.0, 6.0, 10.0]
    assert total["duration_s"].tolist() == [4.0, 2.0, 4.0, 2.0]
    assert total["power_w"].tolist() == [150.0, 350.0, 150.0, 350.0]
    # a dense timeline (one row per bin, no duration_s) reads as bins of its time step
    dense = pd.DataFrame({"pool": "p", "instance": [0, 0, 0, 1, 1, 1], "t_s": [0.0, 1.0, 2.0] * 2,
                          "power_w": [1.0, 1.0, 2.0, 3.0, 3.0, 3.0]})
    total = cluster_power(dense)
    assert total[["t_s", "duration_s", "power_w"]].values.tolist() == [[0.0, 2.0, 4.0], [2.0, 1.0, 5.0]]


def test_cli_writes_a_run_length_timeline_for_a_sparse_trace(run_cli, tmp_path):
    """Requests 300 days apart (trace validation refuses longer silences): dense 1-s bins took
    1.2 GB here; the file holds a few rows per instance and still sums to the run's energy."""
    bundle = linear_bundle().save(tmp_path / "m.json")
    gap = 300 * 86400.0
    csv = tmp_path / "t.csv"
    csv.write_text(f"arrival_s,input_tokens,output_tokens\n0,500,20\n{gap},500,20\n{2 * gap},500,20\n")
    out = tmp_path / "rep"
    result = run_cli("replay", "run", "--trace", csv, "--models", bundle, "-o", out)
    assert result.exit_code == 0, result.output
    timeline = pd.read_parquet(out / "power_timeline.parquet")
    assert list(timeline.columns) == ["pool", "instance", "t_s", "duration_s", "power_w"]
    assert len(timeline) <= 2 + 12 * 3
    summary = json.loads((out / "summary.json").read_text())
    assert_tiles_the_run(timeline, summary["duration_s"], summary["bin_s"])
    energy_j = (timeline["duration_s"] * timeline["power_w"]).sum()
    assert energy_j == pytest.approx(summary["conservation"]["instances_j"], rel=1e-9)
