"""Held-out accuracy of the whole fitting pipeline on a measured table: the splits users care about.

Each split fits a bundle on part of the rows with :func:`characterize.fitting.fit_bundle` (the
same selection a user gets from ``characterize fit``) and scores the rest:

* ``configs``: a quarter of the distinct configurations (prompt, batch, KV, TP, clock) held out,
  over several seeds: interpolation between measured points;
* ``context``: fit on per-prompt lengths (prefill) or KV lengths (decode) up to a quarter of the
  largest, predict those above half of it: 2048 -> 4096/8192 on an 8192-token table;
* ``tp``: fit on every TP degree but the largest, predict the largest: TP2 + TP4 -> TP8.

Scores are fractions (``mape``, ``p90_ape``) with ``covered`` and ``rows``; a split that the table
cannot make (one TP degree, too few rows) is left out.  Rows are grouped by GPU and model first
(one fit per pair, as ``fit`` does for a mixed table).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .fitting import MIN_ROWS, config_groups, fit_bundle
from .validation_report import score_bundle

PHASES = ("prefill", "decode")


def _context(frame: pd.DataFrame, phase: str) -> pd.Series:
    """The context axis of ``phase``'s rows: tokens per prompt (prefill, with its prefix) or KV length (decode)."""
    if phase == "decode":
        return frame["kv_tokens"].astype("float64")
    n = frame["prefill_sequences"].fillna(1.0) if "prefill_sequences" in frame else 1.0
    prefix = frame["prefix_tokens"].fillna(0.0) if "prefix_tokens" in frame else 0.0
    return frame["chunk_tokens"].astype("float64") / n + prefix


def _score(train: pd.DataFrame, test: pd.DataFrame, phase: str, trees: int) -> dict | None:
    if len(train) < MIN_ROWS or test.empty:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            bundle = fit_bundle(train, phases=[phase], tree_estimators=trees)
        except ValueError:
            return None
    if bundle.find("latency_s", phase) is None:
        return None
    scores = score_bundle(bundle, test, allow_extrapolation=True)["phases"].get(phase)
    if scores is None:
        return None
    scores["selected"] = bundle.validation[f"latency_s/{phase}"]["selected"]
    return scores


def _pool(results: list[dict]) -> dict | None:
    """Several seeds' scores as one: row-weighted MAPE, the worst p90, summed counts."""
    results = [r for r in results if r and r["mape"] is not None]
    if not results:
        return None
    rows = np.array([r["covered"] for r in results], dtype="float64")
    return {"mape": float(np.average([r["mape"] for r in results], weights=rows)),
            "mape_worst_seed": float(max(r["mape"] for r in results)),
            "p90_ape": float(max(r["p90_ape"] for r in results)),
            "covered": int(sum(r["covered"] for r in results)), "rows": int(sum(r["rows"] for r in results)),
            "selected": sorted({r["selected"] for r in results})}


def holdout_splits(frame: pd.DataFrame, seeds: int = 8, trees: int = 40) -> dict:
    """``{(gpu, model): {phase: {split: scores}}}`` for the splits of the module docstring."""
    out: dict = {}
    keys = [k for k in ("gpu_name", "model") if k in frame and frame[k].notna().all()]
    grouped = frame.groupby(keys, sort=True) if keys else [((None,), frame)]
    for key, rows in grouped:
        name = " / ".join(map(str, key if isinstance(key, tuple) else (key,)))
        for phase in PHASES:
            table = rows[(rows["phase"] == phase) & (rows["latency_s"] > 0)].reset_index(drop=True)
            if len(table) < 2 * MIN_ROWS:
                continue
            splits = {}
            groups = config_groups(table)
            unique = np.unique(groups)
            if len(unique) >= 4:
                runs = []
                for seed in range(seeds):
                    held = np.random.default_rng(seed).choice(unique, size=max(1, len(unique) // 4), replace=False)
                    test = np.isin(groups, held)
                    runs.append(_score(table[~test], table[test], phase, trees))
                splits["configs"] = _pool(runs)
            context = _context(table, phase)
            top = context.max()
            if top > 0:
                splits["context"] = _pool([_score(table[context <= top / 4], table[context > top / 2], phase, trees)])
            if "tp" in table and table["tp"].nunique() >= 3:
                largest = table["tp"].max()
                splits["tp"] = _pool([_score(table[table["tp"] < largest], table[table["tp"] == largest], phase, trees)])
            out.setdefault(name, {})[phase] = {k: v for k, v in splits.items() if v is not None}
    return out
