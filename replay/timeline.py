"""Power timelines as step functions: one row per run of equal bins per instance, and their sum
over instances (the row's power), without ever expanding runs into bins."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def sum_steps(starts: list[np.ndarray], values: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Sum step functions over one domain: ``values[i][j]`` holds from ``starts[i][j]`` (sorted,
    each beginning at the domain's start) to the next start.  Returns the union of the starts
    and the sum from each; the sum goes instance by instance, in the order a dense
    instances x bins array summed over its first axis would take."""
    union = np.unique(np.concatenate(starts))
    total = np.zeros(len(union))
    for s, v in zip(starts, values):
        total += v[np.searchsorted(s, union, side="right") - 1]
    return union, total


def cluster_power(timeline: pd.DataFrame) -> pd.DataFrame:
    """Total power of all instances of a power timeline: rows ``t_s``, ``duration_s``, ``power_w``,
    one per stretch of constant total, in time order.

    Takes the run-length timeline a replay writes; a dense one without ``duration_s`` (one row per
    bin, as written before runs) is read as bins of its smallest time step."""
    if "duration_s" not in timeline:
        steps = np.diff(np.unique(timeline["t_s"]))
        timeline = timeline.assign(duration_s=steps.min() if len(steps) else 1.0)
    groups = [g.sort_values("t_s") for _, g in timeline.groupby("instance", sort=True)]
    if not groups:
        return pd.DataFrame({"t_s": [], "duration_s": [], "power_w": []})
    union, total = sum_steps([g["t_s"].to_numpy(dtype=float) for g in groups],
                              [g["power_w"].to_numpy(dtype=float) for g in groups])
    end = max(float((g["t_s"] + g["duration_s"]).iloc[-1]) for g in groups)
    new = np.r_[True, total[1:] != total[:-1]]  # NaN (no power model) stays one row per change point
    union, total = union[new], total[new]
    return pd.DataFrame({"t_s": union, "duration_s": np.diff(np.r_[union, end]), "power_w": total})


def weighted_quantile(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """``np.quantile`` (linear) of the array holding ``values[i]`` ``counts[i]`` times, without
    building it: an idle year is one value with a count, not millions of equal bins."""
    if not len(values) or counts.sum() <= 0:
        return float("nan")
    order = np.argsort(values, kind="stable")
    v, cum = values[order], np.cumsum(counts[order])
    h = q * (int(cum[-1]) - 1)
    lo = math.floor(h)
    a = v[np.searchsorted(cum, lo, side="right")]
    b = v[np.searchsorted(cum, min(lo + 1, int(cum[-1]) - 1), side="right")]
    return float(a + (h - lo) * (b - a))


def grid_weighted_kwh(starts: np.ndarray, energy_j: np.ndarray, n_bins: int, bin_s: float,
                       t_series: np.ndarray, g_series: np.ndarray) -> float:
    """Sum over bins of (energy in the bin, kWh) x (grid intensity at the bin's midpoint, g/kWh).

    Stretches of equal bins (``energy_j[i]`` from bin ``starts[i]`` on) are cut where a midpoint
    passes a point of the series; within a piece the intensity is linear in time, so the piece's
    bins sum to (bins) x (intensity at their mean midpoint), exactly as bin by bin."""
    cuts = np.ceil(np.asarray(t_series, dtype=float) / bin_s - 0.5)  # first bin whose midpoint is at or after t
    cuts = cuts[(cuts > 0) & (cuts < n_bins)].astype(np.int64)
    pieces = np.union1d(starts, cuts)
    n = np.diff(np.r_[pieces, n_bins])
    midpoint = (pieces + n / 2) * bin_s  # the mean of (k + 0.5) * bin_s over the piece's bins
    energy = energy_j[np.searchsorted(starts, pieces, side="right") - 1]
    return float((energy / 3.6e6 * n * np.interp(midpoint, t_series, g_series)).sum())
