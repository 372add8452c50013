"""Telemetry other tools logged, as wattlas telemetry segments.

``nvidia-smi --query-gpu=timestamp,index,uuid,name,power.draw,... --format=csv -lms 250 > log.csv``
is what most fleets already have.  Each file becomes a telemetry segment like the sampler's, so
``collect summary``, ``report collection`` and everything downstream read it unchanged: energy
comes from integrated power (nvidia-smi has no energy counter field), and the summary records
that method; a field the GPU did not report (``[N/A]``, ``[Not Supported]``) is null, never 0.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from toolkit.errors import InputError
from toolkit.schemas import SIMULATED_KEY, TELEMETRY_SAMPLES

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
    try:
        raw = path.read_bytes() if path.stat().st_size <= MAX_BYTES else None
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, not an nvidia-smi log") from None
    if raw is None:
        raise InputError(path, f"larger than {MAX_BYTES >> 30} GiB: split the log")
    if b"\0" in raw[:65536]:
        raise InputError(path, "not a text file (NUL bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text (byte {exc.start})") from None
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


IMPORTERS = {"nvidia-smi": read_nvidia_smi}
