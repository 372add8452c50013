"""Mnemosyne adaptive chunking: the largest prefill chunk per KV prefix that keeps the TBT SLO.

A mixed iteration runs one prefill chunk (c tokens attending to a prefix of p) with a batch
of b decodes at KV length k.  Its latency is every co-batched decode's time between tokens, so
the chunk may only be as large as keeps that latency under the SLO - and since attention cost
grows with c*p, the admissible chunk shrinks as the prefix grows.

Latency of the mixed iteration is the one the replay's scheduler uses (``replay/cost_model.py``,
whose closed-form ``largest_chunk`` this grid agrees with, tested): prefill(c, p) + decode(b, k)
from the separately profiled parts, counting the decode model's constant (launch and fixed
per-iteration cost, its prediction at b = k = 0) once.  Tree models cannot tell that constant
apart, so for them the sum is taken whole (conservative).  The parts are used because profiles
vary b and k for decode but rarely inside mixed batches (the quick sweep holds them fixed), so a
``mixed`` model fitted on those rows does not extrapolate in b; where the bundle has one, its
prediction at the chosen chunk is reported beside it (``mixed_model_latency_s``) as a check.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from .linear_model import TermsModel
from .model_io import ModelBundle


def mixed_latency(bundle: ModelBundle, frame: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Latency of mixed iterations from the prefill and decode models (see the module doc)."""
    for phase in ("prefill", "decode"):
        if bundle.find("latency_s", phase) is None:
            raise KeyError(f"model bundle has no latency model for {phase!r}; adaptive chunking needs prefill and decode")
    total = bundle.predict("latency_s", "prefill", frame)
    method = "prefill + decode models"
    if (frame["batch_size"] > 0).any():
        decode = bundle.predict("latency_s", "decode", frame)
        if isinstance(bundle.find("latency_s", "decode"), TermsModel):
            decode = decode - bundle.predict("latency_s", "decode", frame.assign(batch_size=0, kv_tokens=0))
            method = "prefill + decode models, decode constant counted once"
        total = total + np.where(frame["batch_size"] > 0, decode, 0.0)
    return total, method


def adaptive_chunks(bundle: ModelBundle, tbt_slo_s: float, prefixes: Iterable[int], batch_size: int, kv_tokens: int,
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
    chosen = np.where(last >= 0, chunks[np.maximum(last, 0)], 0)
    table = pd.DataFrame({
        "prefix_tokens": prefixes,
        "chunk_tokens": chosen,
        "predicted_latency_s": np.where(last >= 0, latency[rows, np.maximum(last, 0)], np.nan),
        "smallest_chunk_latency_s": latency[:, 0],
        "mixed_model_latency_s": np.nan,
        "tbt_slo_s": tbt_slo_s,
        "method": method,
    })
    if bundle.find("latency_s", "mixed") is not None and (chosen > 0).any():
        at_chosen = grid.iloc[rows * len(chunks) + np.maximum(last, 0)]
        table["mixed_model_latency_s"] = np.where(chosen > 0, bundle.predict("latency_s", "mixed", at_chosen), np.nan)
    return table
