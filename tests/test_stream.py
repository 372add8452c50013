"""Streaming and partitioned replay: the same result as the in-memory replay, in memory that
follows the requests in flight; parts that share nothing merge into the single-process result."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from replay.config import ClusterConfig, PoolConfig
from replay.engine import replay
from replay.recorder import Recorder
from replay.requests import Requests
from replay.stream import cell_config, cell_of, replay_stream
from toolkit.errors import InputError
from toolkit.traces.formats import write_trace

from .test_replay import _load, linear_bundle

QUANTILES = ("ttft_p50_s", "ttft_p99_s", "e2e_p50_s", "e2e_p99_s")
NOT_COMPARED = {"replay_wall_s", "streamed", "conservation", *QUANTILES}


def _write(tmp_path, frame, name="trace.parquet"):
    path = tmp_path / name
    write_trace(pa.Table.from_pandas(frame, preserve_index=False), path)
    return path


def _same_requests(a: pd.DataFrame, b: pd.DataFrame) -> None:
    a, b = a.sort_values("request_id").reset_index(drop=True), b.sort_values("request_id").reset_index(drop=True)
    assert len(a) == len(b)
    for column in a.columns:
        if a[column].dtype.kind == "f":
            assert np.allclose(a[column], b[column], rtol=1e-9, equal_nan=True), column
        else:
            assert a[column].fillna("-").astype(str).tolist() == b[column].fillna("-").astype(str).tolist(), column


@pytest.mark.parametrize("pool", [dict(instances=3, chunk_size=512),
                                  dict(instances=2, scheduler="lars", chunk_policy="adaptive", tbt_slo_s=0.05),
                                  dict(instances=2, kvp=2, max_tokens_per_kvp_group=1024)])
def test_stream_equals_in_memory_replay(tmp_path, pool):
    frame = _load(3000, rate=30.0)
    path = _write(tmp_path, frame)
    config = ClusterConfig(pools=[PoolConfig(**pool)])
    memory = replay(frame, linear_bundle(), config)
    summary = replay_stream(path, linear_bundle(), config, tmp_path / "out", True, batch_rows=256)
    _same_requests(memory.requests, pd.read_parquet(tmp_path / "out" / "requests.parquet"))
    for key, value in memory.summary.items():
        if key not in NOT_COMPARED:
            assert summary[key] == pytest.approx(value, rel=1e-9, nan_ok=True) if isinstance(value, float) else summary[key] == value, key
    for key in QUANTILES:  # from log histograms of 200 bins a decade
        assert summary[key] == pytest.approx(memory.summary[key], rel=0.012), key
    timeline = pd.read_parquet(tmp_path / "out" / "power_timeline.parquet")
    energy = lambda t: (t["power_w"] * t["duration_s"]).groupby(t["instance"]).sum()  # noqa: E731
    assert np.allclose(energy(timeline), energy(memory.timeline), rtol=1e-9)
    conservation = summary["conservation"]
    assert conservation["timeline_j"] == pytest.approx(conservation["instances_j"], rel=1e-9)


def test_stream_holds_the_requests_in_flight_not_the_trace(tmp_path):
    config = ClusterConfig(pools=[PoolConfig(instances=4)])
    held = {}
    for n in (2000, 8000):
        path = _write(tmp_path, _load(n, rate=20.0), f"t{n}.parquet")
        summary = replay_stream(path, linear_bundle(), config, tmp_path / f"o{n}", True, batch_rows=256)
        assert summary["finished"] == n
        held[n] = summary["streamed"]["peak_requests_held"]
    # a batch, the requests still running and those behind the oldest one: four times the trace, not four times more
    assert held[8000] < 4 * 256 + 200
    assert held[8000] < 2 * held[2000]


def test_a_bad_row_deep_in_a_streamed_trace_is_named(tmp_path):
    frame = _load(2000)
    frame.loc[1500, "input_tokens"] = -5
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    with pytest.raises(InputError) as err:
        replay_stream(path, linear_bundle(), ClusterConfig(pools=[PoolConfig(instances=2)]), tmp_path / "o", True,
                      batch_rows=256)
    message = str(err.value)
    assert "bad.parquet" in message and "1501" in message and "input_tokens" in message


def test_requests_reuse_slots_and_keep_rows():
    store = Requests.empty(4)
    slots = store.add(np.arange(4), np.zeros(4), np.ones(4, dtype=np.int64), np.ones(4, dtype=np.int64), np.zeros(4, dtype=np.int64))
    store.finish[slots[:2]] = 1.0
    assert store.done(slots).tolist() == [True, True, False, False]
    store.release(slots[:2])
    again = store.add(np.array([4, 5, 6]), np.ones(3), np.ones(3, dtype=np.int64), np.ones(3, dtype=np.int64), np.zeros(3, dtype=np.int64))
    assert set(again[:2].tolist()) == set(slots[:2].tolist())  # the written-out slots first, then the store grows
    assert store.capacity >= 5 and store.row[again].tolist() == [4, 5, 6]
    assert np.isnan(store.finish[again]).all()  # a reused slot starts fresh
    assert store.row[slots[2:]].tolist() == [2, 3]


def test_taken_bins_are_written_out_and_cannot_be_read_back():
    rec = Recorder(2, 1.0)
    rec.add_energy(0, 0.0, 10.5, 100.0)
    rec.add_energy(1, 0.0, 3.0, 50.0)
    rec.add_energy(1, 3.0, 9.2, 80.0)
    assert min(rec.open_bins()) == 9
    runs = rec.take_before(5)
    assert [(s.tolist(), c.tolist(), e.tolist()) for s, c, e in runs] == [([0], [5], [100.0]), ([0, 3], [3, 2], [50.0, 80.0])]
    assert rec.energy_in_bins(5, 9) == pytest.approx(4 * 100.0 + 4 * 80.0)
    with pytest.raises(ValueError, match="written out"):
        rec.energy_in_bins(4, 9)


def test_cells_split_rows_evenly_and_share_instances():
    cells = cell_of(np.arange(100_000), 4, seed=7)
    counts = np.bincount(cells, minlength=4)
    assert counts.sum() == 100_000 and counts.min() > 24_000  # each about a quarter
    assert (cell_of(np.arange(100_000), 4, seed=7) == cells).all()
    assert not (cell_of(np.arange(100_000), 4, seed=8) == cells).all()
    config = ClusterConfig(pools=[PoolConfig(instances=10)])
    assert [cell_config(config, k, 4).pools[0].instances for k in range(4)] == [3, 3, 2, 2]
    with pytest.raises(ValueError, match="fewer than the 4 cells"):
        cell_config(ClusterConfig(pools=[PoolConfig(instances=3)]), 0, 4)


@pytest.fixture(scope="module")
def dask_address():
    """A small LocalCluster (processes, as the default of replay_partitioned) shared by the tests here."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    yield cluster.scheduler_address
    cluster.close()


def test_partitioned_by_pool_equals_single_process(tmp_path, dask_address):
    from replay.partition import replay_partitioned

    frame = _load(3000, rate=30.0)
    path = _write(tmp_path, frame)
    bundle_path = linear_bundle().save(tmp_path / "m.json")
    config = ClusterConfig(pools=[PoolConfig(name="short", instances=3, max_input_tokens=1500, chunk_size=512),
                                  PoolConfig(name="long", instances=2)])
    single = replay_stream(path, linear_bundle(), config, tmp_path / "one", True, batch_rows=256)
    seen = []
    parts = replay_partitioned(path, bundle_path, config, tmp_path / "parts", True, "pools", address=dask_address,
                               batch_rows=256, progress=seen.append)
    _same_requests(pd.read_parquet(tmp_path / "one" / "requests.parquet"), pd.read_parquet(tmp_path / "parts" / "requests.parquet"))
    merged = pd.read_parquet(tmp_path / "parts" / "requests.parquet")
    assert merged["arrival_s"].is_monotonic_increasing
    for key, value in single.items():
        if key not in {"replay_wall_s", "streamed", "conservation"}:
            assert parts[key] == pytest.approx(value, rel=1e-9, nan_ok=True) if isinstance(value, float) else parts[key] == value, key
    a, b = (pd.read_parquet(tmp_path / d / "power_timeline.parquet") for d in ("one", "parts"))
    energy = lambda t: (t["power_w"] * t["duration_s"]).groupby([t["pool"], t["instance"]]).sum()  # noqa: E731
    assert np.allclose(energy(a), energy(b), rtol=1e-9)
    assert parts["streamed"]["parts"] == 2 and seen and max(seen) <= 2 * len(frame)
    assert not list((tmp_path / "parts").glob("*.part-*"))  # the part files merged and removed


def test_partitioned_cells_replay_every_request_once(tmp_path, dask_address):
    from replay.partition import replay_partitioned

    frame = _load(2000, rate=30.0)
    path = _write(tmp_path, frame)
    bundle_path = linear_bundle().save(tmp_path / "m.json")
    config = ClusterConfig(pools=[PoolConfig(instances=4)])
    summary = replay_partitioned(path, bundle_path, config, tmp_path / "cells", True, 2, address=dask_address, batch_rows=256)
    requests = pd.read_parquet(tmp_path / "cells" / "requests.parquet")
    assert sorted(requests["request_id"]) == list(range(len(frame)))
    assert summary["finished"] == len(frame) and summary["instances"] == 4
    cells = cell_of(requests["request_id"].to_numpy(), 2, 0)
    # cell 0 has instances 0-1, cell 1 instances 2-3: a request stays in its cell
    assert ((requests["instance"].to_numpy() >= 2) == (cells == 1)).all()


def test_stream_routes_by_priority_and_keeps_it(tmp_path):
    frame = _load(1500, rate=20.0)
    frame["priority"] = np.where(np.arange(len(frame)) % 3 == 0, "high", "low")
    path = _write(tmp_path, frame)
    config = ClusterConfig(pools=[PoolConfig(name="high", priority="high", instances=2),
                                  PoolConfig(name="low", priority="low", instances=2)])
    memory = replay(frame, linear_bundle(), config, priority=frame["priority"].to_numpy(dtype=object))
    replay_stream(path, linear_bundle(), config, tmp_path / "out", True, batch_rows=128)
    streamed = pd.read_parquet(tmp_path / "out" / "requests.parquet")
    _same_requests(memory.requests, streamed)
    assert (streamed["pool"] == streamed["priority"]).all()


def test_cells_keep_each_request_priority(tmp_path, dask_address):
    from replay.partition import replay_partitioned

    frame = _load(1200, rate=20.0)
    frame["priority"] = np.where(np.arange(len(frame)) % 2 == 0, "high", "low")
    path = _write(tmp_path, frame)
    bundle_path = linear_bundle().save(tmp_path / "m.json")
    replay_partitioned(path, bundle_path, ClusterConfig(pools=[PoolConfig(instances=4)]), tmp_path / "cells", True, 2,
                       address=dask_address, batch_rows=128)
    out = pd.read_parquet(tmp_path / "cells" / "requests.parquet").sort_values("request_id")
    assert out["priority"].tolist() == frame["priority"].tolist()


def test_replay_run_stream_and_partitions_options(tmp_path, run_cli, dask_address):
    import json

    path = _write(tmp_path, _load(800, rate=20.0))
    models = linear_bundle().save(tmp_path / "m.json")
    cluster = tmp_path / "c.toml"
    cluster.write_text("[[pool]]\ninstances = 2\n")
    common = ("replay", "run", "--trace", path, "--models", models, "--cluster", cluster)
    streamed = run_cli(*common, "--stream", "--batch-rows", "128", "-o", tmp_path / "s", "--json")
    assert streamed.exit_code == 0, streamed.output
    summary = json.loads(streamed.stdout)
    assert summary["streamed"]["parts"] == 1 and summary["streamed"]["batch_rows"] == 128
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["finished"] == 800
    parts = run_cli(*common, "--partitions", "2", "--scheduler", dask_address, "-o", tmp_path / "p", "--json")
    assert parts.exit_code == 0, parts.output
    summary = json.loads(parts.stdout)
    assert summary["streamed"]["parts"] == 2 and summary["streamed"]["scheduler"] == dask_address
    assert summary["requests"] == 800 and (tmp_path / "p" / "requests.parquet").exists()
    for bad, words in (((*common, "--stream"), "-o/--out missing"), ((*common, "--stream", "--policy", "polca", "-o", tmp_path / "x"), "--policy"),
                       ((*common, "--partitions", "two", "-o", tmp_path / "x"), "'pools'"),
                       ((*common, "--scheduler", dask_address, "-o", tmp_path / "x"), "--partitions")):
        result = run_cli(*bad)
        assert result.exit_code != 0 and words in result.output, result.output
