"""Scoring a saved model bundle on measurements it did not see (``characterize validate``).

Every row of a phase the bundle models is either scored or counted as not covered with the
reason: a group the bundle was not fitted on (another TP under the per-TP family, another model),
or a clock or TP beyond the support (unless extrapolation is allowed, when it is scored and
counted as extrapolated).  Errors are fractions: ``mape`` is the mean absolute percentage error
over the covered rows, ``p90_ape`` its 90th percentile; both null when no row is covered.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .model_io import ModelBundle


def _errors(actual: np.ndarray, predicted: np.ndarray) -> tuple[float | None, float | None]:
    """(MAPE, p90 absolute percentage error) as fractions over rows with a prediction and a non-zero actual."""
    ok = np.isfinite(predicted) & (actual != 0)
    if not ok.any():
        return None, None
    ape = np.abs(predicted[ok] - actual[ok]) / np.abs(actual[ok])
    return float(ape.mean()), float(np.quantile(ape, 0.9))


def _uncovered_reasons(model, rows: pd.DataFrame, predicted: np.ndarray, outside: np.ndarray,
                       allow_extrapolation: bool) -> list[str]:
    """Why the rows without a prediction have none, one line per cause with its row count."""
    reasons = []
    missing = ~np.isfinite(predicted)
    beyond = missing & outside
    if beyond.any() and not allow_extrapolation:
        support = model.support or {}
        clocks = support.get("sm_clock_mhz")
        fitted = f"TP {', '.join(map(str, support.get('tp') or []))}" + (f", {clocks[0]:g}-{clocks[1]:g} MHz" if clocks else "")
        reasons.append(f"{int(beyond.sum()):,} rows beyond what the model was fitted on ({fitted}); "
                       f"--allow-extrapolation scores them")
    other = missing & ~outside
    if other.any():
        keys = [k for k in getattr(model, "group_keys", []) if k in rows]
        seen = rows.loc[other, keys].drop_duplicates().head(3).to_dict("records") if keys else []
        shown = "; ".join(", ".join(f"{k}={v}" for k, v in r.items()) for r in seen)
        reasons.append(f"{int(other.sum()):,} rows of groups the model was not fitted on"
                       + (f" ({shown})" if shown else " (missing inputs)"))
    return reasons


def score_bundle(bundle: ModelBundle, frame: pd.DataFrame, allow_extrapolation: bool = False) -> dict:
    """``{"phases": {PHASE: scores}, "power": {PHASE: scores}, "warnings": [...]}``: per phase the
    latency model's scores (``mape``, ``p90_ape``, ``covered``, ``rows``, ``extrapolated``,
    ``uncovered``: reasons), and the same for power models.  Phases of ``frame`` without a model
    are left out."""
    result: dict = {"phases": {}, "power": {}, "warnings": []}
    for model in bundle.models:
        if model.target not in frame:
            continue
        rows = frame[(frame["phase"] == model.phase) & frame[model.target].notna()]
        if rows.empty:
            continue
        outside = model.outside_support(rows)
        with np.errstate(over="ignore", invalid="ignore"):
            predicted = np.asarray(model.predict(rows, strict=False, allow_extrapolation=allow_extrapolation), dtype="float64")
        actual = rows[model.target].to_numpy(dtype="float64")
        mape, p90 = _errors(actual, predicted)
        covered = int(np.isfinite(predicted).sum())
        scores = {"mape": mape, "p90_ape": p90, "covered": covered, "rows": int(len(rows)),
                  "extrapolated": int((outside & np.isfinite(predicted)).sum()),
                  "uncovered": _uncovered_reasons(model, rows, predicted, outside, allow_extrapolation)}
        result["phases" if model.target == "latency_s" else "power"][model.phase] = scores
        if model.target == "mean_power_w":
            try:
                from .power_model import level_mismatch
            except ImportError:  # an older power model without harness levels
                continue
            warning = level_mismatch(model, rows)
            if warning:
                result["warnings"].append(warning)
    return result
