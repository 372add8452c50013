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

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from .model_io import plain_scalar

FREQ = "sm_clock_mhz"


def power_curve(params: np.ndarray, load: np.ndarray, f_rel: np.ndarray) -> np.ndarray:
    p_idle, dynamic, load0, v0 = params
    scale = f_rel * (v0 + (1 - v0) * f_rel) ** 2
    return p_idle + dynamic * scale * (1 - np.exp(-load / load0))


@dataclass
class PowerModel:
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
        return {"kind": self.kind, "target": self.target, "phase": self.phase, "load_column": self.load_column,
                "f_ref": self.f_ref, "group_keys": self.group_keys, "groups": self.groups, "skipped": self.skipped}

    @classmethod
    def from_json(cls, data: dict) -> "PowerModel":
        return cls(data["target"], data["phase"], data["load_column"], data.get("f_ref"),
                   list(data["group_keys"]), [dict(g) for g in data["groups"]], list(data.get("skipped", [])))

