"""Fit, validate and select models per phase; the result is a :class:`ModelBundle`.

Validation, per phase and candidate:

* ``cv_mape``: grouped K-fold cross-validation, groups being distinct configurations
  (c, p, b, k, TP, clock), so repeated measurements of one point never sit on both sides;
* ``extrapolation_mape``: fit on the lower quarter of the context axis (prefix p for prefill,
  KV length k for decode), predict beyond half of its maximum - a 4x reach, as fitting on
  p <= 32 K and predicting 128 K+.

The simplest candidate within 5 % of the lowest worst-of-both wins and is refitted on all rows.  Candidates:
``physical`` (WLS over physical terms), ``roofline`` for prefill (the larger of a compute and a
memory piece, see ``roofline_model``) and ``trees`` (gradient boosting).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold

from .linear_model import TermsModel
from .metrics import mape
from .model_io import ModelBundle
from .power_model import PowerModel
from .roofline_model import RooflineModel
from .terms import DEFAULT_TERMS, ROOFLINE_TERMS
from .trees import TreeEnsembleModel

CONFIG_COLUMNS = ["chunk_tokens", "prefix_tokens", "batch_size", "kv_tokens", "tp", "sm_clock_mhz"]
CONTEXT_AXIS = {"prefill": "prefix_tokens", "mixed": "prefix_tokens", "decode": "kv_tokens", "linear": "chunk_tokens",
                "serving": "batch_size"}
MIN_ROWS = 12


def latency_candidates(phase: str, tree_estimators: int = 300) -> dict[str, Callable[[pd.DataFrame], object]]:
    """The latency-model candidates for ``phase``, simplest first: name -> a function that fits
    one on a frame of profile rows.  ``tree_estimators``: boosting rounds of ``trees``."""
    terms = DEFAULT_TERMS.get(phase, ["1", "c", "b"])
    candidates = {"physical": lambda df: TermsModel.fit(df, "latency_s", phase, terms)}
    if phase in ROOFLINE_TERMS:
        compute, memory = ROOFLINE_TERMS[phase]
        candidates["roofline"] = lambda df: RooflineModel.fit(df, "latency_s", phase, compute, memory)
    candidates["trees"] = lambda df: TreeEnsembleModel.fit(df, "latency_s", phase, n_estimators=tree_estimators)
    return candidates


def config_groups(frame: pd.DataFrame) -> np.ndarray:
    """Per row, the number of its configuration (the :data:`CONFIG_COLUMNS` present; a missing
    value counts as one more level): the groups of grouped cross-validation."""
    columns = [c for c in CONFIG_COLUMNS if c in frame]
    return frame[columns].astype("float64").fillna(-1).groupby(columns, sort=False).ngroup().to_numpy()


def cv_mape(frame: pd.DataFrame, make: Callable, target: str, splits: int = 5) -> float | None:
    """MAPE (percent) of ``target`` under grouped K-fold cross-validation of the models ``make``
    fits (at most ``splits`` folds, weighted by test rows); None below three configurations."""
    groups = config_groups(frame)
    n_groups = len(np.unique(groups))
    if n_groups < 3:
        return None
    errors, weights = [], []
    for train, test in GroupKFold(n_splits=min(splits, n_groups)).split(frame, groups=groups):
        model = make(frame.iloc[train])
        errors.append(mape(frame[target].iloc[test], model.predict(frame.iloc[test], strict=False)))
        weights.append(len(test))
    return float(np.average(errors, weights=weights))


def extrapolation_mape(frame: pd.DataFrame, make: Callable, target: str, axis: str | None) -> float | None:
    """MAPE (percent) of ``target`` on rows beyond half of ``axis``'s maximum, of a model fitted on
    rows up to a quarter of it.  None when ``axis`` is None, absent or never positive, either side
    has fewer than :data:`MIN_ROWS` rows, or the fit raises ``ValueError``."""
    if axis is None or axis not in frame or frame[axis].max() <= 0:
        return None
    top = frame[axis].max()
    train, test = frame[frame[axis] <= top / 4], frame[frame[axis] > top / 2]
    if len(train) < MIN_ROWS or len(test) < MIN_ROWS:
        return None
    try:
        model = make(train)
    except ValueError:  # e.g. too few rows in some group once the axis is cut
        return None
    return mape(test[target], model.predict(test, strict=False))


def select_latency_model(frame: pd.DataFrame, phase: str, candidates: dict | None = None) -> tuple[object, dict]:
    """The selected latency model, refitted on all of ``frame``, and its validation report.

    ``candidates``: name -> fit function, simplest first (None: :func:`latency_candidates`).
    The report holds per candidate its ``cv_mape``, ``extrapolation_mape`` and ``score`` (the
    worse of both), or its ``error``, and the ``selected`` name.  Raises ``ValueError`` when no
    candidate could be validated.
    """
    candidates = candidates or latency_candidates(phase)
    report = {}
    for name, make in candidates.items():
        try:
            cv = cv_mape(frame, make, "latency_s")
            ex = extrapolation_mape(frame, make, "latency_s", CONTEXT_AXIS.get(phase))
        except ValueError as exc:
            report[name] = {"error": str(exc)}
            continue
        scores = [s for s in (cv, ex) if s is not None]
        report[name] = {"cv_mape": cv, "extrapolation_mape": ex, "score": max(scores) if scores else None}
    ranked = [n for n in report if report[n].get("score") is not None]
    if not ranked:
        raise ValueError(f"{phase}: no latency model could be validated ({report})")
    # Candidates run from simplest to most flexible: take the first within 5 % of the best score,
    # so a more flexible model must earn its parameters.
    best_score = min(report[n]["score"] for n in ranked)
    best = next(n for n in ranked if report[n]["score"] <= best_score * 1.05)
    report["selected"] = best
    return candidates[best](frame), report


def fit_bundle(frame: pd.DataFrame, metadata: dict | None = None, phases: list[str] | None = None,
               tree_estimators: int = 300, progress: Callable[[str], None] | None = None) -> ModelBundle:
    """Latency (and, where measured, power) models for every phase in ``frame``."""
    bundle = ModelBundle(metadata=dict(metadata or {}))
    skipped = []  # what could not be fitted, and why, for the user (metadata "skipped")
    for phase in phases or sorted(frame["phase"].dropna().unique()):
        rows = frame[frame["phase"] == phase]
        if progress:
            progress(f"fitting {phase} ({len(rows):,} rows)")
        latency_rows = rows[rows["latency_s"].notna() & (rows["latency_s"] > 0)]
        if len(latency_rows) >= MIN_ROWS:
            model, report = select_latency_model(latency_rows, phase, latency_candidates(phase, tree_estimators))
            bundle.models.append(model)
            bundle.validation[f"latency_s/{phase}"] = report
        else:
            skipped.append(f"latency_s/{phase}: {len(latency_rows)} rows with a positive latency (a model needs {MIN_ROWS})")
        power_rows = rows[rows["mean_power_w"].notna() & (rows["mean_power_w"] > 0)] if "mean_power_w" in rows else rows.iloc[:0]
        if len(power_rows) < MIN_ROWS:
            skipped.append(f"mean_power_w/{phase}: {len(power_rows)} rows with a measured power (a model needs {MIN_ROWS})")
        else:
            make = lambda df, phase=phase: PowerModel.fit(df, "mean_power_w", phase, "load_tokens")
            bundle.models.append(make(power_rows))
            bundle.validation[f"mean_power_w/{phase}"] = {"physical": {"cv_mape": cv_mape(power_rows, make, "mean_power_w")},
                                                          "selected": "physical"}
    if skipped:
        bundle.metadata["skipped"] = skipped
    return bundle
