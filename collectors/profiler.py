"""Profiling sweeps of the PyTorch workload: (c, p, b, k) points x GPU clock and power-limit settings.

Each measured iteration is one row of ``profile_iterations``.  On a GPU each repeat runs inside a
sampler window, so its energy comes from the NVML energy counter (or integrated power) with the
method recorded; on the CPU (tests, development) energy is null, never 0.
"""

from __future__ import annotations

import platform
import sys
import uuid
from contextlib import nullcontext
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from toolkit.schemas import PROFILE_ITERATIONS, SIMULATED_KEY

from .workload import LlamaShard, time_iteration

GRIDS = {
    "test": {"prefill": [(32, 0), (32, 128), (64, 256)], "decode": [(1, 64), (4, 128)], "mixed": [(32, 128, 4, 64)]},
    "quick": {
        "prefill": [(c, p) for c in (512, 2048, 8192) for p in (0, 8192, 32768, 131072)],
        "decode": [(b, k) for b in (1, 16, 64) for k in (1024, 8192, 32768)],
        "mixed": [(2048, p, 16, 4096) for p in (0, 32768, 131072)],
    },
    "full": {
        "prefill": [(c, p) for c in (256, 512, 1024, 2048, 4096, 8192) for p in (0, 4096, 16384, 65536, 262144, 1048576)],
        "decode": [(b, k) for b in (1, 4, 16, 32, 64, 128) for k in (512, 2048, 8192, 32768, 131072)],
        "mixed": [(c, p, b, 4096) for c in (512, 2048) for p in (0, 65536, 262144) for b in (8, 32)],
    },
}


@dataclass
class ProfileResult:
    table: pa.Table
    skipped: list[str]


def points(sweep: str):
    grid = GRIDS[sweep]
    for c, p in grid["prefill"]:
        yield "prefill", c, p, 0, 0
    for b, k in grid["decode"]:
        yield "decode", 0, 0, b, k
    for c, p, b, k in grid["mixed"]:
        yield "mixed", c, p, b, k


def run_profile(preset: str, sweep: str, device: str = "cuda", dtype: str = "bfloat16", tp: int = 1,
                clocks: list[float | None] | None = None, power_limits: list[float | None] | None = None,
                repeats: int = 5, warmup: int = 2, sampler=None, settings=None, layers: int | None = None,
                log=lambda message: print(message, file=sys.stderr)) -> ProfileResult:
    model = LlamaShard(preset, tp=tp, device=device, dtype=dtype, layers=layers)
    on_gpu = model.device.type == "cuda"
    gpu_index = model.device.index or 0
    gpu_name = model.torch.cuda.get_device_name(model.device) if on_gpu else f"CPU ({platform.processor() or platform.machine()})"
    run_id = uuid.uuid4().hex[:12]
    rows, skipped = [], []
    for clock in clocks or [None]:
        for limit in power_limits or [None]:
            if (clock or limit) and settings is None:
                skipped.append(f"clock {clock} / power limit {limit}: no NVML settings access on this backend")
                continue
            try:
                context = settings.applied(clock, limit) if (clock or limit) else nullcontext((None, None))
                with context as applied:
                    read_clock, read_limit = applied
                    for phase, c, p, b, k in points(sweep):
                        windows = []

                        def on_repeat(r, phase=phase, c=c, p=p, b=b, k=k):
                            if sampler is None:
                                return None
                            window = sampler.window("iteration", phase=phase, c=c, p=p, b=b, k=k, repeat=r)
                            return _Recorder(window, windows, gpu_index)

                        latencies = time_iteration(model, c, p, b, k, warmup, repeats, on_repeat)
                        if latencies is None:
                            skipped.append(f"{phase} c={c} p={p} b={b} k={k}: KV does not fit in memory")
                            continue
                        for r, latency in enumerate(latencies):
                            energy = windows[r] if r < len(windows) else {}
                            rows.append({
                                "run_id": run_id, "backend": "gpu" if on_gpu else "cpu", "gpu_name": gpu_name,
                                "model": preset, "phase": phase, "chunk_tokens": c, "prefix_tokens": p,
                                "batch_size": b, "kv_tokens": k, "tp": tp, "sm_clock_mhz": read_clock,
                                "power_limit_w": read_limit, "repeat": r, "latency_s": latency,
                                "energy_j": energy.get("energy_j"), "energy_method": energy.get("energy_method"),
                                "mean_power_w": energy.get("mean_power_w"), "peak_power_w": energy.get("peak_power_w"),
                            })
                        log(f"{phase:<7} c={c:<6} p={p:<8} b={b:<4} k={k:<7} clock={read_clock} limit={read_limit}: "
                            f"median {sorted(latencies)[len(latencies) // 2] * 1000:.3f} ms")
            except Exception as exc:  # a setting NVML refused: skip it, keep the rest
                from .gpu_settings import SettingUnavailable

                if not isinstance(exc, SettingUnavailable):
                    raise
                skipped.append(str(exc))
                log(f"skipped: {exc}")
    meta = {SIMULATED_KEY.decode(): "false", "wattlas.profile": f"PyTorch {preset} shard tp={tp} {dtype} on {gpu_name}, sweep {sweep}"}
    names = [c.name for c in PROFILE_ITERATIONS.columns]
    frame = pd.DataFrame(rows, columns=names)
    return ProfileResult(pa.Table.from_pandas(frame, schema=PROFILE_ITERATIONS.arrow(names, meta), preserve_index=False), skipped)


class _Recorder:
    """Enter/exit a sampler window and keep the profiled GPU's energy row of it."""

    def __init__(self, window_cm, sink: list, gpu_index: int) -> None:
        self.cm = window_cm
        self.sink = sink
        self.gpu_index = gpu_index

    def __enter__(self):
        self.window = self.cm.__enter__()
        return self

    def __exit__(self, *exc):
        self.cm.__exit__(*exc)
        rows = [r for r in (self.window.rows or []) if r["gpu_index"] == self.gpu_index]
        self.sink.append(rows[0] if rows else {})


