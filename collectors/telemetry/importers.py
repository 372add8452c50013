"""Telemetry other tools logged, as wattlas telemetry segments.

* ``nvidia-smi --query-gpu=timestamp,index,uuid,name,power.draw,... --format=csv -lms 250``: what
  most fleets already have.  Energy comes from integrated power (nvidia-smi has no energy-counter
  field), and the summary records that method.
* dcgm-exporter scrapes: the Prometheus text its ``/metrics`` serves, captured repeatedly.  Its
  ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` (mJ) is NVML's energy counter, so energy is a counter
  delta.
* vLLM ``/metrics`` scrapes: the engine's load (running and waiting requests, KV-cache use) over
  time, stored as ``engine`` segments beside the telemetry; :func:`power_vs_load` joins the two.

A scrape needs a time: the exposition's own sample timestamps (milliseconds, when the capture kept
them) or a comment line ``# TIMESTAMP <unix seconds>`` before each scrape, as this capture loop
writes::

    while :; do echo "# TIMESTAMP $(date +%s.%N)"; curl -s localhost:9400/metrics; sleep 0.25; done > dcgm.prom

Each file becomes segments like the sampler's, so ``collect summary``, ``report collection`` and
everything downstream read it unchanged; a value the tool did not report (``[N/A]``, a metric
absent from a scrape) is null, never 0.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from toolkit.errors import InputError
from toolkit.schemas import SIMULATED_KEY, TELEMETRY_SAMPLES

if TYPE_CHECKING:  # pandas is imported where a join needs it
    import pandas as pd

# query field (as nvidia-smi prints it in the header, units stripped) -> (column, parser)
MIB = 2**20


def _number(scale: float = 1.0):
    def parse(text: str) -> float:
        value = float(text.split()[0]) * scale  # "312.45 W" or, with nounits, "312.45"
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"{text!r} is not a finite non-negative number")
        return value
    return parse


def _pstate(text: str) -> int:
    match = re.fullmatch(r"P(\d{1,2})", text)
    if not match or int(match.group(1)) > 15:
        raise ValueError(f"{text!r} is not a P-state (P0..P15)")
    return int(match.group(1))


def _bounded_int(text: str, high: int, base: int = 10) -> int:
    value = int(text, base)
    if not 0 <= value <= high:
        raise ValueError(f"{text!r} is out of range (0..{high})")
    return value


def _bitmask(text: str) -> int:
    return _bounded_int(text[2:], 2**63 - 1, 16) if text.lower().startswith("0x") else _bounded_int(text, 2**63 - 1)


NVIDIA_SMI_FIELDS = {
    "index": ("gpu_index", lambda t: _bounded_int(t, 1023)),
    "uuid": ("gpu_uuid", str),
    "gpu_uuid": ("gpu_uuid", str),
    "name": ("gpu_name", str),
    "gpu_name": ("gpu_name", str),
    # Since driver 535 power.draw is the 1-s average and power.draw.instant the instant reading.
    "power.draw": ("power_avg_w", _number()),
    "power.draw.average": ("power_avg_w", _number()),
    "power.draw.instant": ("power_instant_w", _number()),
    "power.limit": ("power_limit_w", _number()),
    "enforced.power.limit": ("enforced_power_limit_w", _number()),
    "clocks.sm": ("sm_clock_mhz", _number()),
    "clocks.current.sm": ("sm_clock_mhz", _number()),
    "clocks.mem": ("mem_clock_mhz", _number()),
    "clocks.current.memory": ("mem_clock_mhz", _number()),
    "temperature.gpu": ("temp_gpu_c", _number()),
    "temperature.memory": ("temp_mem_c", _number()),
    "utilization.gpu": ("gpu_util_pct", _number()),
    "utilization.memory": ("mem_util_pct", _number()),
    "memory.used": ("mem_used_bytes", lambda t: int(_number(MIB)(t))),
    "memory.total": ("mem_total_bytes", lambda t: int(_number(MIB)(t))),
    "pstate": ("pstate", _pstate),
    "clocks_event_reasons.active": ("clocks_event_reasons", _bitmask),
    "clocks_throttle_reasons.active": ("clocks_event_reasons", _bitmask),
}
UNREPORTED = {"[n/a]", "n/a", "[not supported]", "not supported", "[unknown error]", "[gpu is lost]", ""}
TIMESTAMP_FORMATS = ("%Y/%m/%d %H:%M:%S.%f", "%Y/%m/%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S.%f")
MAX_BYTES = 4 << 30


def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    if path.is_dir():
        raise InputError(path, "is a directory, not a log")
    if size > MAX_BYTES:
        raise InputError(path, f"larger than {MAX_BYTES >> 30} GiB: split the log")
    raw = path.read_bytes()
    if b"\0" in raw[:65536]:
        raise InputError(path, "not a text file (NUL bytes)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text (byte {exc.start})") from None


def _field_name(header: str) -> str:
    return re.sub(r"\s*\[.*?\]\s*$", "", header.strip()).lower()  # "power.draw [W]" -> "power.draw"


def _timestamp(text: str) -> float:
    for fmt in TIMESTAMP_FORMATS:
        try:
            return datetime.strptime(text, fmt).timestamp()  # nvidia-smi prints local time
        except ValueError:
            continue
    raise ValueError(f"{text!r} is not a timestamp like 2024/05/12 10:00:00.123")


def read_nvidia_smi(path: str | Path, host: str | None = None) -> pa.Table:
    """An ``nvidia-smi --query-gpu=... --format=csv`` log as a ``telemetry_samples`` table.

    The header must name ``timestamp`` and ``index`` (nvidia-smi writes it unless told
    ``noheader``); unknown fields are ignored.  Bad input is an :class:`InputError` naming the
    file, the line and the field.
    """
    path = Path(path)
    text = _read_text(path)
    rows = csv.reader(io.StringIO(text), skipinitialspace=True)
    header = next(rows, None)
    if not header:
        raise InputError(path, "is empty")
    fields = [_field_name(h) for h in header]
    for needed in ("timestamp", "index"):
        if needed not in fields:
            raise InputError(path, f"no {needed!r} field in the header (log with --query-gpu=timestamp,index,..."
                                   "--format=csv, header included)", line=1)
    known = [(i, name, *NVIDIA_SMI_FIELDS[name]) for i, name in enumerate(fields) if name in NVIDIA_SMI_FIELDS]
    t_col = fields.index("timestamp")
    host = host or path.stem
    records = []
    for line, cells in enumerate(rows, start=2):
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) != len(fields):
            raise InputError(path, f"{len(cells)} fields where the header has {len(fields)}", line=line)
        try:
            t_wall = _timestamp(cells[t_col].strip())
        except ValueError as exc:
            raise InputError(path, str(exc), line=line, column="timestamp") from None
        record = {"host": host, "backend": "nvidia-smi", "t_wall_s": t_wall, "t_mono_ns": int(round(t_wall * 1e9)),
                  "status": None}
        for i, name, column, parse in known:
            cell = cells[i].strip()
            if cell.lower() in UNREPORTED:
                if column == "gpu_index":
                    raise InputError(path, "a row without a GPU index", line=line, column=header[i].strip())
                continue
            try:
                record[column] = parse(cell)
            except (ValueError, OverflowError) as exc:
                raise InputError(path, str(exc), line=line, column=header[i].strip()) from None
        records.append(record)
    if not records:
        raise InputError(path, "holds a header but no samples")
    meta = {SIMULATED_KEY.decode(): "false", "wattlas.imported_from": "nvidia-smi", "wattlas.source_file": path.name}
    table = pa.Table.from_pylist(records, schema=TELEMETRY_SAMPLES.arrow(metadata=meta))
    return table.sort_by([("gpu_index", "ascending"), ("t_mono_ns", "ascending")])


TIMESTAMP_MARK = re.compile(r"#\s*TIMESTAMP\s+(\S+)\s*$")


def scrape_samples(path: str | Path) -> list[tuple[float, str, dict, float]]:
    """Every sample of a file of Prometheus text scrapes: (time s, metric, labels, value).

    A scrape's time is its samples' own timestamps or the last ``# TIMESTAMP`` line before it; a
    sample with neither is an :class:`InputError` naming the line.
    """
    from prometheus_client.parser import text_string_to_metric_families

    path = Path(path)
    text = _read_text(path)
    blocks: list[tuple[float | None, int, list[str]]] = [(None, 1, [])]
    for number, line in enumerate(text.splitlines(), start=1):
        mark = TIMESTAMP_MARK.match(line.strip())
        if mark:
            try:
                t = float(mark.group(1))
            except ValueError:
                raise InputError(path, f"{mark.group(1)!r} is not Unix seconds", line=number) from None
            if not np.isfinite(t) or not 0 < t < 1e11:
                raise InputError(path, f"{mark.group(1)!r} is not Unix seconds", line=number)
            blocks.append((t, number + 1, []))
        else:
            blocks[-1][2].append(line)
    samples = []
    for t, first_line, lines in blocks:
        if not any(line.strip() and not line.startswith("#") for line in lines):
            continue
        try:
            families = list(text_string_to_metric_families("\n".join(lines) + "\n"))
        except (ValueError, TypeError, IndexError) as exc:
            raise InputError(path, f"not Prometheus text exposition ({' '.join(str(exc).split())[:120]})",
                             line=first_line) from None
        for family in families:
            for sample in family.samples:
                when = sample.timestamp if sample.timestamp is not None else t
                if when is None:
                    raise InputError(path, f"sample {sample.name} has no time: keep the scrape's timestamps or put "
                                           "'# TIMESTAMP <unix seconds>' before each scrape", line=first_line)
                if not np.isfinite(sample.value):
                    continue  # NaN/Inf: not reported
                samples.append((float(when), sample.name, sample.labels, float(sample.value)))
    if not samples:
        raise InputError(path, "holds no Prometheus samples")
    return samples


# dcgm-exporter metric -> (telemetry column, scale)
DCGM_FIELDS = {
    "DCGM_FI_DEV_POWER_USAGE": ("power_avg_w", 1.0),
    "DCGM_FI_DEV_POWER_USAGE_INSTANT": ("power_instant_w", 1.0),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("energy_j", 1e-3),  # mJ
    "DCGM_FI_DEV_POWER_MGMT_LIMIT": ("power_limit_w", 1.0),
    "DCGM_FI_DEV_ENFORCED_POWER_LIMIT": ("enforced_power_limit_w", 1.0),
    "DCGM_FI_DEV_SM_CLOCK": ("sm_clock_mhz", 1.0),
    "DCGM_FI_DEV_MEM_CLOCK": ("mem_clock_mhz", 1.0),
    "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": ("clocks_event_reasons", 1.0),
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": ("clocks_event_reasons", 1.0),
    "DCGM_FI_DEV_GPU_TEMP": ("temp_gpu_c", 1.0),
    "DCGM_FI_DEV_MEMORY_TEMP": ("temp_mem_c", 1.0),
    "DCGM_FI_DEV_GPU_UTIL": ("gpu_util_pct", 1.0),
    "DCGM_FI_DEV_MEM_COPY_UTIL": ("mem_util_pct", 1.0),
    "DCGM_FI_DEV_FB_USED": ("mem_used_bytes", float(MIB)),
    "DCGM_FI_DEV_FB_TOTAL": ("mem_total_bytes", float(MIB)),
    "DCGM_FI_DEV_PCIE_TX_THROUGHPUT": ("pcie_tx_kbps", 1.0),
    "DCGM_FI_DEV_PCIE_RX_THROUGHPUT": ("pcie_rx_kbps", 1.0),
}
INTEGER_COLUMNS = {"clocks_event_reasons", "mem_used_bytes", "mem_total_bytes"}


def read_dcgm(path: str | Path, host: str | None = None) -> pa.Table:
    """dcgm-exporter scrapes (see the module docstring) as a ``telemetry_samples`` table: one row per
    GPU (label ``gpu``) per scrape time; the host is the ``Hostname`` label, else ``host``, else the
    file's name."""
    path = Path(path)
    rows: dict[tuple[str, int, float], dict] = {}
    for t, name, labels, value in scrape_samples(path):
        if name.endswith("_total") and name[:-6] in DCGM_FIELDS:
            name = name[:-6]  # the parser names a counter's samples *_total where the scrape declared the type
        if name not in DCGM_FIELDS:
            continue
        if "gpu" not in labels or not labels["gpu"].isdigit() or int(labels["gpu"]) > 1023:
            raise InputError(path, f"sample {name} has no GPU index (label gpu: {labels.get('gpu')!r})")
        if value < 0 or value >= 2**63:
            raise InputError(path, f"sample {name} of GPU {labels['gpu']} is out of range ({value:g})")
        gpu_host = labels.get("Hostname") or host or path.stem
        key = (gpu_host, int(labels["gpu"]), t)
        row = rows.setdefault(key, {"host": gpu_host, "backend": "dcgm", "gpu_index": int(labels["gpu"]),
                                    "gpu_uuid": labels.get("UUID"), "gpu_name": labels.get("modelName"),
                                    "t_wall_s": t, "t_mono_ns": int(round(t * 1e9)), "status": None})
        column, scale = DCGM_FIELDS[name]
        row[column] = int(round(value * scale)) if column in INTEGER_COLUMNS else value * scale
    if not rows:
        raise InputError(path, f"holds no dcgm-exporter GPU metrics (e.g. {next(iter(DCGM_FIELDS))})")
    meta = {SIMULATED_KEY.decode(): "false", "wattlas.imported_from": "dcgm-exporter", "wattlas.source_file": path.name}
    table = pa.Table.from_pylist(list(rows.values()), schema=TELEMETRY_SAMPLES.arrow(metadata=meta))
    return table.sort_by([("host", "ascending"), ("gpu_index", "ascending"), ("t_mono_ns", "ascending")])


# vLLM metric -> engine_load column (V0 named the KV-cache gauge gpu_cache_usage_perc, V1 kv_cache_usage_perc)
VLLM_FIELDS = {
    "vllm:num_requests_running": "running_requests",
    "vllm:num_requests_waiting": "waiting_requests",
    "vllm:gpu_cache_usage_perc": "kv_cache_usage",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
}


def read_vllm_metrics(path: str | Path, host: str | None = None) -> pa.Table:
    """vLLM ``/metrics`` scrapes as an ``engine_load`` table: one row per engine (its ``model_name``
    and ``engine`` labels) per scrape time."""
    from toolkit.schemas import ENGINE_LOAD

    path = Path(path)
    host = host or path.stem
    rows: dict[tuple[str, float], dict] = {}
    for t, name, labels, value in scrape_samples(path):
        column = VLLM_FIELDS.get(name)
        if column is None:
            continue
        if value < 0 or (column == "kv_cache_usage" and value > 1.0 + 1e-9):
            raise InputError(path, f"sample {name} out of range ({value:g})")
        engine = "/".join(labels[k] for k in ("model_name", "engine") if labels.get(k)) or "engine"
        row = rows.setdefault((engine, t), {"host": host, "engine": engine, "t_wall_s": t})
        row[column] = value
    if not rows:
        raise InputError(path, f"holds no vLLM engine metrics ({', '.join(VLLM_FIELDS)})")
    meta = {"wattlas.imported_from": "vllm-metrics", "wattlas.source_file": path.name}
    table = pa.Table.from_pylist(list(rows.values()), schema=ENGINE_LOAD.arrow(metadata=meta))
    return table.sort_by([("engine", "ascending"), ("t_wall_s", "ascending")])


def power_vs_load(telemetry: pd.DataFrame, engine: pd.DataFrame) -> pd.DataFrame:
    """Per interval between two scrapes of one engine: its mean running requests and the mean power of
    each GPU of its host over that interval - a table ``characterize fit`` reads as phase ``serving``
    (batch_size = running requests, mean_power_w per GPU; no latency).

    Power is the mean of the samples inside the interval (instant power where reported, else the
    averaged one); an interval with no power sample is left out rather than filled in.
    """
    import pandas as pd

    out = []
    readings = telemetry[telemetry["status"].isna()].copy()
    readings["power"] = readings["power_instant_w"].where(readings["power_instant_w"].notna(), readings["power_avg_w"])
    readings = readings[readings["power"].notna()].sort_values("t_wall_s")
    for (host, name), scrapes in engine.sort_values("t_wall_s").groupby(["host", "engine"], sort=True):
        power = readings[readings["host"] == host] if (readings["host"] == host).any() else readings
        if power.empty:
            continue
        t = scrapes["t_wall_s"].to_numpy()
        running = scrapes["running_requests"].to_numpy(dtype="float64")
        for i in range(len(t) - 1):
            inside = power[(power["t_wall_s"] >= t[i]) & (power["t_wall_s"] < t[i + 1])]
            if inside.empty or np.isnan(running[i]) or np.isnan(running[i + 1]):
                continue
            per_gpu = inside.groupby("gpu_index")["power"].mean()
            out.append({"phase": "serving", "batch_size": (running[i] + running[i + 1]) / 2.0,
                        "mean_power_w": float(per_gpu.mean()), "gpus": int(len(per_gpu)),
                        "gpu_name": inside["gpu_name"].dropna().iloc[0] if inside["gpu_name"].notna().any() else None,
                        "model": name, "host": host, "t_start_s": t[i], "t_end_s": t[i + 1],
                        "backend": "measured:vllm-metrics+telemetry"})
    return pd.DataFrame(out)


IMPORTERS = {"nvidia-smi": read_nvidia_smi, "dcgm": read_dcgm, "vllm-metrics": read_vllm_metrics}
