"""Fit, validate and select models per phase; the result is a :class:`ModelBundle`.

Validation, per phase and candidate:

* ``cv_mape``: grouped K-fold cross-validation, groups being distinct configurations
  (c, p, b, k, TP, clock), so repeated measurements of one point never sit on both sides;
* ``extrapolation_mape``: fit on the lower quarter of the context axis (prefix p for prefill,
  KV length k for decode; the prompt tokens c where a table has no prefix, as batched-prompt
  tables), predict beyond half of its maximum - a 4x reach, as fitting on p <= 32 K and
  predicting 128 K+;
* ``tp_transfer_mape``: leave one TP degree out (each degree with two others left to fit on),
  predict it - how a model profiled at TP2 and TP4 does at TP8.

``score`` is the worst of the three; the simplest candidate within 5 % of the best score wins and
is refitted on all rows.  Candidates: ``physical`` (WLS over physical terms; for prefill, decode
and mixed the transferring family with TP and clock as variables, ``terms.SHARD_TERMS``),
``roofline`` for prefill and mixed (the larger of a compute and a memory piece, see
``roofline_model``) and ``trees`` (gradient boosting).  For the phases replay compiles (prefill,
decode, mixed) trees are scored as a diagnostic rival but never selected: replay cannot run them,
and they cannot reach beyond their data.
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
from .terms import DEFAULT_TERMS, ROOFLINE_TERMS, SHARD_ROOFLINE_TERMS, SHARD_TERMS, shard_terms
from .trees import TreeEnsembleModel

CONFIG_COLUMNS = ["chunk_tokens", "prefix_tokens", "prefill_sequences", "batch_size", "kv_tokens", "tp", "sm_clock_mhz"]
DIAGNOSTIC = ("trees",)  # scored, shown, never selected for a replayed phase
REPLAYED_PHASES = ("prefill", "decode", "mixed")
IDLE_PHASE = "idle"
CONTEXT_AXIS = {"prefill": "prefix_tokens", "mixed": "prefix_tokens", "decode": "kv_tokens", "linear": "chunk_tokens",
                "serving": "batch_size"}
MIN_ROWS = 12


def latency_candidates(phase: str, tree_estimators: int = 300, clocks: int = 1
                       ) -> dict[str, Callable[[pd.DataFrame], object]]:
    """The latency-model candidates for ``phase``, simplest first: name -> a function that fits
    one on a frame of profile rows.  ``tree_estimators``: boosting rounds of ``trees``;
    ``clocks``: distinct SM clocks in the data (two or more add the 1/f compute terms)."""
    if phase in SHARD_TERMS:
        terms = shard_terms(SHARD_TERMS[phase], phase, clocks)
    else:
        terms = DEFAULT_TERMS.get(phase, ["1", "c", "b"])
    candidates = {"physical": lambda df: TermsModel.fit(df, "latency_s", phase, terms)}
    if phase in SHARD_ROOFLINE_TERMS:
        compute, memory = SHARD_ROOFLINE_TERMS[phase]
        compute = shard_terms(compute, phase, clocks)
        candidates["roofline"] = lambda df: RooflineModel.fit(df, "latency_s", phase, compute, memory)
    elif phase in ROOFLINE_TERMS:
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
        error = _holdout_mape(make(frame.iloc[train]), frame.iloc[test], target)
        if error is not None:
            errors.append(error)
            weights.append(len(test))
    return float(np.average(errors, weights=weights)) if errors else None


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
    return _holdout_mape(model, test, target)


def _holdout_mape(model, test: pd.DataFrame, target: str) -> float | None:
    """MAPE (percent) of ``model`` on ``test``, extrapolating where it must (a held-out clock or TP
    is outside the fold's support by construction); None when it covers no row."""
    predicted = model.predict(test, strict=False, allow_extrapolation=True)
    return mape(test[target], predicted) if np.isfinite(predicted).any() else None


def context_axis(frame: pd.DataFrame, phase: str) -> str | None:
    """The column a phase's context grows along: the prefix (prefill), the KV length (decode); for a
    prefill table without prefixes (batched prompts) the prompt tokens."""
    axis = CONTEXT_AXIS.get(phase)
    if axis == "prefix_tokens" and (axis not in frame or not (frame[axis] > 0).any()):
        return "chunk_tokens"
    return axis


def tp_transfer_mape(frame: pd.DataFrame, make: Callable, target: str) -> float | None:
    """MAPE (percent) of ``target`` on each TP degree held out in turn (those with at least two
    other degrees to fit on), weighted by rows; None with fewer than three degrees."""
    if "tp" not in frame or frame["tp"].isna().any():
        return None
    levels = sorted(frame["tp"].unique())
    if len(levels) < 3:
        return None
    errors, weights = [], []
    for level in levels:
        train, test = frame[frame["tp"] != level], frame[frame["tp"] == level]
        if len(train) < MIN_ROWS:
            continue
        try:
            error = _holdout_mape(make(train), test, target)
        except ValueError:
            continue
        if error is not None:
            errors.append(error)
            weights.append(len(test))
    return float(np.average(errors, weights=weights)) if errors else None


def select_latency_model(frame: pd.DataFrame, phase: str, candidates: dict | None = None) -> tuple[object, dict]:
    """The selected latency model, refitted on all of ``frame``, and its validation report.

    ``candidates``: name -> fit function, simplest first (None: :func:`latency_candidates`).
    The report holds per candidate its ``cv_mape``, ``extrapolation_mape``, ``tp_transfer_mape``
    and ``score`` (the worst of them), ``diagnostic`` (true: scored, never selected), or its
    ``error``, and the ``selected`` name.  Raises ``ValueError`` when no candidate could be validated.
    """
    clocks = int(frame["sm_clock_mhz"].nunique()) if "sm_clock_mhz" in frame else 1
    candidates = candidates or latency_candidates(phase, clocks=clocks)

    def diagnostic(name: str) -> bool:
        return name in DIAGNOSTIC and phase in REPLAYED_PHASES

    report = {}
    for name, make in candidates.items():
        try:
            cv = cv_mape(frame, make, "latency_s")
            ex = extrapolation_mape(frame, make, "latency_s", context_axis(frame, phase))
            tp = tp_transfer_mape(frame, make, "latency_s")
        except ValueError as exc:
            report[name] = {"error": str(exc), "diagnostic": diagnostic(name)}
            continue
        scores = [s for s in (cv, ex, tp) if s is not None]
        report[name] = {"cv_mape": cv, "extrapolation_mape": ex, "tp_transfer_mape": tp,
                        "score": max(scores) if scores else None, "diagnostic": diagnostic(name)}
    ranked = [n for n in report if report[n].get("score") is not None and not report[n]["diagnostic"]]
    if not ranked:
        raise ValueError(f"{phase}: no latency model could be validated ({report})")
    # Candidates run from simplest to most flexible: take the first within 5 % of the best score,
    # so a more flexible model must earn its parameters.
    best_score = min(report[n]["score"] for n in ranked)
    best = next(n for n in ranked if report[n]["score"] <= best_score * 1.05)
    report["selected"] = best
    return candidates[best](frame), report


def bundle_metadata(frame: pd.DataFrame, sources: list[str], where: list[str] | None = None) -> dict:
    """A bundle's metadata from the rows it is fitted on: their sources, filters and count, whether
    any is simulated, and the GPUs and models they hold (replay derives KV capacity from a model
    named here, so a bundle fitted by ``characterize fit`` and by the demo must both carry it)."""
    column = lambda name: sorted(frame[name].dropna().astype(str).unique().tolist()) if name in frame else []  # noqa: E731
    return {"sources": list(sources), "where": list(where or []), "rows": int(len(frame)),
            "simulated": bool(frame["backend"].astype(str).str.startswith("sim").any()) if "backend" in frame else False,
            "gpu_name": column("gpu_name"), "model": column("model")}


def fit_bundle(frame: pd.DataFrame, metadata: dict | None = None, phases: list[str] | None = None,
               tree_estimators: int = 300, progress: Callable[[str], None] | None = None) -> ModelBundle:
    """Latency (and, where measured, power) models for every phase in ``frame``."""
    bundle = ModelBundle(metadata=dict(metadata or {}))
    skipped = []  # what could not be fitted, and why, for the user (metadata "skipped")
    warnings: list[str] = []  # what the fitted models cannot do (metadata "warnings")
    # "idle" rows are the GPU between iterations (a window of its power, no iteration): every power
    # model gets them at zero load, so idle power is measured, never extrapolated from the curve.
    idle_rows = frame[frame["phase"] == IDLE_PHASE].assign(load_tokens=0.0)
    for phase in [p for p in (phases or sorted(frame["phase"].dropna().unique())) if p != IDLE_PHASE]:
        rows = frame[frame["phase"] == phase]
        if progress:
            progress(f"fitting {phase} ({len(rows):,} rows)")
        latency_rows = rows[rows["latency_s"].notna() & (rows["latency_s"] > 0)]
        warnings.extend(_limits(phase, rows, latency_rows))
        if len(latency_rows) >= MIN_ROWS:
            clocks = int(latency_rows["sm_clock_mhz"].nunique()) if "sm_clock_mhz" in latency_rows else 1
            model, report = select_latency_model(latency_rows, phase, latency_candidates(phase, tree_estimators, clocks))
            bundle.models.append(model)
            bundle.validation[f"latency_s/{phase}"] = report
        else:
            skipped.append(f"latency_s/{phase}: {len(latency_rows)} rows with a positive latency (a model needs {MIN_ROWS})")
        power_rows = rows[rows["mean_power_w"].notna() & (rows["mean_power_w"] > 0)] if "mean_power_w" in rows else rows.iloc[:0]
        if len(power_rows) >= MIN_ROWS and not idle_rows.empty:
            power_rows = pd.concat([power_rows, idle_rows.assign(phase=phase)], ignore_index=True)
        if len(power_rows) < MIN_ROWS:
            skipped.append(f"mean_power_w/{phase}: {len(power_rows)} rows with a measured power (a model needs {MIN_ROWS})")
        else:
            make = lambda df, phase=phase: PowerModel.fit(df, "mean_power_w", phase, "load_tokens")
            bundle.models.append(make(power_rows))
            bundle.validation[f"mean_power_w/{phase}"] = {"physical": {"cv_mape": cv_mape(power_rows, make, "mean_power_w")},
                                                          "selected": "physical"}
    if skipped:
        bundle.metadata["skipped"] = skipped
    if warnings:
        bundle.metadata["warnings"] = warnings
    return bundle


def _limits(phase: str, rows: pd.DataFrame, latency_rows: pd.DataFrame) -> list[str]:
    """What a latency model of ``phase`` fitted on these rows cannot do, for the user: rows left
    out for a non-positive latency, one TP degree (no TP transfer), one clock (no clock law)."""
    notes = []
    dropped = int((rows["latency_s"] <= 0).sum())
    if dropped:
        notes.append(f"latency_s/{phase}: {dropped:,} rows with a latency <= 0 left out")
    if phase not in SHARD_TERMS or latency_rows.empty:
        return notes
    if "tp" in latency_rows and latency_rows["tp"].nunique() == 1:
        notes.append(f"latency_s/{phase}: profiled at one TP degree ({plain(latency_rows['tp'].iloc[0])}): "
                     f"the model cannot predict another TP")
    if "sm_clock_mhz" in latency_rows and latency_rows["sm_clock_mhz"].nunique() == 1:
        notes.append(f"latency_s/{phase}: profiled at one SM clock ({plain(latency_rows['sm_clock_mhz'].iloc[0])} MHz): "
                     f"the model cannot predict another clock")
    return notes


def plain(value: object) -> str:
    """A number as people write it (2, not 2.0 or np.int64(2))."""
    number = float(value)
    return f"{number:g}"
