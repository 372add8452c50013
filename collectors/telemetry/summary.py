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
    """Trapezoid integral of power over time, skipping samples where power is unknown."""
    ok = ~np.isnan(power_w)
    if ok.sum() < 2:
        return None
    t, p = t_s[ok], power_w[ok]
    return float(np.sum(np.diff(t) * (p[1:] + p[:-1]) / 2.0))


def bridge_limit_s(t_s: np.ndarray) -> float:
    """The longest stretch between two samples that is still integrated across: 20 sampling periods,
    at least 5 s (the sampler's own rule), so an outage is never filled in by a straight line."""
    steps = np.diff(t_s)
    steps = steps[steps > 0]
    return max(5.0, 20.0 * float(np.median(steps))) if steps.size else 5.0


def _stretches(t: np.ndarray, epoch: np.ndarray, max_gap_s: float | None) -> list[slice]:
    """Index ranges within which a cumulative value or an integral may be differenced."""
    breaks = epoch[1:] != epoch[:-1]
    if max_gap_s is not None:
        breaks |= np.diff(t) > max_gap_s
    edges = [0, *(np.flatnonzero(breaks) + 1), len(t)]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:]) if b - a >= 2]


def gpu_energy(frame: pd.DataFrame) -> tuple[float | None, str | None, float]:
    """(energy J, method, unmeasured seconds) over one GPU's samples.

    With the energy counter: the sum of counter deltas within each counter epoch (a reset or a
    driver reload starts a new epoch; a decrease inside one is treated as a reset too).  Without
    it: power integrated over unbroken stretches (instant power where reported, else averaged),
    never across a hole longer than :func:`bridge_limit_s`.  Time between stretches is unmeasured
    and returned as such, so a total never silently leaves out an outage.
    """
    frame = frame.sort_values("t_mono_ns")
    healthy = frame[frame["status"].isna()]
    t_all = healthy["t_mono_ns"].to_numpy(dtype="float64") / 1e9
    span = float(t_all[-1] - t_all[0]) if t_all.size >= 2 else 0.0
    epochs_all = (healthy["energy_epoch"].fillna(0).to_numpy(dtype="int64") if "energy_epoch" in healthy
                  else np.zeros(len(healthy), dtype="int64"))
    counter = healthy["energy_j"].to_numpy(dtype="float64", na_value=np.nan)
    has = ~np.isnan(counter)
    if has.sum() >= 2:
        t, c = t_all[has], counter[has]
        epoch = epochs_all[has].copy()
        epoch[1:] += np.cumsum(np.diff(c) < 0)  # files from before epochs were recorded
        parts = _stretches(t, epoch, None)
        if parts:
            energy = sum(float(c[p][-1] - c[p][0]) for p in parts)
            covered = sum(float(t[p][-1] - t[p][0]) for p in parts)
            return energy, "counter", max(0.0, span - covered)
    power = healthy["power_instant_w"].to_numpy(dtype="float64", na_value=np.nan)
    if np.isnan(power).all():
        power = healthy["power_avg_w"].to_numpy(dtype="float64", na_value=np.nan)
    has = ~np.isnan(power)
    t, p, epoch = t_all[has], power[has], epochs_all[has]
    parts = _stretches(t, epoch, bridge_limit_s(t))
    if not parts:
        return None, None, span
    energy = sum(integrate_power(t[q], p[q]) for q in parts)
    covered = sum(float(t[q][-1] - t[q][0]) for q in parts)
    return energy, "integrated_power", max(0.0, span - covered)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _status(statuses: pd.Series, unmeasured_s: float, duration_s: float) -> str:
    """'lost: ...' for a stream that ended; 'ok' when complete; otherwise what happened, counted."""
    lost = statuses[statuses.str.startswith("lost")]
    if len(lost):
        return lost.iloc[-1]
    gaps = statuses[statuses.str.startswith("gap:")]
    rows_lost = int((~gaps.str.contains("no rows lost")).sum())
    notes = [_count(n, noun) for n, noun in (
        (int(statuses.str.startswith("driver_unavailable").sum()), "driver outage"),
        (int(statuses.str.startswith("read_error:").sum()), "read-error streak"),
        (rows_lost, "storage gap with rows lost"),
    ) if n]
    # Sub-tick holes (a sample a little late) are not worth a word; a second or 1 % is.
    if unmeasured_s > max(1.0, 0.01 * duration_s):
        notes.append(f"{unmeasured_s:.1f} s of {duration_s:.1f} s unmeasured")
    if notes:
        return "degraded: " + ", ".join(notes)
    stalls = len(gaps) - rows_lost  # the disk was full for a while, but every row got written
    return "ok" if not stalls else f"ok ({_count(stalls, 'write stall')}, no rows lost)"


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
        energy, method, unmeasured = gpu_energy(g)
        power = g["power_instant_w"].where(g["power_instant_w"].notna(), g["power_avg_w"])
        capped = power_capped(g["clocks_event_reasons"])
        rows.append({
            "host": host,
            "gpu_index": int(gpu),
            "gpu_name": g["gpu_name"].dropna().iloc[0] if g["gpu_name"].notna().any() else None,
            "backend": g["backend"].iloc[0],
            "samples": int(len(g)),
            "duration_s": float(duration),
            "energy_j": energy,
            "energy_method": method,
            "unmeasured_s": unmeasured,
            # Over the measured time only: an outage neither dilutes nor inflates it.
            "mean_power_w": energy / (duration - unmeasured) if energy is not None and duration - unmeasured > 0 else None,
            "peak_power_w": float(power.max()) if power.notna().any() else None,
            "max_temp_c": float(g["temp_gpu_c"].max()) if g["temp_gpu_c"].notna().any() else None,
            "power_capped_share": float(np.nanmean(capped)) if not np.isnan(capped).all() else None,
            "status": _status(g["status"].dropna().astype(str), unmeasured, float(duration)),
            "power_scope": (g["power_scope"].dropna().iloc[-1] if "power_scope" in g and g["power_scope"].notna().any()
                            else None),
        })
    return pd.DataFrame(rows)


def summarize_windows(windows: pd.DataFrame) -> pd.DataFrame:
    """One row per phase (window name): windows, total time, energy over every GPU and how it was
    measured; energy is null when any window's energy on any GPU is unknown (a partial sum would
    read as the phase's energy)."""
    rows = []
    for name, g in windows.groupby("window", sort=False):
        per_window = g.groupby(["run_id", "start_wall_s"])
        energy = g["energy_j"]
        methods = sorted(g["energy_method"].dropna().unique())
        rows.append({
            "window": name, "windows": int(per_window.ngroups), "gpus": int(g["gpu_index"].nunique()),
            "duration_s": float(per_window["duration_s"].first().sum()),
            "energy_j": float(energy.sum()) if energy.notna().all() else None,
            "energy_method": "+".join(methods) if methods else None,
            "unknown_gpu_windows": int(energy.isna().sum()),
        })
    return pd.DataFrame(rows)


def format_windows(phases: pd.DataFrame, simulated: bool = False) -> str:
    """One line per phase for a person: windows, time, energy and method."""
    label = " [SIMULATED]" if simulated else ""
    lines = []
    for row in phases.itertuples():
        if row.energy_j is None or pd.isna(row.energy_j):
            energy = f"energy unknown ({row.unknown_gpu_windows} GPU-window(s) unmeasured)"
        else:
            energy = f"{row.energy_j:,.1f} J ({row.energy_method}), mean {row.energy_j / row.duration_s:,.1f} W" \
                if row.duration_s > 0 else f"{row.energy_j:,.1f} J ({row.energy_method})"
        lines.append(f"phase {row.window}{label}: {row.windows} window(s), {row.duration_s:,.2f} s on {row.gpus} GPU(s), "
                     f"{energy}")
    return "\n".join(lines)


def format_summary(summary: pd.DataFrame) -> str:
    """One line per GPU for a person: samples, energy with its method and measured time, power, status."""
    lines = []
    for row in summary.itertuples():
        label = " [SIMULATED]" if row.backend == "sim" else ""
        energy = "energy n/a" if row.energy_j is None or pd.isna(row.energy_j) else f"{row.energy_j:,.1f} J ({row.energy_method})"
        if row.unmeasured_s > 0 and row.energy_j is not None and not pd.isna(row.energy_j):
            energy += f" over {row.duration_s - row.unmeasured_s:.1f} s measured"
        mean = "" if row.mean_power_w is None or pd.isna(row.mean_power_w) else f", mean {row.mean_power_w:.1f} W"
        peak = "" if row.peak_power_w is None or pd.isna(row.peak_power_w) else f", peak {row.peak_power_w:.1f} W"
        scope = getattr(row, "power_scope", None)
        if isinstance(scope, str) and scope != "gpu":  # module scope (Grace Hopper) or a MIG-partitioned GPU
            label += f" [power scope: {scope}{'; includes the Grace CPU and memory' if scope.startswith('module') else ''}]"
        lines.append(f"{row.host} GPU {row.gpu_index} {row.gpu_name or ''}{label}: {row.samples} samples over "
                     f"{row.duration_s:.1f} s, {energy}{mean}{peak}, status {row.status}")
    return "\n".join(lines)
