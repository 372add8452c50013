"""DynamoLLM's three control timescales and what each change costs in the replay (counts and
order of events, simulated time; never wall-clock)."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from characterize.fitting import fit_bundle
from characterize.importers import from_profile
from collectors.profiling.sim_profile import simulate_profile
from replay.config import ClusterConfig, PoolConfig
from replay.engine import replay
from replay.policies.dynamollm import DynamoConfig, events_table, plan, reshard_seconds
from toolkit.model_shapes import PRESETS


@pytest.fixture(scope="module")
def sim_bundle():
    warnings.simplefilter("ignore")
    return fit_bundle(from_profile(simulate_profile("llama3-8b", "quick")), {"simulated": True, "model": ["llama3-8b"]},
                      tree_estimators=10)


class OneSwitch:
    """A controller that switches instance 0's clock (to the clock it has) once, at ``t``, stalling ``stall_s``."""

    def __init__(self, t, stall_s):
        self.t, self.stall_s, self.done = t, stall_s, False

    def next_time(self):
        return math.inf if self.done else self.t

    def act(self, t, state):
        state.set_clock(t, 0, state.instances[0].clock, "test", stall_s=self.stall_s)
        self.done = True

    def describe(self):
        return {"name": "one-switch"}


@pytest.mark.parametrize("stall_s", [0.25, 0.004])
def test_a_clock_switch_stalls_the_instance_by_its_cost(sim_bundle, stall_s):
    trace = pd.DataFrame({"arrival_s": [0.0, 5.0], "input_tokens": [600, 300], "output_tokens": [400, 50]})
    config = ClusterConfig(pools=[PoolConfig(instances=1)])
    runs = {}
    for stall in (0.0, stall_s):
        runs[stall] = replay(trace, sim_bundle, config, controller=OneSwitch(1.0, stall))
    free, stalled = runs[0.0], runs[stall_s]
    first = stalled.requests["finish_s"][0] - free.requests["finish_s"][0]
    assert first == pytest.approx(stall_s, abs=1e-9)  # decoding at 1.0 s: it finishes exactly the stall later
    assert free.requests["finish_s"][0] > 1.0 + stall_s
    # the request arriving after both finished is untouched
    assert stalled.requests["finish_s"][1] == pytest.approx(free.requests["finish_s"][1], abs=1e-9)
    (event,) = stalled.events.to_dict("records")
    assert (event["kind"], event["t_s"], event["cost_s"], event["instance"]) == ("clock", 1.0, stall_s, 0)
    # the stall is idle time: energy still balances
    c = stalled.summary["conservation"]
    assert c["timeline_j"] == pytest.approx(c["instances_j"], rel=1e-9)
    assert c["requests_plus_idle_j"] == pytest.approx(c["instances_j"], rel=1e-9)
    assert stalled.summary["energy_busy_kwh"] == pytest.approx(free.summary["energy_busy_kwh"], rel=1e-12)  # the same work


def waves(seed=0):
    """Quiet, busy, quiet, busy: 300 s each, one class (every request short)."""
    rng = np.random.default_rng(seed)
    rates = [0.5, 40.0, 0.5, 40.0]
    arrival = np.concatenate([k * 300 + np.sort(rng.uniform(0, 300, int(r * 300))) for k, r in enumerate(rates)])
    n = len(arrival)
    return pd.DataFrame({"request_id": np.arange(n), "arrival_s": arrival, "input_tokens": rng.integers(100, 900, n),
                         "output_tokens": rng.integers(20, 100, n)})


def test_three_timescales_and_their_costs(sim_bundle):
    trace = waves()
    cfg = DynamoConfig(input_bins=(), output_bins=(), period_s=60, scale_period_s=300, clock_period_s=5, clock_window_s=5,
                       clock_switch_s=0.01, gpus_per_node=2, scale_out_s=20, spare_instances=0, reactive_queue=10**6,
                       output_length="oracle")
    dyn_plan = plan(trace, sim_bundle, ClusterConfig(pools=[PoolConfig(tp=1)]), cfg)
    (cls,) = dyn_plan.classes
    counts = [n for _, n, _, _ in cls.schedule]
    # the instance count changes only at scale decisions (every 5 periods), following the load one
    # decision late: the decision at 300 s saw only the quiet first 300 s, the one at 600 s the busy wave
    assert all(counts[k] == counts[k - 1] for k in range(1, len(counts)) if k % 5)
    assert counts[0] == counts[5] == 1 < counts[10] and counts[15] < counts[10]
    result = dyn_plan.replay(trace, sim_bundle)
    events = result.events
    policy = result.summary["policy"]
    assert policy["reactive_scale_outs"] == 0
    # instance count: at scale decisions, a scale-out powering on then and serving scale_out_s later
    scale = events[events["kind"] == "scale"]
    ups = events[events["kind"] == "power_up"]
    assert ups["t_s"].tolist() == [600.0] and ups["cost_s"].tolist() == [20.0] and policy["scale_outs"] == 1
    assert scale["t_s"].tolist() == [0.0, 620.0, 900.0]  # the scale-out serves scale_out_s after it powered on
    assert (scale["to_value"] - scale["from_value"]).tolist() == [-(counts[10] - 1), counts[10] - 1, -(counts[10] - 1)]
    # clocks: decided on the 5-s grid, down when quiet and up when busy, each change stalling the powered instances
    clock = events[events["kind"] == "clock"]
    assert len(clock) > 0 and policy["clock_changes"] >= 3
    assert np.allclose(clock["t_s"] / 5, np.round(clock["t_s"] / 5))
    assert set(clock["to_value"]) == {1410.0, 1980.0}
    stalled = clock[clock["cost_s"] > 0]
    assert len(stalled) == policy["clock_stalls"] and stalled["cost_s"].sum() == pytest.approx(policy["clock_stall_s"])
    # serialised over a node's GPUs (2 TP1 instances a node): the first on a node waits 10 ms, the second 20 ms
    for _, switch in stalled.groupby("t_s"):
        for node, on_node in switch.groupby(switch["instance"] // 2):
            assert on_node["cost_s"].tolist() == pytest.approx([0.01 * (k + 1) for k in range(len(on_node))])
    # events in time order, and the parquet written from them keeps every row and kind
    assert (np.diff(events["t_s"].to_numpy()) >= 0).all()
    table = events_table(events, simulated=True).to_pandas()
    assert len(table) == len(events) and set(table["kind"]) == {"scale", "power_up", "clock"}
    assert table.columns.tolist() == ["t_s", "kind", "pool", "instance", "from_value", "to_value", "cost_s", "reason"]


def test_reshard_time_from_weight_bytes(sim_bundle):
    pool = PoolConfig(tp=2, model_shape="llama3-8b", dtype_bytes=2)
    expected = PRESETS["llama3-8b"].params * 2 / 2 / 4e9  # bytes per GPU at TP2, 4 GB/s
    assert reshard_seconds(DynamoConfig(weight_load_gb_s=4), pool, sim_bundle) == pytest.approx(expected)
    assert 1.0 < expected < 3.0
    assert reshard_seconds(DynamoConfig(reshard_s=12), pool, sim_bundle) == 12
