"""A simulated GPU: physically plausible power, clock and temperature traces, no hardware needed.

Everything it produces is labelled ``backend="sim"`` and the files it feeds are marked
``wattlas.simulated=true``.  The model, per GPU:

* power = idle + activity * dynamic_max * (f/f_max) * (V(f)/V(f_max))^2, with V linear in f
  (dynamic CMOS power ~ f V^2);
* the SM clock is the highest allowed (locked-clock range, boost maximum) whose power stays
  under the power limit; when the limit binds the SW-power-cap reason bit is set;
* temperature follows a first-order thermal model; the energy counter is the exact integral
  of the true power (sub-stepped at 5 ms), reported in whole mJ like NVML;
* instant power carries 1 % measurement noise; average power is a 1-s exponential average.

Activity comes from ``activity`` (a function of GPU and seconds since start), a value set with
:meth:`SimSource.set_activity`, or by default a seeded mix of prefill bursts, decode stretches
and idle gaps.
"""

from __future__ import annotations

import math
from functools import lru_cache
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .source import READING_COLUMNS, GpuInfo

REASON_GPU_IDLE = 0x1
REASON_SW_POWER_CAP = 0x4


@dataclass(frozen=True)
class SimGpuSpec:
    """The simulated GPU's constants: idle and dynamic power, power-limit range, clock range, thermal response."""
    name: str = "SIMULATED H100-SXM5-80GB"
    idle_w: float = 70.0
    dynamic_max_w: float = 650.0
    power_limit_w: float = 700.0
    min_power_limit_w: float = 200.0
    f_max_mhz: float = 1980.0
    f_min_mhz: float = 345.0
    f_idle_mhz: float = 345.0
    mem_clock_mhz: float = 2619.0
    mem_total_bytes: int = 80 * 1024**3
    ambient_c: float = 28.0
    thermal_resistance_c_per_w: float = 0.06
    thermal_tau_s: float = 30.0


def voltage_factor(f_mhz: float, spec: SimGpuSpec) -> float:
    """Relative core voltage at ``f_mhz`` (linear between the lowest and highest clock), for f*V^2 power."""
    return 0.65 + 0.35 * f_mhz / spec.f_max_mhz


def sim_power(activity: float, f_mhz: float, spec: SimGpuSpec) -> float:
    """True board power at ``activity`` (0..1) and SM clock ``f_mhz``."""
    scale = (f_mhz / spec.f_max_mhz) * (voltage_factor(f_mhz, spec) / voltage_factor(spec.f_max_mhz, spec)) ** 2
    return spec.idle_w + activity * spec.dynamic_max_w * scale


@lru_cache(maxsize=4096)  # activity is piecewise constant, so the same solve repeats
def sim_clock(activity: float, spec: SimGpuSpec, power_limit_w: float, locked: tuple[float, float] | None) -> tuple[float, int]:
    """SM clock and clocks-event reason bits for this activity, limit and locked range."""
    if activity < 0.02 and locked is None:
        return spec.f_idle_mhz, REASON_GPU_IDLE
    lo, hi = locked if locked is not None else (spec.f_min_mhz, spec.f_max_mhz)
    if sim_power(activity, hi, spec) <= power_limit_w:
        return hi, 0
    a, b = lo, hi  # power grows with f: bisect for the clock that meets the limit
    for _ in range(40):
        mid = (a + b) / 2
        a, b = (mid, b) if sim_power(activity, mid, spec) <= power_limit_w else (a, mid)
    return a, REASON_SW_POWER_CAP


def default_activity(seed: int) -> Callable[[float], float]:
    """Seeded piecewise-constant serving load: prefill bursts, decode stretches, idle gaps."""
    rng = np.random.default_rng(seed)
    kinds = {"prefill": (0.95, 0.2, 1.5), "decode": (0.5, 1.0, 5.0), "idle": (0.01, 0.5, 3.0)}
    edges, levels, t = [0.0], [], 0.0
    names = list(kinds)
    for _ in range(4096):
        level, lo, hi = kinds[names[rng.choice(3, p=[0.3, 0.5, 0.2])]]
        t += rng.uniform(lo, hi)
        edges.append(t)
        levels.append(level)
    edges_arr, levels_arr = np.array(edges), np.array(levels)
    period = edges_arr[-1]

    def activity(t_s: float) -> float:
        return float(levels_arr[np.searchsorted(edges_arr, t_s % period, side="right") - 1])

    return activity


class _SimGpu:
    def __init__(self, index: int, spec: SimGpuSpec, seed: int, t0: float) -> None:
        self.index = index
        self.spec = spec
        self.rng = np.random.default_rng(seed * 1000 + index)
        self.t = t0
        self.energy_mj = float(self.rng.integers(10**8, 10**9))  # counter since driver load
        self.temp_c = spec.ambient_c + 10
        self.avg_power_w = spec.idle_w
        self.power_limit_w = spec.power_limit_w
        self.locked: tuple[float, float] | None = None
        self.override: float | None = None
        self.last = (spec.idle_w, spec.f_idle_mhz, REASON_GPU_IDLE, 0.0)


class SimSource:
    """A simulated multi-GPU device with an exact energy counter; every row it produces says backend=sim."""
    backend = "sim"
    STEP_S = 0.005

    def __init__(self, gpus: int = 1, spec: SimGpuSpec | None = None, seed: int = 0,
                 activity: Callable[[int, float], float] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec or SimGpuSpec()
        self.n = gpus
        self.seed = seed
        self.clock = clock
        self.activity = activity
        self._defaults = [default_activity(seed * 7919 + i) for i in range(gpus)]
        self._lock = threading.Lock()
        self.t0 = clock()
        self.gpus = [_SimGpu(i, self.spec, seed, self.t0) for i in range(gpus)]

    @property
    def simulated(self) -> bool:
        """True: every figure from this source is labelled [SIMULATED]."""
        return True

    def open(self) -> list[GpuInfo]:
        """The simulated GPUs' identities."""
        return [GpuInfo(i, f"SIM-GPU-{self.seed:04d}-{i:02d}", self.spec.name) for i in range(self.n)]

    def close(self) -> None:
        """Nothing to release."""
        pass

    # control knobs, mirroring what NVML lets root change
    def set_activity(self, gpu: int, value: float | None) -> None:
        """Drive one GPU's load (0-1); None returns it to its default activity pattern."""
        with self._lock:
            self._advance(self.gpus[gpu], self.clock())
            self.gpus[gpu].override = value

    def set_power_limit(self, gpu: int, watts: float) -> float:
        """Set a GPU's power limit, clamped to its range; returns the limit applied (W)."""
        with self._lock:
            g = self.gpus[gpu]
            g.power_limit_w = float(min(max(watts, self.spec.min_power_limit_w), self.spec.power_limit_w))
            return g.power_limit_w

    def set_locked_clocks(self, gpu: int, lo: float | None, hi: float | None) -> None:
        """Lock a GPU's SM clock to [lo, hi] MHz; None releases it."""
        with self._lock:
            self.gpus[gpu].locked = None if lo is None else (float(lo), float(hi))

    def _activity(self, g: _SimGpu, t: float) -> float:
        if g.override is not None:
            return g.override
        if self.activity is not None:
            return self.activity(g.index, t - self.t0)
        return self._defaults[g.index](t - self.t0)

    def _advance(self, g: _SimGpu, now: float) -> None:
        spec = self.spec
        while g.t < now:
            dt = min(self.STEP_S, now - g.t)
            a = self._activity(g, g.t)
            f, reasons = sim_clock(a, spec, g.power_limit_w, g.locked)
            p = sim_power(a, f, spec)
            g.energy_mj += p * dt * 1000.0
            g.temp_c += (spec.ambient_c + spec.thermal_resistance_c_per_w * p - g.temp_c) * (1 - math.exp(-dt / spec.thermal_tau_s))
            g.avg_power_w += (p - g.avg_power_w) * (1 - math.exp(-dt / 1.0))
            g.last = (p, f, reasons, a)
            g.t += dt

    def read(self, gpu: int, slow: bool = False) -> dict:
        """Every reading column for one simulated GPU, advanced to now."""
        with self._lock:
            g = self.gpus[gpu]
            now = self.clock()
            self._advance(g, now)
            p, f, reasons, a = g.last
            spec = self.spec
            reading = dict.fromkeys(READING_COLUMNS)
            reading.update(
                power_scope="gpu",
                nvml_timestamp_us=int(time.time() * 1e6),
                power_instant_w=max(0.0, p * (1 + 0.01 * g.rng.standard_normal())),
                power_avg_w=g.avg_power_w,
                energy_j=math.floor(g.energy_mj) / 1000.0,
                power_limit_w=g.power_limit_w,
                enforced_power_limit_w=g.power_limit_w,
                sm_clock_mhz=round(f),
                mem_clock_mhz=spec.mem_clock_mhz,
                clocks_event_reasons=reasons,
                pstate=0 if a >= 0.02 else 8,
                gpu_util_pct=float(round(min(100.0, 100 * a / 0.5))) if a >= 0.02 else 0.0,
                mem_util_pct=float(round(100 * a * 0.6)),
                mem_used_bytes=int(spec.mem_total_bytes * (0.75 if a >= 0.02 else 0.72)),
                mem_total_bytes=spec.mem_total_bytes,
                temp_gpu_c=round(g.temp_c, 1),
                temp_mem_c=round(g.temp_c + 6, 1),
            )
            if slow:
                reading["pcie_tx_kbps"] = float(round(2e5 * a))
                reading["pcie_rx_kbps"] = float(round(3e5 * a))
            return reading

    def read_energy_power(self, gpu: int) -> tuple[float | None, float | None]:
        """(energy counter J, instant power W) of one simulated GPU now."""
        reading = self.read(gpu)
        return reading["energy_j"], reading["power_instant_w"]
