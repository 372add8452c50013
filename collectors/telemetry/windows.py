"""Energy of named time windows (phases), from counter deltas or integrated power.

The tracker sees a stream of observations per GPU (time, energy counter, power) - the
sampler's ticks plus the synchronous reads taken exactly at in-process window edges - and keeps
a running trapezoid integral of power.  A window edge falling between two observations is
resolved by linear interpolation, so windows announced after the fact (marker files from other
processes) cost no history: each GPU keeps only its previous observation.

Per GPU and window: ``energy_method`` is ``counter`` when the NVML energy counter was read at both
edges within one counter epoch (the sampler starts a new epoch when the counter goes backwards or
the driver is reloaded), else ``integrated_power`` when power was observed without a break, else
energy is null.  Power is never integrated across a break - a driver outage, a failed read, or
observations further apart than ``max_bridge_s`` - because what was drawn then is unknown: a
window spanning one has null energy unless the counter spans it.  The counter itself only moves every 20-100 ms, so windows shorter
than ``COUNTER_STEP_S`` use integrated power (read at their edges) when power is observed, and
windows not much longer are still quantized: measure short work by repeating it inside one window
(the profiler does).
"""

from __future__ import annotations

import bisect
import itertools
import json
from dataclasses import dataclass, field


COUNTER_STEP_S = 0.1  # the slowest update period of NVML's energy counter seen on Volta to Hopper


@dataclass
class _Edge:
    counter: float | None
    integral: float | None
    epoch: int = 0  # counter epoch the counter value belongs to
    segment: int = 0  # unbroken stretch of power observations the integral belongs to


class _GpuHistory:
    """Recent observations of one GPU: (t, counter, power, running integral), time-ordered.

    Kept for ``horizon_s`` so that edges announced late (marker files are read once per tick)
    are still interpolated between the observations that surround them.
    """

    def __init__(self, horizon_s: float, max_bridge_s: float | None = None) -> None:
        self.horizon_s = horizon_s
        self.max_bridge_s = max_bridge_s
        self.t: list[float] = []
        # counter, power, integral, counter epoch, integral segment
        self.obs: list[tuple[float | None, float | None, float | None, int, int]] = []
        self.integral = 0.0
        self.has_power = False
        self.lost = False
        self.segment = 0
        self.broken = False  # the next observation starts a new segment

    @property
    def last_t(self) -> float | None:
        return self.t[-1] if self.t else None

    def add(self, t: float, counter: float | None, power: float | None, epoch: int = 0) -> None:
        if self.t:
            too_far = self.max_bridge_s is not None and t - self.t[-1] > self.max_bridge_s
            if self.broken or too_far:
                self.segment += 1
            else:
                prev_power = self.obs[-1][1]
                if power is not None and prev_power is not None:
                    self.integral += (t - self.t[-1]) * (power + prev_power) / 2.0
        self.broken = False
        self.has_power = self.has_power or power is not None
        self.t.append(t)
        self.obs.append((counter, power, self.integral if self.has_power else None, epoch, self.segment))
        cut = bisect.bisect_left(self.t, t - self.horizon_s)
        if cut > len(self.t) // 2:  # trim in bulk: amortized O(1)
            del self.t[:cut], self.obs[:cut]

    def edge_at(self, tb: float) -> _Edge:
        """Counter and integral at time ``tb`` (<= the last observation), interpolated."""
        i = bisect.bisect_left(self.t, tb)
        if i == 0 or (i < len(self.t) and self.t[i] == tb):
            counter, _, integral, epoch, segment = self.obs[i]
            return _Edge(counter, integral, epoch, segment)
        t0, t1 = self.t[i - 1], self.t[i]
        (c0, p0, i0, e0, s0), (c1, p1, _, e1, s1) = self.obs[i - 1], self.obs[i]
        frac = (tb - t0) / (t1 - t0)
        # Nothing is interpolated across an epoch change or a break: the edge is unknown there.
        counter = c0 + frac * (c1 - c0) if c0 is not None and c1 is not None and e0 == e1 else None
        if p0 is not None and p1 is not None and i0 is not None and s0 == s1:
            pb = p0 + frac * (p1 - p0)
            return _Edge(counter, i0 + (tb - t0) * (p0 + pb) / 2.0, e1, s1)
        return _Edge(counter, None, e1, s1)

    def power_between(self, start: float, end: float) -> list[float] | None:
        """Observed powers in [start, end]; None when the history no longer reaches ``start``."""
        if not self.t or self.t[0] > start:
            return None
        lo, hi = bisect.bisect_left(self.t, start), bisect.bisect_right(self.t, end)
        return [o[1] for o in self.obs[lo:hi] if o[1] is not None]


@dataclass
class Window:
    """One named time window being measured: its edges per GPU and, once closed and resolved, its rows."""
    name: str
    start: float
    attrs: dict
    id: int
    end: float | None = None
    start_edges: dict[int, _Edge] = field(default_factory=dict)
    end_edges: dict[int, _Edge] = field(default_factory=dict)
    peak: dict[int, float] = field(default_factory=dict)
    samples: dict[int, int] = field(default_factory=dict)
    rows: list[dict] | None = None  # set once every GPU's edges are resolved

    @property
    def done(self) -> bool:
        """Whether every GPU's edges are resolved and the rows are filled."""
        return self.rows is not None


class WindowTracker:
    """Energy of named windows on every GPU, from counter deltas or integrated power, resolved as observations arrive."""
    def __init__(self, gpus: list[int], run_id: str, backend: str, wall_offset: float = 0.0,
                 history_s: float = 120.0, max_bridge_s: float | None = None) -> None:
        self.state = {g: _GpuHistory(history_s, max_bridge_s) for g in gpus}
        self.run_id = run_id
        self.backend = backend
        self.wall_offset = wall_offset  # wall = monotonic + offset
        self.open_windows: list[Window] = []
        self.completed: list[dict] = []
        self._ids = itertools.count()

    # ------------------------------------------------------------------ windows
    def open(self, name: str, t: float, attrs: dict | None = None) -> Window:
        """Start a window at monotonic time ``t``."""
        window = Window(name, t, dict(attrs or {}), next(self._ids))
        self.open_windows.append(window)
        for gpu, st in self.state.items():
            if st.lost:
                window.start_edges[gpu] = _Edge(None, None)
        return window

    def close(self, window: Window, t: float) -> None:
        """End a window at ``t``; its rows are filled once every GPU has an observation past ``t``."""
        window.end = t
        for gpu, st in self.state.items():
            if st.lost:
                window.end_edges.setdefault(gpu, _Edge(None, None))
        self._finish_ready()

    # ------------------------------------------------------------------ observations
    def observe(self, gpu: int, t: float, counter: float | None, power: float | None, epoch: int = 0) -> None:
        """One observation of a GPU (time, counter J, power W, counter epoch); resolves pending edges."""
        st = self.state[gpu]
        if st.lost or (st.last_t is not None and t < st.last_t):
            return
        st.add(t, counter, power, epoch)
        for window in self.open_windows:
            if gpu not in window.start_edges and window.start <= t:
                window.start_edges[gpu] = st.edge_at(window.start)
            if window.end is not None and gpu not in window.end_edges and window.end <= t:
                window.end_edges[gpu] = st.edge_at(window.end)
            inside = window.start <= t and (window.end is None or t <= window.end)
            if inside and power is not None:  # running figures, for windows longer than the history
                window.peak[gpu] = max(window.peak.get(gpu, power), power)
                window.samples[gpu] = window.samples.get(gpu, 0) + 1
        self._finish_ready()

    def gap(self, gpu: int) -> None:
        """The GPU went unobserved for a while (driver outage, failed reads): never integrate across."""
        self.state[gpu].broken = True

    def gpu_lost(self, gpu: int) -> None:
        """The GPU's stream ended: its pending edges resolve to unknown energy."""
        self.state[gpu].lost = True
        for window in self.open_windows:
            window.start_edges.setdefault(gpu, _Edge(None, None))
            if window.end is not None:
                window.end_edges.setdefault(gpu, _Edge(None, None))
        self._finish_ready()

    def flush_open(self, t: float) -> None:
        """Close every window still open (the sampler is stopping) at time ``t``."""
        for window in list(self.open_windows):
            if window.end is None:
                window.attrs.setdefault("closed_by", "sampler_stop")
                window.end = t
        for window in self.open_windows:
            for gpu, st in self.state.items():
                if gpu not in window.end_edges:
                    window.end_edges[gpu] = st.edge_at(min(t, st.last_t)) if st.t else _Edge(None, None)
                window.start_edges.setdefault(gpu, _Edge(None, None))
        self._finish_ready()

    # ------------------------------------------------------------------ results
    def _finish_ready(self) -> None:
        still_open = []
        gpus = list(self.state)
        for window in self.open_windows:
            if window.end is not None and all(g in window.start_edges and g in window.end_edges for g in gpus):
                window.rows = [self._row(window, g) for g in gpus]
                self.completed.extend(window.rows)
            else:
                still_open.append(window)
        self.open_windows = still_open

    def _row(self, window: Window, gpu: int) -> dict:
        a, b = window.start_edges[gpu], window.end_edges[gpu]
        powers = self.state[gpu].power_between(window.start, window.end)
        if powers is not None:  # exact even for windows announced late
            window.peak[gpu] = max(powers) if powers else None
            window.samples[gpu] = len(powers)
        duration = window.end - window.start
        energy, method = None, None
        counter_ok = a.counter is not None and b.counter is not None and a.epoch == b.epoch and b.counter >= a.counter
        integral_ok = a.integral is not None and b.integral is not None and a.segment == b.segment
        # The counter moves in steps of up to COUNTER_STEP_S: a shorter window reads zero or a whole
        # step (kilowatts over a millisecond), so there power read at its edges is the better figure;
        # so it is for a counter that did not move at all while power was drawn.
        counter_too_coarse = integral_ok and (duration < COUNTER_STEP_S or (b.counter == a.counter and b.integral > a.integral))
        if counter_ok and not counter_too_coarse:
            energy, method = b.counter - a.counter, "counter"
        elif integral_ok:
            energy, method = b.integral - a.integral, "integrated_power"
        return {
            "run_id": self.run_id,
            "window": window.name,
            "gpu_index": gpu,
            "backend": self.backend,
            "start_wall_s": window.start + self.wall_offset,
            "end_wall_s": window.end + self.wall_offset,
            "duration_s": duration,
            "energy_j": energy,
            "energy_method": method,
            "mean_power_w": energy / duration if energy is not None and duration > 0 else None,
            "peak_power_w": window.peak.get(gpu),  # None when no power was observed inside
            "n_samples": window.samples.get(gpu, 0),
            "attrs_json": json.dumps(window.attrs, sort_keys=True, default=str) if window.attrs else None,
        }

    def pop_completed(self) -> list[dict]:
        """Rows of the windows completed since the last call."""
        rows, self.completed = self.completed, []
        return rows
