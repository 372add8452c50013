"""Mnemosyne long-context study: TTFT and TBT against context length under chunking, SPP and KVP.

For each context length and instance configuration, one long request arrives while a stream of
short requests keeps a decode batch running.  The replay measures the long request's TTFT and its
own mean time between tokens (decoding over its full KV), the worst gap the co-batched decodes saw
while the long prompt was being prefilled - what adaptive chunking protects - and the TTFT of
every short request that arrived during that prefill.

KV capacity comes from the model shape and GPU memory (``replay/memory_planner.py``): a
configuration whose shard does not fit, or whose instance cannot hold the context, is a dropped
row whose ``drop_reason`` gives the bytes it needs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
import pandas as pd

from ..config import ClusterConfig, PoolConfig
from ..engine import replay
from ..memory_planner import DoesNotFit, bundle_preset, plan_for, pool_kv_capacity

if TYPE_CHECKING:
    from characterize.model_io import ModelBundle

# The four configurations of the first study (all at TP1), kept for `replay longctx` without --tp/--pp/--kvp
CONFIGS = {
    "fixed chunk 8192": dict(chunk_policy="fixed", chunk_size=8192),
    "adaptive chunks": dict(chunk_policy="adaptive"),
    "adaptive + SPP x4": dict(chunk_policy="adaptive", pp=4),
    "adaptive + SPP x4 + KVP x4": dict(chunk_policy="adaptive", pp=4, kvp=4),
}
DEFAULT_SHAPE = "llama3-8b"  # the Python API's shape when neither the caller nor the bundle names one

COLUMNS = ["config", "context_tokens", "tp", "pp", "kvp", "gpus", "ttft_s", "long_tbt_s", "decode_tbt_max_s",
           "short_ttft_p50_s", "short_ttft_p99_s", "shorts_during_prefill", "kv_capacity_tokens", "tbt_slo_s",
           "dropped", "drop_reason"]


def grid_configs(tps: Iterable[int], pps: Iterable[int], kvps: Iterable[int]) -> dict:
    """Adaptive-chunk configurations, one per (tp, pp, kvp)."""
    return {f"adaptive TP{tp} x SPP{pp} x KVP{kvp}": dict(chunk_policy="adaptive", tp=tp, pp=pp, kvp=kvp)
            for tp in tps for pp in pps for kvp in kvps}


def _row(name: str, context: int, pool: PoolConfig, capacity: int | None, **values) -> dict:
    row = {"config": name, "context_tokens": int(context), "tp": pool.tp, "pp": pool.pp, "kvp": pool.kvp,
           "gpus": pool.tp * pool.pp * pool.kvp, "ttft_s": np.nan, "long_tbt_s": np.nan, "decode_tbt_max_s": np.nan,
           "short_ttft_p50_s": np.nan, "short_ttft_p99_s": np.nan, "shorts_during_prefill": 0,
           "kv_capacity_tokens": capacity, "tbt_slo_s": pool.tbt_slo_s, "dropped": False, "drop_reason": None}
    row.update(values)
    row["long_tbt_mean_s"] = row["long_tbt_s"]  # (the column's earlier name, read by reports)
    return row


def context_sweep(bundle: ModelBundle, contexts: Iterable[int], configs: dict | None = None, base: PoolConfig | None = None,
                  short_rate: float = 5.0, short_input: int = 512, short_output: int = 64,
                  long_output: int = 256, model_shape: str | None = None, gpu_memory_gib: float | None = None,
                  progress: Callable[[], None] | None = None) -> pd.DataFrame:
    """One row per (context, configuration) (columns: ``COLUMNS``, plus ``long_tbt_mean_s``).

    A steady stream of short requests (``short_rate`` per second, small prompts and outputs, so
    their own KV stays small) keeps a decode batch running while the long request's prompt is
    prefilled; ``decode_tbt_max_s`` is the worst gap seen by the short requests that finished
    during that prefill (later ones also decode beside the long request's own KV, which is
    ``long_tbt_s``).  ``short_ttft_p50_s``/``p99`` cover every short request that arrived during
    the long prefill (``shorts_during_prefill`` of them), finished or not: one without a first
    token (dropped) counts as waiting until the end of the replay.  The stream covers 1.5x the long
    request's end-to-end time when served alone.

    KV capacity: ``base.kv_capacity_tokens`` when set, else derived for ``model_shape`` (default:
    the bundle's model when it names a preset, else llama3-8b) on ``gpu_memory_gib`` GPUs.
    ``progress`` is called once per row.
    """
    shape = model_shape or (base.model_shape if base else None) or bundle_preset(bundle) or DEFAULT_SHAPE
    base = base or PoolConfig(instances=1, max_batch_tokens=16384, tbt_slo_s=0.05, kv_capacity_tokens=None)
    base = replace(base, instances=1, model_shape=shape,
                   gpu_memory_gib=gpu_memory_gib if gpu_memory_gib is not None else base.gpu_memory_gib)
    rows = []
    for context in contexts:
        context = int(context)
        long = pd.DataFrame({"arrival_s": [1.0], "input_tokens": [context], "output_tokens": [long_output]})
        for name, overrides in (configs or CONFIGS).items():
            pool = replace(base, **overrides)
            rows.append(_one(bundle, name, context, pool, long, short_rate, short_input, short_output, long_output))
            if progress is not None:
                progress()
    return pd.DataFrame(rows, columns=COLUMNS + ["long_tbt_mean_s"])


def _one(bundle, name, context, pool, long, short_rate, short_input, short_output, long_output) -> dict:
    try:
        kv = pool_kv_capacity(pool, bundle)
    except DoesNotFit as exc:  # the weights alone do not fit the GPUs
        return _row(name, context, pool, None, dropped=True, drop_reason=exc.message)
    pool = replace(pool, kv_capacity_tokens=kv.tokens, kv_capacity_source=kv.source)
    need = context + long_output
    if need > kv.tokens * pool.kvp:
        plan = kv.plan or plan_for(pool, pool.model_shape)
        return _row(name, context, pool, kv.tokens, dropped=True,
                    drop_reason=f"needs {need} KV tokens, instance holds {kv.tokens * pool.kvp}: "
                                f"{plan.context_need(need, pool.kvp)}")
    cluster = ClusterConfig(pools=[pool], router="round_robin")
    alone = replay(long, bundle, cluster).requests.iloc[0]
    if alone["dropped"]:
        return _row(name, context, pool, kv.tokens, dropped=True, drop_reason=alone["drop_reason"])
    horizon = 1.0 + 1.5 * alone["e2e_s"]
    shorts = np.arange(0.0, horizon, 1.0 / short_rate)
    trace = pd.DataFrame({
        "arrival_s": np.r_[shorts, 1.0],
        "input_tokens": np.r_[np.full(len(shorts), short_input), context],
        "output_tokens": np.r_[np.full(len(shorts), short_output), long_output],
    }).sort_values("arrival_s", kind="stable").reset_index(drop=True)
    result = replay(trace, bundle, cluster)
    req = result.requests
    is_long = req["input_tokens"] == context
    lr = req[is_long].iloc[0]
    short = req[~is_long]
    # short requests that lived through part of the long prefill and finished before its first
    # token: every gap they saw after its arrival was during the prefill
    overlap = (short["finish_s"] > lr["arrival_s"]) & (short["finish_s"] <= lr["first_token_s"])
    # every short request that arrived during the long prefill, finished or not (no first token:
    # still waiting at the end of the replay)
    during = short[(short["arrival_s"] >= lr["arrival_s"]) & (short["arrival_s"] < lr["first_token_s"])]
    first = during["first_token_s"].fillna(result.summary["duration_s"])
    waits = (first - during["arrival_s"]).to_numpy()
    worst = short.loc[overlap, "tbt_max_s"]
    return _row(name, context, pool, kv.tokens, gpus=result.summary["gpus"], ttft_s=lr["ttft_s"],
                long_tbt_s=lr["tbt_mean_s"], decode_tbt_max_s=worst.max() if len(worst) else np.nan,
                short_ttft_p50_s=float(np.quantile(waits, 0.5)) if len(waits) else np.nan,
                short_ttft_p99_s=float(np.quantile(waits, 0.99)) if len(waits) else np.nan,
                shorts_during_prefill=int(len(waits)))
