"""Linear-in-parameters latency models over physical terms, fitted per group of rows.

Groups are the identity of the hardware and model (``gpu_name``, ``model``, ``dtype``: a table
mixing several fits one model per combination) and, for terms that do not make them variables,
TP and SM clock.  The transferring family (``characterize.terms.SHARD_TERMS``) has TP and the
clock period as variables, so one group covers every TP and clock it was fitted on and predicts
others; the per-(TP, clock) family blends groups between clocks.

Fitting uses statsmodels WLS with weights 1/y^2 by default, which minimizes *relative*
squared error: latencies span four orders of magnitude (a 10 us decode kernel to a 2 s prefill)
and model selection is by MAPE, so every point should count by its relative error.
The coefficient covariance is kept, so predictions carry confidence intervals.

Between profiled SM clocks a prediction interpolates linearly in 1/f (compute-bound time
scales with the clock period).  Every model records its ``support``: the TP degrees and the clock
range it was fitted on.  A prediction outside it (a clock more than :data:`CLOCK_MARGIN` beyond
the profiled range, or a TP other than the one profiled when only one was) raises
:class:`Extrapolation` unless ``allow_extrapolation`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from toolkit.errors import WattlasError

from .metrics import t_quantile
from .model_io import (plain_scalar, read_coefficients, read_group, read_group_keys, read_matrix, read_support,
                       read_terms)
from .terms import design_matrix, parse_term

if TYPE_CHECKING:
    from statsmodels.regression.linear_model import RegressionResultsWrapper

    from toolkit.validation import Settings

FREQ = "sm_clock_mhz"
IDENTITY_KEYS = ("gpu_name", "model", "dtype")
CANDIDATE_GROUP_KEYS = IDENTITY_KEYS + ("tp", FREQ)
IDENTITY_OPTIONS = {"gpu_name": "--gpu", "model": "--model", "dtype": "--dtype"}
CLOCK_MARGIN = 0.05  # relative reach beyond the profiled clocks still trusted (the 1/f law, modestly)


class Extrapolation(WattlasError):
    """A prediction outside what the model was fitted on (clock range, TP degrees)."""


class AmbiguousModel(WattlasError):
    """A bundle holds models for several GPUs or models and the query did not say which."""


def uses_feature(terms: list[str], names: tuple[str, ...]) -> bool:
    """Whether any of ``terms`` has a factor among ``names``."""
    return any(name in names for term in terms for name, _ in parse_term(term))


def support_of(frame: pd.DataFrame) -> dict:
    """What a model fitted on ``frame`` covers: its TP degrees and SM clock range (None: not recorded)."""
    tps = sorted({int(v) for v in frame["tp"].dropna()}) if "tp" in frame else []
    clocks = frame[FREQ].dropna() if FREQ in frame else pd.Series(dtype="float64")
    return {"tp": tps or None,
            "sm_clock_mhz": [float(clocks.min()), float(clocks.max())] if len(clocks) else None}


def outside_support(support: dict | None, frame: pd.DataFrame, what: str, tp_variable: bool = True
                    ) -> tuple[np.ndarray, str | None]:
    """(per-row mask of rows outside ``support``, the reason for the first one or None)."""
    outside = np.zeros(len(frame), dtype=bool)
    reason = None
    if not support:
        return outside, reason
    clocks = support.get("sm_clock_mhz")
    if clocks and FREQ in frame:
        f = pd.to_numeric(frame[FREQ], errors="coerce").to_numpy(dtype="float64")
        lo, hi = clocks[0] * (1 - CLOCK_MARGIN), clocks[1] * (1 + CLOCK_MARGIN)
        bad = ~np.isnan(f) & ((f < lo) | (f > hi))
        if bad.any():
            reason = (f"{what}: SM clock {f[bad][0]:g} MHz is outside the profiled {clocks[0]:g}-{clocks[1]:g} MHz "
                      f"(trusted to {CLOCK_MARGIN:.0%} beyond)")
        outside |= bad
    tps = support.get("tp")
    if tps and "tp" in frame and (len(tps) < 2 or not tp_variable):
        t = pd.to_numeric(frame["tp"], errors="coerce").to_numpy(dtype="float64")
        bad = ~np.isnan(t) & ~np.isin(t, tps)
        if bad.any() and reason is None:
            reason = (f"{what}: TP {t[bad][0]:g} was not profiled (profiled: {', '.join(map(str, tps))}; "
                      + ("one TP degree cannot show how latency scales with TP)" if len(tps) < 2 else "fitted per TP)"))
        outside |= bad
    return outside, reason


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


OUTLIER_SIGMAS = 5.0  # robust refit: rows this many robust deviations off (and > OUTLIER_FLOOR) are left out
OUTLIER_FLOOR = 0.25


def wls_fit(X: np.ndarray, y: np.ndarray, weighting: str = "relative", robust: bool = True
            ) -> tuple[np.ndarray, np.ndarray, RegressionResultsWrapper] | None:
    """(coef, cov, statsmodels result) of a WLS fit of y on X, or None when the rows cannot determine it.

    ``weighting="relative"`` minimizes relative squared error.  The weights are 1/mu^2 with mu the
    model's own prediction, iterated from an unweighted start (iteratively reweighted least
    squares, the constant-coefficient-of-variation fit), not 1/y^2: with 1/y^2 a row measured far
    too low (a failed run timed at a tenth of its neighbours) gets a hundredfold weight and drags
    every coefficient, where with 1/mu^2 it is merely a large residual.  ``robust``: rows whose
    relative residual is more than :data:`OUTLIER_SIGMAS` robust standard deviations (median
    absolute deviation) and :data:`OUTLIER_FLOOR` off are then left out (at most a tenth of the
    rows) and the fit repeated; ``result.outliers`` counts them.  A term that is zero or collinear
    here (no prefix in a short-context table, a fixed decode batch) is left out with coefficient 0.
    """
    keep = np.ones(len(y), dtype=bool)
    fitted = _irls(X, y, weighting)
    if fitted is not None and robust and weighting == "relative":
        mu = X @ fitted[0]
        residual = (y - mu) / np.where(mu > 0, mu, np.maximum(np.abs(y), 1e-12))
        centre = np.median(residual)
        spread = 1.4826 * np.median(np.abs(residual - centre))
        outlier = np.abs(residual - centre) > max(OUTLIER_SIGMAS * spread, OUTLIER_FLOOR)
        if outlier.any() and outlier.mean() <= 0.1:  # more than a tenth off is not a few bad rows but a bad model
            refit = _irls(X[~outlier], y[~outlier], weighting)
            if refit is not None:
                fitted, keep = refit, ~outlier
    if fitted is not None:
        fitted[2].outliers = int((~keep).sum())
    return fitted


def _irls(X: np.ndarray, y: np.ndarray, weighting: str, rounds: int = 8
          ) -> tuple[np.ndarray, np.ndarray, RegressionResultsWrapper] | None:
    """WLS with weights 1/mu^2 re-estimated from the fit (``relative``), or one unweighted fit."""
    fitted = _wls_once(X, y, None)
    if fitted is None or weighting != "relative":
        return fitted
    for _ in range(rounds):
        mu = X @ fitted[0]
        # a prediction <= 0 (a poor start) or far below the measurement: weigh by the measurement there
        weights = 1.0 / np.maximum(mu, 0.1 * np.abs(y)).clip(1e-12) ** 2
        refit = _wls_once(X, y, weights)
        if refit is None:
            break
        converged = np.allclose(refit[0], fitted[0], rtol=1e-6, atol=0)
        fitted = refit
        if converged:
            break
    return fitted


def _wls_once(X: np.ndarray, y: np.ndarray, weights: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray, RegressionResultsWrapper] | None:
    """One WLS solve; terms whose coefficient comes out negative are left out one at a time (the
    most negative first) and the rest refitted, except the constant: every term is a cost, and a
    negative one fits noise by cancelling another, which breaks as soon as the model reaches
    beyond its data."""
    used = _independent_columns(X)
    if len(used) == 0 or len(y) <= len(used):
        return None
    constant = {j for j in used if np.allclose(X[:, j], X[0, j])}
    while True:
        fitted = _solve(X, y, weights, used)
        scaled = fitted[0] * np.linalg.norm(X, axis=0)  # compare by contribution, not raw value
        negative = [j for j in used if j not in constant and scaled[j] < -1e-9 * np.abs(scaled).max()]
        if not negative or len(used) == 1:
            return fitted
        used = np.array([j for j in used if j != min(negative, key=lambda j: scaled[j])], dtype=np.int64)


def _solve(X: np.ndarray, y: np.ndarray, weights: np.ndarray | None, used: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, RegressionResultsWrapper]:
    import statsmodels.api as sm  # here, not at import: it costs ~0.8 s that predict never needs

    # Columns span many orders of magnitude (1 to c*p ~ 1e10, q ~ 0.5): fit on unit-norm columns
    # and scale back, so the solve is well conditioned.
    scale = np.linalg.norm(X[:, used], axis=0)
    result = sm.WLS(y, X[:, used] / scale, weights=np.ones_like(y) if weights is None else weights).fit()
    coef = np.zeros(X.shape[1])
    coef[used] = np.asarray(result.params) / scale
    cov = np.zeros((X.shape[1], X.shape[1]))
    cov[np.ix_(used, used)] = np.asarray(result.cov_params()) / np.outer(scale, scale)
    return coef, cov, result


def group_keys_of(frame: pd.DataFrame, terms: list[str] | None = None) -> list[str]:
    """Grouping columns set on every row: an identity column (GPU, model, dtype) only when the
    table mixes several; ``tp`` and the clock unless ``terms`` make them variables (t/r, q/f)."""
    terms = terms or []
    keys = [k for k in CANDIDATE_GROUP_KEYS if k in frame and frame[k].notna().all()]
    keys = [k for k in keys if k not in IDENTITY_KEYS or frame[k].nunique() > 1]
    if uses_feature(terms, ("t", "r")):
        keys = [k for k in keys if k != "tp"]
    if uses_feature(terms, ("q", "f")):
        keys = [k for k in keys if k != FREQ]
    return keys


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
    support: dict | None = None  # TP degrees and clock range fitted on (support_of); None: not recorded

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, frame: pd.DataFrame, target: str, phase: str, terms: list[str], weighting: str = "relative") -> "TermsModel":
        """Fit column ``target`` of ``frame`` (one phase's profile rows) on ``terms`` per group.

        ``weighting``: ``"relative"`` (weights 1/y^2) or anything else for equal weights.
        Raises ``ValueError`` for a term outside the vocabulary.
        """
        for term in terms:
            parse_term(term)
        keys = group_keys_of(frame, terms)
        model = cls(target, phase, list(terms), keys, weighting=weighting, support=support_of(frame))
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
                "outliers": int(getattr(result, "outliers", 0)),
            })
        return model

    # ------------------------------------------------------------------ prediction
    @property
    def tp_variable(self) -> bool:
        """Whether TP is a variable of the terms (the transferring family) rather than a group key."""
        return uses_feature(self.terms, ("t", "r"))

    def _coef_for(self, key: dict) -> list[tuple[float, dict]]:
        """[(weight, group)] to blend for one query key (frequency interpolation).  Raises
        :class:`AmbiguousModel` when the key leaves the GPU or model open among several."""
        fixed = {k: v for k, v in key.items() if k != FREQ and v is not None}
        candidates = [g for g in self.groups if all(plain_scalar(g["key"].get(k)) == plain_scalar(v) for k, v in fixed.items())]
        if not candidates:
            known = sorted({tuple(g["key"].items()) for g in self.groups})
            raise KeyError(f"{self.phase} {self.target} model has no group for {fixed} (fitted: {known})")
        for name in IDENTITY_KEYS:
            values = sorted({str(g["key"].get(name)) for g in candidates})
            if name in self.group_keys and name not in fixed and len(values) > 1:
                raise AmbiguousModel(f"the {self.phase} {self.target} model holds several {name} ({', '.join(values)}): "
                                     f"choose one with {IDENTITY_OPTIONS[name]}")
        if FREQ not in self.group_keys or key.get(FREQ) is None or pd.isna(key.get(FREQ)):
            if FREQ in self.group_keys:  # no clock asked for: the highest profiled clock
                return [(1.0, max(candidates, key=lambda g: g["key"][FREQ]))]
            return [(1.0, candidates[0])]
        f = float(key[FREQ])
        by_f = sorted(candidates, key=lambda g: g["key"][FREQ])
        freqs = np.array([g["key"][FREQ] for g in by_f], dtype="float64")
        if len(by_f) == 1:
            return [(1.0, by_f[0])]
        if f <= freqs[0] or f >= freqs[-1]:  # beyond the range (checked against the support): the 1/f law, extended
            lo, hi = (0, 1) if f <= freqs[0] else (len(freqs) - 2, len(freqs) - 1)
            w = (1 / f - 1 / freqs[lo]) / (1 / freqs[hi] - 1 / freqs[lo])
            return [(1 - w, by_f[lo]), (w, by_f[hi])]
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

    def _complete(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with the clock the terms need where it is not given: the highest profiled one
        (as the per-clock family picks the highest clock's group)."""
        clocks = (self.support or {}).get("sm_clock_mhz")
        if clocks and uses_feature(self.terms + getattr(self, "memory_terms", []), ("q", "f")):
            if FREQ not in frame:
                return frame.assign(**{FREQ: float(clocks[1])})
            if frame[FREQ].isna().any():
                return frame.assign(**{FREQ: frame[FREQ].fillna(float(clocks[1]))})
        return frame

    def outside_support(self, frame: pd.DataFrame) -> np.ndarray:
        """Per row, whether predicting it extrapolates beyond the fitted TP degrees or clocks."""
        return outside_support(self.support, frame, f"{self.phase} {self.target}", self.tp_variable)[0]

    def predict(self, frame: pd.DataFrame, strict: bool = True, allow_extrapolation: bool = False) -> np.ndarray:
        """Predictions; rows of an unfitted group raise, or are NaN with ``strict=False``.  Rows
        outside the fitted TP degrees or clocks raise :class:`Extrapolation` unless
        ``allow_extrapolation`` (with ``strict=False`` they are NaN)."""
        frame = self._complete(frame)
        outside, reason = outside_support(self.support, frame, f"{self.phase} {self.target}", self.tp_variable)
        if not outside.any() or allow_extrapolation:
            return self._predict(frame, strict)
        if strict:
            raise Extrapolation(reason + " (--allow-extrapolation to predict anyway, marked extrapolated)")
        out = np.full(len(frame), np.nan)
        if (~outside).any():
            out[~outside] = self._predict(frame[~outside], strict=False)
        return out

    def _predict(self, frame: pd.DataFrame, strict: bool) -> np.ndarray:
        """Predictions without the support check."""
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
        frame = self._complete(frame)
        mean = self._predict(frame, strict=True)
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
                "skipped": self.skipped, "support": self.support}

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
            if group.has("outliers"):
                checked["outliers"] = group.number("outliers", integer=True, minimum=0)
            groups.append({**read_group(group, group_keys), **checked})
        return {"target": table.text("target"), "phase": table.text("phase"), "terms": terms, "group_keys": group_keys,
                "groups": groups, "weighting": table.text("weighting", "relative"),
                "skipped": [s.data for s in table.tables("skipped", [])], "support": read_support(table)}
