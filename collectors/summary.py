"""Per-GPU summaries of a telemetry table: energy (with its method), power, clocks, capping."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .sim_source import REASON_SW_POWER_CAP


def load_telemetry(directory) -> pd.DataFrame:
    """Every telemetry row of a collection directory (finished and live segments)."""
    from toolkit.schemas import TELEMETRY_SAMPLES

    from .segments import read_segments

    return read_segments(directory, "telemetry", TELEMETRY_SAMPLES.arrow()).to_pandas()


def load_windows(directory) -> pd.DataFrame:
    """Every phase-window row of a collection directory."""
    from toolkit.schemas import PHASE_WINDOWS

    from .segments import read_segments

    return read_segments(directory, "windows", PHASE_WINDOWS.arrow()).to_pandas()


def integrate_power(t_s: np.ndarray, power_w: np.ndarray) -> float | None:
    """Trapezoid integral of power over time, skipping gaps where power is unknown."""
    ok = ~np.isnan(power_w)
    if ok.sum() < 2:
        return None
    t, p = t_s[ok], power_w[ok]
    return float(np.sum(np.diff(t) * (p[1:] + p[:-1]) / 2.0))


def gpu_energy(frame: pd.DataFrame) -> tuple[float | None, str | None]:
    """Energy over one GPU's samples: counter delta when the counter covers every sample and
    never runs backwards, else integrated power (instant where reported, else averaged)."""
    frame = frame.sort_values("t_mono_ns")
    healthy = frame[frame["status"].isna()]
    counter = healthy["energy_j"].to_numpy(dtype="float64", na_value=np.nan)
    if counter.size >= 2 and not np.isnan(counter).any() and (np.diff(counter) >= 0).all():
        return float(counter[-1] - counter[0]), "counter"
    t = healthy["t_mono_ns"].to_numpy(dtype="float64") / 1e9
    power = healthy["power_instant_w"].to_numpy(dtype="float64", na_value=np.nan)
    if np.isnan(power).all():
        power = healthy["power_avg_w"].to_numpy(dtype="float64", na_value=np.nan)
    energy = integrate_power(t, power)
    return (energy, "integrated_power") if energy is not None else (None, None)


def power_capped(reasons: pd.Series) -> np.ndarray:
    """Per sample of the clocks-event reason bitmask: 1 where the SW power-cap reason is set, 0 where
    not, NaN where the reasons were not read."""
    return np.where(reasons.isna(), np.nan, (reasons.fillna(0).astype("int64") & REASON_SW_POWER_CAP) != 0)


def summarize_telemetry(table) -> pd.DataFrame:
    """One row per GPU: samples, duration, energy and method, mean/peak power, capping share."""
    frame = table.to_pandas() if hasattr(table, "to_pandas") else table
    rows = []
    for (host, gpu), g in frame.groupby(["host", "gpu_index"], sort=True):
        g = g.sort_values("t_mono_ns")
        duration = (g["t_mono_ns"].iloc[-1] - g["t_mono_ns"].iloc[0]) / 1e9
        energy, method = gpu_energy(g)
        power = g["power_instant_w"].where(g["power_instant_w"].notna(), g["power_avg_w"])
        capped = power_capped(g["clocks_event_reasons"])
        lost = g["status"].dropna()
        rows.append({
            "host": host,
            "gpu_index": int(gpu),
            "gpu_name": g["gpu_name"].dropna().iloc[0] if g["gpu_name"].notna().any() else None,
            "backend": g["backend"].iloc[0],
            "samples": int(len(g)),
            "duration_s": float(duration),
            "energy_j": energy,
            "energy_method": method,
            "mean_power_w": energy / duration if energy is not None and duration > 0 else None,
            "peak_power_w": float(power.max()) if power.notna().any() else None,
            "max_temp_c": float(g["temp_gpu_c"].max()) if g["temp_gpu_c"].notna().any() else None,
            "power_capped_share": float(np.nanmean(capped)) if not np.isnan(capped).all() else None,
            "status": lost.iloc[-1] if len(lost) else "ok",
        })
    return pd.DataFrame(rows)


def format_summary(summary: pd.DataFrame) -> str:
    lines = []
    for row in summary.itertuples():
        label = " [SIMULATED]" if row.backend == "sim" else ""
        energy = "energy n/a" if row.energy_j is None or pd.isna(row.energy_j) else f"{row.energy_j:,.1f} J ({row.energy_method})"
        mean = "" if row.mean_power_w is None or pd.isna(row.mean_power_w) else f", mean {row.mean_power_w:.1f} W"
        peak = "" if row.peak_power_w is None or pd.isna(row.peak_power_w) else f", peak {row.peak_power_w:.1f} W"
        lines.append(f"{row.host} GPU {row.gpu_index} {row.gpu_name or ''}{label}: {row.samples} samples over "
                     f"{row.duration_s:.1f} s, {energy}{mean}{peak}, status {row.status}")
    return "\n".join(lines)
