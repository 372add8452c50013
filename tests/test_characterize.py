import json

import numpy as np
import pandas as pd
import pytest

from characterize.chunking import adaptive_chunks
from characterize.fitting import fit_bundle, select_latency_model, latency_candidates
from characterize.importers import load_measurements
from characterize.linear_model import TermsModel
from characterize.metrics import mape
from characterize.model_io import ModelBundle
from characterize.power_model import PowerModel, power_curve
from characterize.terms import parse_term
from characterize.trees import TreeEnsembleModel
from toolkit.errors import InputError

from .conftest import shared_file


def prefill_truth(c, p, f=1980.0, tp=1):
    """A known physical latency law: linear layers + attention (c*p + c^2/2), clock-scaled."""
    return (2e-3 + 6e-6 * c + 9e-11 * c * p + 4.5e-11 * c**2) * (1980.0 / f) / tp


def prefill_table(rng, n, p_max, freqs=(1980.0,)):
    c = rng.choice([256, 512, 1024, 2048, 4096], n)
    p = rng.integers(0, p_max, n)
    f = rng.choice(freqs, n)
    return pd.DataFrame({"phase": "prefill", "chunk_tokens": c, "prefix_tokens": p, "batch_size": 0, "kv_tokens": 0,
                         "tp": 1, "sm_clock_mhz": f, "latency_s": prefill_truth(c, p, f) * rng.lognormal(0, 0.02, n)})


def test_physical_model_extrapolates_in_context_and_trees_do_not():
    rng = np.random.default_rng(0)
    train = prefill_table(rng, 600, 32_768)
    far = prefill_table(rng, 300, 1_000_000)
    far = far[far["prefix_tokens"] >= 131_072]
    physical = TermsModel.fit(train, "latency_s", "prefill", ["1", "c", "c*p", "c^2", "p"])
    trees = TreeEnsembleModel.fit(train, "latency_s", "prefill", n_estimators=100)
    assert mape(far["latency_s"], physical.predict(far)) < 5.0
    assert mape(far["latency_s"], trees.predict(far)) > 30.0


def roofline_truth(c, p):
    """Compute-bound FLOPs or the prefix's KV read, whichever is longer (what an H100 does)."""
    return np.maximum(2e-3 + 6e-6 * c + 9e-11 * c * p + 4.5e-11 * c**2, 6e-3 + 4e-8 * p)


def test_roofline_model_fits_memory_bound_small_chunks_the_additive_model_cannot():
    from characterize.roofline_model import RooflineModel

    rng = np.random.default_rng(7)
    n = 800
    c = rng.choice([32, 64, 128, 256, 512, 1024, 2048, 4096], n)
    p = rng.integers(0, 1_000_000, n)
    table = pd.DataFrame({"phase": "prefill", "chunk_tokens": c, "prefix_tokens": p, "batch_size": 0, "kv_tokens": 0,
                          "tp": 1, "sm_clock_mhz": 1980.0, "latency_s": roofline_truth(c, p) * rng.lognormal(0, 0.02, n)})
    roofline = RooflineModel.fit(table, "latency_s", "prefill", ["1", "c", "c*p", "c^2"], ["1", "p"])
    additive = TermsModel.fit(table, "latency_s", "prefill", ["1", "c", "c*p", "c^2", "p"])
    grid = pd.DataFrame({"chunk_tokens": np.repeat([32, 128, 512, 2048], 4), "prefix_tokens": np.tile([0, 65_536, 262_144, 1_000_000], 4),
                         "batch_size": 0, "kv_tokens": 0, "tp": 1, "sm_clock_mhz": 1980.0})
    truth = roofline_truth(grid["chunk_tokens"], grid["prefix_tokens"])
    memory_bound = (6e-3 + 4e-8 * grid["prefix_tokens"]) > truth - 1e-12
    assert memory_bound.sum() >= 4 and (~memory_bound).sum() >= 4
    worst = lambda predicted: float(np.max(np.abs(predicted / truth - 1))) * 100
    assert mape(truth, roofline.predict(grid)) < 3.0 and worst(roofline.predict(grid)) < 6.0
    assert worst(additive.predict(grid)) > 12.0  # the sum of pieces misses the crossover and long-prefix reads
    assert (roofline.memory_bound(grid) == memory_bound).mean() >= 0.9
    model, report = select_latency_model(table, "prefill", latency_candidates("prefill", tree_estimators=30))
    assert report["selected"] == "roofline" and model.kind == "roofline"
    low, high = roofline.predict_interval(grid)
    assert (low <= roofline.predict(grid)).all() and (roofline.predict(grid) <= high).all()


def test_selection_prefers_the_model_that_extrapolates():
    rng = np.random.default_rng(1)
    table = prefill_table(rng, 800, 1_000_000)
    model, report = select_latency_model(table, "prefill", latency_candidates("prefill", tree_estimators=60))
    assert report["selected"] == "physical" and model.kind == "terms"
    assert report["physical"]["extrapolation_mape"] < 5.0 < report["trees"]["extrapolation_mape"]


def test_confidence_interval_covers_truth_and_frequency_interpolates():
    rng = np.random.default_rng(2)
    table = prefill_table(rng, 900, 65_536, freqs=(1200.0, 1980.0))
    model = TermsModel.fit(table, "latency_s", "prefill", ["1", "c", "c*p", "c^2"])
    query = pd.DataFrame({"chunk_tokens": [2048], "prefix_tokens": [40_000], "tp": [1], "sm_clock_mhz": [1980.0]})
    lo, hi = model.predict_interval(query)
    assert lo[0] < prefill_truth(2048, 40_000) < hi[0]
    mid = query.assign(sm_clock_mhz=1600.0)
    assert model.predict(mid)[0] == pytest.approx(prefill_truth(2048, 40_000, 1600.0), rel=0.03)


def test_power_model_recovers_saturation_and_frequency():
    rng = np.random.default_rng(3)
    load = rng.integers(1, 2048, 400).astype(float)
    f = rng.choice([1000.0, 1500.0, 1980.0], 400)
    truth = power_curve(np.array([90.0, 560.0, 300.0, 0.55]), load, f / 1980.0)
    frame = pd.DataFrame({"load_tokens": load, "sm_clock_mhz": f, "tp": 1, "mean_power_w": truth * rng.normal(1, 0.01, 400)})
    model = PowerModel.fit(frame, "mean_power_w", "decode", "load_tokens")
    assert mape(truth, model.predict(frame)) < 1.5
    p_idle, dynamic, load0, v0, load0_clock_exponent = model.groups[0]["params"]
    assert p_idle == pytest.approx(90, rel=0.1) and load0 == pytest.approx(300, rel=0.15)
    assert load0_clock_exponent < 0.1  # the truth's saturation load does not move with the clock


def test_bundle_json_round_trip_all_kinds(tmp_path):
    rng = np.random.default_rng(4)
    table = prefill_table(rng, 300, 65_536)
    table["mean_power_w"] = 100 + 0.2 * table["chunk_tokens"]
    table["load_tokens"] = table["chunk_tokens"]
    from characterize.roofline_model import RooflineModel

    memory_bound = table.assign(latency_s=np.maximum(table["latency_s"], 6e-3 + 4e-8 * table["prefix_tokens"]))
    bundle = ModelBundle([TermsModel.fit(table, "latency_s", "prefill", ["1", "c", "c*p"]),
                          RooflineModel.fit(memory_bound.assign(phase="mixed"), "latency_s", "mixed", ["1", "c", "c*p"], ["1", "p"]),
                          TreeEnsembleModel.fit(table.assign(phase="decode"), "latency_s", "decode", n_estimators=20),
                          PowerModel.fit(table, "mean_power_w", "prefill", "load_tokens")], {"simulated": True})
    path = bundle.save(tmp_path / "m.json")
    text = path.read_text()
    assert json.loads(text)["schema"] == "wattlas.model_bundle"
    again = ModelBundle.load(path)
    assert again.simulated
    assert [m.kind for m in again.models] == ["terms", "roofline", "gbr_trees", "power_saturating"]
    for old, new in zip(bundle.models, again.models):
        assert np.allclose(old.predict(table), new.predict(table))


def test_bundle_rejects_code_in_terms_and_foreign_json(tmp_path):
    with pytest.raises(ValueError):
        parse_term("__import__('os').system('true')")
    evil = {"schema": "wattlas.model_bundle", "schema_version": 1,
            "models": [{"kind": "terms", "target": "latency_s", "phase": "prefill", "terms": ["os.system"],
                        "group_keys": [], "groups": []}]}
    (tmp_path / "evil.json").write_text(json.dumps(evil))
    with pytest.raises(InputError, match=r"key models\[0\]\.terms\[0\]: bad model term"):
        ModelBundle.load(tmp_path / "evil.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(InputError, match="not a wattlas model bundle"):
        ModelBundle.load(tmp_path / "other.json")


def test_adaptive_chunks_shrink_with_prefix_and_respect_slo():
    rng = np.random.default_rng(5)
    table = prefill_table(rng, 500, 1_000_000)
    decode = pd.DataFrame({"phase": "decode", "chunk_tokens": 0, "prefix_tokens": 0, "batch_size": rng.integers(1, 64, 300),
                           "kv_tokens": rng.integers(128, 8192, 300), "tp": 1, "sm_clock_mhz": 1980.0})
    decode["latency_s"] = 5e-3 + 1e-5 * decode["batch_size"] + 2e-9 * decode["batch_size"] * decode["kv_tokens"]
    bundle = fit_bundle(pd.concat([table, decode]).assign(mean_power_w=np.nan), tree_estimators=20)
    result = adaptive_chunks(bundle, 0.030, [0, 8192, 65_536, 262_144, 1_048_576], batch_size=16, kv_tokens=4096)
    chunks = result["chunk_tokens"].to_numpy()
    assert (np.diff(chunks) <= 0).all() and chunks[0] > chunks[-1] > 0
    assert (result["predicted_latency_s"] <= 0.030).all()
    # the next larger chunk would break the SLO
    bigger = pd.DataFrame({"chunk_tokens": chunks + 32, "prefix_tokens": result["prefix_tokens"], "batch_size": 16,
                           "kv_tokens": 4096, "tp": 1, "sm_clock_mhz": 1980.0})
    launch = bundle.predict("latency_s", "decode", bigger.assign(batch_size=0, kv_tokens=0))
    over = bundle.predict("latency_s", "prefill", bigger) + bundle.predict("latency_s", "decode", bigger) - launch
    assert (over > 0.030).all()


def test_vidur_linear_ops_holdout_within_goal():
    frame = load_measurements(shared_file("vidur", "compute_h100_Llama-2-7b-hf_mlp.csv"))
    bundle = fit_bundle(frame, tree_estimators=30)
    report = bundle.validation["latency_s/linear"]
    assert report["selected"] == "physical"
    assert report["physical"]["cv_mape"] <= 5.0


def test_mlenergy_power_holdout_within_goal():
    frame = load_measurements(shared_file("mlenergy", "mlenergy_v3_llm_configs.csv"))
    bundle = fit_bundle(frame[frame["gpu_name"] == "H100"], tree_estimators=30)
    assert bundle.validation["mean_power_w/serving"]["physical"]["cv_mape"] <= 8.0


def test_importer_missing_column_names_it(write_text):
    from characterize.importers import load_measurements

    path = write_text("perf.csv", "prompt_size,batch_size,token_size,prompt_time,token_time\n1,1,1,1,1\n")
    with pytest.raises(InputError, match="unrecognized measurement table"):
        load_measurements(path)
    with pytest.raises(InputError, match="column tensor_parallel"):
        load_measurements(path, fmt="splitwise")


def test_cli_fit_show_predict_validate_chunks(run_cli, tmp_path):
    rng = np.random.default_rng(6)
    table = prefill_table(rng, 300, 262_144)
    csv = tmp_path / "splitwise.csv"
    # a Splitwise-format table whose prefill rows follow the known law (decode rows: a line in batch)
    sw = pd.DataFrame({"model": "m", "hardware": "h100-80gb", "prompt_size": table["chunk_tokens"], "batch_size": 1,
                       "token_size": 128, "prompt_time": prefill_truth(table["chunk_tokens"], 0) * 1000,
                       "token_time": 20.0 + 0.1 * rng.integers(1, 64, len(table)), "tensor_parallel": 1})
    sw.to_csv(csv, index=False)
    bundle = tmp_path / "b.json"
    result = run_cli("characterize", "fit", csv, "-o", bundle, "--trees", "20")
    assert result.exit_code == 0, result.output
    assert "latency_s/prefill" in result.output
    assert "prefill" in run_cli("characterize", "show", bundle).output
    out = run_cli("characterize", "predict", bundle, "--phase", "prefill", "-c", "2048", "--tp", "1").output
    assert "latency" in out and "CI" in out
    assert "MAPE" in run_cli("characterize", "validate", bundle, csv).output
    missing = run_cli("characterize", "predict", bundle, "--phase", "mixed")
    assert missing.exit_code != 0 and "no latency model" in missing.output


def test_rows_without_latency_are_left_out_with_a_warning_naming_the_row(write_text):
    from characterize.importers import load_measurements

    path = write_text("perf.csv", "prompt_size,batch_size,token_size,prompt_time,token_time,tensor_parallel\n"
                                  "100,1,10,5,2,1\n200,1,10,5,,1\n300,1,10,5,2,1\n")
    with pytest.warns(UserWarning, match=r"perf.csv: 1 rows .* \(first: row 2, column latency\)"):
        frame = load_measurements(path)
    assert len(frame) == 5  # 3 prefill + 2 decode rows


def test_power_capped_profile_rows_are_flagged_on_import(tmp_path):
    from characterize.importers import load_measurements
    from collectors.profiling.sim_profile import simulate_profile
    from toolkit.parquet_io import atomic_write_table

    from collectors.profiling.profiler import profile_table

    frame = simulate_profile("llama3-8b", "quick", 1, 0).to_pandas()
    # the simulated H100 throttles at its 700 W limit where prefill drives both compute and HBM
    # at 1980 MHz, as a real one does: those rows are flagged too
    with pytest.warns(UserWarning, match=r"ok-sim.parquet: \d+ rows ran power-capped"):
        load_measurements(atomic_write_table(simulate_profile("llama3-8b", "quick", 1, 0), tmp_path / "ok-sim.parquet"))
    frame["power_capped_share"] = 0.0
    path = atomic_write_table(profile_table(frame, {}), tmp_path / "ok.parquet")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_measurements(path)  # nothing capped: no warning

    frame.loc[3, "power_capped_share"] = 0.5
    capped = atomic_write_table(profile_table(frame, {}), tmp_path / "capped.parquet")
    with pytest.warns(UserWarning, match=r"capped.parquet: 1 rows ran power-capped \(first: row 4, column power_capped_share\)"):
        load_measurements(capped)


def test_cli_show_predict_validate_on_a_roofline_bundle(run_cli, tmp_path):
    profile, models = tmp_path / "p.parquet", tmp_path / "m.json"
    assert run_cli("collect", "profile", "--backend", "sim", "-o", profile).exit_code == 0
    fitted = run_cli("characterize", "fit", profile, "-o", models, "--trees", "20", "--phase", "prefill")
    assert fitted.exit_code == 0, fitted.output
    assert ModelBundle.load(models).find("latency_s", "prefill").kind == "roofline"
    shown = run_cli("characterize", "show", models)
    assert shown.exit_code == 0 and "max(compute:" in shown.output and "memory: t^-1=" in shown.output, shown.output
    predicted = run_cli("characterize", "predict", models, "--phase", "prefill", "-c", "32", "-p", "1000000", "--tp", "1")
    assert predicted.exit_code == 0 and "95% CI" in predicted.output and "[SIMULATED]" in predicted.output
    validated = run_cli("characterize", "validate", models, profile)
    assert validated.exit_code == 0 and "latency_s/prefill: MAPE" in validated.output


def test_mlenergy_v1_and_v2_tables_import_with_derived_power(tmp_path):
    v2 = tmp_path / "v2.csv"
    v2.write_text("Model,GPU,TP,PP,Energy/req (J),Avg TPOT (s),Token tput (tok/s),Avg Output Tokens,Avg BS (reqs),"
                  "Max BS (reqs),task,config_file\n"
                  "m,NVIDIA H100 80GB HBM3,2,1,100.0,0.05,2000.0,400.0,64.0,64,chat,bs64+tp2+pp1.json\n")
    (row,) = load_measurements(v2).to_dict("records")
    # 100 J/request x (2000 tok/s / 400 tok/request = 5 requests/s) = 500 W over 2 GPUs
    assert row["mean_power_w"] == pytest.approx(250.0) and row["batch_size"] == 64.0 and row["tp"] == 2
    assert row["latency_s"] == 0.05 and row["backend"] == "measured:ml.energy-v2"
    v1 = tmp_path / "v1.csv"
    v1.write_text("gpu,task,model,throughput,response_length,latency,energy\nA100,chat,m,25.0,250.0,10.0,2000.0\n")
    (row,) = load_measurements(v1).to_dict("records")
    # 2000 J/request x (25 tok/s / 250 tok/request) = 200 W; 10 s / 250 tokens = 40 ms per token;
    # Little's law: 25 tok/s x 0.04 s = 1 sequence generating at a time
    assert row["mean_power_w"] == pytest.approx(200.0) and row["latency_s"] == pytest.approx(0.04)
    assert row["batch_size"] == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["mlenergy_v1_legacy_all.csv", "mlenergy_v2_llm_configs.csv"])
def test_shared_mlenergy_v1_and_v2_fit(name):
    frame = load_measurements(shared_file("mlenergy", name))
    bundle = fit_bundle(frame, tree_estimators=20)
    assert bundle.find("mean_power_w", "serving") is not None
