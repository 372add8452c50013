"""Pluggable replica schedulers (fcfs, lars), the token_jsq router, and LARS against FCFS under a
long prefill (Mnemosyne: short requests are not starved behind it, the TBT SLO holds)."""

import numpy as np
import pandas as pd
import pytest

from replay.config import ClusterConfig, PoolConfig, cluster_from_dict
from replay.cost_model import InstanceCost
from replay.engine import Instance, Recorder, Requests, replay
from replay.policies.mnemosyne import context_sweep
from replay.scheduler import MIN_CHUNK, SCHEDULERS, make_scheduler
from toolkit.errors import InputError

from .test_replay import _load, linear_bundle, trace


def test_registry_and_the_pool_setting():
    assert {"fcfs", "lars"} <= set(SCHEDULERS)
    assert make_scheduler("lars").name == "lars" and make_scheduler("fcfs").name == "fcfs"
    with pytest.raises(KeyError, match="known: fcfs"):
        make_scheduler("sjf")
    config = cluster_from_dict({"router": "token_jsq", "pool": [{"scheduler": "lars"}]})
    assert config.pools[0].scheduler == "lars" and config.router == "token_jsq"
    assert cluster_from_dict({"pool": [{}]}).pools[0].scheduler == "fcfs"  # the default
    with pytest.raises(InputError) as info:
        cluster_from_dict({"pool": [{"scheduler": "sjf"}]}, "c.toml")
    message = str(info.value)
    assert message.startswith("c.toml: key pool[0].scheduler: must be one of") and "\n" not in message
    with pytest.raises(InputError, match=r"c.toml: key router: must be one of .*token_jsq"):
        cluster_from_dict({"router": "random"}, "c.toml")


def test_fcfs_named_or_default_gives_the_same_replay():
    t = _load(600)
    default = replay(t, linear_bundle(), ClusterConfig(pools=[PoolConfig(instances=2, chunk_policy="adaptive")]))
    named = replay(t, linear_bundle(), ClusterConfig(pools=[PoolConfig(instances=2, chunk_policy="adaptive", scheduler="fcfs")]))
    pd.testing.assert_frame_equal(default.requests, named.requests)
    assert default.summary["iterations"] == named.summary["iterations"]


def _sweep(scheduler, pp=1, context=300_000, slo=0.05):
    base = PoolConfig(instances=1, max_batch_tokens=16384, tbt_slo_s=slo, kv_capacity_tokens=None, scheduler=scheduler)
    return context_sweep(linear_bundle(), [context], configs={"x": {"chunk_policy": "adaptive", "pp": pp}}, base=base).iloc[0]


@pytest.mark.parametrize("pp", [1, 4])
def test_lars_cuts_short_ttft_during_a_long_prefill_and_keeps_the_tbt_slo(pp):
    fcfs, lars = _sweep("fcfs", pp), _sweep("lars", pp)
    for row in (fcfs, lars):
        assert row["shorts_during_prefill"] > 5 and row["short_unfinished"] == 0
        assert row["decode_tbt_max_s"] <= 0.05 * 1.001  # co-batched decodes keep the SLO
        assert row["long_tbt_max_s"] <= 0.05 * 1.001  # ... and so does the long request's own decode
    # FCFS: short prompts wait behind the long prefill (the adaptive chunk takes the whole budget)
    assert fcfs["short_ttft_p99_s"] > 1.0
    # LARS: they prefill beside it within the TBT budget
    assert lars["short_ttft_p99_s"] < 0.2 and lars["short_ttft_p99_s"] < fcfs["short_ttft_p99_s"] / 10
    assert lars["ttft_s"] < fcfs["ttft_s"] * 1.15  # the long request pays a little for it, not a starvation


def _instance(pool, inputs, outputs, bundle=None):
    n = len(inputs)
    req = Requests(np.zeros(n), np.asarray(inputs, dtype=np.int64), np.asarray(outputs, dtype=np.int64))
    cost = InstanceCost.from_bundle(bundle or linear_bundle(), pool.tp, None, pool.pp, pool.kvp, pool.kvp_combine_s)
    return Instance(0, 0, pool, cost, req, Recorder(1, 1.0)), cost


def test_lars_batches_several_short_prefills_and_sizes_the_long_chunk_with_what_is_left():
    pool = PoolConfig(instances=1, chunk_policy="adaptive", tbt_slo_s=0.05, max_batch_tokens=16384,
                      kv_capacity_tokens=2_000_000, scheduler="lars")
    inst, cost = _instance(pool, [400_000, 300, 200, 500], [10, 5, 5, 5])
    inst.prefilling = [[0, 150_000], [1, 0], [2, 0], [3, 0]]  # a long prompt half done, three short ones
    pieces = inst.scheduler.plan(inst, 0, 0.0, 1)
    chunks = {item[0]: (c, done) for item, c, done in pieces}
    assert {1: (300, 0), 2: (200, 0), 3: (500, 0)}.items() <= chunks.items()  # every short prompt, whole
    shorts = (1000.0, 0.0, 300.0**2 + 200.0**2 + 500.0**2, 0.0)
    left = cost.largest_chunk(150_000, 0, 0.0, 0.05, scheduled=shorts, n=3)
    assert chunks[0] == (left, 150_000) and left >= MIN_CHUNK  # the long chunk: the budget left after them
    assert left < cost.largest_chunk(150_000, 0, 0.0, 0.05)
    c = sum(ch for ch, _ in chunks.values())
    cp = sum(ch * p for ch, p in chunks.values())
    c2 = sum(ch * ch for ch, _ in chunks.values())
    p = sum(p for _, p in chunks.values())
    assert cost.iteration_latency(c, cp, c2, p, 0, 0.0, n=4) <= 0.05 * 1.0001
    # FCFS gives the long prompt the whole budget: nothing for the short ones behind it
    inst.scheduler = make_scheduler("fcfs")
    assert [item[0] for item, _, _ in inst.scheduler.plan(inst, 0, 0.0, 1)] == [0]


def test_lars_orders_by_slack_and_the_long_prompt_still_progresses():
    pool = PoolConfig(instances=1, chunk_policy="adaptive", tbt_slo_s=0.05, max_batch_tokens=16384,
                      kv_capacity_tokens=2_000_000, scheduler="lars")
    inst, _ = _instance(pool, [400_000, 1000, 1000], [10, 5, 5])
    inst.req.arrival[:] = [0.0, 5.0, 4.0]
    inst.t = 6.0
    lars = inst.scheduler
    # slack = ttft_slo - waited + work done: the short that waited longer is more urgent
    assert lars.slack(inst, 2, 0) < lars.slack(inst, 1, 0)
    assert lars.slack(inst, 1, 0) == pytest.approx(2.0 - 1.0)
    done_work = lars.work(inst, 0, 400_000) - lars.work(inst, 200_000, 400_000)
    assert lars.slack(inst, 0, 200_000) == pytest.approx(2.0 - 6.0 + done_work)
    assert done_work == pytest.approx(lars.work(inst, 0, 200_000), abs=0.011)  # (one launch of rounding)
    inst.prefilling = [[0, 200_000], [1, 0], [2, 0]]
    pieces = lars.plan(inst, 0, 0.0, 1)
    assert [item[0] for item, _, _ in pieces] == [2, 1, 0]  # shorts by slack, then the long chunk
    # only the long prompt: it takes the whole budget, as under FCFS
    inst.prefilling = [[0, 200_000]]
    assert lars.plan(inst, 0, 0.0, 1)[0][1] == make_scheduler("fcfs").plan(inst, 0, 0.0, 1)[0][1]


def test_lars_admission_lets_small_requests_past_one_waiting_for_kv():
    # 10,000 KV tokens: the first request holds 6,000; the second (6,000) must wait, the third (1,000) fits
    t = trace([0.0, 0.01, 0.02], [5990, 5990, 990], [10, 10, 10])
    runs = {s: replay(t, linear_bundle(), ClusterConfig(pools=[PoolConfig(instances=1, kv_capacity_tokens=10_000, scheduler=s)],
                                                       router="round_robin")).requests for s in ("fcfs", "lars")}
    fcfs, lars = runs["fcfs"], runs["lars"]
    assert fcfs["first_token_s"][2] > fcfs["finish_s"][0]  # FCFS: behind the waiting one
    assert lars["first_token_s"][2] < lars["finish_s"][0]  # LARS: started beside the first
    assert not lars["dropped"].any() and lars["finish_s"].notna().all()
    # a request already late (negative slack) is not overtaken at admission: nothing starts until KV
    # frees up for it
    late = PoolConfig(instances=1, kv_capacity_tokens=10_000, scheduler="lars", ttft_slo_s=1e-3)
    blocked = replay(t, linear_bundle(), ClusterConfig(pools=[late], router="round_robin")).requests
    assert blocked["first_token_s"][2] > blocked["finish_s"][0]


def test_token_jsq_routes_to_the_fewest_outstanding_tokens():
    # one long request, then short ones: by request count they alternate, by tokens they avoid the long one
    t = trace([0.0] + list(np.arange(1, 9) * 0.01), [50_000] + [100] * 8, [200] + [20] * 8)
    pools = [PoolConfig(instances=2, kv_capacity_tokens=100_000)]
    by_tokens = replay(t, linear_bundle(), ClusterConfig(pools=pools, router="token_jsq")).requests
    by_count = replay(t, linear_bundle(), ClusterConfig(pools=pools, router="least_loaded")).requests
    long_on = by_tokens["instance"][0]
    assert (by_tokens["instance"][1:] != long_on).all()
    assert (by_count["instance"][1:] == long_on).any()
    assert by_tokens["ttft_s"][1:].max() < by_count["ttft_s"][1:].max()


def test_outstanding_tokens_are_counted_down_to_zero():
    config = ClusterConfig(pools=[PoolConfig(instances=1, kv_capacity_tokens=3000, chunk_size=512)], router="round_robin")
    req = Requests(np.array([0.0, 0.0, 0.1]), np.array([1000, 5000, 700]), np.array([40, 5, 6]))
    cost = InstanceCost.from_bundle(linear_bundle(), 1, None)
    inst = Instance(0, 0, config.pools[0], cost, req, Recorder(1, 1.0))
    inst.enqueue(0)
    inst.enqueue(1)
    assert inst.tokens_left == 1040 + 5005
    inst.advance(0.05)  # the 5,005-token request is dropped (never fits); the first one is decoding
    assert len(inst.heap) == 1 and inst.tokens_left == 40 - 1 - inst.g
    inst.enqueue(2)  # its prefill rides beside that decode (mixed iterations: each token counted once)
    inst.advance(np.inf)
    assert req.first_token[2] < req.finish[0]
    assert inst.tokens_left == 0 and req.drop_reason[1] is not None
