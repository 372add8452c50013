"""Production-like synthetic request traces: diurnal rate, bursty arrivals, lognormal lengths.

Arrivals are a gamma renewal process (inter-arrival coefficient of variation ``cv``: 1 is
Poisson, larger is burstier) run in *operational time* and mapped to wall time through the
inverse of the cumulative intensity

    rate(t) = mean_rate * (1 + amplitude * cos(2 pi (t - peak) / period)) * M(t),

where M(t) is an optional two-state Markov modulation (calm / burst, normalized to mean 1)
times an optional active / idle alternation (no arrivals while idle, heavy-tailed idle periods),

the time-rescaling construction of a modulated renewal process: the diurnal shape and the
bursts are exact and the renewal burstiness is preserved within them.  Token lengths are lognormal (median and the
log-space sigma), rounded and clipped.  Everything derives from one ``seed``.

The presets' parameters are set from the published summary statistics of the Azure LLM
inference traces 2023 (conv: 5.5 req/s, CV 1.1; code: 2.6 req/s in bursts); ``longctx`` is
a Mnemosyne-style long-context mix (median 256 K context, tail to 10 M).  The week-long presets of
the Azure 2024 traces (``azure2024-conv-week``, ``azure2024-code-week``) build on this generator in
:mod:`toolkit.traces.week`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
import pyarrow as pa

from ..schemas import REQUEST_TRACE


@dataclass(frozen=True)
class SynthSpec:
    """Parameters of a synthetic trace (see the module docstring): length and diurnal rate
    (seconds, requests/s), lognormal token lengths (median, log-space sigma, clip bounds), the
    share of high-priority requests, burst and idle modulation, and the seed."""

    duration_s: float = 3600.0
    mean_rate: float = 5.5
    cv: float = 1.1
    diurnal_amplitude: float = 0.3
    diurnal_period_s: float = 86400.0
    peak_time_s: float = 14 * 3600.0  # time of day of the peak rate
    start_time_of_day_s: float = 10 * 3600.0
    input_median: float = 1020.0
    input_sigma: float = 0.77
    input_min: int = 1
    input_max: int = 16384
    output_median: float = 129.0
    output_sigma: float = 0.93
    output_min: int = 1
    output_max: int = 2048
    high_priority_fraction: float = 0.5
    burst_fraction: float = 0.0  # share of time in the burst state (0: no modulation)
    burst_multiplier: float = 1.0  # rate in a burst relative to calm
    burst_mean_s: float = 10.0  # mean length of a burst
    idle_fraction: float = 0.0  # share of time with no arrivals at all (0: never idle)
    idle_median_s: float = 30.0  # idle periods are lognormal: median ...
    idle_sigma: float = 1.0  # ... and log-space sigma (heavy tail: minutes-long gaps)
    seed: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first parameter out of range."""
        checks = [
            (self.duration_s > 0, "duration must be > 0"),
            (self.mean_rate > 0, "rate must be > 0"),
            (self.cv > 0, "cv must be > 0"),
            (0 <= self.diurnal_amplitude < 1, "diurnal amplitude must be in [0, 1)"),
            (self.diurnal_period_s > 0, "diurnal period must be > 0"),
            (0 < self.input_min <= self.input_max, "need 0 < input_min <= input_max"),
            (0 <= self.output_min <= self.output_max, "need 0 <= output_min <= output_max"),
            (0 <= self.high_priority_fraction <= 1, "high-priority fraction must be in [0, 1]"),
            (0 <= self.burst_fraction < 1, "burst fraction must be in [0, 1)"),
            (self.burst_multiplier >= 1, "burst multiplier must be >= 1"),
            (self.burst_mean_s > 0, "burst mean length must be > 0"),
            (0 <= self.idle_fraction < 1, "idle fraction must be in [0, 1)"),
            (self.idle_median_s > 0 and self.idle_sigma >= 0, "idle median must be > 0 and sigma >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


PRESETS: dict[str, SynthSpec] = {
    "conv": SynthSpec(),
    # bursty and mostly idle, as the Azure 2023 code trace (1 h from 10:00: 2.57 req/s, median gap
    # 0.064 s, CV 13, 69 % of the time in gaps over 10 s, up to 217 s); this preset's hour gives
    # 2.64 req/s, 0.065 s, CV 11.9, 65 %, up to 166 s.  mean_rate is the daily mean.
    "code": SynthSpec(mean_rate=2.0, cv=1.2, burst_fraction=0.1, burst_multiplier=3, burst_mean_s=5,
                      idle_fraction=0.7, idle_median_s=25.0, idle_sigma=1.2,
                      input_median=1469, input_sigma=0.98, input_max=8192,
                      output_median=13, output_sigma=1.12, output_max=2048),
    "longctx": SynthSpec(mean_rate=0.02, cv=1.0, diurnal_amplitude=0.0, input_median=262_144, input_sigma=1.0,
                         input_min=32_768, input_max=10_000_000, output_median=256, output_sigma=0.7, output_max=4096),
}


def cumulative_intensity(t: np.ndarray, spec: SynthSpec) -> np.ndarray:
    """Expected arrivals in [0, t] for the diurnal rate."""
    w = 2 * np.pi / spec.diurnal_period_s
    phase0 = spec.start_time_of_day_s - spec.peak_time_s
    return spec.mean_rate * (t + spec.diurnal_amplitude / w * (np.sin(w * (t + phase0)) - np.sin(w * phase0)))


def modulation(spec: SynthSpec) -> tuple[np.ndarray, np.ndarray]:
    """Two-state Markov modulation of the rate: (switch times, multiplier from each switch on).

    Calm and burst periods alternate with exponential lengths (means ``burst_mean_s`` and
    ``burst_mean_s * (1 - f) / f``); the multipliers are normalized so the long-run mean rate is
    unchanged.  Drawn from its own stream of the seed, so traces without bursts are unaffected.
    """
    f = spec.burst_fraction
    if f <= 0 or spec.burst_multiplier == 1:
        return np.array([0.0]), np.array([1.0])
    rng = np.random.default_rng([spec.seed, 1])
    calm = 1.0 / ((1 - f) + f * spec.burst_multiplier)
    means = (spec.burst_mean_s * (1 - f) / f, spec.burst_mean_s)
    return _alternate(spec.duration_s, rng.random() <= f, lambda burst: calm * (spec.burst_multiplier if burst else 1.0),
                      lambda burst: rng.exponential(means[burst]))


def _alternate(duration_s: float, state: bool, level, length) -> tuple[np.ndarray, np.ndarray]:
    """(switch times, levels) of a process flipping between two states, from ``state`` at t = 0;
    ``level(state)`` is the multiplier while in it, ``length(state)`` draws how long it lasts."""
    times, levels, t = [], [], 0.0
    while t < duration_s:
        times.append(t)
        levels.append(level(state))
        t += length(state)
        state = not state
    return np.array(times), np.array(levels)


def idle_modulation(spec: SynthSpec) -> tuple[np.ndarray, np.ndarray]:
    """Active / idle alternation: (switch times, multiplier from each switch on).

    Idle periods are lognormal (``idle_median_s``, ``idle_sigma``), active ones exponential with
    the mean that makes ``idle_fraction`` of the time idle; active periods run at 1 / (1 - f) so
    the long-run mean rate is unchanged.  Idle is a tiny positive level, not 0, so the cumulative
    intensity stays strictly increasing (it is inverted).  Its own stream of the seed.
    """
    f = spec.idle_fraction
    if f <= 0:
        return np.array([0.0]), np.array([1.0])
    rng = np.random.default_rng([spec.seed, 2])
    idle_mean = spec.idle_median_s * np.exp(spec.idle_sigma**2 / 2)
    active_mean = idle_mean * (1 - f) / f
    return _alternate(spec.duration_s, rng.random() < f, lambda idle: 1e-9 if idle else 1.0 / (1 - f),
                      lambda idle: rng.lognormal(np.log(spec.idle_median_s), spec.idle_sigma) if idle
                      else rng.exponential(active_mean))


def _product(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Two piecewise-constant multipliers (switch times from 0, levels) multiplied."""
    times = np.union1d(a[0], b[0])
    at = lambda m: m[1][np.searchsorted(m[0], times, side="right") - 1]
    return times, at(a) * at(b)


def modulated_intensity(grid: np.ndarray, spec: SynthSpec, switches: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Cumulative intensity on ``grid`` (which must contain every switch time)."""
    base = cumulative_intensity(grid, spec)
    level = levels[np.searchsorted(switches, grid[:-1], side="right") - 1]
    return np.concatenate([[0.0], np.cumsum(np.diff(base) * level)])


def arrival_times(spec: SynthSpec, rng: np.random.Generator) -> np.ndarray:
    """Arrival times of ``spec``'s requests, seconds since the trace start, increasing and at
    most ``spec.duration_s``; the gamma gaps are drawn from ``rng``."""
    switches, levels = _product(modulation(spec), idle_modulation(spec))
    # A grid fine enough for the diurnal shape that contains every burst switch (constant between).
    grid = np.union1d(np.linspace(0.0, spec.duration_s, max(2, int(spec.duration_s / 10) + 2)),
                      switches[switches < spec.duration_s])
    intensity = modulated_intensity(grid, spec, switches, levels)
    total = float(intensity[-1])
    shape = 1.0 / spec.cv**2
    # Unit-mean gamma gaps in operational time; draw in blocks until the horizon is passed.
    blocks, reached = [], 0.0
    block = int(total * 1.05 + 10 * np.sqrt(total) + 16)
    while reached <= total:
        gaps = rng.gamma(shape, 1.0 / shape, size=block)
        cum = reached + np.cumsum(gaps)
        blocks.append(cum)
        reached = float(cum[-1])
    operational = np.concatenate(blocks)
    operational = operational[operational <= total]
    # Invert the (strictly increasing) cumulative intensity.
    return np.interp(operational, intensity, grid)


def _lengths(rng, n, median, sigma, lo, hi) -> np.ndarray:
    return np.clip(np.rint(rng.lognormal(np.log(median), sigma, size=n)), lo, hi).astype("int64")


def synthesize(spec: SynthSpec, label: str = "custom") -> pa.Table:
    """A canonical request trace drawn from ``spec``."""
    spec.validate()
    rng = np.random.default_rng(spec.seed)
    arrivals = arrival_times(spec, rng)
    n = arrivals.size
    frame = pd.DataFrame(
        {
            "request_id": np.arange(n, dtype="int64"),
            "arrival_s": arrivals,
            "input_tokens": _lengths(rng, n, spec.input_median, spec.input_sigma, spec.input_min, spec.input_max),
            "output_tokens": _lengths(rng, n, spec.output_median, spec.output_sigma, spec.output_min, spec.output_max),
            "priority": np.where(rng.random(n) < spec.high_priority_fraction, "high", "low"),
        }
    )
    meta = {
        "wattlas.trace_format": "wattlas",
        "wattlas.synthetic": "true",
        "wattlas.synth_preset": label,
        "wattlas.synth_spec": pd.Series(asdict(spec)).to_json(),
        "wattlas.source": f"wattlas trace synth --preset {label} --seed {spec.seed}",
    }
    return pa.Table.from_pandas(frame, schema=REQUEST_TRACE.arrow(list(frame.columns), meta), preserve_index=False)


def spec_for(preset: str, **overrides: float | int | None) -> SynthSpec:
    """The spec of ``preset`` with the given :class:`SynthSpec` fields replaced (None: keep the
    preset's value).  Raises ``ValueError`` for an unknown preset."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
