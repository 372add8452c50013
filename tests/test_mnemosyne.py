"""Mnemosyne as the paper runs it: KV capacity from the model, SPP decode accounting, KVP, `replay longctx`."""

import json
import re

import numpy as np

import pytest

from replay.config import PP_TRANSFER_S, ClusterConfig, PoolConfig, cluster_from_dict
from replay.cost_model import InstanceCost
from replay.engine import replay
from replay.memory_planner import DoesNotFit, MemoryPlan, pool_kv_capacity, resolve_cluster
from toolkit.errors import InputError
from toolkit.model_shapes import PRESETS

from .conftest import one_error_line
from .test_replay import linear_bundle, trace


def test_model_shapes_moved_and_reexported():
    from collectors.profiling import sim_profile

    assert sim_profile.PRESETS is PRESETS and sim_profile.ModelShape is type(PRESETS["tiny"])


def test_llama3_8b_kv_bytes_and_h100_capacity():
    plan = MemoryPlan(PRESETS["llama3-8b"], tp=1, pp=1, gpu_memory_gib=80, dtype_bytes=2, max_batch_tokens=4096)
    assert plan.kv_bytes_per_token == 128 * 1024  # 2 x 32 layers x 8 KV heads x 128 x 2 B
    assert plan.weight_bytes == pytest.approx(16.06e9, rel=0.01)
    assert 0.44e6 < plan.capacity_tokens < 0.48e6  # about 0.45 M tokens after the weights
    # TP beyond the KV heads replicates them (one head per GPU); PP splits the layers and the weights
    assert MemoryPlan(PRESETS["llama3-8b"], 16, 1, 80, 2, 4096).kv_bytes_per_token == 2 * 32 * 1 * 128 * 2
    two = MemoryPlan(PRESETS["llama3-8b"], 1, 2, 80, 2, 4096)
    assert two.kv_bytes_per_token == plan.kv_bytes_per_token // 2 and two.capacity_tokens > 2 * plan.capacity_tokens


def test_a_shard_that_does_not_fit_is_refused_with_the_bytes():
    plan = MemoryPlan(PRESETS["llama2-70b"], 1, 1, 80, 2, 4096)
    with pytest.raises(DoesNotFit, match=r"needs 13\d\.\d\d GB per GPU"):
        plan.capacity_tokens
    with pytest.raises(InputError, match=r"c.toml: key pool\[0\].model_shape: does not fit: llama2-70b"):
        cluster_from_dict({"pool": [{"model_shape": "llama2-70b"}]}, "c.toml")
    assert cluster_from_dict({"pool": [{"model_shape": "llama2-70b", "tp": 4}]}).pools[0].model_shape == "llama2-70b"


def test_capacity_source_toml_or_derived_and_a_missing_shape_named():
    toml_pool = cluster_from_dict({"pool": [{"kv_capacity_tokens": 1234}]}).pools[0]
    assert pool_kv_capacity(toml_pool, None).source == "toml"
    derived = cluster_from_dict({"pool": [{"gpu_memory_gib": 40}]}).pools[0]
    kv = pool_kv_capacity(derived, linear_bundle())  # the bundle's model names a preset
    assert kv.source == "derived from llama3-8b on 40 GiB" and 0.1e6 < kv.tokens < 0.2e6
    nameless = linear_bundle()
    nameless.metadata.pop("model")
    with pytest.raises(InputError, match=r"c.toml: key pool\[0\].model_shape: missing"):
        resolve_cluster(cluster_from_dict({"pool": [{}]}), nameless, "c.toml")
    for bad, message in ((("model_shape", "gpt5"), "must be one of"), (("gpu_memory_gib", 0), "must be > 0"),
                         (("dtype_bytes", 1.5), "must be an integer"), (("pp_transfer_s", -1), "must be >= 0")):
        with pytest.raises(InputError, match=rf"key pool\[0\]\.{bad[0]}: {message}"):
            cluster_from_dict({"pool": [dict([bad])]}, "c.toml")


def test_replay_summary_says_which_capacity():
    t = trace([0.0], [1000], [5])
    derived = replay(t, linear_bundle(), cluster_from_dict({"router": "round_robin", "pool": [{"instances": 1}]}))
    assert derived.summary["kv_capacity_source"] == "derived from llama3-8b on 80 GiB"
    assert 0.44e6 < derived.summary["kv_capacity_tokens"] < 0.48e6
    fixed = replay(t, linear_bundle(), cluster_from_dict({"pool": [{"instances": 1, "kv_capacity_tokens": 5000, "kvp": 2}]}))
    assert fixed.summary["kv_capacity_source"] == "toml"
    assert fixed.summary["kv_capacity_by_pool"][0]["instance_kv_tokens"] == 10_000


def test_a_context_that_cannot_fit_is_refused_with_the_bytes():
    config = cluster_from_dict({"router": "round_robin", "pool": [{"instances": 1}]})
    result = replay(trace([0.0], [1_000_000], [10]), linear_bundle(), config)
    reason = result.requests["drop_reason"].iloc[0]
    assert result.requests["dropped"].iloc[0] and "needs 1000010 KV tokens" in reason
    assert "131.07 GB of KV per GPU" in reason  # 1,000,010 tokens x 128 KiB


def test_spp_never_shortens_decode():
    base = InstanceCost.from_bundle(linear_bundle(), tp=1, sm_clock_mhz=None)
    for pp in (2, 4, 8):
        spp = InstanceCost.from_bundle(linear_bundle(), tp=1, sm_clock_mhz=None, pp=pp)
        for b, k in ((1, 1000), (32, 500_000), (1, 10_000_000)):
            assert spp.decode_latency(b, k) >= base.decode_latency(b, k)
            assert spp.decode_latency(b, k) == pytest.approx(base.decode_latency(b, k) + (pp - 1) * PP_TRANSFER_S)
            # a mixed iteration that carries decodes is a full pass: never below the chunk's unsplit time
            c, p = 2048, 100_000
            full = spp.piece_latency(c, p)
            mixed = spp.iteration_latency(c, c * p, c * c, p, b, k, n=1, largest=full)
            assert mixed >= base.iteration_latency(c, c * p, c * c, p, b, k)
    # in a replay: decodes beside a long prefill see the same gaps or longer under SPP
    t = trace([0.0] * 8 + [0.5], [100] * 8 + [100_000], [300] * 8 + [2])
    gaps = {pp: replay(t, linear_bundle(), ClusterConfig(pools=[PoolConfig(instances=1, pp=pp, chunk_size=4096)],
                                                            router="round_robin")).requests["tbt_max_s"][:8].max()
            for pp in (1, 4)}
    assert gaps[4] >= gaps[1]


def test_adaptive_chunk_keeps_the_full_pass_within_the_slo_and_prefill_still_pipelines():
    slo = 0.030
    t = trace([0.0] * 20 + [0.5], [100] * 20 + [200_000], [800] * 20 + [5])
    results = {}
    for pp in (1, 4):
        pool = PoolConfig(instances=1, pp=pp, chunk_policy="adaptive", tbt_slo_s=slo, max_batch_tokens=16384)
        results[pp] = replay(t, linear_bundle(), ClusterConfig(pools=[pool], router="round_robin")).requests
    for pp, req in results.items():
        assert req["tbt_max_s"][:20].max() <= slo * 1.001, pp
    # TTFT ~ sum of chunk stage-times / pp (the chunk size is that of pp = 1, with pp slots filled)
    assert results[4]["ttft_s"].iloc[-1] < results[1]["ttft_s"].iloc[-1] / 3


def test_kvp_lowers_decode_tbt_monotonically_up_to_its_combine_cost():
    costs = [InstanceCost.from_bundle(linear_bundle(), tp=1, sm_clock_mhz=None, kvp=kvp, kvp_overhead_s=3.2e-4)
             for kvp in (1, 2, 4, 8, 16)]
    for k in (1_000_000, 10_000_000):
        tbt = [c.decode_latency(1, k) for c in costs]
        assert all(b <= a for a, b in zip(tbt[1:], tbt[2:])) and tbt[1] < tbt[0] + 3.2e-4
    # a short context: splitting the KV saves less than the combine costs (the bound)
    short = [c.decode_latency(1, 1000) for c in costs]
    assert short[1] > short[0] and all(s <= short[0] + 3.2e-4 for s in short)


def test_context_sweep_rows_and_short_ttft_over_every_short_request(sim_full_shape_bundle):
    from replay.policies.mnemosyne import COLUMNS, context_sweep, grid_configs

    table = context_sweep(sim_full_shape_bundle, [262_144, 1_000_000], configs=grid_configs([1], [1, 4], [1, 2]))
    assert list(table.columns[: len(COLUMNS)]) == COLUMNS and len(table) == 8
    small = table[table["context_tokens"] == 262_144].set_index(["pp", "kvp"])
    assert not small["dropped"].any()
    assert (small["shorts_during_prefill"] > 0).all() and (small["short_ttft_p99_s"] >= small["short_ttft_p50_s"]).all()
    big = table[table["context_tokens"] == 1_000_000].set_index(["pp", "kvp"])
    assert big.loc[(1, 1), "dropped"] and "GB of KV per GPU" in big.loc[(1, 1), "drop_reason"]  # 0.45 M tokens a GPU
    assert not big.loc[(4, 1), "dropped"]


@pytest.fixture(scope="module")
def sim_full_shape_bundle():
    import warnings

    from characterize.fitting import fit_bundle
    from characterize.importers import from_profile
    from collectors.profiling.sim_profile import simulate_profile

    warnings.simplefilter("ignore")
    return fit_bundle(from_profile(simulate_profile("llama3-8b", "quick")), {"simulated": True, "model": ["llama3-8b"]},
                      tree_estimators=10)


def test_longctx_cli_json_rows(run_cli, tmp_path, sim_full_shape_bundle):
    models = sim_full_shape_bundle.save(tmp_path / "m.json")
    result = run_cli("replay", "longctx", "--models", models, "--contexts", "131072,1000000", "--tp", "1,2", "--pp", "1",
                     "--kvp", "1", "--gpu-memory-gib", "80", "--preset", "llama3-8b", "--json", "-o", tmp_path / "l.csv")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    keys = {"context_tokens", "tp", "pp", "kvp", "gpus", "ttft_s", "long_tbt_s", "decode_tbt_max_s", "short_ttft_p50_s",
            "short_ttft_p99_s", "dropped", "drop_reason"}
    assert len(rows) == 4 and all(keys <= set(r) for r in rows)
    by = {(r["context_tokens"], r["tp"]): r for r in rows}
    assert not by[(131072, 1)]["dropped"] and by[(1000000, 1)]["dropped"] and "bytes" not in by[(131072, 1)]
    assert "GB of KV per GPU" in by[(1000000, 1)]["drop_reason"] and by[(1000000, 1)]["ttft_s"] is None
    assert (tmp_path / "l.csv").exists()
    legacy = run_cli("replay", "longctx", "--models", models, "--contexts", "65536")
    assert legacy.exit_code == 0 and "adaptive + SPP x4 + KVP x4" in legacy.output
    bad = run_cli("replay", "longctx", "--models", models, "--tp", "0")
    one_error_line(bad, "--tp")


def test_every_short_request_arriving_during_the_long_prefill_is_counted_finished_or_not():
    from replay.policies.mnemosyne import censored_waits, context_sweep

    waits, unfinished = censored_waits(np.array([1.0, 2.0, 3.0]), np.array([1.5, np.nan, 3.25]), 10.0)
    assert list(waits) == [0.5, 8.0, 0.25] and unfinished == 1  # no first token: waiting until the end
    config = ClusterConfig(pools=[PoolConfig(instances=1, chunk_policy="adaptive", max_batch_tokens=16384)],
                           router="round_robin")
    alone = replay(trace([1.0], [300_000], [256]), linear_bundle(), config).requests.iloc[0]
    stream = np.arange(0.0, 1.0 + 1.5 * alone.e2e_s, 1 / 5.0)
    for scheduler in ("fcfs", "lars"):
        base = PoolConfig(instances=1, max_batch_tokens=16384, kv_capacity_tokens=None, scheduler=scheduler)
        row = context_sweep(linear_bundle(), [300_000], configs={"x": {"chunk_policy": "adaptive"}}, base=base).iloc[0]
        expected = ((stream >= 1.0) & (stream < 1.0 + row["ttft_s"])).sum()
        assert row["shorts_during_prefill"] == expected > 0 and row["short_unfinished"] == 0
        assert row["scheduler"] == scheduler


def _plan(**kw):
    from replay.policies.mnemosyne import plan_configuration

    args = dict(tps=(1, 2), pps=(1, 2, 4), kvps=(1, 2))
    args.update(kw)
    return plan_configuration(linear_bundle(), 600_000, args.pop("ttft_target_s", 15.0), 0.05, **args)


def test_plan_picks_the_cheapest_configuration_meeting_the_targets():
    plan = _plan()
    table, chosen = plan["candidates"], plan["chosen"]
    assert chosen is not None and len(table) == 12 and (table["status"] == "chosen").sum() == 1
    assert chosen["ttft_s"] <= 15.0 and chosen["decode_tbt_max_s"] <= 0.05 * 1.001
    assert chosen["long_tbt_max_s"] <= 0.05 * 1.001 and chosen["short_ttft_p99_s"] <= 10.0
    meets = table[table["status"] == "meets"]
    assert (meets["gpu_seconds"] >= chosen["gpu_seconds"]).all()
    misses = table[table["status"] == "misses"]
    assert misses["reason"].notna().all()
    # 0.6 M tokens do not fit one GPU's KV (0.45 M): refused with the bytes
    one = table.set_index("config").loc["TP1 x SPP1 x KVP1"]
    assert one["status"] == "rejected" and "GB of KV per GPU" in one["reason"]
    # a target no configuration meets: none chosen, each candidate says why
    impossible = _plan(ttft_target_s=0.5)
    assert impossible["chosen"] is None and impossible["candidates"]["reason"].notna().all()
    fewest = _plan(objective="gpus")["chosen"]
    assert fewest["gpus"] <= chosen["gpus"]


def test_longctx_plan_and_scheduler_options(run_cli, tmp_path):
    models = linear_bundle().save(tmp_path / "m.json")
    result = run_cli("replay", "longctx", "--models", models, "--contexts", "600000", "--plan", "--tp", "1", "--pp", "1,2,4",
                     "--kvp", "1,2", "--ttft-target", "15", "--json")
    assert result.exit_code == 0, result.output
    (plan,) = json.loads(result.output)
    assert plan["context_tokens"] == 600000 and plan["chosen"]["status"] == "chosen"
    assert len(plan["candidates"]) == 6 and {"config", "status", "reason", "est_ttft_s", "gpu_seconds"} <= set(plan["candidates"][0])
    text = run_cli("replay", "longctx", "--models", models, "--contexts", "600000", "--plan", "--tp", "1", "--pp", "2,4",
                   "--kvp", "1", "--ttft-target", "15")
    assert text.exit_code == 0 and "600,000 tokens: TP1 x SPP4 x KVP1 (4 GPUs)" in text.output
    assert re.search(r"misses +TTFT [0-9.]+ s > 15 s", text.output)  # SPP2: replayed, and why it misses
    rows = run_cli("replay", "longctx", "--models", models, "--contexts", "200000", "--tp", "1", "--pp", "1", "--kvp", "2",
                   "--scheduler", "lars", "--max-tokens-per-kvp-group", "150000", "--json")
    assert rows.exit_code == 0, rows.output
    (row,) = json.loads(rows.output)
    assert row["scheduler"] == "lars" and row["max_tokens_per_kvp_group"] == 150000 and row["short_unfinished"] == 0
    assert row["short_ttft_p99_s"] < 1.0
    one_error_line(run_cli("replay", "longctx", "--models", models, "--scheduler", "sjf"), "--scheduler")
    one_error_line(run_cli("replay", "longctx", "--models", models, "--plan", "--ttft-target", "0"), "--ttft-target")
