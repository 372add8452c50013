"""Roofline latency models: the larger of a compute piece and a memory piece, each linear in terms.

A prefill chunk of c tokens after a prefix of p is compute-bound when c is large (FLOPs grow
with c and c*p) but memory-bound when c is small and p long: every iteration still reads the
whole prefix's KV cache (and the weights) once, whatever c is.  Adaptive chunking at long
context lands exactly there (32-128-token chunks after a million tokens), and no sum of terms
fits both regimes: the additive model overestimates near the crossover and, fitted on larger
chunks, underestimates small chunks at long prefixes by half or more.  So

    latency = max(compute_terms . beta, memory_terms . gamma)

with both pieces carrying their own constant.  Fitting per (TP, clock) group is the usual
max-affine regression: start from the compute piece fitted on every row, assign each row to the
piece that predicts more, refit each piece by statsmodels WLS (1/y^2 weights, as ``TermsModel``)
on its rows, repeat until the assignment is stable.  A group where fewer rows than the memory
piece has terms are memory-bound, or where the max cuts the squared relative error by less than
10 % (noise), keeps the compute piece alone.  Between clocks the coefficients of
each piece are blended in 1/f, then the max is taken, which is what the replay compiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .metrics import t_quantile
from .linear_model import TermsModel, group_keys_of, support_of, wls_fit
from .model_io import plain_scalar, read_coefficients, read_matrix, read_terms
from .terms import design_matrix, parse_term

if TYPE_CHECKING:
    from toolkit.validation import Settings

MAX_ROUNDS = 50


def _wls(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(coef, cov, df_resid) of a relative-error WLS fit, None when the rows cannot determine it."""
    fitted = wls_fit(X, y)
    return None if fitted is None else (fitted[0], fitted[1], float(fitted[2].df_resid))


@dataclass
class RooflineModel(TermsModel):
    """``max(compute piece, memory piece)``, each linear in its terms (``terms`` and
    ``memory_terms``), fitted per group as :class:`TermsModel`; a group's ``memory_coef`` and
    ``memory_cov`` are None where it kept the compute piece alone."""

    memory_terms: list[str] = field(default_factory=list)
    kind: str = "roofline"

    @classmethod
    def fit(cls, frame: pd.DataFrame, target: str, phase: str, terms: list[str],
            memory_terms: list[str] | None = None) -> "RooflineModel":
        """Fit column ``target`` of ``frame`` per group by max-affine regression (module docstring);
        ``terms`` make the compute piece, ``memory_terms`` the memory piece (None: ``1``, ``p``).
        Raises ``ValueError`` for a term outside the vocabulary."""
        memory_terms = list(memory_terms or ["1", "p"])
        for term in terms + memory_terms:
            parse_term(term)
        keys = group_keys_of(frame, terms + memory_terms)
        model = cls(target, phase, list(terms), keys, memory_terms=memory_terms, support=support_of(frame))
        grouped = frame.groupby(keys, sort=True) if keys else [((), frame)]
        for key, g in grouped:
            key_dict = {k: plain_scalar(v) for k, v in zip(keys, key if isinstance(key, tuple) else (key,))}
            y = g[target].to_numpy(dtype="float64")
            X, M = design_matrix(g, terms), design_matrix(g, memory_terms)
            group = _fit_group(X, M, y)
            if group is None:
                model.skipped.append(key_dict)
                continue
            model.groups.append({"key": key_dict, **group, "n": int(len(y))})
        return model

    # ------------------------------------------------------------------ prediction
    def _pieces(self, frame: pd.DataFrame):
        """Per block of rows: (index, compute prediction, memory prediction or None, blend)."""
        X_all, M_all = design_matrix(frame, self.terms), design_matrix(frame, self.memory_terms)
        for idx, key in self._blocks(frame):
            blend = self._coef_for(key)
            compute = X_all[idx] @ sum(w * np.asarray(g["coef"]) for w, g in blend)
            memory = None
            if all(g.get("memory_coef") is not None for _, g in blend):
                memory = M_all[idx] @ sum(w * np.asarray(g["memory_coef"]) for w, g in blend)
            yield idx, compute, memory, blend, X_all[idx], M_all[idx]

    def _predict(self, frame: pd.DataFrame, strict: bool) -> np.ndarray:
        """Predictions without the support check; rows of an unfitted group raise ``KeyError``, or
        are NaN with ``strict=False``."""
        out = np.full(len(frame), np.nan)
        try:
            for idx, compute, memory, *_ in self._pieces(frame):
                out[idx] = compute if memory is None else np.maximum(compute, memory)
        except KeyError:
            if strict:
                raise
            return self._predict_lenient(frame)
        return out

    def _predict_lenient(self, frame: pd.DataFrame) -> np.ndarray:
        out = np.full(len(frame), np.nan)
        for idx, _ in self._blocks(frame):
            try:
                out[idx] = self._predict(frame.iloc[idx], strict=True)
            except KeyError:
                continue
        return out

    def memory_bound(self, frame: pd.DataFrame) -> np.ndarray:
        """True where the memory piece sets the latency."""
        frame = self._complete(frame)
        out = np.zeros(len(frame), dtype=bool)
        for idx, compute, memory, *_ in self._pieces(frame):
            if memory is not None:
                out[idx] = memory > compute
        return out

    def predict_interval(self, frame: pd.DataFrame, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) confidence interval of the mean prediction at ``level``, from the
        covariance of whichever piece sets each row's latency."""
        frame = self._complete(frame)
        mean, half = np.empty(len(frame)), np.empty(len(frame))
        for idx, compute, memory, blend, X, M in self._pieces(frame):
            on_memory = memory > compute if memory is not None else np.zeros(len(idx), dtype=bool)
            mean[idx] = np.where(on_memory, memory if memory is not None else compute, compute)
            var, dof = np.zeros(len(idx)), np.inf
            for w, g in blend:
                var += w**2 * np.einsum("ij,jk,ik->i", X, np.asarray(g["cov"]), X) * ~on_memory
                if memory is not None:
                    var += w**2 * np.einsum("ij,jk,ik->i", M, np.asarray(g["memory_cov"]), M) * on_memory
                dof = min(dof, g["df_resid"])
            half[idx] = t_quantile(0.5 + level / 2, max(dof, 1.0)) * np.sqrt(np.maximum(var, 0))
        return mean - half, mean + half

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> dict:
        """The model as a JSON-ready object (:meth:`from_json` reads it back)."""
        return {**super().to_json(), "memory_terms": self.memory_terms}

    @classmethod
    def from_json(cls, table: Settings) -> "RooflineModel":
        """The model of a bundle's JSON object, validated as :class:`TermsModel` (the compute piece)
        plus the memory piece: its terms, and per group either no memory piece (both null) or one
        finite coefficient per memory term with its covariance."""
        fields = cls._json_fields(table)
        memory_terms = read_terms(table, "memory_terms")
        for group, raw in zip(fields["groups"], table.tables("groups")):
            if raw.has("memory_coef") or raw.has("memory_cov"):
                group["memory_coef"] = read_coefficients(raw, "memory_coef", memory_terms)
                group["memory_cov"] = read_matrix(raw, "memory_cov", len(memory_terms))
            else:
                group["memory_coef"] = group["memory_cov"] = None
        return cls(**fields, memory_terms=memory_terms)


def _fit_group(X: np.ndarray, M: np.ndarray, y: np.ndarray) -> dict | None:
    compute = _wls(X, y)
    if compute is None:
        return None
    memory = None
    on_memory = np.zeros(len(y), dtype=bool)
    for _ in range(MAX_ROUNDS):
        predicted = X @ compute[0]
        if memory is None:  # seed the memory piece with the rows the compute piece underestimates most
            under = y > predicted * 1.05
            candidate = _wls(M[under], y[under]) if under.sum() > M.shape[1] else None
            if candidate is None:
                break
            memory = candidate
        assign = (M @ memory[0]) > predicted
        if assign.sum() <= M.shape[1] or (~assign).sum() <= X.shape[1]:
            memory, assign = None, np.zeros(len(y), dtype=bool)
            break
        if np.array_equal(assign, on_memory):
            break
        on_memory = assign
        refit_compute, refit_memory = _wls(X[~assign], y[~assign]), _wls(M[assign], y[assign])
        if refit_compute is None or refit_memory is None:
            break
        compute, memory = refit_compute, refit_memory
    alone = _wls(X, y)
    if memory is not None and _relative_sse(np.maximum(X @ compute[0], M @ memory[0]), y) > 0.9 * _relative_sse(X @ alone[0], y):
        compute, memory = alone, None  # the max barely beats the compute piece alone (noise): keep it simple
    coef, cov, dof = compute
    return {"coef": coef.tolist(), "cov": cov.tolist(), "df_resid": dof,
            "memory_coef": memory[0].tolist() if memory else None,
            "memory_cov": memory[1].tolist() if memory else None}


def _relative_sse(predicted: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(((predicted - y) / np.maximum(y, 1e-12)) ** 2))
