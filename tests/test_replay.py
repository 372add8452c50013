import json
import os

import numpy as np
import pandas as pd
import pytest

from characterize.linear_model import TermsModel
from characterize.model_io import ModelBundle
from characterize.power_model import PowerModel
from replay.config import PP_TRANSFER_S, ClusterConfig, PoolConfig, cluster_from_dict, load_cluster
from replay.cost_model import InstanceCost
from replay.engine import replay
from toolkit.errors import InputError


def linear_bundle(k0=0.010, kc=1e-5, kcp=1e-10, d0=0.005, db=1e-4, dbk=1e-8, power=True) -> ModelBundle:
    """A bundle with known coefficients (one group), for hand-checkable replays."""
    pre = TermsModel("latency_s", "prefill", ["1", "c", "c*p"], [], [{"key": {}, "coef": [k0, kc, kcp], "cov": np.zeros((3, 3)).tolist(), "df_resid": 10, "n": 20, "rsquared": 1}])
    dec = TermsModel("latency_s", "decode", ["1", "b", "b*k"], [], [{"key": {}, "coef": [d0, db, dbk], "cov": np.zeros((3, 3)).tolist(), "df_resid": 10, "n": 20, "rsquared": 1}])
    models = [pre, dec]
    if power:
        for phase, params in (("prefill", [100.0, 500.0, 500.0, 1.0]), ("decode", [80.0, 300.0, 50.0, 1.0])):
            models.append(PowerModel("mean_power_w", phase, "load_tokens", None, [], [{"key": {}, "params": params, "param_names": []}]))
    # (names its model as `characterize fit` bundles do: pools without kv_capacity_tokens derive it from that shape)
    return ModelBundle(models, {"simulated": True, "model": ["llama3-8b"]})


def trace(arrivals, inputs, outputs):
    return pd.DataFrame({"request_id": np.arange(len(arrivals)), "arrival_s": np.asarray(arrivals, float),
                         "input_tokens": inputs, "output_tokens": outputs})


def one_pool(**kw):
    return ClusterConfig(pools=[PoolConfig(**{"instances": 1, **kw})], router="round_robin")


def test_single_request_matches_hand_computation():
    bundle = linear_bundle()
    result = replay(trace([1.0], [1000], [10]), bundle, one_pool(chunk_size=4096))
    r = result.requests.iloc[0]
    prefill = 0.010 + 1e-5 * 1000
    assert r.ttft_s == pytest.approx(prefill)
    decode = [0.005 + 1e-4 + 1e-8 * (1001 + j) for j in range(9)]
    assert r.e2e_s == pytest.approx(prefill + sum(decode))
    assert r.tbt_max_s == pytest.approx(decode[-1])
    assert r.tbt_mean_s == pytest.approx(sum(decode) / 9)


def test_chunked_prefill_of_a_long_prompt():
    result = replay(trace([0.0], [5000], [2]), linear_bundle(), one_pool(chunk_size=2048, max_batch_tokens=2048))
    chunks = [(2048, 0), (2048, 2048), (904, 4096)]
    expected = sum(0.010 + 1e-5 * c + 1e-10 * c * p for c, p in chunks)
    assert result.requests.iloc[0].ttft_s == pytest.approx(expected)


def _load(n=3000, seed=0, rate=20.0):
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, n))
    return trace(arrivals, rng.integers(50, 3000, n), rng.integers(1, 300, n))


def test_fast_forward_equals_step_by_step_reference():
    t = _load(800)
    config = ClusterConfig(pools=[PoolConfig(instances=2, chunk_size=1024)])
    fast = replay(t, linear_bundle(), config)
    plain = replay(t, linear_bundle(), config, fast_forward=False)
    for column in ("first_token_s", "finish_s", "tbt_max_s", "energy_j"):
        assert np.allclose(fast.requests[column], plain.requests[column], rtol=1e-9, equal_nan=True), column
    assert fast.summary["iterations"] == plain.summary["iterations"]
    assert fast.summary["tbt_p99_s"] == pytest.approx(plain.summary["tbt_p99_s"])


def test_conservation_and_determinism():
    t = _load()
    config = ClusterConfig(pools=[PoolConfig(instances=3, kv_capacity_tokens=20_000)])
    a = replay(t, linear_bundle(), config)
    b = replay(t, linear_bundle(), config)
    pd.testing.assert_frame_equal(a.requests, b.requests)
    req = a.requests
    assert (req["dropped"] | req["finish_s"].notna()).all()
    assert (req["finish_s"].dropna() >= req["arrival_s"][req["finish_s"].notna()]).all()
    c = a.summary["conservation"]
    assert c["timeline_j"] == pytest.approx(c["instances_j"], rel=1e-9)
    assert c["requests_plus_idle_j"] == pytest.approx(c["instances_j"], rel=1e-9)
    assert a.summary["energy_kwh"] * 3.6e6 == pytest.approx(c["instances_j"])


def test_request_larger_than_kv_is_dropped_with_reason():
    t = trace([0.0, 0.1], [100, 50_000], [10, 10])
    result = replay(t, linear_bundle(), one_pool(kv_capacity_tokens=10_000))
    assert result.requests["dropped"].tolist() == [False, True]
    assert "KV" in result.requests["drop_reason"].iloc[1]
    assert result.summary["finished"] == 1 and result.summary["dropped"] == 1


def test_adaptive_chunking_keeps_decodes_within_tbt_slo():
    # 20 short requests decoding while a 200 K-token prompt arrives
    arrivals = [0.0] * 20 + [0.5]
    t = trace(arrivals, [100] * 20 + [200_000], [400] * 20 + [5])
    slo = 0.030
    fixed = replay(t, linear_bundle(), one_pool(chunk_size=8192, max_batch_tokens=16384, tbt_slo_s=slo))
    adaptive = replay(t, linear_bundle(), one_pool(chunk_policy="adaptive", max_batch_tokens=16384, tbt_slo_s=slo))
    short_fixed = fixed.requests.iloc[:20]["tbt_max_s"]
    short_adaptive = adaptive.requests.iloc[:20]["tbt_max_s"]
    assert (short_fixed > slo).all()
    assert (short_adaptive <= slo + 1e-9).all()
    assert adaptive.requests.iloc[20]["ttft_s"] > fixed.requests.iloc[20]["ttft_s"]  # the price: slower prefill


def test_largest_chunk_is_the_slo_boundary():
    cost = InstanceCost.from_bundle(linear_bundle(), tp=1, sm_clock_mhz=None)
    c = cost.largest_chunk(p=100_000, b=8, k_sum=8 * 2000, slo_s=0.05)
    mixed = lambda c: cost.iteration_latency(c, c * 100_000, c * c, 100_000, 8, 8 * 2000)
    assert mixed(c) <= 0.05 < mixed(c + 32)


def roofline_bundle() -> ModelBundle:
    from characterize.roofline_model import RooflineModel

    bundle = linear_bundle()
    pre = RooflineModel("latency_s", "prefill", ["1", "c", "c*p"], [],
                        [{"key": {}, "coef": [0.010, 1e-5, 1e-10], "cov": np.zeros((3, 3)).tolist(), "df_resid": 10, "n": 20,
                          "memory_coef": [0.012, 4e-8], "memory_cov": np.zeros((2, 2)).tolist()}],
                        memory_terms=["1", "p"])
    bundle.models[0] = pre
    return bundle


def test_roofline_prefill_compiles_to_the_same_latency_and_chunk_boundary():
    bundle = roofline_bundle()
    cost = InstanceCost.from_bundle(bundle, tp=1, sm_clock_mhz=None)
    points = pd.DataFrame({"chunk_tokens": [32, 32, 4096, 4096], "prefix_tokens": [0, 1_000_000, 0, 1_000_000],
                           "batch_size": 0, "kv_tokens": 0})
    expected = bundle.predict("latency_s", "prefill", points)
    compiled = [cost.prefill_latency(c, c * p, c * c, p) for c, p in zip(points.chunk_tokens, points.prefix_tokens)]
    assert np.allclose(compiled, expected)
    assert compiled[1] == pytest.approx(0.012 + 4e-8 * 1_000_000)  # 32 tokens after 1 M: the KV read sets the time
    c = cost.largest_chunk(p=200_000, b=8, k_sum=8 * 2000, slo_s=0.05)
    mixed = lambda c: cost.iteration_latency(c, c * 200_000, c * c, 200_000, 8, 8 * 2000)
    assert mixed(c) <= 0.05 < mixed(c + 32)
    # after 1 M tokens the prefix read alone (52 ms) breaks a 50 ms SLO: no chunk fits
    assert cost.largest_chunk(p=1_000_000, b=8, k_sum=8 * 2000, slo_s=0.05) == 0


def test_without_power_model_energy_is_null_not_zero():
    result = replay(_load(100), linear_bundle(power=False), one_pool())
    assert result.requests["energy_j"].isna().all()
    assert result.summary["energy_kwh"] is None


@pytest.mark.parametrize("text, message", [
    ("router = 'least_loaded'\n[[pool]]\ninstances = 4\ntp = 2\nchunk_polcy = 'x'\n", r"c.toml.*unknown key pool\[0\].chunk_polcy"),
    ("[[pool]]\ninstances = 0\n", r"key pool\[0\]\.instances: must be >= 1"),
    ("[[pool\n", "not valid TOML"),
    ("[dynamollm]\nreshard = 'yes'\n", r"c.toml.*key dynamollm\.reshard: must be true or false"),
    ("[dynamollm]\nperiod_s = 0\n", r"key dynamollm\.period_s: must be >= 1"),
])
def test_cluster_toml_errors_name_file_and_key(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_cluster(path)


def test_cluster_from_dict_counts_instances_over_pools():
    good = cluster_from_dict({"pool": [{"instances": 2, "tp": 1}, {"name": "long", "instances": 1}]})
    assert good.instances == 3


def test_replay_cli_writes_artifacts(run_cli, tmp_path):
    bundle = linear_bundle().save(tmp_path / "m.json")
    src = tmp_path / "t.parquet"
    run_cli("trace", "synth", "--duration", "60", "-o", src)
    out = tmp_path / "rep"
    result = run_cli("replay", "run", "--trace", src, "--models", bundle, "-o", out)
    assert result.exit_code == 0, result.output
    assert "[SIMULATED models]" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] + summary["dropped"] == summary["requests"] > 0
    requests = pd.read_parquet(out / "requests.parquet")
    assert set(requests["priority"].dropna()) <= {"high", "low"}
    assert pd.read_parquet(out / "power_timeline.parquet")["power_w"].min() > 0


def test_sweep_on_dask_matches_serial_replays(tmp_path):
    from replay.sweep import expand, parse_vary, run_sweep

    bundle_path = linear_bundle().save(tmp_path / "m.json")
    trace_path = tmp_path / "t.csv"
    _load(300).to_csv(trace_path, index=False, columns=["arrival_s", "input_tokens", "output_tokens"])
    grid = parse_vary(["pool.instances=1,2", "pool.chunk_size=512"])
    assert len(expand(ClusterConfig(), grid)) == 2
    table = run_sweep(trace_path, bundle_path, ClusterConfig(), grid, workers=1)
    assert table["pool.instances"].tolist() == [1, 2]
    from toolkit.traces.formats import read_trace

    serial = replay(read_trace(trace_path).to_pandas(), linear_bundle(),
                    ClusterConfig(pools=[PoolConfig(instances=2, chunk_size=512)]))
    assert table.iloc[1]["energy_kwh"] == pytest.approx(serial.summary["energy_kwh"])
    with pytest.raises(InputError):
        expand(ClusterConfig(), parse_vary(["pool.instances=0"]))


def test_carbon_series_weights_energy_by_time(tmp_path):
    grid = tmp_path / "grid.csv"
    grid.write_text("t_s,g_per_kwh\n0,100\n100000,100\n")
    toml = tmp_path / "c.toml"
    toml.write_text("carbon_csv = 'grid.csv'\npue = 1.0\n[[pool]]\ninstances = 1\n")
    constant = replay(_load(200), linear_bundle(), ClusterConfig(pools=[PoolConfig(instances=1)], carbon_g_per_kwh=100, pue=1.0))
    series = replay(_load(200), linear_bundle(), load_cluster(toml))
    assert series.summary["carbon_kg"] == pytest.approx(constant.summary["carbon_kg"], rel=1e-9)
    grid.write_text("t_s,g_per_kwh\n0,100\n5,-1\n")
    with pytest.raises(InputError, match=r"grid.csv: row 2 \(line 3\): column g_per_kwh: negative"):
        load_cluster(toml)


def test_spp_divides_prefill_and_kvp_flattens_decode_with_context():
    base = InstanceCost.from_bundle(linear_bundle(), tp=1, sm_clock_mhz=None)
    spp = InstanceCost.from_bundle(linear_bundle(), tp=1, sm_clock_mhz=None, pp=4)
    kvp = InstanceCost.from_bundle(linear_bundle(), tp=1, sm_clock_mhz=None, kvp=8)
    assert spp.gpus == 4 and kvp.gpus == 8
    c, p = 8192, 1_000_000
    assert spp.prefill_latency(c, c * p, c * c, p) == pytest.approx(base.prefill_latency(c, c * p, c * c, p) / 4)
    growth = lambda cost: cost.decode_latency(1, 2_000_000) / cost.decode_latency(1, 100_000)
    assert growth(kvp) < growth(base)
    t = trace([0.0], [200_000], [50])
    one = replay(t, linear_bundle(), one_pool(chunk_size=8192, max_batch_tokens=8192))
    piped = replay(t, linear_bundle(), one_pool(chunk_size=8192, max_batch_tokens=8192, pp=4))
    # 25 chunks through 4 stages: a quarter of the time plus the last (short) chunk's drain
    assert one.requests.ttft_s[0] / 4 < piped.requests.ttft_s[0] < one.requests.ttft_s[0] / 4 * 28 / 25
    assert piped.summary["gpus"] == 4


def test_pool_with_its_own_models(tmp_path):
    linear_bundle(k0=0.1).save(tmp_path / "slow.json")
    toml = tmp_path / "c.toml"
    toml.write_text("router = 'round_robin'\n[[pool]]\nname = 'fast'\ninstances = 1\nmax_input_tokens = 1000\n"
                    "[[pool]]\nname = 'slow'\ninstances = 1\nmodels = 'slow.json'\n")
    result = replay(trace([0.0, 0.0], [500, 5000], [2, 2]), linear_bundle(), load_cluster(toml))
    assert result.requests["pool"].tolist() == ["fast", "slow"]
    assert result.requests.ttft_s[1] > 0.1 > result.requests.ttft_s[0]


def test_replay_cli_on_an_azure_csv_without_priorities(run_cli, tmp_path):
    bundle = linear_bundle().save(tmp_path / "m.json")
    csv = tmp_path / "azure.csv"
    csv.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,480,10\n"
                   "2023-11-16 18:17:04.0319600,318,8\n2023-11-16 18:17:05.5000000,100,3\n")
    result = run_cli("replay", "run", "--trace", csv, "--models", bundle, "--json")
    assert result.exit_code == 0, result.output
    assert '"finished": 3' in result.output


def test_spp_pipelines_long_prompts_but_not_one_short_chunk():
    bundle = linear_bundle(power=False)
    short, long = trace([0.0], [1000], [1]), trace([0.0], [64_000], [1])
    for prompt, speedup in ((short, 1.0), (long, 4.0 * 32 / 35)):
        one = replay(prompt, bundle, one_pool(chunk_size=2000, max_batch_tokens=2000)).requests.iloc[0]["ttft_s"]
        spp = replay(prompt, bundle, one_pool(chunk_size=2000, max_batch_tokens=2000, pp=4)).requests.iloc[0]["ttft_s"]
        # 32 chunks through 4 stages: (32 + 3) stage times of ~chunk/4 each; one chunk: all 4 stages in turn,
        # plus the 3 inter-stage activation sends (pp_transfer_s each)
        assert one / (spp - 3 * PP_TRANSFER_S) == pytest.approx(speedup, rel=0.03 if speedup > 1 else 1e-9)


def _strict_json(text: str):
    """Parse as any JSON parser would: NaN and Infinity are not JSON."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_replay_json_outputs_are_strict_json_with_null_for_unknown(run_cli, tmp_path):
    bundle = linear_bundle().save(tmp_path / "m.json")
    csv = tmp_path / "t.csv"
    csv.write_text("arrival_s,input_tokens,output_tokens\n0.0,100,1\n0.5,200,1\n")  # one token each: no TBT at all
    out = tmp_path / "rep"
    result = run_cli("replay", "run", "--trace", csv, "--models", bundle, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    for text in (result.stdout, (out / "summary.json").read_text()):
        summary = _strict_json(text)
        assert summary["tbt_p50_s"] is None and summary["tbt_p99_s"] is None
        assert summary["finished"] == 2
    from toolkit.jsonio import dump_json

    assert _strict_json(dump_json({"inf": np.float64("inf"), "n": np.int64(3), "t": (np.nan, np.bool_(True))})) == {
        "inf": None, "n": 3, "t": [None, True]}


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory no file can be created in: by its mode, or, for root (whom modes do not stop),
    by the immutable attribute; skipped where neither holds."""
    import shutil
    import subprocess
    import tempfile

    def writable(path):
        try:
            handle, probe = tempfile.mkstemp(dir=path)
        except OSError:
            return False
        os.close(handle)
        os.unlink(probe)
        return True

    path = tmp_path / "read-only"
    path.mkdir()
    path.chmod(0o555)
    immutable = False
    if writable(path) and shutil.which("chattr"):
        immutable = subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    if writable(path):
        pytest.skip("cannot make a read-only directory here")
    yield path
    if immutable:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    path.chmod(0o755)


def test_outputs_to_a_read_only_directory_fail_in_one_line(run_cli, tmp_path, read_only_dir, monkeypatch):
    """Before any work (no replay runs), naming the directory (not a temporary file)."""
    bundle = linear_bundle().save(tmp_path / "m.json")
    src = tmp_path / "t.csv"
    _load(50).to_csv(src, index=False, columns=["arrival_s", "input_tokens", "output_tokens"])
    good = tmp_path / "rep"
    assert run_cli("replay", "run", "--trace", src, "--models", bundle, "-o", good).exit_code == 0

    def no_replay(*args, **kwargs):
        raise AssertionError("replayed before checking the output directory")

    monkeypatch.setattr("replay.engine.replay", no_replay)
    commands = [("replay", "run", "--trace", src, "--models", bundle, "-o", read_only_dir),
                ("replay", "run", "--trace", src, "--models", bundle, "-o", read_only_dir / "new-run"),
                ("report", "replay", good, "-o", read_only_dir / "report.html")]
    for args in commands:
        result = run_cli(*args)
        assert result.exit_code != 0
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and str(read_only_dir) in lines[0] and "Traceback" not in result.output, result.output
        assert "cannot write" in lines[0] and ".tmp" not in lines[0] and "replayed" not in lines[0]
    assert os.listdir(read_only_dir) == []


def test_a_failed_rewrite_leaves_no_summary_beside_new_artifacts(tmp_path, monkeypatch):
    """summary.json marks a complete run: an earlier run's is removed before the new artifacts."""
    import replay.runner as runner
    from toolkit.errors import InputError

    result = replay(_load(50), linear_bundle(), one_pool())
    out = tmp_path / "rep"
    runner.write_outputs(result, dict(result.summary), out, True)
    assert (out / "summary.json").exists()

    def fail(*args, **kwargs):
        raise InputError(out / "power_timeline.parquet", "cannot write (No space left on device)")

    monkeypatch.setattr("toolkit.parquet_io.atomic_write_table", fail)
    with pytest.raises(InputError):
        runner.write_outputs(result, dict(result.summary), out, True)
    assert not (out / "summary.json").exists()
