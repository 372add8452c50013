"""Prometheus node-exporter textfile export with dcgm-exporter metric names.

Units follow dcgm-exporter: power W, energy mJ, clocks MHz, temperature C, utilization %,
framebuffer MiB.  A reading the GPU does not report is left out (never exported as 0).
Simulated GPUs carry the label ``backend="sim"``.
"""

from __future__ import annotations

import os
from pathlib import Path

# (metric, help, column, scale)
METRICS = [
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", "power_avg_w", 1.0),
    ("DCGM_FI_DEV_POWER_USAGE_INSTANT", "Current power draw (in W).", "power_instant_w", 1.0),
    ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "Total energy consumption since boot (in mJ).", "energy_j", 1000.0),
    ("DCGM_FI_DEV_POWER_MGMT_LIMIT", "Power management limit (in W).", "power_limit_w", 1.0),
    ("DCGM_FI_DEV_ENFORCED_POWER_LIMIT", "Enforced power limit (in W).", "enforced_power_limit_w", 1.0),
    ("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).", "sm_clock_mhz", 1.0),
    ("DCGM_FI_DEV_MEM_CLOCK", "Memory clock frequency (in MHz).", "mem_clock_mhz", 1.0),
    ("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "Current clock throttle reasons (bitmask).", "clocks_event_reasons", 1.0),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", "temp_gpu_c", 1.0),
    ("DCGM_FI_DEV_MEMORY_TEMP", "Memory temperature (in C).", "temp_mem_c", 1.0),
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", "gpu_util_pct", 1.0),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).", "mem_util_pct", 1.0),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", "mem_used_bytes", 1 / 2**20),
    ("DCGM_FI_DEV_PCIE_TX_THROUGHPUT", "PCIe TX throughput (in KB/s).", "pcie_tx_kbps", 1.0),
    ("DCGM_FI_DEV_PCIE_RX_THROUGHPUT", "PCIe RX throughput (in KB/s).", "pcie_rx_kbps", 1.0),
]


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_sample(value: float, scale: float = 1.0, integer: bool = False) -> str:
    """A sample value in full precision: a counter in whole units (mJ: exact up to 9e15, i.e.
    ~285 years of a 1 kW GPU), anything else as the shortest text that reads back to the same
    float - never ``%g``, whose 6 digits make a 2.5e9 J counter move in 10 kJ steps."""
    scaled = float(value) * scale
    if integer or (scaled.is_integer() and abs(scaled) < 2**53):
        return str(int(round(scaled)))
    return repr(scaled)


def format_textfile(rows: list[dict]) -> str:
    lines = []
    for metric, help_text, column, scale in METRICS:
        samples = [r for r in rows if r.get(column) is not None]
        if not samples:
            continue
        lines.append(f"# HELP {metric} {help_text}")
        lines.append(f"# TYPE {metric} {'counter' if column == 'energy_j' else 'gauge'}")
        for r in samples:
            labels = {"gpu": r["gpu_index"], "UUID": r.get("gpu_uuid") or "", "modelName": r.get("gpu_name") or "",
                      "Hostname": r.get("host") or "", "backend": r.get("backend") or ""}
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{metric}{{{label_text}}} {format_sample(r[column], scale, integer=column == 'energy_j')}")
    return "\n".join(lines) + "\n"


def write_textfile(path: str | Path, rows: list[dict]) -> None:
    """Atomically replace ``path`` so node-exporter never reads a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(format_textfile(rows))
    os.replace(tmp, path)
