"""Linear-in-parameters latency models over physical terms, fitted per (TP, SM clock) group.

Fitting uses statsmodels WLS with weights 1/y^2 by default, which minimizes *relative*
squared error: latencies span four orders of magnitude (a 10 us decode kernel to a 2 s prefill)
and model selection is by MAPE, so every point should count by its relative error.
The coefficient covariance is kept, so predictions carry confidence intervals.

Between profiled SM clocks a prediction interpolates linearly in 1/f (compute-bound time
scales with the clock period); outside the profiled range it uses the nearest clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .metrics import t_quantile
from .model_io import plain_scalar, read_coefficients, read_group, read_group_keys, read_matrix, read_terms
from .terms import design_matrix, parse_term

if TYPE_CHECKING:
    from statsmodels.regression.linear_model import RegressionResultsWrapper

    from toolkit.validation import Settings

FREQ = "sm_clock_mhz"
CANDIDATE_GROUP_KEYS = ("model", "tp", FREQ)


def _independent_columns(X: np.ndarray) -> np.ndarray:
    """Indices of columns that add rank (in order): zero or collinear terms are left out."""
    norms = np.linalg.norm(X, axis=0)
    kept: list[int] = []
    for j in range(X.shape[1]):
        if norms[j] == 0:
            continue
        trial = kept + [j]
        if np.linalg.matrix_rank(X[:, trial] / norms[trial], tol=1e-9) == len(trial):
            kept.append(j)
    return np.array(kept, dtype=np.int64)


def wls_fit(X: np.ndarray, y: np.ndarray, weighting: str = "relative"
            ) -> tuple[np.ndarray, np.ndarray, RegressionResultsWrapper] | None:
    """(coef, cov, statsmodels result) of a WLS fit of y on X, or None when the rows cannot determine it.

    Weights 1/y^2 ("relative") minimize relative squared error.  A term that is zero or collinear
    here (no prefix in a short-context table, a fixed decode batch) is left out with coefficient 0:
    no singular design.
    """
    used = _independent_columns(X)
    if len(used) == 0 or len(y) <= len(used):
        return None
    weights = 1.0 / np.maximum(y, 1e-12) ** 2 if weighting == "relative" else np.ones_like(y)
    import statsmodels.api as sm  # here, not at import: it costs ~0.8 s that predict never needs

    result = sm.WLS(y, X[:, used], weights=weights).fit()
    coef = np.zeros(X.shape[1])
    coef[used] = result.params
    cov = np.zeros((X.shape[1], X.shape[1]))
    cov[np.ix_(used, used)] = np.asarray(result.cov_params())
    return coef, cov, result


def group_keys_of(frame: pd.DataFrame) -> list[str]:
    """Grouping columns set on every row; ``model`` only when the table mixes several."""
    keys = [k for k in CANDIDATE_GROUP_KEYS if k in frame and frame[k].notna().all()]
    return [k for k in keys if k != "model" or frame[k].nunique() > 1]


@dataclass
class TermsModel:
    """A model linear in ``terms`` (see :mod:`characterize.terms`), fitted per group of rows with
    equal ``group_keys`` values (model, TP, SM clock).

    Each of ``groups`` holds its ``key``, one coefficient per term (``coef``), their covariance
    (``cov``), residual degrees of freedom, rows and R^2; ``skipped`` lists the keys of groups
    with too few rows to fit, which predictions refuse.
    """

    target: str
    phase: str
    terms: list[str]
    group_keys: list[str]
    groups: list[dict] = field(default_factory=list)
    weighting: str = "relative"
    skipped: list[dict] = field(default_factory=list)
    kind: str = "terms"

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, frame: pd.DataFrame, target: str, phase: str, terms: list[str], weighting: str = "relative") -> "TermsModel":
        """Fit column ``target`` of ``frame`` (one phase's profile rows) on ``terms`` per group.

        ``weighting``: ``"relative"`` (weights 1/y^2) or anything else for equal weights.
        Raises ``ValueError`` for a term outside the vocabulary.
        """
        for term in terms:
            parse_term(term)
        keys = group_keys_of(frame)
        model = cls(target, phase, list(terms), keys, weighting=weighting)
        grouped = frame.groupby(keys, sort=True) if keys else [((), frame)]
        for key, g in grouped:
            key = key if isinstance(key, tuple) else (key,)
            y = g[target].to_numpy(dtype="float64")
            X = design_matrix(g, terms)
            fitted = wls_fit(X, y, weighting) if len(y) > X.shape[1] else None
            if fitted is None:  # cannot be fitted; predictions for it fail loudly
                model.skipped.append({k: plain_scalar(v) for k, v in zip(keys, key)})
                continue
            coef, cov, result = fitted
            model.groups.append({
                "key": {k: plain_scalar(v) for k, v in zip(keys, key)},
                "coef": coef.tolist(),
                "cov": cov.tolist(),
                "df_resid": float(result.df_resid),
                "n": int(len(y)),
                "rsquared": float(result.rsquared),
            })
        return model

    # ------------------------------------------------------------------ prediction
    def _coef_for(self, key: dict) -> list[tuple[float, dict]]:
        """[(weight, group)] to blend for one query key (frequency interpolation)."""
        fixed = {k: v for k, v in key.items() if k != FREQ}
        candidates = [g for g in self.groups if all(plain_scalar(g["key"].get(k)) == plain_scalar(v) for k, v in fixed.items())]
        if not candidates:
            known = sorted({tuple(g["key"].items()) for g in self.groups})
            raise KeyError(f"{self.phase} {self.target} model has no group for {fixed} (fitted: {known})")
        if FREQ not in self.group_keys or key.get(FREQ) is None or pd.isna(key.get(FREQ)):
            if FREQ in self.group_keys:  # no clock asked for: the highest profiled clock
                return [(1.0, max(candidates, key=lambda g: g["key"][FREQ]))]
            return [(1.0, candidates[0])]
        f = float(key[FREQ])
        by_f = sorted(candidates, key=lambda g: g["key"][FREQ])
        freqs = np.array([g["key"][FREQ] for g in by_f], dtype="float64")
        if f <= freqs[0]:
            return [(1.0, by_f[0])]
        if f >= freqs[-1]:
            return [(1.0, by_f[-1])]
        hi = int(np.searchsorted(freqs, f))
        lo = hi - 1
        if freqs[hi] == f:
            return [(1.0, by_f[hi])]
        w = (1 / f - 1 / freqs[lo]) / (1 / freqs[hi] - 1 / freqs[lo])
        return [(1 - w, by_f[lo]), (w, by_f[hi])]

    def _blocks(self, frame: pd.DataFrame):
        keys = [k for k in self.group_keys if k in frame]
        if not keys:
            yield np.arange(len(frame)), {}
            return
        for key, idx in frame[keys].groupby(keys, sort=False, dropna=False).indices.items():
            key = key if isinstance(key, tuple) else (key,)
            yield idx, {k: (None if pd.isna(v) else plain_scalar(v)) for k, v in zip(keys, key)}

    def predict(self, frame: pd.DataFrame, strict: bool = True) -> np.ndarray:
        """Predictions; rows of an unfitted group raise, or are NaN with ``strict=False``."""
        out = np.full(len(frame), np.nan)
        X_all = design_matrix(frame, self.terms)
        for idx, key in self._blocks(frame):
            try:
                blend = self._coef_for(key)
            except KeyError:
                if strict:
                    raise
                continue
            out[idx] = sum(w * (X_all[idx] @ np.asarray(g["coef"])) for w, g in blend)
        return out

    def predict_interval(self, frame: pd.DataFrame, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Confidence interval of the mean prediction (from the coefficient covariance)."""
        mean = self.predict(frame)
        half = np.empty(len(frame))
        X_all = design_matrix(frame, self.terms)
        for idx, key in self._blocks(frame):
            var = np.zeros(len(idx))
            dof = np.inf
            for w, g in self._coef_for(key):
                cov = np.asarray(g["cov"])
                var += w**2 * np.einsum("ij,jk,ik->i", X_all[idx], cov, X_all[idx])
                dof = min(dof, g["df_resid"])
            half[idx] = t_quantile(0.5 + level / 2, dof) * np.sqrt(np.maximum(var, 0))
        return mean - half, mean + half

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> dict:
        """The model as a JSON-ready object (:meth:`from_json` reads it back)."""
        return {"kind": self.kind, "target": self.target, "phase": self.phase, "terms": self.terms,
                "group_keys": self.group_keys, "weighting": self.weighting, "groups": self.groups,
                "skipped": self.skipped}

    @classmethod
    def from_json(cls, table: Settings) -> "TermsModel":
        """The model of a bundle's JSON object (a :class:`toolkit.validation.Settings`), validated."""
        return cls(**cls._json_fields(table))

    @classmethod
    def _json_fields(cls, table) -> dict:
        """Constructor arguments from JSON: terms from the vocabulary, one finite coefficient per
        term, a square covariance and positive residual degrees of freedom per group (the CI)."""
        terms = read_terms(table, "terms")
        group_keys = read_group_keys(table)
        groups = []
        for group in table.tables("groups"):
            checked = {"coef": read_coefficients(group, "coef", terms), "cov": read_matrix(group, "cov", len(terms)),
                       "df_resid": group.number("df_resid", minimum=0, exclusive_minimum=True)}
            if group.has("n"):  # fit statistics, shown but not used to predict
                checked["n"] = group.number("n", integer=True, minimum=0)
            if group.has("rsquared"):
                checked["rsquared"] = group.number("rsquared", maximum=1)
            groups.append({**read_group(group, group_keys), **checked})
        return {"target": table.text("target"), "phase": table.text("phase"), "terms": terms, "group_keys": group_keys,
                "groups": groups, "weighting": table.text("weighting", "relative"),
                "skipped": [s.data for s in table.tables("skipped", [])]}
