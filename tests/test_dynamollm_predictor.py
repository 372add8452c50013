"""DynamoLLM without the oracle: output lengths predicted from the past, routing by the prediction."""

import warnings

import numpy as np
import pandas as pd
import pytest

from characterize.fitting import fit_bundle
from characterize.importers import from_profile
from collectors.profiling.sim_profile import simulate_profile
from replay.config import ClusterConfig, cluster_from_dict
from replay.engine import replay
from replay.policies.dynamollm import DynamoConfig, plan
from replay.policies.output_predictor import OutputPredictor, accuracy_report, output_class
from toolkit.errors import InputError


@pytest.fixture(scope="module")
def sim_bundle():
    warnings.simplefilter("ignore")
    return fit_bundle(from_profile(simulate_profile("llama3-8b", "quick")), {"simulated": True, "model": ["llama3-8b"]},
                      tree_estimators=10)


def trace_of(n=3000, duration=3000.0, seed=0):
    rng = np.random.default_rng(seed)
    arrival = np.sort(rng.uniform(0, duration, n))
    inputs = rng.integers(50, 6000, n)
    # outputs depend on the input (long prompts, short answers) plus noise: something to learn
    outputs = np.where(inputs > 2000, rng.integers(10, 120, n), rng.integers(100, 900, n))
    return pd.DataFrame({"request_id": np.arange(n), "arrival_s": arrival, "input_tokens": inputs, "output_tokens": outputs})


def test_predictions_never_read_the_outputs_of_the_request_or_later_ones():
    trace = trace_of()
    predictor = OutputPredictor(refit_s=300, window_s=3600, lag_s=60)
    args = trace["arrival_s"].to_numpy(), trace["input_tokens"].to_numpy()
    before = predictor.predict(*args, trace["output_tokens"].to_numpy())
    cut = 1500.0
    future = trace["arrival_s"].to_numpy() >= cut
    changed = trace["output_tokens"].to_numpy().copy()
    rng = np.random.default_rng(7)
    changed[future] = rng.permutation(changed[future]) * 7 + 3  # permuted and unlike anything seen before
    after = predictor.predict(*args, changed)
    assert np.array_equal(before[~future], after[~future])  # the past does not see the future
    assert not np.array_equal(before[future], after[future])  # (and the test could tell: later epochs refit on it)
    # a request's own output never reaches its prediction, however large
    for r in (0, 700, 2999):
        own = trace["output_tokens"].to_numpy().copy()
        own[r] = 50_000
        assert predictor.predict(*args, own)[r] == before[r]


def test_predictor_learns_per_input_bucket_and_uses_the_prior_before_any_past():
    trace = trace_of()
    predictor = OutputPredictor(refit_s=300, window_s=3600, lag_s=60, prior_tokens=256)
    predicted = predictor.predict(trace["arrival_s"].to_numpy(), trace["input_tokens"].to_numpy(),
                                  trace["output_tokens"].to_numpy())
    first = trace["arrival_s"].to_numpy() < 300
    assert (predicted[first] == 256).all()  # no past yet
    later = trace["arrival_s"].to_numpy() >= 1200  # (by then every bucket below has its 20 past samples)
    inputs = trace["input_tokens"].to_numpy()
    # (bucket edges are powers of two: 2048 straddles the change; buckets below 256 hold too few
    # requests and fall back to the whole window's quantile)
    long_prompt, short_prompt = inputs > 2100, (inputs > 256) & (inputs < 1900)
    assert predicted[later & long_prompt].max() < 120 < predicted[later & short_prompt].min()


def test_accuracy_report_counts_outgrown_and_overpredicted():
    report = accuracy_report(np.array([0, 0, 1, 2, 1]), np.array([0, 1, 1, 0, 2]))
    assert report == {"requests": 5, "predictor_accuracy": 0.4, "mispredicted": 3, "outgrown": 2, "overpredicted": 1}
    assert output_class(np.array([128, 129, 512, 513]), (128, 512)).tolist() == [0, 1, 1, 2]


def test_plan_routes_by_prediction_and_reports_accuracy(sim_bundle):
    trace = trace_of(1500, 1500.0)
    cfg = DynamoConfig(period_s=300, scale_period_s=300)
    dyn_plan = plan(trace, sim_bundle, ClusterConfig(), cfg)
    p = dyn_plan.prediction
    true_bin = output_class(trace["output_tokens"].to_numpy(), cfg.output_bins)
    assert p["output_length"] == "predicted"
    assert p["predictor_accuracy"] == pytest.approx(np.mean(dyn_plan.predicted_bin == true_bin))
    assert 0.3 < p["predictor_accuracy"] < 1.0 and p["outgrown"] > 0
    result = dyn_plan.replay(trace, sim_bundle)
    # every request ran in the pool of its predicted class, mispredicted ones included
    assert (result.requests["pool"].to_numpy() == dyn_plan.labels).all()
    mispredicted = dyn_plan.predicted_bin != true_bin
    assert mispredicted.sum() == p["mispredicted"] > 0
    summary = result.summary["policy"]
    assert summary["output_length"] == "predicted" and summary["mispredicted"] == p["mispredicted"]
    assert summary["migrated"] == 0 and summary["served_in_place"] == p["outgrown"]
    assert result.summary["finished"] == len(trace)  # outgrown requests are served in place, not dropped


def test_oracle_mode_is_the_true_class_and_replaying_without_labels_is_refused(sim_bundle):
    trace = trace_of(800, 800.0)
    oracle = plan(trace, sim_bundle, ClusterConfig(), DynamoConfig(output_length="oracle"))
    assert oracle.prediction["predictor_accuracy"] == 1.0 and oracle.prediction["outgrown"] == 0
    predicted = plan(trace, sim_bundle, ClusterConfig(), DynamoConfig())
    assert not np.array_equal(predicted.labels, oracle.labels)
    with pytest.raises(ValueError, match="labels"):  # by length, every request would land in the first pool
        replay(trace, sim_bundle, predicted.config, controller=predicted.controller())


def test_output_length_setting_is_checked():
    config = cluster_from_dict({"dynamollm": {"output_length": "oracle", "predictor_quantile": 0.75}})
    assert config.dynamollm["output_length"] == "oracle" and config.dynamollm["predictor_quantile"] == 0.75
    with pytest.raises(InputError, match="dynamollm.output_length"):
        cluster_from_dict({"dynamollm": {"output_length": "psychic"}})
