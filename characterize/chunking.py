"""Mnemosyne adaptive chunking: the largest prefill chunk per KV prefix that keeps the TBT SLO.

A mixed iteration runs one prefill chunk (c tokens attending to a prefix of p) with a batch
of b decodes at KV length k.  Its latency is every co-batched decode's time between tokens, so
the chunk may only be as large as keeps that latency under the SLO - and since attention cost
grows with c*p, the admissible chunk shrinks as the prefix grows.

Latency of the mixed iteration: the bundle's ``mixed`` model when it has one, otherwise
prefill(c, p) + decode(b, k) (separately profiled parts; conservative, as the parts share the
weight reads when batched).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .model_io import ModelBundle


def mixed_latency(bundle: ModelBundle, frame: pd.DataFrame) -> tuple[np.ndarray, str]:
    if bundle.find("latency_s", "mixed") is not None:
        return bundle.predict("latency_s", "mixed", frame), "mixed model"
    total = bundle.predict("latency_s", "prefill", frame)
    if (frame["batch_size"] > 0).any():
        total = total + np.where(frame["batch_size"] > 0, bundle.predict("latency_s", "decode", frame), 0.0)
    return total, "prefill + decode models"


def adaptive_chunks(bundle: ModelBundle, tbt_slo_s: float, prefixes, batch_size: int, kv_tokens: int,
                    tp: int | None = None, sm_clock_mhz: float | None = None,
                    granularity: int = 32, max_chunk: int = 16384) -> pd.DataFrame:
    """Largest chunk (multiple of ``granularity``) per prefix with mixed latency <= SLO.

    ``chunk_tokens`` is 0 where even the smallest chunk misses the SLO at that prefix.
    """
    prefixes = np.asarray(list(prefixes), dtype="int64")
    chunks = np.arange(granularity, max_chunk + 1, granularity, dtype="int64")
    grid = pd.DataFrame({
        "chunk_tokens": np.tile(chunks, len(prefixes)),
        "prefix_tokens": np.repeat(prefixes, len(chunks)),
        "batch_size": batch_size, "kv_tokens": kv_tokens,
    })
    if tp is not None:
        grid["tp"] = tp
    if sm_clock_mhz is not None:
        grid["sm_clock_mhz"] = float(sm_clock_mhz)
    latency, method = mixed_latency(bundle, grid)
    latency = latency.reshape(len(prefixes), len(chunks))
    ok = latency <= tbt_slo_s
    # the largest admissible chunk: latency is increasing in c, but take the last True to be safe
    last = np.where(ok.any(axis=1), len(chunks) - 1 - np.argmax(ok[:, ::-1], axis=1), -1)
    rows = np.arange(len(prefixes))
    return pd.DataFrame({
        "prefix_tokens": prefixes,
        "chunk_tokens": np.where(last >= 0, chunks[np.maximum(last, 0)], 0),
        "predicted_latency_s": np.where(last >= 0, latency[rows, np.maximum(last, 0)], np.nan),
        "smallest_chunk_latency_s": latency[:, 0],
        "tbt_slo_s": tbt_slo_s,
        "method": method,
    })
