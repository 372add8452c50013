"""A simulated GPU: physically plausible power, clock and temperature traces, no hardware needed.

Everything it produces is labelled ``backend="sim"`` and the files it feeds are marked
``wattlas.simulated=true``.  The model, per GPU:

* power follows one law, :func:`sim_power_of`, shared with the simulated profiler
  (``collectors.profiling.sim_profile``): idle + a compute part (SM/tensor-core activity, the
  compute utilization, scaling as f*V(f)^2 with V linear in f) + a memory part (HBM traffic, the
  memory-bandwidth utilization, only weakly clock dependent).  Its constants are fitted to
  ML.ENERGY v3's measured H100 points (see :class:`SimGpuSpec`);
* the SM clock is the highest allowed (locked-clock range, boost maximum) whose power stays
  under the power limit; when the limit binds the SW-power-cap reason bit is set, and where even
  the lowest clock draws too much the work slows further (:func:`slowdown`);
* temperature follows a first-order thermal model; the energy counter is the exact integral
  of the true power (sub-stepped at 5 ms), reported in whole mJ like NVML;
* instant power carries 1 % measurement noise; average power is a 1-s exponential average.

Load comes from ``activity`` (a function of GPU and seconds since start), a value set with
:meth:`SimSource.set_activity`, or by default a seeded mix of prefill bursts, decode stretches
and idle gaps, each the utilizations of a simulated llama3-8b iteration (:func:`serving_loads`).
A load is a ``(compute_util, memory_util)`` pair, a phase name (``"prefill"``, ``"decode"``,
``"idle"``) or a bare number ``a`` (both units at ``a``).
"""

from __future__ import annotations

import math
from functools import lru_cache
import threading
import time
from dataclasses import dataclass
from typing import Callable, Union

import numpy as np

from .source import READING_COLUMNS, GpuInfo

REASON_GPU_IDLE = 0x1
REASON_SW_POWER_CAP = 0x4
IDLE_UTIL = 0.02  # below this on both units the GPU drops to its idle clock

Load = tuple[float, float]  # (compute utilization, memory-bandwidth utilization), each 0..1
LoadLike = Union[float, str, tuple[float, float], None]


@dataclass(frozen=True)
class SimGpuSpec:
    """The simulated GPU's constants: power law, power-limit range, clock range, thermal response.

    ``idle_w``, ``compute_dynamic_w`` and ``memory_dynamic_w`` are a least-squares fit
    (:func:`collectors.profiling.sim_profile.fit_power_constants`; ``python
    benchmarks/bench_sim_calibration.py --refit`` reruns it and checks these values) of the
    simulated llama3-8b decode iteration on one GPU at 1980 MHz to ML.ENERGY v3's measured H100
    points for Llama-3.1-8B-Instruct, TP1, task lm-arena-chat (ml-energy/leaderboard @ 0cd52dab,
    public/data/tasks/lm-arena-chat.json; data Apache-2.0): avg power 486 / 513 / 560 / 610 / 644 /
    669 / 688 / 691 / 687 / 688 / 685 W at max_num_seqs 8 ... 768 (avg batch 8.0 ... 691), plus one
    measured idle point, 122.7 W (``sim_profile.H100_IDLE_W``: idle and the memory part are not
    separable from decode points alone).  Context: the file has no input length; the fit assumes
    a mean prompt of 256 tokens (``sim_profile.MLENERGY_PROMPT_TOKENS``), so a decode reads
    256 + avg_output_len / 2 KV tokens per sequence.  Result: 122.7 / 559.4 / 392.6 W, MAPE 1.6 %
    over the 11 points (the five at 192+ sequences sit at the 700 W limit, throttled).
    ``memory_clock_share`` (the part of the memory power on the SM clock domain: L2, crossbar,
    load/store path) is an assumption, not fitted: the ML.ENERGY runs are all at the default clock.
    """
    name: str = "SIMULATED H100-SXM5-80GB"
    idle_w: float = 122.7
    compute_dynamic_w: float = 559.4
    memory_dynamic_w: float = 392.6
    memory_clock_share: float = 0.3
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


def voltage_factor(f_mhz, spec: SimGpuSpec):
    """Relative core voltage at ``f_mhz`` (linear between the lowest and highest clock), for f*V^2 power."""
    return 0.65 + 0.35 * f_mhz / spec.f_max_mhz


def clock_scale(f_mhz, spec: SimGpuSpec):
    """Dynamic CMOS power at ``f_mhz`` relative to the maximum clock: (f/f_max) * (V(f)/V(f_max))^2."""
    return (f_mhz / spec.f_max_mhz) * (voltage_factor(f_mhz, spec) / voltage_factor(spec.f_max_mhz, spec)) ** 2


def sim_power_of(compute_util, memory_util, f_mhz, spec: SimGpuSpec):
    """True board power (W) at SM clock ``f_mhz`` of a GPU whose compute units are busy
    ``compute_util`` and whose HBM bandwidth is used ``memory_util`` (each clipped to 0..1) -
    the one power law of the simulated device and the simulated profile:

        idle + compute_dynamic * u_c * s(f) + memory_dynamic * u_m * ((1 - m) + m * s(f))

    with s(f) = :func:`clock_scale` and m = ``memory_clock_share``.  Not limited: at the power
    limit the clock comes down (:func:`sim_clock`, ``sim_profile.operating_point``).  Scalars or
    numpy arrays."""
    s = clock_scale(f_mhz, spec)
    m = spec.memory_clock_share
    uc, um = np.clip(compute_util, 0.0, 1.0), np.clip(memory_util, 0.0, 1.0)
    return spec.idle_w + spec.compute_dynamic_w * uc * s + spec.memory_dynamic_w * um * ((1.0 - m) + m * s)


def sim_power(activity: float, f_mhz: float, spec: SimGpuSpec) -> float:
    """True board power at a bare ``activity`` (0..1, both units at that utilization) and SM clock ``f_mhz``."""
    return float(sim_power_of(activity, activity, f_mhz, spec))


def as_load(value: LoadLike) -> Load | None:
    """A :data:`Load` pair from what :meth:`SimSource.set_activity` accepts (None stays None):
    a pair, a phase name of :func:`serving_loads` or a number (both units at it)."""
    if value is None:
        return None
    if isinstance(value, str):
        loads = serving_loads()
        if value not in loads:
            raise ValueError(f"unknown simulated phase {value!r} (known: {', '.join(loads)})")
        return loads[value]
    if isinstance(value, (tuple, list)):
        compute, memory = value
        return (min(max(float(compute), 0.0), 1.0), min(max(float(memory), 0.0), 1.0))
    a = min(max(float(value), 0.0), 1.0)
    return (a, a)


@lru_cache(maxsize=4096)  # load is piecewise constant, so the same solve repeats
def sim_clock(load: Load, spec: SimGpuSpec, power_limit_w: float, locked: tuple[float, float] | None) -> tuple[float, int]:
    """SM clock and clocks-event reason bits for this load, limit and locked range."""
    uc, um = load
    if max(uc, um) < IDLE_UTIL and locked is None:
        return spec.f_idle_mhz, REASON_GPU_IDLE
    lo, hi = locked if locked is not None else (spec.f_min_mhz, spec.f_max_mhz)
    if sim_power_of(uc, um, hi, spec) <= power_limit_w:
        return hi, 0
    a, b = lo, hi  # power grows with f: bisect for the clock that meets the limit
    for _ in range(40):
        mid = (a + b) / 2
        a, b = (mid, b) if sim_power_of(uc, um, mid, spec) <= power_limit_w else (a, mid)
    return a, REASON_SW_POWER_CAP


def slowdown(compute_util, memory_util, f_mhz, spec: SimGpuSpec, power_limit_w):
    """How much slower than asked the GPU must run at clock ``f_mhz`` to stay within
    ``power_limit_w`` (>= 1; 1 where the law is within it): where even the lowest clock draws too
    much (HBM traffic barely slows with the SM clock), the GPU stretches the work until its
    dynamic power fits - both utilizations divide by this factor.  Scalars or numpy arrays."""
    dynamic = sim_power_of(compute_util, memory_util, f_mhz, spec) - spec.idle_w
    room = np.maximum(np.asarray(power_limit_w, dtype="float64") - spec.idle_w, 1e-9)
    return np.maximum(1.0, dynamic / room)


@lru_cache(maxsize=4096)
def _operating_point(load: Load, spec: SimGpuSpec, power_limit_w: float, locked: tuple[float, float] | None) -> tuple[float, int, float]:
    f, reasons = sim_clock(load, spec, power_limit_w, locked)
    stretch = float(slowdown(load[0], load[1], f, spec, power_limit_w)) if reasons & REASON_SW_POWER_CAP else 1.0
    return f, reasons, float(sim_power_of(load[0] / stretch, load[1] / stretch, f, spec))


@lru_cache(maxsize=8)
def serving_loads(spec: SimGpuSpec | None = None) -> dict[str, Load]:
    """Loads of the default activity mix, from the simulated profiler's roofline of llama3-8b on
    one GPU at the maximum clock: ``prefill`` a 2048-token chunk, ``decode`` a batch of 64
    sequences at 1024 KV tokens (memory bound), ``decode_light`` 8 sequences, ``decode_heavy``
    256 sequences, and ``idle``."""
    from ..profiling.sim_profile import PRESETS, SimHardware, iteration_cost  # numpy only; no cycle at import

    hw = SimHardware(gpu=spec or SimGpuSpec())
    shape, f = PRESETS["llama3-8b"], hw.gpu.f_max_mhz
    points = {"prefill": (2048, 0, 0, 0), "decode_light": (0, 0, 8, 1024), "decode": (0, 0, 64, 1024),
              "decode_heavy": (0, 0, 256, 1024)}
    loads = {}
    for name, (c, p, b, k) in points.items():
        _, uc, um = iteration_cost(shape, hw, c, p, b, k, 1, f)
        loads[name] = (round(float(uc), 4), round(float(um), 4))
    loads["idle"] = (0.0, 0.0)
    return loads


def default_activity(seed: int, spec: SimGpuSpec | None = None) -> Callable[[float], Load]:
    """Seeded piecewise-constant serving load: prefill bursts, decode stretches (a batch of 8, 64
    or 256 sequences: memory-bound iterations) and idle gaps, as :data:`Load` pairs."""
    rng = np.random.default_rng(seed)
    loads = serving_loads(spec)
    # (share, kinds to draw from, shortest and longest stretch in s)
    kinds = [(0.3, ["prefill"], 0.2, 1.5), (0.5, ["decode_light", "decode", "decode_heavy"], 1.0, 5.0), (0.2, ["idle"], 0.5, 3.0)]
    edges, levels, t = [0.0], [], 0.0
    for _ in range(4096):
        _, names, lo, hi = kinds[rng.choice(3, p=[k[0] for k in kinds])]
        name = names[rng.integers(len(names))]
        t += rng.uniform(lo, hi)
        edges.append(t)
        levels.append(loads[name])
    edges_arr = np.array(edges)
    period = edges_arr[-1]

    def activity(t_s: float) -> Load:
        return levels[int(np.searchsorted(edges_arr, t_s % period, side="right")) - 1]

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
        self.override: Load | None = None
        self.last = (spec.idle_w, spec.f_idle_mhz, REASON_GPU_IDLE, (0.0, 0.0))


class SimSource:
    """A simulated multi-GPU device with an exact energy counter; every row it produces says backend=sim."""
    backend = "sim"
    STEP_S = 0.005

    def __init__(self, gpus: int = 1, spec: SimGpuSpec | None = None, seed: int = 0,
                 activity: Callable[[int, float], LoadLike] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec or SimGpuSpec()
        self.n = gpus
        self.seed = seed
        self.clock = clock
        self.activity = activity
        self._defaults = [default_activity(seed * 7919 + i, self.spec) for i in range(gpus)]
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
    def set_activity(self, gpu: int, value: LoadLike) -> None:
        """Drive one GPU's load: a (compute, memory) utilization pair, a phase name of
        :func:`serving_loads` or a number 0-1 (both units); None returns it to its default pattern."""
        load = as_load(value)
        with self._lock:
            self._advance(self.gpus[gpu], self.clock())
            self.gpus[gpu].override = load

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

    def _activity(self, g: _SimGpu, t: float) -> Load:
        if g.override is not None:
            return g.override
        if self.activity is not None:
            return as_load(self.activity(g.index, t - self.t0)) or (0.0, 0.0)
        return self._defaults[g.index](t - self.t0)

    def _advance(self, g: _SimGpu, now: float) -> None:
        spec = self.spec
        while g.t < now:
            dt = min(self.STEP_S, now - g.t)
            a = self._activity(g, g.t)
            f, reasons, p = _operating_point(a, spec, g.power_limit_w, g.locked)
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
            p, f, reasons, (uc, um) = g.last
            busy = max(uc, um)
            active = busy >= IDLE_UTIL
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
                pstate=0 if active else 8,
                gpu_util_pct=float(round(min(100.0, 100 * busy / 0.5))) if active else 0.0,
                mem_util_pct=float(round(100 * um)),
                mem_used_bytes=int(spec.mem_total_bytes * (0.75 if active else 0.72)),
                mem_total_bytes=spec.mem_total_bytes,
                temp_gpu_c=round(g.temp_c, 1),
                temp_mem_c=round(g.temp_c + 6, 1),
            )
            if slow:
                reading["pcie_tx_kbps"] = float(round(2e5 * busy))
                reading["pcie_rx_kbps"] = float(round(3e5 * busy))
            return reading

    def read_energy_power(self, gpu: int) -> tuple[float | None, float | None]:
        """(energy counter J, instant power W) of one simulated GPU now."""
        reading = self.read(gpu)
        return reading["energy_j"], reading["power_instant_w"]
