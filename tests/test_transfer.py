"""The transferring latency family, its support, identity keys, robust fitting, measured idle
power and the ``validate --json`` contract."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from characterize.fitting import fit_bundle
from characterize.linear_model import AmbiguousModel, Extrapolation, TermsModel
from characterize.model_io import ModelBundle
from characterize.power_model import PowerModel
from characterize.terms import SHARD_TERMS, shard_terms


def sharded_prefill(tps=(2, 4, 8), clocks=(1410.0, 1980.0), seed=0, model="m", gpu="G") -> pd.DataFrame:
    """Latencies from a known sharded law: weights read 1/t, a log2(t) all-reduce latency, per-token
    compute c/t scaled by the clock period, attention c^2/(n t), all-reduce bytes c (t-1)/t."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in tps:
        for f in clocks:
            for c in (128, 256, 512, 1024, 2048, 4096, 8192):
                for n in (1, 2, 4):
                    period = 1980.0 / f
                    latency = (0.04 / t + 0.002 * np.log2(t) + 0.0003 + c * (2e-4 / t) * period
                               + 2e-9 * c * c / (n * t) * period + 2e-5 * c * (t - 1) / t)
                    rows.append({"phase": "prefill", "chunk_tokens": c, "prefix_tokens": 0, "prefill_sequences": n,
                                 "batch_size": 0, "kv_tokens": 0, "tp": t, "sm_clock_mhz": f, "model": model,
                                 "gpu_name": gpu, "latency_s": latency * rng.lognormal(0, 0.01)})
    return pd.DataFrame(rows)


def test_fitted_on_tp2_and_tp4_the_model_predicts_tp8():
    frame = sharded_prefill()
    train, test = frame[frame.tp < 8], frame[frame.tp == 8]
    model = TermsModel.fit(train, "latency_s", "prefill", shard_terms(SHARD_TERMS["prefill"], "prefill", 2))
    assert "tp" not in model.group_keys and "sm_clock_mhz" not in model.group_keys
    error = np.abs(model.predict(test) / test.latency_s - 1)
    assert error.mean() < 0.03, error.mean()


def test_a_clock_beyond_the_profile_is_refused_unless_allowed():
    frame = sharded_prefill()
    model = TermsModel.fit(frame, "latency_s", "prefill", shard_terms(SHARD_TERMS["prefill"], "prefill", 2))
    point = pd.DataFrame({"chunk_tokens": [512], "prefix_tokens": [0], "tp": [4], "sm_clock_mhz": [3000.0]})
    with pytest.raises(Extrapolation, match="3000 MHz is outside the profiled 1410-1980 MHz"):
        model.predict(point)
    assert np.isnan(model.predict(point, strict=False)[0])
    assert model.predict(point, allow_extrapolation=True)[0] > 0
    inside = point.assign(sm_clock_mhz=2000.0)  # within the 5 % margin
    assert model.predict(inside)[0] > 0


def test_one_tp_degree_cannot_transfer_and_fit_says_so():
    frame = sharded_prefill(tps=(4,))
    model = TermsModel.fit(frame, "latency_s", "prefill", SHARD_TERMS["prefill"])
    with pytest.raises(Extrapolation, match="one TP degree"):
        model.predict(frame.iloc[:1].assign(tp=8))
    bundle = fit_bundle(frame, phases=["prefill"], tree_estimators=5)
    assert any("one TP degree" in w for w in bundle.metadata["warnings"])


def test_a_failed_measurement_does_not_pull_the_fit():
    frame = sharded_prefill(tps=(2, 4))
    clean = TermsModel.fit(frame, "latency_s", "prefill", SHARD_TERMS["prefill"] + ["c*t^-1*q"])
    bad = frame.copy()
    bad.loc[bad.index[-3:], "latency_s"] /= 10  # a batch timed at a tenth of its neighbours
    robust = TermsModel.fit(bad, "latency_s", "prefill", SHARD_TERMS["prefill"] + ["c*t^-1*q"])
    assert robust.groups[0]["outliers"] >= 3
    drift = np.abs(robust.predict(frame) / clean.predict(frame) - 1).max()
    assert drift < 0.02, drift


def test_cost_terms_never_come_out_negative():
    frame = sharded_prefill(tps=(2, 4))
    model = TermsModel.fit(frame, "latency_s", "prefill", shard_terms(SHARD_TERMS["prefill"], "prefill", 2))
    coef = np.asarray(model.groups[0]["coef"])
    constant = [i for i, t in enumerate(model.terms) if t == "1"]
    assert (np.delete(coef, constant) >= 0).all(), dict(zip(model.terms, coef))


def test_a_mixed_table_fits_one_model_per_gpu_and_model_and_asks_which(tmp_path, run_cli):
    frame = pd.concat([sharded_prefill(model="a"), sharded_prefill(model="b", seed=1).assign(
        latency_s=lambda d: d.latency_s * 2)], ignore_index=True)
    bundle = fit_bundle(frame, phases=["prefill"], tree_estimators=5)
    model = bundle.find("latency_s", "prefill")
    assert "model" in model.group_keys and len(model.groups) == 2
    point = pd.DataFrame({"chunk_tokens": [512], "prefix_tokens": [0], "tp": [4], "sm_clock_mhz": [1980.0]})
    with pytest.raises(AmbiguousModel, match="choose one with --model"):
        model.predict(point)
    a, b = (bundle.select(model=m).find("latency_s", "prefill").predict(point)[0] for m in ("a", "b"))
    assert b == pytest.approx(2 * a, rel=0.05)
    path = bundle.save(tmp_path / "m.json")
    asked = run_cli("characterize", "predict", path, "--phase", "prefill", "-c", "512", "--tp", "4")
    assert asked.exit_code != 0 and "--model" in asked.output and "Traceback" not in asked.output
    chosen = run_cli("characterize", "predict", path, "--phase", "prefill", "-c", "512", "--tp", "4", "--model", "b")
    assert chosen.exit_code == 0 and "latency" in chosen.output, chosen.output
    narrowed = run_cli("characterize", "select", path, "--model", "a", "-o", tmp_path / "a.json")
    assert narrowed.exit_code == 0 and ModelBundle.load(tmp_path / "a.json").identities() == {}


def test_idle_power_is_measured_not_extrapolated():
    load = np.array([0, 0, 1, 2, 4, 8, 16, 32, 64, 128, 256], dtype=float)
    power = np.where(load == 0, 120.0, 480.0 + 220.0 * (1 - np.exp(-load / 80.0)))
    frame = pd.DataFrame({"load_tokens": load, "mean_power_w": power, "tp": 1})
    model = PowerModel.fit(frame, "mean_power_w", "decode", "load_tokens")
    assert model.groups[0]["idle_w"] == pytest.approx(120.0)
    predicted = model.predict(frame)
    assert predicted[0] == pytest.approx(120.0) and predicted[2] > 400
    from replay.cost_model import CompiledPower

    assert CompiledPower.from_model(model, 1, None)(0.0) == pytest.approx(120.0)


def test_validate_json_contract(tmp_path, run_cli):
    frame = sharded_prefill(tps=(2, 4))
    train = tmp_path / "train.csv"
    frame.to_csv(train, index=False)
    table = sharded_prefill(tps=(2, 4, 8), seed=3)
    held = tmp_path / "held.csv"
    table.assign(backend="measured:test").to_csv(held, index=False)
    bundle = fit_bundle(frame.assign(backend="measured:test"), phases=["prefill"], tree_estimators=5)
    path = bundle.save(tmp_path / "m.json")
    from characterize.validation_report import score_bundle

    result = score_bundle(ModelBundle.load(path), table)
    scores = result["phases"]["prefill"]
    assert {"mape", "p90_ape", "covered", "rows"} <= set(scores)
    assert scores["rows"] == len(table) and scores["covered"] == len(table)  # TP8 predicted from TP2 + TP4
    assert 0 <= scores["mape"] < 0.05 and scores["p90_ape"] >= scores["mape"] * 0.5
    # beyond the clock range: counted and explained, never NaN
    far = score_bundle(ModelBundle.load(path), table.assign(sm_clock_mhz=3000.0))["phases"]["prefill"]
    assert far["covered"] == 0 and far["mape"] is None and "beyond what the model was fitted on" in far["uncovered"][0]
    json.dumps(far, allow_nan=False)


def test_validate_json_on_the_command_line(tmp_path, run_cli):
    from collectors.profiling.sim_profile import simulate_profile
    from toolkit.parquet_io import atomic_write_table

    profile = tmp_path / "p.parquet"
    atomic_write_table(simulate_profile(repeats=1), profile)
    models = tmp_path / "m.json"
    assert run_cli("characterize", "fit", profile, "-o", models, "--trees", "5", "--phase", "decode").exit_code == 0
    result = run_cli("characterize", "validate", models, profile, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    decode = data["phases"]["decode"]
    assert set(decode) >= {"mape", "p90_ape", "covered", "rows"} and decode["covered"] == decode["rows"] > 0
    assert 0 <= decode["mape"] < 0.05


def test_replay_run_refuses_a_clock_beyond_the_profile_unless_allowed(tmp_path, run_cli):
    from collectors.profiling.sim_profile import simulate_profile
    from toolkit.parquet_io import atomic_write_table

    profile, models = tmp_path / "p.parquet", tmp_path / "m.json"
    atomic_write_table(simulate_profile(repeats=1), profile)
    assert run_cli("characterize", "fit", profile, "-o", models, "--trees", "5", "--phase", "prefill",
                   "--phase", "decode").exit_code == 0
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,input_tokens,output_tokens\n0.0,100,5\n0.5,200,5\n")
    cluster = tmp_path / "c.toml"
    cluster.write_text("[[pool]]\ninstances = 1\nsm_clock_mhz = 3000\n")
    refused = run_cli("replay", "run", "--trace", trace, "--models", models, "--cluster", cluster)
    assert refused.exit_code != 0 and "3000 MHz is outside the profiled" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and "Traceback" not in refused.output
    allowed = run_cli("replay", "run", "--trace", trace, "--models", models, "--cluster", cluster,
                      "--allow-extrapolation", "--json")
    assert allowed.exit_code == 0, allowed.output
    assert any("3000" in note for note in json.loads(allowed.stdout)["extrapolated"])
