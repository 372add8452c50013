"""Profiling sweeps of the PyTorch workload: (c, p, b, k) points x GPU clock and power-limit settings.

Each measured repeat is one row of ``profile_iterations``.  On a GPU a repeat runs enough
back-to-back iterations to fill a sampler window of ``min_window_s`` (NVML's energy counter moves
in 20-100 ms steps), and the row holds per-iteration latency and energy (window / iterations) with
the energy method recorded; on the CPU (tests, development) energy is null, never 0.

Rows are handed to ``on_point`` as soon as a point's repeats are done, so a caller can store them
durably; ``done`` names points already stored (a resumed sweep skips them).
"""

from __future__ import annotations

import platform
import sys
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, NamedTuple

import pandas as pd
import pyarrow as pa

from toolkit.schemas import PROFILE_ITERATIONS, SCHEMA_KEY, SIMULATED_KEY, VERSION_KEY

from .gpu_settings import SettingUnavailable
from .workload import LlamaShard, measure_point

GRIDS = {
    "test": {"prefill": [(32, 0), (32, 128), (64, 256)], "decode": [(1, 64), (4, 128)], "mixed": [(32, 128, 4, 64)]},
    "quick": {
        # small chunks after long prefixes are where adaptive chunking runs, and memory-bound
        "prefill": [(c, p) for c in (64, 512, 2048, 8192) for p in (0, 8192, 32768, 131072)],
        "decode": [(b, k) for b in (1, 16, 64) for k in (1024, 8192, 32768)],
        "mixed": [(2048, p, 16, 4096) for p in (0, 32768, 131072)],
    },
    "full": {
        "prefill": [(c, p) for c in (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
                    for p in (0, 4096, 16384, 65536, 262144, 1048576)],
        "decode": [(b, k) for b in (1, 4, 16, 32, 64, 128) for k in (512, 2048, 8192, 32768, 131072)],
        "mixed": [(c, p, b, 4096) for c in (512, 2048) for p in (0, 65536, 262144) for b in (8, 32)],
    },
}

PROFILE_COLUMNS = [c.name for c in PROFILE_ITERATIONS.columns]


class SweepPoint(NamedTuple):
    """One point of a sweep: phase, chunk c, prefix p, batch b, KV length k, at one clock and power limit."""
    phase: str
    c: int
    p: int
    b: int
    k: int
    clock_mhz: float | None  # requested
    power_limit_w: float | None  # requested

    def describe(self) -> str:
        """The point in words, for progress lines and skip lists."""
        return (f"{self.phase:<7} c={self.c:<6} p={self.p:<8} b={self.b:<4} k={self.k:<7} "
                f"clock={self.clock_mhz} limit={self.power_limit_w}")


def points(sweep: str):
    """The points of a named sweep (quick, full, test) for one model preset."""
    grid = GRIDS[sweep]
    for c, p in grid["prefill"]:
        yield "prefill", c, p, 0, 0
    for b, k in grid["decode"]:
        yield "decode", 0, 0, b, k
    for c, p, b, k in grid["mixed"]:
        yield "mixed", c, p, b, k


def completed_points(rows: pd.DataFrame) -> set[SweepPoint]:
    """The sweep points that ``rows`` (profile_iterations) already hold."""
    def setting(value):
        return None if pd.isna(value) else float(value)

    return {SweepPoint(r.phase, int(r.chunk_tokens), int(r.prefix_tokens), int(r.batch_size), int(r.kv_tokens),
                       setting(r.requested_sm_clock_mhz), setting(r.requested_power_limit_w))
            for r in rows.itertuples()}


@dataclass
class ProfileResult:
    """A sweep's rows plus the points skipped (out of memory, KV does not fit) and why."""
    table: pa.Table
    skipped: list[str]


def profile_table(rows: list[dict] | pd.DataFrame, provenance: dict[str, str]) -> pa.Table:
    """``provenance``: how the rows were made (``wattlas.profile`` description, versions, command)."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows, columns=PROFILE_COLUMNS)
    meta = {SIMULATED_KEY.decode(): "false", **provenance}
    return pa.Table.from_pandas(frame.reindex(columns=PROFILE_COLUMNS), schema=PROFILE_ITERATIONS.arrow(PROFILE_COLUMNS, meta),
                                preserve_index=False)


def provenance_of(table: pa.Table) -> dict[str, str]:
    """A profile table's provenance metadata (what ``profile_table`` takes back)."""
    own = (SCHEMA_KEY, VERSION_KEY, SIMULATED_KEY)
    return {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()
            if k.startswith(b"wattlas.") and k not in own}


def run_profile(preset: str, sweep: str, device: str = "cuda", dtype: str = "bfloat16", tp: int = 1,
                clocks: list[float | None] | None = None, power_limits: list[float | None] | None = None,
                repeats: int = 5, warmup: int = 2, sampler=None, settings=None, layers: int | None = None,
                gpu_index: int | None = None, min_window_s: float = 0.0, done: set[SweepPoint] = frozenset(),
                on_point: Callable[[pa.Table], None] | None = None, provenance: dict[str, str] | None = None,
                collectives=None, log=lambda message: print(message, file=sys.stderr),
                timer: Callable[[], float] = time.perf_counter) -> ProfileResult:
    """Run the sweep; ``gpu_index`` is the NVML index of ``device`` (whose window rows are kept);
    ``collectives``: this process is one TP rank of several (see ``tp_ranks``); ``timer`` times the
    iterations (see ``measure_point``)."""
    model = LlamaShard(preset, tp=tp, device=device, dtype=dtype, layers=layers, collectives=collectives)
    run = _SweepRun(model, sweep, repeats, warmup,
                    sampler, gpu_index, min_window_s, on_point, provenance or {}, log, timer)
    for clock in clocks or [None]:
        for limit in power_limits or [None]:
            todo = [point for point in (SweepPoint(*p, clock, limit) for p in points(sweep)) if point not in done]
            if not todo:
                continue
            if (clock or limit) and settings is None:
                run.skipped.append(f"clock {clock} / power limit {limit}: no NVML settings access on this backend")
                continue
            try:
                with settings.applied(clock, limit) if (clock or limit) else nullcontext((None, None)) as read_back:
                    for point in todo:
                        run.measure(point, *read_back)
            except SettingUnavailable as exc:  # a setting NVML refused: skip it, keep the rest
                run.skipped.append(str(exc))
                log(f"skipped: {exc}")
    return ProfileResult(profile_table(run.rows, run.provenance), run.skipped)


class _SweepRun:
    """One sweep's model, sampler and the rows and skips it has gathered so far."""

    def __init__(self, model: LlamaShard, sweep: str, repeats: int, warmup: int, sampler, gpu_index, min_window_s,
                 on_point, provenance: dict, log, timer: Callable[[], float]) -> None:
        self.model, self.repeats, self.warmup, self.timer = model, repeats, warmup, timer
        self.sampler, self.gpu_index, self.min_window_s = sampler, gpu_index, min_window_s
        self.on_point, self.log = on_point, log
        self.on_gpu = model.device.type == "cuda"
        torch = model.torch
        self.gpu_name = (torch.cuda.get_device_name(model.device) if self.on_gpu
                         else f"CPU ({platform.processor() or platform.machine()})")
        self.provenance = {
            "wattlas.profile": f"PyTorch {model.label} shard tp={model.tp} {model.dtype_name} on {self.gpu_name}, "
                               f"sweep {sweep}, energy windows >= {min_window_s} s",
            "wattlas.torch_version": torch.__version__,
            "wattlas.cuda_version": str(torch.version.cuda) if self.on_gpu else "none",
            **provenance,
        }
        self.run_id = uuid.uuid4().hex[:12]
        self.out_of_memory = _out_of_memory_errors(torch)
        self.rows: list[dict] = []
        self.skipped: list[str] = []

    def measure(self, point: SweepPoint, read_clock: float | None, read_limit: float | None) -> None:
        try:
            measured = measure_point(self.model, point.c, point.p, point.b, point.k, self.warmup, self.repeats,
                                     self.min_window_s, _window_factory(self.sampler, point, self.gpu_index),
                                     timer=self.timer)
            reason = "KV does not fit in memory"
        except self.out_of_memory:
            measured, reason = None, "out of memory"
        if measured is None:
            self.skipped.append(f"{point.describe()}: {reason}")
            self.log(f"{point.describe()}: skipped, {reason}")
            return
        rows = [{
            "run_id": self.run_id, "backend": "gpu" if self.on_gpu else "cpu", "gpu_name": self.gpu_name,
            "model": self.model.label, "phase": point.phase, "chunk_tokens": point.c, "prefix_tokens": point.p,
            "batch_size": point.b, "kv_tokens": point.k, "tp": self.model.tp,
            "sm_clock_mhz": read_clock, "power_limit_w": read_limit,
            "requested_sm_clock_mhz": point.clock_mhz, "requested_power_limit_w": point.power_limit_w,
            "repeat": r, "iterations_per_repeat": m.iterations, "latency_s": m.latency_s,
            "gpu_index": self.gpu_index if self.sampler is not None else None,
            **_per_iteration_energy(m.energy, m.iterations),
        } for r, m in enumerate(measured)]
        self.rows.extend(rows)
        if self.on_point is not None:
            self.on_point(profile_table(rows, self.provenance))
        latencies = sorted(m.latency_s for m in measured)
        self.log(f"{point.describe()}: median {latencies[len(latencies) // 2] * 1000:.3f} ms "
                 f"({measured[0].iterations} iterations/repeat)")


def combine_ranks(per_rank: list[list[dict]]) -> list[dict]:
    """One instance's rows from its TP ranks' rows of the same repeats (in the same order): the
    iteration takes as long as the slowest rank, and the instance's energy and power are the sums
    over its GPUs (null when any rank has none; the method when all ranks agree, else "mixed")."""
    combined = []
    for rows in zip(*per_rank):
        first = dict(rows[0])
        first["latency_s"] = max(r["latency_s"] for r in rows)
        for column in ("energy_j", "mean_power_w", "peak_power_w"):
            values = [r.get(column) for r in rows]
            first[column] = None if any(v is None or pd.isna(v) for v in values) else float(sum(values))
        methods = {r.get("energy_method") for r in rows}
        first["energy_method"] = methods.pop() if len(methods) == 1 else "mixed"
        for column in ("gpu_index", "window_start_wall_s", "window_end_wall_s"):
            first[column] = None  # several GPUs: the telemetry join is per GPU
        combined.append(first)
    return combined


def _window_factory(sampler, point: SweepPoint, gpu_index: int | None):
    if sampler is None:
        return None
    attrs = dict(phase=point.phase, c=point.c, p=point.p, b=point.b, k=point.k,
                 clock=point.clock_mhz, limit=point.power_limit_w)
    return lambda: _Recorder(sampler, sampler.window("iteration", **attrs), gpu_index)


def _per_iteration_energy(window_row: dict, iterations: int) -> dict:
    energy = window_row.get("energy_j")
    return {
        "energy_j": energy / iterations if energy is not None else None,
        "energy_method": window_row.get("energy_method"),
        "mean_power_w": window_row.get("mean_power_w"),  # the window's average: unchanged by dividing
        "peak_power_w": window_row.get("peak_power_w"),
        "window_start_wall_s": window_row.get("start_wall_s"),
        "window_end_wall_s": window_row.get("end_wall_s"),
    }


def _out_of_memory_errors(torch) -> tuple[type[BaseException], ...]:
    error = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return (error,) if error is not None else ()


class _Recorder:
    """Enter/exit a sampler window; afterwards ``row`` is the profiled GPU's energy row of it.

    Just before the window closes, the sampler takes one telemetry sample of every GPU, so that
    each repeat has at least one sample inside its window for the telemetry join (observed clock,
    capping, temperature) however many of the background thread's ticks a busy host let through.
    It is taken after the iterations have synchronized, while the GPU still runs at their clocks.
    """

    def __init__(self, sampler, window_cm, gpu_index: int | None) -> None:
        self.sampler = sampler
        self.cm = window_cm
        self.gpu_index = gpu_index
        self.row: dict = {}

    def __enter__(self):
        self.window = self.cm.__enter__()
        return self

    def __exit__(self, *exc):
        try:
            if exc[0] is None:  # a failed repeat keeps no row: nothing to join its telemetry to
                self.sampler.tick()
        finally:
            self.cm.__exit__(*exc)
        rows = [r for r in (self.window.rows or []) if self.gpu_index is None or r["gpu_index"] == self.gpu_index]
        self.row = rows[0] if len(rows) == 1 else {}
