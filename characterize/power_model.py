"""Board power as a function of load and SM clock: static + dynamic f*V^2, saturating in load,
never above the power limit.

    P(load, f) = min(P_limit, P_idle + D * s(f) * (1 - exp(-load / (L0 * r^g)))),
    s(f) = r * (v0 + (1 - v0) * r)^2,   r = f / f_ref

``load`` is the work in the iteration (tokens: chunk + decode batch, or the serving batch for
benchmark tables).  Dynamic CMOS power is ~ f V^2 with voltage roughly linear in f over the
DVFS range (``v0`` is the relative voltage at f -> 0); power saturates in load because the GPU's
units fill up, and the load at which they fill moves with the clock: a compute unit at a lower
clock is full at fewer tokens (``g`` = ``load0_clock_exponent``, 0..1: 1 where the saturation
load is proportional to the clock, 0 where it does not move).  Without a clock column every row
is taken at ``f_ref``.

Physical by construction: every parameter is >= 0, so P is non-decreasing in load, at least
``P_idle`` and - where the fit data had a ``power_limit_w`` column - at most that limit
(``power_limit_w``; a row's own lower limit caps it further).  Fitted by bounded nonlinear least
squares on relative error (scipy), per group (TP).

Bundles written before the clock exponent existed hold four parameters per group; they read as
``g = 0`` (the curve they were fitted with).  A model also records the power levels of its fit
data per GPU and harness (:attr:`PowerModel.levels`, p5 and p95 of the measured power):
:func:`level_mismatch` warns when a model is applied to data whose levels differ by more than
20 % - a model fitted on one GPU and harness (the simulated device, a benchmark's averaging) does
not carry its absolute watts to another.
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
LIMIT = "power_limit_w"
LEVEL_KEYS = ("gpu_name", "backend")  # what a power level is recorded per: the GPU and the harness that measured it
LEVEL_TOLERANCE = 0.2
# What a saved group's parameters may be (check_number rules): the curve stays finite and >= p_idle_w.
# dynamic_w has no upper bound: where power is linear in load over the profile, the fit is a large
# dynamic_w over a large load0 (only their ratio is determined).
MAX_IDLE_W = 10_000.0  # one GPU idling: several times any accelerator's board power
PARAM_RULES = {
    "p_idle_w": dict(minimum=0, maximum=MAX_IDLE_W),
    "dynamic_w": dict(minimum=0),
    "load0": dict(minimum=0, exclusive_minimum=True),
    "v0": dict(minimum=0, maximum=1),
    "load0_clock_exponent": dict(minimum=0, maximum=1),
}
LEGACY_PARAMS = 4  # bundles before load0_clock_exponent: g = 0


def power_curve(params: np.ndarray, load: np.ndarray, f_rel: np.ndarray, limit: np.ndarray | float | None = None) -> np.ndarray:
    """Power (W) at ``load`` and relative clock ``f_rel`` (f / f_ref) for ``params`` =
    (p_idle_w, dynamic_w, load0, v0[, load0_clock_exponent]), at most ``limit`` (W, None: no
    limit); see the module docstring."""
    p_idle, dynamic, load0, v0 = params[:LEGACY_PARAMS]
    exponent = params[LEGACY_PARAMS] if len(params) > LEGACY_PARAMS else 0.0
    f_rel = np.asarray(f_rel, dtype="float64")
    scale = f_rel * (v0 + (1 - v0) * f_rel) ** 2
    power = p_idle + dynamic * scale * (1 - np.exp(-np.asarray(load, dtype="float64") / (load0 * f_rel ** exponent)))
    return power if limit is None else np.minimum(power, limit)


def power_levels(frame: pd.DataFrame, target: str) -> list[dict]:
    """The power levels of ``frame``'s ``target`` per GPU and harness (:data:`LEVEL_KEYS`, where
    the columns are there): ``p5_w``, ``p95_w`` and the row count ``n`` of the finite positive values."""
    if target not in frame:
        return []
    frame = frame[np.isfinite(pd.to_numeric(frame[target], errors="coerce")) & (frame[target] > 0)]
    keys = [k for k in LEVEL_KEYS if k in frame]
    grouped = frame.groupby([frame[k].fillna("") for k in keys], sort=True) if keys else [((), frame)]
    levels = []
    for key, rows in grouped:
        key = key if isinstance(key, tuple) else (key,)
        values = rows[target].to_numpy(dtype="float64")
        if len(values):
            levels.append({**{k: (v or None) for k, v in zip(keys, key)}, "p5_w": float(np.percentile(values, 5)),
                           "p95_w": float(np.percentile(values, 95)), "n": int(len(values))})
    return levels


@dataclass
class PowerModel:
    """Saturating power model (see the module docstring), fitted per group of ``group_keys`` (TP,
    model).  ``load_column`` names the load (tokens); ``f_ref`` is the clock (MHz) the relative
    clock is taken against, None where the data had no clock.  Each of ``groups`` holds its
    ``key`` and ``params``; ``skipped`` lists groups with too few rows to fit.  ``power_limit_w``:
    the highest power limit of the fit data (None where it had none): no prediction exceeds it.
    ``levels``: the fit data's power levels per GPU and harness (:func:`power_levels`)."""

    target: str
    phase: str
    load_column: str
    f_ref: float | None
    group_keys: list[str]
    groups: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    kind: str = "power_saturating"
    power_limit_w: float | None = None
    levels: list[dict] = field(default_factory=list)

    @staticmethod
    def _inputs(frame: pd.DataFrame, load_column: str, f_ref: float | None) -> tuple[np.ndarray, np.ndarray]:
        load = frame[load_column].to_numpy(dtype="float64")
        if f_ref is not None and FREQ in frame and frame[FREQ].notna().all():
            f_rel = frame[FREQ].to_numpy(dtype="float64") / f_ref
        else:
            f_rel = np.ones(len(frame))
        return load, f_rel

    def _limits(self, frame: pd.DataFrame) -> np.ndarray | float | None:
        """Per row, the power ceiling: the model's limit, or a row's own lower ``power_limit_w``."""
        if LIMIT not in frame:
            return self.power_limit_w
        rows = pd.to_numeric(frame[LIMIT], errors="coerce").to_numpy(dtype="float64")
        ceiling = np.inf if self.power_limit_w is None else self.power_limit_w
        rows = np.where(np.isfinite(rows) & (rows > 0), np.minimum(rows, ceiling), ceiling)
        return None if np.isinf(rows).all() else rows

    @classmethod
    def fit(cls, frame: pd.DataFrame, target: str, phase: str, load_column: str, group_keys: list[str] | None = None) -> "PowerModel":
        """Fit column ``target`` (W) of ``frame`` against ``load_column`` per group; ``group_keys``:
        the candidate grouping columns (None: model and TP), used where set on every row
        (``model`` only when the rows mix several).  Groups of fewer than 5 rows are skipped."""
        keys = [k for k in (group_keys if group_keys is not None else ["model", "tp"]) if k in frame and frame[k].notna().all()]
        keys = [k for k in keys if k != "model" or frame[k].nunique() > 1]
        f_ref = float(frame[FREQ].max()) if FREQ in frame and frame[FREQ].notna().any() else None
        limit = float(frame[LIMIT].max()) if LIMIT in frame and (frame[LIMIT] > 0).any() else None
        model = cls(target, phase, load_column, f_ref, keys, power_limit_w=limit, levels=power_levels(frame, target))
        grouped = frame.groupby(keys, sort=True) if keys else [((), frame)]
        for key, g in grouped:
            key = key if isinstance(key, tuple) else (key,)
            # Rows at zero load are the GPU idle between iterations: measured, kept as the group's
            # idle_w, not extrapolated from the curve (memory-bound decode at batch 1 already draws
            # several times idle, so the curve's own intercept says nothing about idle).
            idle = g[load_column].to_numpy(dtype="float64") <= 0
            idle_w = float(np.median(g[target].to_numpy(dtype="float64")[idle])) if idle.any() else None
            g = g[~idle]
            y = g[target].to_numpy(dtype="float64")
            load, f_rel = cls._inputs(g, load_column, f_ref)
            if len(y) < 5:  # too few to fit five parameters; predictions for it fail loudly
                model.skipped.append({k: plain_scalar(v) for k, v in zip(keys, key)})
                continue
            ceiling = model._limits(g)
            top = MAX_IDLE_W if limit is None else limit
            start = np.array([min(max(1.0, y.min() * 0.8), top), max(1.0, y.max() - y.min()), max(1.0, np.median(load)), 0.6, 0.5])
            from scipy.optimize import least_squares  # fitting only; loading a bundle needs no scipy

            fit = least_squares(lambda q: (power_curve(q, load, f_rel, ceiling) - y) / y, start,
                                bounds=([0, 0, 1e-6, 0.2, 0.0], [top, np.inf, np.inf, 1.0, 1.0]), x_scale="jac")
            model.groups.append({"key": {k: plain_scalar(v) for k, v in zip(keys, key)}, "params": fit.x.tolist(),
                                 "param_names": list(PARAM_RULES), "n": int(len(y)), "idle_w": idle_w})
        return model

    def outside_support(self, frame: pd.DataFrame) -> np.ndarray:
        """No row: power is bounded by idle and the limit, so it has no range to leave (a common
        interface with the latency models)."""
        return np.zeros(len(frame), dtype=bool)

    def predict(self, frame: pd.DataFrame, strict: bool = True, allow_extrapolation: bool = True) -> np.ndarray:
        """Power per row; a row of an unfitted group raises, or is NaN with ``strict=False``
        (``allow_extrapolation`` is accepted for the common interface: see :meth:`outside_support`)."""
        out = np.full(len(frame), np.nan)
        load, f_rel = self._inputs(frame, self.load_column, self.f_ref)
        limits = self._limits(frame)
        if not self.group_keys:
            return _with_idle(power_curve(np.asarray(self.groups[0]["params"]), load, f_rel, limits), load, self.groups[0])
        for key, idx in frame[self.group_keys].groupby(self.group_keys, sort=False).indices.items():
            key = key if isinstance(key, tuple) else (key,)
            match = [g for g in self.groups if all(plain_scalar(g["key"][k]) == plain_scalar(v) for k, v in zip(self.group_keys, key))]
            if not match:
                if not strict:
                    continue
                raise KeyError(f"{self.phase} power model has no group {dict(zip(self.group_keys, key))}")
            ceiling = limits[idx] if isinstance(limits, np.ndarray) else limits
            out[idx] = _with_idle(power_curve(np.asarray(match[0]["params"]), load[idx], f_rel[idx], ceiling), load[idx], match[0])
        return out

    def to_json(self) -> dict:
        """The model as a JSON-ready object (:meth:`from_json` reads it back)."""
        return {"kind": self.kind, "target": self.target, "phase": self.phase, "load_column": self.load_column,
                "f_ref": self.f_ref, "group_keys": self.group_keys, "groups": self.groups, "skipped": self.skipped,
                "power_limit_w": self.power_limit_w, "levels": self.levels}

    @classmethod
    def from_json(cls, table: Settings) -> "PowerModel":
        """The model of a bundle's JSON object (a :class:`toolkit.validation.Settings`), validated:
        per group four (written before the clock exponent) or five finite parameters with
        ``0 <= p_idle_w <= MAX_IDLE_W``, ``dynamic_w >= 0``, ``load0 > 0`` (it divides the load),
        ``0 <= v0 <= 1`` (a relative voltage) and ``0 <= load0_clock_exponent <= 1``, which keeps
        every prediction at least the idle power and non-decreasing in load; ``f_ref`` a positive
        clock or null; ``power_limit_w`` a positive power or null (absent: no limit); ``levels``
        tables of ``p5_w`` and ``p95_w`` (W, >= 0) and a row count."""
        group_keys = read_group_keys(table)
        groups = []
        # without group keys every prediction uses the first group: there must be one
        for group in table.tables("groups", min_length=0 if group_keys else 1):
            params = group.sequence("params")
            if len(params) not in (LEGACY_PARAMS, len(PARAM_RULES)):
                names = list(PARAM_RULES)
                raise group.error("params", f"has {len(params)} parameters, expected {LEGACY_PARAMS} "
                                            f"({', '.join(names[:LEGACY_PARAMS])}) or {len(names)} (and {names[-1]})")
            checked = [check_number(v, group.source, f"{group.path('params')}[{i}]", **rules)
                       for i, (v, rules) in enumerate(zip(params, PARAM_RULES.values()))]
            names = group.sequence("param_names", [])
            for i, name in enumerate(names):
                check_text(name, group.source, f"{group.path('param_names')}[{i}]")
            entry = {**read_group(group, group_keys), "params": checked}
            entry["idle_w"] = group.number("idle_w", None, minimum=0, maximum=MAX_IDLE_W)
            groups.append(entry)
        levels = []
        for level in table.tables("levels", []):
            entry = {k: level.text(k, None) for k in LEVEL_KEYS}
            entry.update(p5_w=level.number("p5_w", minimum=0), p95_w=level.number("p95_w", minimum=0),
                         n=level.number("n", 0, integer=True, minimum=0))
            levels.append(entry)
        return cls(table.text("target"), table.text("phase"), table.choice("load_column", LOAD_COLUMNS),
                   table.number("f_ref", None, minimum=0, exclusive_minimum=True, maximum=MAX_CLOCK_MHZ),
                   group_keys, groups, [g.data for g in table.tables("skipped", [])],
                   power_limit_w=table.number("power_limit_w", None, minimum=0, exclusive_minimum=True, maximum=MAX_IDLE_W),
                   levels=levels)


def _with_idle(power: np.ndarray, load: np.ndarray, group: dict) -> np.ndarray:
    """``power`` with the group's measured idle power where the load is zero (where it has one)."""
    idle = group.get("idle_w")
    return power if idle is None else np.where(load <= 0, idle, power)


def level_mismatch(model: PowerModel, frame: pd.DataFrame, tolerance: float = LEVEL_TOLERANCE) -> str | None:
    """A warning (one line) when ``frame``'s measured power levels (p5 or p95 of ``model.target``)
    differ from those of the model's fit data by more than ``tolerance`` (relative), else None.

    The fit data's levels of the same GPU and harness (``gpu_name``, ``backend``) are compared
    where the model has them, else those of its largest fit set.  None where the model recorded no
    levels (a bundle written before them) or the frame has no measured power."""
    if not model.levels:
        return None
    mine = power_levels(frame, model.target)
    if not mine:
        return None
    problems = []
    for level in mine:
        identity = {k: level.get(k) for k in LEVEL_KEYS}
        same = [ref for ref in model.levels if all(ref.get(k) == v for k, v in identity.items() if v is not None)]
        ref = max(same or model.levels, key=lambda r: r.get("n", 0))
        off = {name: level[name] / ref[name] - 1 for name in ("p5_w", "p95_w") if ref[name] > 0}
        if any(abs(v) > tolerance for v in off.values()):
            def who(entry):
                return " / ".join(str(entry.get(k)) for k in LEVEL_KEYS if entry.get(k) is not None) or "unnamed"
            shown = ", ".join(f"{name[:-2]} {level[name]:.0f} W vs {ref[name]:.0f} W ({v * 100:+.0f} %)" for name, v in off.items())
            problems.append(f"{who(level)} against the fit data of {who(ref)}: {shown}")
    if not problems:
        return None
    return (f"{model.target}/{model.phase}: the data's power levels differ from the model's fit data by more than "
            f"{tolerance * 100:.0f} % ({'; '.join(problems)}): its absolute watts do not carry over to this GPU or "
            "harness; refit on data measured there")
