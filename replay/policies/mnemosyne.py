"""Mnemosyne long-context study: TTFT and TBT against context length under chunking, SPP and KVP.

For each context length and instance configuration, one long request arrives while a batch of
short requests is decoding.  The replay measures the long request's TTFT and its own mean time
between tokens (decoding over its full KV), and the worst gap the co-batched decodes saw while
the long prompt was being prefilled - what adaptive chunking protects.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Iterable

import numpy as np
import pandas as pd

from ..config import ClusterConfig, PoolConfig
from ..engine import replay

if TYPE_CHECKING:
    from characterize.model_io import ModelBundle

CONFIGS = {
    "fixed chunk 8192": dict(chunk_policy="fixed", chunk_size=8192),
    "adaptive chunks": dict(chunk_policy="adaptive"),
    "adaptive + SPP x4": dict(chunk_policy="adaptive", pp=4),
    "adaptive + SPP x4 + KVP x4": dict(chunk_policy="adaptive", pp=4, kvp=4),
}


def context_sweep(bundle: ModelBundle, contexts: Iterable[int], configs: dict | None = None, base: PoolConfig | None = None,
                  short_rate: float = 5.0, short_input: int = 512, short_output: int = 64,
                  long_output: int = 256) -> pd.DataFrame:
    """One row per (context, configuration).

    A steady stream of short requests (``short_rate`` per second, small prompts and outputs, so
    their own KV stays small) keeps a decode batch running while the long request's prompt is
    prefilled; ``decode_tbt_max_s`` is the worst gap seen by the short requests that finished
    during that prefill (later ones also decode beside the long request's own million-token KV,
    which is ``long_tbt_mean_s``).  The stream covers 1.5x the long request's TTFT when served alone.
    """
    base = base or PoolConfig(instances=1, max_batch_tokens=16384, kv_capacity_tokens=4_000_000, tbt_slo_s=0.05)
    rows = []
    for context in contexts:
        long = pd.DataFrame({"arrival_s": [1.0], "input_tokens": [int(context)], "output_tokens": [long_output]})
        for name, overrides in (configs or CONFIGS).items():
            pool = replace(base, **overrides)
            cluster = ClusterConfig(pools=[pool], router="round_robin")
            alone = replay(long, bundle, cluster).requests.iloc[0]
            if alone["dropped"]:
                rows.append({"config": name, "context_tokens": int(context), "gpus": pool.tp * pool.pp * pool.kvp,
                             "ttft_s": np.nan, "long_tbt_mean_s": np.nan, "decode_tbt_max_s": np.nan,
                             "tbt_slo_s": pool.tbt_slo_s, "dropped": True, "drop_reason": alone["drop_reason"]})
                continue
            horizon = 1.0 + 1.5 * alone["e2e_s"]
            shorts = np.arange(0.0, horizon, 1.0 / short_rate)
            trace = pd.DataFrame({
                "arrival_s": np.r_[shorts, 1.0],
                "input_tokens": np.r_[np.full(len(shorts), short_input), int(context)],
                "output_tokens": np.r_[np.full(len(shorts), short_output), long_output],
            }).sort_values("arrival_s", kind="stable").reset_index(drop=True)
            result = replay(trace, bundle, cluster)
            req = result.requests
            is_long = req["input_tokens"] == int(context)
            lr = req[is_long].iloc[0]
            short = req[~is_long]
            # short requests that lived through part of the long prefill and finished before its first
            # token: every gap they saw after its arrival was during the prefill
            overlap = (short["finish_s"] > lr["arrival_s"]) & (short["finish_s"] <= lr["first_token_s"])
            rows.append({
                "config": name, "context_tokens": int(context), "gpus": result.summary["gpus"],
                "ttft_s": lr["ttft_s"], "long_tbt_mean_s": lr["tbt_mean_s"],
                "decode_tbt_max_s": short.loc[overlap, "tbt_max_s"].max(),
                "tbt_slo_s": pool.tbt_slo_s, "dropped": False, "drop_reason": None,
            })
    return pd.DataFrame(rows)
