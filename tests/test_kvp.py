"""KV-cache parallelism as Mnemosyne runs it: groups join as a sequence grows, decode time uses the
sequence's active groups, and the combine cost comes from a network profile or a fitted
alpha + beta x bytes model that grows with the group count."""

import math

import numpy as np
import pytest

from replay.config import ClusterConfig, PoolConfig, cluster_from_dict, load_cluster
from replay.cost_model import InstanceCost
from replay.engine import Instance, Recorder, Requests, replay
from replay.kvp_combine import (KVP_ALPHA_S, KVP_BETA_S_PER_BYTE, CombineModel, fit_network_profile,
                                load_network_profile)
from toolkit.errors import InputError
from toolkit.model_shapes import PRESETS

from .conftest import shared_file
from .test_replay import linear_bundle, trace

ALL_REDUCE = ("vidur", "network_h100_dgx_all_reduce.csv")


def _cost(kvp, **kw):
    return InstanceCost.from_bundle(linear_bundle(), tp=1, sm_clock_mhz=None, kvp=kvp, **kw)


def test_the_default_constants_are_the_fit_of_vidurs_h100_profile():
    alpha, beta = fit_network_profile(shared_file(*ALL_REDUCE))
    assert KVP_ALPHA_S == pytest.approx(alpha, rel=0.01)
    assert KVP_BETA_S_PER_BYTE == pytest.approx(beta, rel=0.01)


@pytest.mark.parametrize("profiled", [False, True])
def test_combine_grows_with_the_group_count_and_the_tokens(profiled):
    profile = load_network_profile(shared_file(*ALL_REDUCE)) if profiled else None
    model = CombineModel.for_shape(PRESETS["llama3-8b"], tp=1, profile=profile)
    assert model(1, 4096) == 0.0  # one group: nothing to combine
    for tokens in (1, 64, 4096):
        costs = [model(g, tokens) for g in (2, 3, 4, 8, 16, 32, 64)]
        assert all(b >= a for a, b in zip(costs, costs[1:])) and costs[-1] > costs[0]
    for g in (2, 4, 16):
        assert model(g, 1) > 0 and model(g, 4096) > model(g, 1)
    # the fitted model: 32 layers of alpha (one node) + beta x bytes x 2 (G - 1) / G
    if not profiled:
        elements = 32 * (128 + 2)
        assert model(2, 10) == pytest.approx(32 * (KVP_ALPHA_S + KVP_BETA_S_PER_BYTE * 2 * elements * 10 * 2 * 1 / 2))
        assert model(16, 1) > 1.9 * model(8, 1)  # past one node, one more latency step a doubling


def test_kvp_lowers_decode_tbt_monotonically_up_to_the_modeled_combine_cost():
    costs = {g: _cost(g) for g in (1, 2, 3, 4, 6, 8, 16)}
    assert costs[1].combine_s == 0.0 and costs[2].combine_s > 3e-4  # modeled: ~1 ms for 32 layers
    long = [costs[g].decode_latency(1, 10_000_000) for g in sorted(costs)]
    assert all(b < a for a, b in zip(long, long[1:]))  # 10 M tokens: every group more is faster
    mid = {g: costs[g].decode_latency(1, 1_000_000) for g in costs}
    assert all(mid[b] < mid[a] for a, b in zip((1, 2, 3, 4, 6), (2, 3, 4, 6, 8)))
    assert mid[16] > mid[8]  # 1 M: past one node the combine's next latency step outweighs the KV read saved
    for k in (1_000_000, 10_000_000):
        for g, cost in costs.items():  # the split KV read plus the combine, exactly
            kv_read = 1e-8 * k
            assert cost.decode_latency(1, k) == pytest.approx(costs[1].decode_latency(1, k) - kv_read + kv_read / g
                                                              + cost.combine(g, 1))
    # a short context: splitting the KV saves less than the combine costs - the bound
    short = {g: c.decode_latency(1, 1000) for g, c in costs.items()}
    for g in (2, 4, 8, 16):
        assert short[1] < short[g] <= short[1] + costs[g].combine(g, 1)


def test_a_fixed_combine_still_wins_when_set():
    cost = _cost(4, kvp_overhead_s=3.2e-4)
    assert cost.combine(4, 1) == cost.combine(2, 10_000) == 3.2e-4 and cost.combine(1, 10) == 0.0
    pool = cluster_from_dict({"pool": [{"kvp": 2, "kvp_combine_s": 1e-3}]}).pools[0]
    assert pool.kvp_combine_s == 1e-3 and PoolConfig().kvp_combine_s is None


def test_groups_join_as_a_sequence_outgrows_the_cap():
    pool = PoolConfig(instances=1, kvp=4, max_tokens_per_kvp_group=1000, kv_capacity_tokens=10_000)
    req = Requests(np.zeros(1), np.array([10]), np.array([2]))
    inst = Instance(0, 0, pool, _cost(4), req, Recorder(1, 1.0))
    assert [inst.groups(k) for k in (1, 1000, 1001, 2500, 3001, 4000, 10**7)] == [1, 1, 2, 3, 4, 4, 4]
    static = Instance(0, 0, PoolConfig(instances=1, kvp=4, kv_capacity_tokens=10_000), _cost(4), req, Recorder(1, 1.0))
    assert static.groups(1) == 4  # without the cap every sequence is split over all groups


def test_decode_time_follows_the_sequences_groups():
    # one request decoding across the 1,000-token boundary: one group (no combine), then two
    cap, prompt, out = 1000, 950, 120
    pool = PoolConfig(instances=1, kvp=2, max_tokens_per_kvp_group=cap, kv_capacity_tokens=10_000, chunk_size=4096)
    config = ClusterConfig(pools=[pool], router="round_robin")
    r = replay(trace([0.0], [prompt], [out]), linear_bundle(), config).requests.iloc[0]
    cost = _cost(2)
    groups = lambda k: min(2, max(1, math.ceil(k / cap)))
    decode = [cost.decode_latency(1, k, groups(k)) for k in range(prompt + 1, prompt + out)]
    assert r.finish_s - r.first_token_s == pytest.approx(sum(decode), rel=1e-9)
    assert r.tbt_max_s == pytest.approx(max(decode))
    one_group = replay(trace([0.0], [prompt], [out]), linear_bundle(), ClusterConfig(
        pools=[PoolConfig(instances=1, kv_capacity_tokens=20_000, chunk_size=4096)], router="round_robin")).requests.iloc[0]
    assert r.ttft_s == pytest.approx(one_group.ttft_s)  # a prefix within one group: as without KVP
    # a static split pays the combine from the first token
    static = replay(trace([0.0], [prompt], [out]), linear_bundle(), ClusterConfig(
        pools=[PoolConfig(instances=1, kvp=2, kv_capacity_tokens=10_000, chunk_size=4096)], router="round_robin")).requests.iloc[0]
    assert static.e2e_s > r.e2e_s


def test_fast_forward_equals_the_step_by_step_run_with_dynamic_groups():
    rng = np.random.default_rng(3)
    n = 120
    t = trace(np.sort(rng.uniform(0, 20, n)), rng.integers(200, 3000, n), rng.integers(20, 400, n))
    pool = PoolConfig(instances=2, kvp=4, max_tokens_per_kvp_group=1500, kv_capacity_tokens=20_000, chunk_policy="adaptive")
    fast = replay(t, linear_bundle(), ClusterConfig(pools=[pool]))
    plain = replay(t, linear_bundle(), ClusterConfig(pools=[pool]), fast_forward=False)
    for column in ("first_token_s", "finish_s", "tbt_max_s", "energy_j"):
        assert np.allclose(fast.requests[column], plain.requests[column], rtol=1e-9, equal_nan=True), column
    assert fast.summary["iterations"] == plain.summary["iterations"]


def test_kvp_settings_are_validated_and_the_profile_read_relative_to_the_toml(tmp_path):
    for key, value, message in (("max_tokens_per_kvp_group", 0, "must be >= 1"),
                                ("max_tokens_per_kvp_group", 1.5, "must be an integer"),
                                ("kvp_combine_s", -1, "must be >= 0")):
        with pytest.raises(InputError, match=rf"c.toml: key pool\[0\]\.{key}: {message}"):
            cluster_from_dict({"pool": [{key: value}]}, "c.toml")
    toml = tmp_path / "c.toml"
    toml.write_text("[[pool]]\nkvp = 2\nkvp_network_csv = 'net.csv'\n")
    with pytest.raises(InputError, match=r"key pool\[0\]\.kvp_network_csv: .*net.csv: no such file"):
        load_cluster(toml)
    (tmp_path / "net.csv").write_text("num_workers,size,time_stats.all_reduce.median\n2,2048,0.01\n2,4096,-1\n")
    with pytest.raises(InputError, match=r"net.csv: row 2: column time_stats.all_reduce.median: must be a positive"):
        load_cluster(toml)
    (tmp_path / "net.csv").write_text("num_workers,size,time_stats.all_reduce.median\n2,2048,0.01\n2,1048576,0.05\n")
    config = load_cluster(toml)
    assert config.pools[0].kvp_network_csv == str(tmp_path / "net.csv")
    result = replay(trace([0.0], [5000], [20]), linear_bundle(), config)
    assert result.summary["finished"] == 1
