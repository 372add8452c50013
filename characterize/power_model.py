"""Board power as a function of load and SM clock: static + dynamic f*V^2, saturating in load.

    P(load, f) = P_idle + D * s(f) * (1 - exp(-load / L0)),
    s(f) = (f / f_ref) * ((v0 + (1 - v0) * f / f_ref) / 1)^2

``load`` is the work in the iteration (tokens: chunk + decode batch, or the serving batch for
benchmark tables).  Dynamic CMOS power is ~ f V^2 with voltage roughly linear in f over the
DVFS range (``v0`` is the relative voltage at f -> 0); power saturates in batch because the
GPU's units fill up.  Without a clock column every row is taken at ``f_ref``.
Fitted by bounded nonlinear least squares on relative error (scipy), per group (TP).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from toolkit.validation import MAX_CLOCK_MHZ, check_text, check_number

from .model_io import LOAD_COLUMNS, plain_scalar, read_group, read_group_keys

if TYPE_CHECKING:
    from toolkit.validation import Settings

FREQ = "sm_clock_mhz"
# What a saved group's parameters may be (check_number rules): the curve stays finite and >= p_idle_w.
# dynamic_w has no upper bound: where power is linear in load over the profile, the fit is a large
# dynamic_w over a large load0 (only their ratio is determined).
MAX_IDLE_W = 10_000.0  # one GPU idling: several times any accelerator's board power
PARAM_RULES = {
    "p_idle_w": dict(minimum=0, maximum=MAX_IDLE_W),
    "dynamic_w": dict(minimum=0),
    "load0": dict(minimum=0, exclusive_minimum=True),
    "v0": dict(minimum=0, maximum=1),
}


def power_curve(params: np.ndarray, load: np.ndarray, f_rel: np.ndarray) -> np.ndarray:
    """Power (W) at ``load`` and relative clock ``f_rel`` (f / f_ref) for ``params`` =
    (p_idle_w, dynamic_w, load0, v0); see the module docstring."""
    p_idle, dynamic, load0, v0 = params
    scale = f_rel * (v0 + (1 - v0) * f_rel) ** 2
    return p_idle + dynamic * scale * (1 - np.exp(-load / load0))


@dataclass
class PowerModel:
    """Saturating power model (see the module docstring), fitted per group of ``group_keys`` (TP,
    model).  ``load_column`` names the load (tokens); ``f_ref`` is the clock (MHz) the relative
    clock is taken against, None where the data had no clock.  Each of ``groups`` holds its
    ``key`` and ``params``; ``skipped`` lists groups with too few rows to fit."""

    target: str
    phase: str
    load_column: str
    f_ref: float | None
    group_keys: list[str]
    groups: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    kind: str = "power_saturating"

    @staticmethod
    def _inputs(frame: pd.DataFrame, load_column: str, f_ref: float | None) -> tuple[np.ndarray, np.ndarray]:
        load = frame[load_column].to_numpy(dtype="float64")
        if f_ref is not None and FREQ in frame and frame[FREQ].notna().all():
            f_rel = frame[FREQ].to_numpy(dtype="float64") / f_ref
        else:
            f_rel = np.ones(len(frame))
        return load, f_rel

    @classmethod
    def fit(cls, frame: pd.DataFrame, target: str, phase: str, load_column: str, group_keys: list[str] | None = None) -> "PowerModel":
        """Fit column ``target`` (W) of ``frame`` against ``load_column`` per group; ``group_keys``:
        the candidate grouping columns (None: model and TP), used where set on every row
        (``model`` only when the rows mix several).  Groups of fewer than 5 rows are skipped."""
        keys = [k for k in (group_keys if group_keys is not None else ["model", "tp"]) if k in frame and frame[k].notna().all()]
        keys = [k for k in keys if k != "model" or frame[k].nunique() > 1]
        f_ref = float(frame[FREQ].max()) if FREQ in frame and frame[FREQ].notna().any() else None
        model = cls(target, phase, load_column, f_ref, keys)
        grouped = frame.groupby(keys, sort=True) if keys else [((), frame)]
        for key, g in grouped:
            key = key if isinstance(key, tuple) else (key,)
            y = g[target].to_numpy(dtype="float64")
            load, f_rel = cls._inputs(g, load_column, f_ref)
            if len(y) < 5:  # too few to fit four parameters; predictions for it fail loudly
                model.skipped.append({k: plain_scalar(v) for k, v in zip(keys, key)})
                continue
            start = np.array([max(1.0, y.min() * 0.8), max(1.0, y.max() - y.min()), max(1.0, np.median(load)), 0.6])
            from scipy.optimize import least_squares  # fitting only; loading a bundle needs no scipy

            fit = least_squares(lambda q: (power_curve(q, load, f_rel) - y) / y, start,
                                bounds=([0, 0, 1e-6, 0.2], [np.inf, np.inf, np.inf, 1.0]))
            model.groups.append({"key": {k: plain_scalar(v) for k, v in zip(keys, key)}, "params": fit.x.tolist(),
                                 "param_names": ["p_idle_w", "dynamic_w", "load0", "v0"], "n": int(len(y))})
        return model

    def predict(self, frame: pd.DataFrame, strict: bool = True) -> np.ndarray:
        """Power per row; a row of an unfitted group raises, or is NaN with ``strict=False``."""
        out = np.full(len(frame), np.nan)
        load, f_rel = self._inputs(frame, self.load_column, self.f_ref)
        if not self.group_keys:
            return power_curve(np.asarray(self.groups[0]["params"]), load, f_rel)
        for key, idx in frame[self.group_keys].groupby(self.group_keys, sort=False).indices.items():
            key = key if isinstance(key, tuple) else (key,)
            match = [g for g in self.groups if all(plain_scalar(g["key"][k]) == plain_scalar(v) for k, v in zip(self.group_keys, key))]
            if not match:
                if not strict:
                    continue
                raise KeyError(f"{self.phase} power model has no group {dict(zip(self.group_keys, key))}")
            out[idx] = power_curve(np.asarray(match[0]["params"]), load[idx], f_rel[idx])
        return out

    def to_json(self) -> dict:
        """The model as a JSON-ready object (:meth:`from_json` reads it back)."""
        return {"kind": self.kind, "target": self.target, "phase": self.phase, "load_column": self.load_column,
                "f_ref": self.f_ref, "group_keys": self.group_keys, "groups": self.groups, "skipped": self.skipped}

    @classmethod
    def from_json(cls, table: Settings) -> "PowerModel":
        """The model of a bundle's JSON object (a :class:`toolkit.validation.Settings`), validated:
        per group four finite parameters with ``0 <= p_idle_w <= MAX_IDLE_W``, ``dynamic_w >= 0``,
        ``load0 > 0`` (it divides the load) and ``0 <= v0 <= 1`` (a relative voltage), which keeps
        every prediction at least the idle power; ``f_ref`` a positive clock or null."""
        group_keys = read_group_keys(table)
        groups = []
        # without group keys every prediction uses the first group: there must be one
        for group in table.tables("groups", min_length=0 if group_keys else 1):
            params = group.sequence("params")
            if len(params) != len(PARAM_RULES):
                raise group.error("params", f"has {len(params)} parameters, expected {len(PARAM_RULES)} "
                                            f"({', '.join(PARAM_RULES)})")
            checked = [check_number(v, group.source, f"{group.path('params')}[{i}]", **rules)
                       for i, (v, rules) in enumerate(zip(params, PARAM_RULES.values()))]
            names = group.sequence("param_names", [])
            for i, name in enumerate(names):
                check_text(name, group.source, f"{group.path('param_names')}[{i}]")
            groups.append({**read_group(group, group_keys), "params": checked})
        return cls(table.text("target"), table.text("phase"), table.choice("load_column", LOAD_COLUMNS),
                   table.number("f_ref", None, minimum=0, exclusive_minimum=True, maximum=MAX_CLOCK_MHZ),
                   group_keys, groups, [g.data for g in table.tables("skipped", [])])
