"""The simulated H100's power: one law for the telemetry device and the profile, calibrated to
ML.ENERGY's measured H100 points; the fitted power model is physical (monotone, bounded)."""

import importlib.util
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from collectors.profiling import sim_profile
from collectors.profiling.sim_profile import (PRESETS, SimHardware, decode_point, iteration_cost, operating_point,
                                              simulate_profile)
from collectors.telemetry import sim_source
from collectors.telemetry.sim_source import (REASON_SW_POWER_CAP, SimGpuSpec, SimSource, serving_loads,
                                             sim_power_of)

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sim_calibration.py"
# ML.ENERGY v3, Llama-3.1-8B-Instruct, 1x H100, lm-arena-chat (ml-energy/leaderboard @ 0cd52dab):
# (max_num_seqs, avg_batch_size, avg_output_len, avg_power_watts) - the calibration's anchors, kept
# here so the regression test needs no shared data
MLENERGY_POINTS = [(8, 7.978202, 388.677734, 486.438054), (64, 63.917808, 395.541016, 610.347622),
                   (256, 255.189873, 404.183105, 690.508384)]


def device_power(load, seconds=2.0, source=None):
    """Mean power (W) of a simulated GPU held at ``load``, from its energy counter (virtual clock)."""
    now = [source.clock() if source is not None else 0.0]
    source = source or SimSource(gpus=1, seed=0, clock=lambda: now[0])
    source.clock = lambda: now[0]
    source.set_activity(0, load)
    now[0] += 1.0
    e0, _ = source.read_energy_power(0)
    now[0] += seconds
    e1, _ = source.read_energy_power(0)
    return (e1 - e0) / seconds


def bench():
    spec = importlib.util.spec_from_file_location("bench_sim_calibration", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_device_and_profile_draw_through_one_law():
    assert sim_profile.sim_power_of is sim_source.sim_power_of
    hw, shape = SimHardware(), PRESETS["llama3-8b"]
    # a memory-bound decode, a balanced mixed iteration and a compute-bound prefill
    for c, p, b, k in [(0, 0, 16, 2048), (128, 0, 16, 4096), (8192, 0, 0, 0)]:
        latency, uc, um, f, power = operating_point(shape, hw, c, p, b, k, 1, 1980.0)
        assert float(power) == pytest.approx(float(sim_power_of(uc, um, f, hw.gpu)), rel=1e-12)
        assert float(power) <= hw.gpu.power_limit_w + 1e-6
        assert device_power((float(uc), float(um))) == pytest.approx(float(power), rel=2e-3)
    # the profile's rows (1 % measurement noise) sit on the same law
    frame = simulate_profile("llama3-8b", "quick", 1, 0).to_pandas()
    decode = frame[(frame.phase == "decode") & (frame.tp == 1)]
    _, uc, um = iteration_cost(shape, hw, 0, 0, decode.batch_size, decode.kv_tokens, 1, decode.sm_clock_mhz)
    law = sim_power_of(uc, um, decode.sm_clock_mhz.to_numpy(), hw.gpu)
    assert np.abs(decode.mean_power_w / law - 1).max() < 0.05


def test_default_activity_mix_is_simulated_iterations():
    loads = serving_loads()
    _, uc, um = iteration_cost(PRESETS["llama3-8b"], SimHardware(), 0, 0, 64, 1024, 1, 1980.0)
    assert loads["decode"] == (round(float(uc), 4), round(float(um), 4))
    assert loads["decode"][1] > 0.8 > loads["decode"][0]  # decode is memory bound
    assert loads["prefill"][0] > 0.9  # prefill is compute bound
    now = [0.0]
    source = SimSource(gpus=1, seed=5, clock=lambda: now[0])
    seen = set()
    for step in range(4000):  # 200 s of the default mix
        now[0] = step * 0.05
        reading = source.read(0)
        load = source.gpus[0].last[3]
        seen.add(load)
        expected = sim_power_of(*load, reading["sm_clock_mhz"], source.spec) if reading["clocks_event_reasons"] != REASON_SW_POWER_CAP else 700.0
        assert source.gpus[0].last[0] == pytest.approx(float(expected), rel=1e-3, abs=0.5)
    assert seen <= set(loads.values()) and len(seen) >= 4
    assert device_power("decode") == pytest.approx(float(sim_power_of(*loads["decode"], 1980.0, SimGpuSpec())), rel=2e-3)
    assert device_power(0.0) == pytest.approx(SimGpuSpec().idle_w, rel=2e-3)


def test_power_limit_throttles_the_clock():
    now = [0.0]
    source = SimSource(gpus=1, seed=0, clock=lambda: now[0])
    assert device_power((1.0, 1.0), source=source) == pytest.approx(700.0, rel=2e-3)
    reading = source.read(0)
    assert reading["sm_clock_mhz"] < 1980 and reading["clocks_event_reasons"] & REASON_SW_POWER_CAP
    source.set_power_limit(0, 400.0)
    assert device_power((1.0, 1.0), source=source) == pytest.approx(400.0, rel=2e-3)


@pytest.mark.parametrize("seqs, batch, output_len, measured_w", MLENERGY_POINTS)
def test_decode_power_within_10_percent_of_mlenergy(seqs, batch, output_len, measured_w):
    point = decode_point(batch, sim_profile.MLENERGY_PROMPT_TOKENS + output_len / 2)
    assert point["power_w"] == pytest.approx(measured_w, rel=0.10)
    assert device_power((point["compute_util"], point["memory_util"])) == pytest.approx(measured_w, rel=0.10)


def test_refit_on_shared_data_agrees_with_stored_constants():
    module = bench()
    points = module.load_points()
    if points is None:
        pytest.skip("shared data (mlenergy_v3_llm_configs.csv) absent")
    fitted = module.refit(points)
    assert module.disagreement(fitted) <= module.TOLERANCE, fitted
    assert fitted["mape"] < 5.0
    table = module.simulate(points)
    assert ((table.device_w / table.power_w - 1).abs() < 0.10).all()


def test_benchmark_skips_cleanly_without_data(tmp_path, capsys):
    assert bench().main(["--data", str(tmp_path / "none"), "--refit"]) == 0
    assert "absent, skipped" in capsys.readouterr().out


@pytest.fixture(scope="module")
def profile_rows():
    from characterize.importers import from_profile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its power-capped rows are flagged
        return from_profile(simulate_profile("llama3-8b", "quick", 2, 0))


@pytest.mark.parametrize("phase", ["prefill", "mixed", "decode"])
def test_fitted_power_model_is_monotone_bounded_and_clock_dependent(profile_rows, phase):
    from characterize.power_model import PowerModel
    from replay.cost_model import CompiledPower

    model = PowerModel.fit(profile_rows[profile_rows.phase == phase], "mean_power_w", phase, "load_tokens")
    assert model.power_limit_w == 700.0
    for group in model.groups:
        assert all(v >= 0 for v in group["params"])
    load = np.concatenate([[0.0], np.geomspace(0.5, 2e6, 200)])
    for f in (810.0, 1410.0, 1980.0):
        frame = pd.DataFrame({"load_tokens": load, "tp": 1, "sm_clock_mhz": f})
        power = model.predict(frame)
        assert (np.diff(power) >= -1e-9).all() and power.max() <= 700.0 + 1e-9
        assert power[0] == pytest.approx(model.groups[0]["params"][0])
        compiled = CompiledPower.from_model(model, 1, f)
        assert [compiled(x) for x in load] == pytest.approx(power.tolist(), rel=1e-9)
    low, high = (model.predict(pd.DataFrame({"load_tokens": [256.0], "tp": 1, "sm_clock_mhz": [f]}))[0] for f in (1110.0, 1980.0))
    assert low < high  # clock dependent


def test_power_cv_on_the_simulated_profile_is_at_most_8_percent(profile_rows):
    from characterize.fitting import cv_mape
    from characterize.power_model import PowerModel

    for phase in ("prefill", "mixed", "decode"):
        rows = profile_rows[profile_rows.phase == phase]
        cv = cv_mape(rows, lambda df, phase=phase: PowerModel.fit(df, "mean_power_w", phase, "load_tokens"), "mean_power_w")
        assert cv <= 8.0, (phase, cv)


def test_power_model_json_round_trip_and_legacy_bundles(profile_rows):
    from characterize.model_io import model_from_json
    from characterize.power_model import PowerModel, level_mismatch

    decode = profile_rows[profile_rows.phase == "decode"]
    model = PowerModel.fit(decode, "mean_power_w", "decode", "load_tokens")
    again = model_from_json(json.loads(json.dumps(model.to_json())))
    assert again.power_limit_w == 700.0 and again.levels == model.levels
    assert again.levels[0]["gpu_name"] == SimGpuSpec().name and again.levels[0]["backend"] == "sim"
    assert np.allclose(again.predict(decode), model.predict(decode))
    # a bundle written before the clock exponent, limit and levels: read as the old formula
    legacy = {"kind": "power_saturating", "target": "mean_power_w", "phase": "decode", "load_column": "load_tokens",
              "f_ref": 1980.0, "group_keys": [], "groups": [{"key": {}, "params": [90.0, 560.0, 300.0, 0.55]}]}
    old = model_from_json(legacy)
    assert old.power_limit_w is None and old.levels == [] and level_mismatch(old, decode) is None
    f_rel = 1410.0 / 1980.0
    expected = 90.0 + 560.0 * f_rel * (0.55 + 0.45 * f_rel) ** 2 * (1 - math.exp(-100.0 / 300.0))
    assert old.predict(pd.DataFrame({"load_tokens": [100.0], "sm_clock_mhz": [1410.0]}))[0] == pytest.approx(expected)


def test_level_mismatch_warns_across_gpu_or_harness(profile_rows):
    from characterize.power_model import PowerModel, level_mismatch

    decode = profile_rows[profile_rows.phase == "decode"]
    model = PowerModel.fit(decode, "mean_power_w", "decode", "load_tokens")
    assert level_mismatch(model, decode) is None
    assert level_mismatch(model, decode.assign(mean_power_w=decode.mean_power_w * 1.1)) is None
    old_sim = decode.assign(mean_power_w=decode.mean_power_w / 4, backend="measured:mlenergy", gpu_name="H100")
    message = level_mismatch(model, old_sim)
    assert message and "H100 / measured:mlenergy" in message and "p95" in message and "-75 %" in message
    assert level_mismatch(model, decode.drop(columns="mean_power_w")) is None
