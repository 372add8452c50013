import warnings

import numpy as np
import pandas as pd
import pytest

from characterize.fitting import fit_bundle
from characterize.importers import from_profile
from collectors.profiling.sim_profile import simulate_profile
from replay.config import ClusterConfig, PoolConfig
from replay.engine import replay
from replay.policies.dynamollm import DynamoConfig, baseline_for, classify, plan
from replay.policies.polca import PolcaConfig, PolcaController, oversubscription_search


@pytest.fixture(scope="module")
def sim_bundle():
    warnings.simplefilter("ignore")
    # (names its model, as `characterize fit` bundles do: TOML pools without kv_capacity_tokens derive it from it)
    return fit_bundle(from_profile(simulate_profile("llama3-8b", "quick")), {"simulated": True, "model": ["llama3-8b"]},
                      tree_estimators=10)


def load(n, rate, seed=0, high_fraction=0.5):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"request_id": np.arange(n), "arrival_s": np.cumsum(rng.exponential(1 / rate, n)),
                         "input_tokens": rng.integers(100, 3000, n), "output_tokens": rng.integers(10, 400, n),
                         "priority": np.where(rng.random(n) < high_fraction, "high", "low")})


class FakeState:
    def __init__(self, powers):
        self.powers = list(powers)
        self.instances = []
        self.calls = []

    def row_power(self, t, window):
        return self.powers.pop(0)


def test_polca_thresholds_and_hysteresis():
    controller = PolcaController(PolcaConfig(budget_w=1000, t1=0.8, t2=0.9, uncap=0.7))
    levels = []
    state = FakeState([500, 850, 780, 950, 850, 720, 650, 500])
    for t in range(8):
        controller.act(float(t), state)
        levels.append(controller.level)
    # 850 > t1: cap low; 780 holds (above uncap); 950 > t2: cap all; 850/720 hold; 650 < uncap: lift
    assert levels == [0, 1, 1, 2, 2, 2, 0, 0]
    summary = controller.describe()
    assert summary["capping_events"] == 2 and summary["capped_all_s"] == pytest.approx(3.0)


def test_polca_skips_idle_stretches_with_the_same_outcome(sim_bundle):
    """A long idle stretch costs the controller O(1) acts; the acts it skips would have read the same
    idle power and kept the same level, so the outcome equals the act-per-period run."""
    trace = pd.DataFrame({"arrival_s": [0.0, 5.0, 86_400.0], "input_tokens": [900, 500, 700],
                          "output_tokens": [50, 80, 60]})
    config = ClusterConfig(pools=[PoolConfig(instances=2)])
    results = {}
    for skipping in (True, False):
        controller = PolcaController(PolcaConfig(budget_w=250, t1=0.8, t2=0.95, uncap=0.7))
        acts = []
        real_act = controller.act
        controller.act = lambda t, state, real_act=real_act: (acts.append(t), real_act(t, state))
        if not skipping:
            controller.skip_idle = None  # the engine then wakes it every control_s
        result = replay(trace, sim_bundle, config, controller=controller)
        results[skipping] = (len(acts), controller.describe(), result.summary["energy_kwh"])
    (skipped_acts, skipped, energy), (all_acts, plain, plain_energy) = results[True], results[False]
    assert all_acts > 86_000 and skipped_acts < 1_000
    # (1e-9: the act-per-period run adds ~86,000 idle periods one by one; rounding, not outcome)
    assert skipped == plain and energy == pytest.approx(plain_energy, rel=1e-9)


def test_polca_caps_low_priority_first_and_keeps_high_priority_latency(sim_bundle):
    trace = load(3000, rate=25)
    config = ClusterConfig(pools=[PoolConfig(name="high", priority="high", instances=2),
                                  PoolConfig(name="low", priority="low", instances=2)])
    # a budget for 4-6 simulated H100s at ~500-700 W each (ML.ENERGY-calibrated; 1500 W fitted the old ~130-250 W)
    result = oversubscription_search(trace, sim_bundle, config, PolcaConfig(budget_w=3500, t1=0.8, t2=0.97, uncap=0.75),
                                     max_extra=2, bound_high=0.05, bound_low=1.0, max_over_budget_fraction=1.0)
    table = result["table"]
    stressed = table.iloc[-1]
    assert stressed["capping_events"] > 0 and stressed["capped_low_s"] > stressed["capped_all_s"]
    assert stressed["p99_impact_low"] > stressed["p99_impact_high"]
    assert table.iloc[0]["capping_events"] <= stressed["capping_events"]


def test_dynamollm_classes_and_lower_energy_within_slo(sim_bundle):
    cfg = DynamoConfig(period_s=120)
    codes = classify(np.array([10, 2000, 9000]), np.array([10, 300, 900]), cfg)
    assert codes.tolist() == [0, 4, 8]
    trace = load(4000, rate=12)
    dyn_plan = plan(trace, sim_bundle, ClusterConfig(), cfg)
    dyn = dyn_plan.replay(trace, sim_bundle)  # routed by the predicted classes' labels
    base = replay(trace, sim_bundle, baseline_for(dyn_plan, sim_bundle))
    assert dyn.summary["gpus"] == base.summary["gpus"]
    assert dyn.summary["energy_kwh"] < base.summary["energy_kwh"]
    assert dyn.summary["slo_attainment"] >= 0.99
    policy = dyn.summary["policy"]
    assert any(min(c["clocks_used"]) < 1980 for c in policy["classes"])  # it did lower clocks
    assert set(dyn.requests["pool"]) == {c["class"] for c in policy["classes"]}


def test_dynamollm_cli_reports_savings(run_cli, tmp_path, sim_bundle):
    models = sim_bundle.save(tmp_path / "m.json")
    src = tmp_path / "t.parquet"
    run_cli("trace", "synth", "--duration", "300", "-o", src)
    result = run_cli("replay", "run", "--trace", src, "--models", models, "--policy", "dynamollm", "--rate-scale", "4",
                     "-o", tmp_path / "dyn")
    assert result.exit_code == 0, result.output
    assert " vs peak_static (" in result.output and " vs best_static (" in result.output
    assert "saves " in result.output or "more energy" in result.output
    for name in ("baseline", "peak_static", "best_static"):
        assert (tmp_path / f"dyn_{name}" / "summary.json").exists()
    missing = run_cli("replay", "run", "--trace", src, "--models", models, "--policy", "polca")
    assert missing.exit_code != 0 and "budget_w" in missing.output


def test_mnemosyne_adaptive_chunks_protect_decodes_and_spp_kvp_cut_ttft(sim_bundle):
    from replay.policies.mnemosyne import context_sweep

    table = context_sweep(sim_bundle, [262_144]).set_index("config")
    fixed, adaptive = table.loc["fixed chunk 8192"], table.loc["adaptive chunks"]
    spp, kvp = table.loc["adaptive + SPP x4"], table.loc["adaptive + SPP x4 + KVP x4"]
    assert fixed["decode_tbt_max_s"] > 2 * adaptive["decode_tbt_max_s"]
    assert adaptive["decode_tbt_max_s"] <= adaptive["tbt_slo_s"] * 1.2
    assert spp["ttft_s"] == pytest.approx(adaptive["ttft_s"] / 4, rel=0.15)  # TTFT ~ sum(chunks) / PP
    assert kvp["long_tbt_mean_s"] < spp["long_tbt_mean_s"]  # KV split: decode less sensitive to context
    dropped = context_sweep(sim_bundle, [5_000_000], configs={"one group": {"chunk_policy": "adaptive"}})
    assert dropped["dropped"].iloc[0] and "KV" in dropped["drop_reason"].iloc[0]


def test_polca_search_cli_labels_missing_priorities(run_cli, tmp_path, sim_bundle):
    models = sim_bundle.save(tmp_path / "m.json")
    src = tmp_path / "t.csv"
    load(400, rate=20).drop(columns=["priority", "request_id"]).rename(
        columns={"arrival_s": "arrived_at", "input_tokens": "num_prefill_tokens", "output_tokens": "num_decode_tokens"}
    ).to_csv(src, index=False)
    toml = tmp_path / "row.toml"
    toml.write_text("[[pool]]\nname='high'\npriority='high'\ninstances=1\n[[pool]]\nname='low'\npriority='low'\ninstances=1\n"
                    "[polca]\nbudget_w = 600\n")
    out = tmp_path / "polca.csv"
    result = run_cli("replay", "polca-search", "--trace", src, "--models", models, "--cluster", toml, "--max-extra", "1", "-o", out)
    assert result.exit_code == 0, result.output
    assert "labelled 50% high" in result.output and "largest addition" in result.output
    table = pd.read_csv(out)
    assert table["servers_added"].tolist() == [0, 1] and {"p99_impact_high", "p99_impact_low"} <= set(table.columns)


@pytest.mark.parametrize("slo", [0.03, 0.05])
def test_chunk_table_and_replay_scheduler_pick_the_same_adaptive_chunk(sim_bundle, slo):
    """characterize's grid over the bundle and replay's closed form over compiled coefficients."""
    from characterize.chunking import adaptive_chunks
    from replay.cost_model import InstanceCost

    prefixes = [0, 8192, 65_536, 262_144, 1_048_576]
    table = adaptive_chunks(sim_bundle, slo, prefixes, batch_size=16, kv_tokens=4096, tp=1, sm_clock_mhz=1980.0)
    cost = InstanceCost.from_bundle(sim_bundle, tp=1, sm_clock_mhz=1980.0)
    closed_form = [cost.largest_chunk(p, 16, 16 * 4096, slo) for p in prefixes]
    assert table["chunk_tokens"].tolist() == [min(c, 16384) for c in closed_form]
    assert table["chunk_tokens"].iloc[-1] < table["chunk_tokens"].iloc[0]


def superlinear_tp_bundle():
    """TP2 runs an iteration 3x faster than TP1 (a made-up superlinear speedup): one TP1 GPU is
    the cheapest way to serve a trickle, TP2 the cheapest way to serve a flood."""
    from characterize.linear_model import TermsModel
    from characterize.model_io import ModelBundle
    from characterize.power_model import PowerModel

    def group(tp, coef):
        return {"key": {"tp": tp}, "coef": coef, "cov": np.zeros((len(coef), len(coef))).tolist(), "df_resid": 10, "n": 20}

    pre = TermsModel("latency_s", "prefill", ["1", "c"], ["tp"], [group(1, [0.006, 3e-5]), group(2, [0.002, 1e-5])])
    dec = TermsModel("latency_s", "decode", ["1", "b", "b*k"], ["tp"],
                     [group(1, [0.015, 2e-4, 3e-8]), group(2, [0.005, 0.67e-4, 1e-8])])
    power = [PowerModel("mean_power_w", phase, "load_tokens", None, [], [{"key": {}, "params": [80.0, 400.0, 64.0, 1.0],
                                                                             "param_names": []}]) for phase in ("prefill", "decode")]
    return ModelBundle([pre, dec, *power], {"simulated": True})


def test_dynamollm_reshards_tp_with_load_and_conserves_energy():
    bundle = superlinear_tp_bundle()
    rng = np.random.default_rng(3)
    rates = [0.5, 0.5, 30.0, 30.0, 0.5, 0.5]  # per 300-s period: trickle, flood, trickle
    arrivals = np.concatenate([k * 300 + np.sort(rng.uniform(0, 300, int(r * 300))) for k, r in enumerate(rates)])
    n = len(arrivals)
    trace = pd.DataFrame({"request_id": np.arange(n), "arrival_s": arrivals, "input_tokens": rng.integers(200, 800, n),
                          "output_tokens": rng.integers(50, 150, n)})
    pool = ClusterConfig(pools=[PoolConfig(tp=1, ttft_slo_s=2.0, tbt_slo_s=0.1)])
    cfg = DynamoConfig(input_bins=(), output_bins=(), period_s=300, scale_period_s=300, reshard=True, reshard_s=20,
                       spare_instances=0)
    dyn_plan = plan(trace, bundle, pool, cfg)
    (cls,) = dyn_plan.classes
    # the forecast sees only the past, so the layout follows the load one period late
    assert [tp for *_, tp in cls.schedule] == [1, 1, 1, 2, 2, 1]
    assert {p.name: p.standby for p in dyn_plan.config.pools} == {cls.name: False, f"{cls.name}@tp2": True}
    result = dyn_plan.replay(trace, bundle)
    summary = result.summary
    assert summary["policy"]["reshards"] == 2 and summary["finished"] == n
    assert summary["gpus"] == cls.gpus  # the standby layout shares the class's GPUs
    assert set(result.requests["pool"]) == {cls.name, f"{cls.name}@tp2"}
    late_flood = result.requests[(result.requests["arrival_s"] >= 900) & (result.requests["arrival_s"] < 1200)]
    assert (late_flood["pool"] == f"{cls.name}@tp2").all()
    assert (result.requests[result.requests["arrival_s"] >= 1500]["pool"] == cls.name).all()
    balance = summary["conservation"]
    assert balance["timeline_j"] == pytest.approx(balance["instances_j"], rel=1e-9)
    assert balance["requests_plus_idle_j"] == pytest.approx(balance["instances_j"], rel=1e-9)
    # inactive GPUs power off: fewer GPU-hours than holding the class's GPUs all run
    assert 0 < summary["gpu_hours"] < cls.gpus * summary["duration_s"] / 3600
    static = replay(trace, bundle, plan(trace, bundle, pool, DynamoConfig(input_bins=(), output_bins=(), period_s=300,
                                                                         spare_instances=0)).config)
    assert static.summary["energy_kwh"] > 0


def test_dynamollm_powers_off_inactive_instances_and_counts_only_powered_gpu_hours(sim_bundle):
    trace = load(3000, rate=6)
    runs = {}
    for off in (True, False):
        dyn_plan = plan(trace, sim_bundle, ClusterConfig(), DynamoConfig(period_s=120, power_off_inactive=off))
        runs[off] = dyn_plan.replay(trace, sim_bundle).summary
    on, off = runs[False], runs[True]
    assert off["energy_busy_kwh"] == pytest.approx(on["energy_busy_kwh"], rel=1e-9)  # the same work, the same way
    assert off["energy_idle_kwh"] < 0.8 * on["energy_idle_kwh"]
    assert off["gpu_hours"] < on["gpu_hours"] == pytest.approx(on["gpus"] * on["duration_s"] / 3600)
    for s in (on, off):
        assert s["conservation"]["timeline_j"] == pytest.approx(s["conservation"]["instances_j"], rel=1e-9)
