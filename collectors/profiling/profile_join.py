"""What the telemetry saw during each profiled repeat: the clock actually run, capping, temperature.

The profiler's rows carry the sampler window of each repeat (wall-clock start and end, NVML GPU
index); the collector's telemetry of that GPU inside the window gives the mean SM clock actually
reached (under a power limit it is lower than the clock asked for), the share of samples with the
SW power-cap reason set, and the hottest GPU temperature.  Rows without a window, or windows with
no telemetry sample inside, get nulls.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..telemetry.summary import power_capped

JOINED_COLUMNS = ["observed_sm_clock_mhz", "power_capped_share", "max_temp_gpu_c"]


def join_window_telemetry(profile: pd.DataFrame, telemetry: pd.DataFrame) -> pd.DataFrame:
    """Each profile row with the telemetry samples inside its window: observed SM clock, power-capped share and peak temperature."""
    out = profile.copy()
    for column in JOINED_COLUMNS:
        out[column] = np.nan
    if telemetry.empty:
        return out
    for gpu, rows in out.groupby("gpu_index", dropna=True):
        samples = telemetry[telemetry["gpu_index"] == gpu].sort_values("t_wall_s")
        t = samples["t_wall_s"].to_numpy()
        clock = samples["sm_clock_mhz"].to_numpy(dtype="float64", na_value=np.nan)
        temp = samples["temp_gpu_c"].to_numpy(dtype="float64", na_value=np.nan)
        capped = power_capped(samples["clocks_event_reasons"])
        for index, start, end in zip(rows.index, rows["window_start_wall_s"], rows["window_end_wall_s"]):
            if pd.isna(start) or pd.isna(end):
                continue
            inside = slice(np.searchsorted(t, start, "left"), np.searchsorted(t, end, "right"))
            out.loc[index, JOINED_COLUMNS] = [_nan_mean(clock[inside]), _nan_mean(capped[inside]), _nan_max(temp[inside])]
    return out


def _nan_mean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else np.nan


def _nan_max(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.max()) if len(values) else np.nan
