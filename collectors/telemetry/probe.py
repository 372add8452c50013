"""What each GPU offers the collector: metrics it lacks, how often its energy counter moves, and
the ranges of the settings the profiler sweeps.  Run once per new GPU type or driver."""

from __future__ import annotations

from .counter_probe import counter_update_period, window_for_counter


def probe_gpus(source, counter_poll_s: float = 1.0, gpus: str | None = None) -> list[dict]:
    """One dict per GPU (``gpus``: the --gpus selection); ``source`` is an unopened telemetry source
    (it is opened and closed here)."""
    from .gpu_selection import select_gpus

    infos = source.open()
    try:
        infos = select_gpus(infos, gpus)
        rows = []
        for info in infos:
            step = counter_update_period(lambda index=info.index: source.read_energy_power(index)[0], counter_poll_s)
            row = {
                "gpu_index": info.index, "name": info.name, "uuid": info.uuid, "backend": source.backend,
                "unsupported_metrics": sorted(getattr(source, "unsupported", {}).get(info.index, [])),
                "energy_counter_step_s": step,
                "suggested_min_window_s": window_for_counter(step),
            }
            if hasattr(source, "settings_ranges"):
                row.update(source.settings_ranges(info.index))
            rows.append(row)
        return rows
    finally:
        source.close()


def format_probe(rows: list[dict]) -> str:
    """The probe's rows as text for a person: counter period, unsupported metrics, limit and clock ranges."""
    def show(value, unit=""):
        return "-" if value is None else f"{value:g}{unit}" if isinstance(value, float) else f"{value}{unit}"

    lines = []
    for row in rows:
        label = " [SIMULATED]" if row["backend"] == "sim" else ""
        step = row["energy_counter_step_s"]
        lines += [
            f"GPU {row['gpu_index']}: {row['name'] or '?'} ({row['uuid'] or 'no UUID'}){label}",
            f"  energy counter moves every: {f'{step * 1000:.1f} ms' if step else '- (no counter, or it did not move)'}"
            f"   (energy windows >= {row['suggested_min_window_s']:g} s keep its quantization <= 5 %)",
            f"  unsupported metrics (null in every row): {', '.join(row['unsupported_metrics']) or 'none'}",
        ]
        if "power_limit_min_w" in row:
            lines.append(f"  power limit: {show(row['power_limit_min_w'])}-{show(row['power_limit_max_w'], ' W')} "
                         f"(default {show(row['power_limit_default_w'], ' W')}); max SM clock {show(row['max_sm_clock_mhz'], ' MHz')}")
    return "\n".join(lines)
