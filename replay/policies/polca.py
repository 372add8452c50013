"""POLCA: power oversubscription of a row with priority-aware frequency capping, as deployed.

The policy (Patel et al., "Characterizing Power Management Opportunities for LLMs in the Cloud",
ASPLOS 2024, arXiv:2308.12908 "POLCA: Power Oversubscription in LLM Cloud Providers"; the same
scheme is claimed in US patent application 2025/0377708 A1): a row is provisioned for
``budget_w``.  When its power exceeds a first threshold T1 the SM clocks of the low-priority
inference servers are capped; above a second threshold T2 the high-priority ones are capped
too (less deeply); the caps are lifted only once power has fallen a margin below the thresholds
(hysteresis, so capping does not flap).  What is sourced is that structure; the numbers are not:
the thresholds' defaults here (``t1`` 0.85, ``t2`` 0.95, ``uncap`` 0.80 of the budget), the cap
clocks and the delays below are ASSUMED - the paper's full text could not be consulted when they
were set, so treat them as settings to sweep, not as the paper's values.

As deployed, a controller never sees the power of now and its caps do not act at once:

* telemetry delay: every ``control_s`` the controller reads the row meter's mean over a
  ``control_s`` window that ended ``telemetry_delay_s`` ago (default 2 s, ASSUMED: row/PDU
  telemetry is aggregated out of band, seconds old when a controller gets it);
* actuation delay: a capping decision takes effect on the servers ``actuation_delay_s`` later
  (default 1 s, ASSUMED: a clock lock pushed to every server of the row);
* power brake, the last resort: when a reading taken entirely after the all-servers caps took
  effect is still over the budget, every server goes at once to ``brake_mhz`` (default 810 MHz,
  ASSUMED: the lowest clock of the simulated profile's full sweep), with that clock's latency;
  it is released once a reading taken entirely under the brake falls below ``uncap * budget``,
  back to the all-capped level (decisions resume on readings taken after the release).

``oversubscription_search`` adds servers to the row (with proportionally more load) and finds the
largest addition N such that every addition up to N keeps the latency impact, against the same
servers without power limits, within bounds per priority - each addition replayed with several
seeds (priority labels, router choices, a rotation of the trace in time), impacts as means with a
confidence interval over seeds.  The row's budget is what the original servers were provisioned
for (``budget_source``): ``provisioned_peak``, every original server's full-load power (the power
model at a saturating batch, the nameplate the row was built for); ``measured_peak``, the peak
metered power of the original row replaying the trace uncapped; or ``fixed``, ``budget_w``.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Callable

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd

from toolkit.validation import MAX_CLOCK_MHZ

from ..config import ClusterConfig

if TYPE_CHECKING:
    from characterize.model_io import ModelBundle
    from toolkit.validation import Settings

    from ..engine import ClusterState, ReplayResult

# Bounds of the [polca] settings (inclusive unless said)
MAX_BUDGET_W = 1e9  # a row's budget: a gigawatt is a whole campus
MAX_THRESHOLD = 1.5  # t1, t2, uncap: fractions of the budget; capping only past 150 % of it is a typo
MIN_CONTROL_S, MAX_CONTROL_S = 0.1, 3600.0  # the controller acts every control_s: 0 never advances time
MAX_DELAY_S = 3600.0  # telemetry and actuation delays: an hour-old reading is no control loop
BUDGET_SOURCES = ("provisioned_peak", "measured_peak", "fixed")
EPS = 1e-9  # s: times equal within float noise


@dataclass
class PolcaConfig:
    """POLCA settings: the row's power budget (W) and where it came from (``budget_source``), the
    thresholds ``t1``, ``t2`` (cap low priority, cap all) and ``uncap`` as fractions of it, the SM
    clocks (MHz) low- and high-priority instances are capped to, the control interval (s), the
    telemetry and actuation delays (s), and the power brake (on/off, its clock in MHz).  The
    module docstring says which defaults are sourced and which assumed."""

    budget_w: float
    t1: float = 0.85  # ASSUMED value (the two-threshold scheme is POLCA's)
    t2: float = 0.95  # ASSUMED value
    uncap: float = 0.80  # ASSUMED value (POLCA uncaps with hysteresis below the thresholds)
    low_cap_mhz: float = 1110.0
    high_cap_mhz: float = 1410.0
    control_s: float = 1.0
    telemetry_delay_s: float = 2.0  # ASSUMED
    actuation_delay_s: float = 1.0  # ASSUMED
    brake: bool = True
    brake_mhz: float = 810.0  # ASSUMED: the lowest clock of the simulated full sweep
    budget_source: str = "fixed"  # how budget_w was decided (BUDGET_SOURCES); a label here

    @classmethod
    def settings(cls, table: Settings) -> dict:
        """The ``[polca]`` table (a :class:`toolkit.validation.Settings`) checked, as keyword
        arguments of this class, absent keys filled with the defaults (``budget_w`` and
        ``budget_source`` left out when absent: ``budget_w`` alone means a fixed budget, neither
        means the search derives it from the servers' full-load power).

        Besides each value's range: ``0 < uncap < t1 <= t2`` (caps are lifted below uncap only once
        power is under the first threshold, and capping all happens at or after capping low),
        ``brake_mhz <= low_cap_mhz <= high_cap_mhz`` (low priority is capped deeper, the brake
        deepest), ``budget_w`` set exactly when ``budget_source = "fixed"``."""
        fraction = dict(minimum=0, exclusive_minimum=True, maximum=MAX_THRESHOLD)
        clock = dict(minimum=0, exclusive_minimum=True, maximum=MAX_CLOCK_MHZ)
        delay = dict(minimum=0, maximum=MAX_DELAY_S)
        values = {
            "budget_w": table.number("budget_w", None, minimum=0, exclusive_minimum=True, maximum=MAX_BUDGET_W),
            "budget_source": table.choice("budget_source", BUDGET_SOURCES, None),
            "t1": table.number("t1", cls.t1, **fraction),
            "t2": table.number("t2", cls.t2, **fraction),
            "uncap": table.number("uncap", cls.uncap, **fraction),
            "low_cap_mhz": table.number("low_cap_mhz", cls.low_cap_mhz, **clock),
            "high_cap_mhz": table.number("high_cap_mhz", cls.high_cap_mhz, **clock),
            "control_s": table.number("control_s", cls.control_s, minimum=MIN_CONTROL_S, maximum=MAX_CONTROL_S),
            "telemetry_delay_s": table.number("telemetry_delay_s", cls.telemetry_delay_s, **delay),
            "actuation_delay_s": table.number("actuation_delay_s", cls.actuation_delay_s, **delay),
            "brake": table.flag("brake", cls.brake),
            "brake_mhz": table.number("brake_mhz", cls.brake_mhz, **clock),
        }
        # the key named is one the table sets (the other side of the relation may be a default)
        for low, high, strict in (("uncap", "t1", True), ("t1", "t2", False), ("low_cap_mhz", "high_cap_mhz", False),
                                  ("brake_mhz", "low_cap_mhz", False)):
            if values[low] > values[high] or (strict and values[low] == values[high]):
                key = low if table.has(low) or not table.has(high) else high
                raise table.error(key, f"{low} ({values[low]:g}) must be {'<' if strict else '<='} "
                                       f"{high} ({values[high]:g})")
        source = values["budget_source"]
        if source == "fixed" and values["budget_w"] is None:
            raise table.error("budget_w", 'missing: budget_source = "fixed" needs the row budget in budget_w (W)')
        if source not in (None, "fixed") and values["budget_w"] is not None:
            raise table.error("budget_w", f'is only read with budget_source = "fixed"; budget_source = "{source}" '
                                          f"derives the budget (remove one of the two)")
        return {k: v for k, v in values.items() if v is not None}


@dataclass
class PolcaController:
    """The POLCA policy as a replay controller: every ``control_s`` it reads the row meter as it
    stood ``telemetry_delay_s`` ago and moves between capping levels (0 none, 1 low priority,
    2 all); a new level reaches the servers ``actuation_delay_s`` later; the brake is the last
    resort (module docstring).  ``level`` is the level last decided, ``applied_level`` the one in
    effect; ``log`` lists what it did in order (``command``, ``apply``, ``brake``, ``release``).
    ``describe`` reports the capping episodes (as in effect), the brake, the peak row power (W)
    and the seconds over budget, both as the controller read them.

    ``min_clock_mhz``: a cap or brake clock below it is raised to it (the replay's models cannot
    say what a clock below their profiled range does; "auto": the replay's bundles' lowest
    profiled clock, read at the first clock change); ``describe`` lists the clocks so raised."""

    config: PolcaConfig
    min_clock_mhz: float | str | None = "auto"  # lowest clock the models were profiled at; None: no floor
    level: int = 0
    applied_level: int = 0
    t_next: float | None = None  # None: the first reading that holds a whole window of the trace
    braked: bool = False
    episodes: list[dict] = field(default_factory=list)
    _open: dict | None = None
    peak_row_w: float = 0.0
    over_budget_s: float = 0.0
    brake_events: int = 0
    braked_s: float = 0.0
    commands: int = 0
    log: list[dict] = field(default_factory=list)
    _pending: deque = field(default_factory=deque)  # (due s, level) in decision order
    _applied_since: float = 0.0
    _brake_since: float = 0.0
    _decide_from: float = -math.inf  # readings of windows starting before this are not decided on

    def __post_init__(self) -> None:
        if self.t_next is None:
            # the first meter window [0, control_s) reaches the controller telemetry_delay_s later
            self.t_next = self.config.telemetry_delay_s + self.config.control_s

    def next_time(self) -> float:
        """When the controller acts next (a reading, or a decision taking effect), s since the trace start."""
        return min(self.t_next, self._pending[0][0]) if self._pending else self.t_next

    def _decide(self, power: float) -> int:
        cfg = self.config
        if power > cfg.t2 * cfg.budget_w:
            return 2
        if power > cfg.t1 * cfg.budget_w:
            return max(self.level, 1)
        if power < cfg.uncap * cfg.budget_w:
            return 0
        return self.level  # between uncap and t1: hold (hysteresis)

    def _window_start(self, t: float) -> float:
        """Start of the meter window a reading at ``t`` covers."""
        return t - self.config.telemetry_delay_s - self.config.control_s

    def _would_brake(self, t: float, power: float) -> bool:
        """The brake's condition: over budget on a reading of a window wholly after the all-caps took effect."""
        cfg = self.config
        return (cfg.brake and not self.braked and power > cfg.budget_w and self.applied_level == 2
                and self._applied_since <= self._window_start(t) + EPS)

    def act(self, t: float, state: ClusterState) -> None:
        """At ``t``: let decisions that are due take effect; then, unless this call was only for
        them, read the row meter ``telemetry_delay_s`` late, brake or release the brake, and decide
        the capping level (taking effect ``actuation_delay_s`` later)."""
        cfg = self.config
        applied = self._apply_due(t, state)
        if applied and t < self.t_next - EPS:
            return  # a wake-up for a decision taking effect, not a reading
        power = state.row_power(t - cfg.telemetry_delay_s, cfg.control_s)
        self.peak_row_w = max(self.peak_row_w, power)
        if power > cfg.budget_w:
            self.over_budget_s += cfg.control_s
        if self._would_brake(t, power):
            self._engage_brake(t, state, power)
        elif self.braked and self._brake_since <= self._window_start(t) + EPS and power < cfg.uncap * cfg.budget_w:
            self._release_brake(t, state, power)
        elif not self.braked and self._window_start(t) >= self._decide_from - EPS:
            level = self._decide(power)
            if level != self.level:
                self._command(t, state, level, power)
        self.t_next = t + cfg.control_s

    def skip_idle(self, t: float, until: float, state: ClusterState) -> None:
        """Nothing runs before ``until``: once every meter bin a reading from now on can cover
        holds idle draw (and no decision is in flight), every act would read the same power and
        do nothing (same level, brake kept as it is), so the acts up to ``until`` are taken at once
        (their over-budget seconds counted) rather than one per ``control_s`` across an idle day."""
        cfg = self.config
        steps = math.floor((until - t) / cfg.control_s)
        rec = getattr(state, "recorder", None)
        if steps < 2 or rec is None or self._pending:
            return
        idle = float(sum(inst.power_now or 0.0 for inst in state.instances))
        width = rec.bin_s
        current = int(t // width)
        for k in range(max(0, int(math.floor(self._window_start(t) / width))), current + 1):
            span = min(width, t - k * width)
            if span > 0 and not math.isclose(rec.energy_in_bins(k, k + 1), idle * span, rel_tol=1e-9, abs_tol=1e-6):
                return
        # an act reading idle power from now on must change nothing: no brake to come, none to
        # release, no new level (decisions frozen after a release resume on the same reading)
        if self.braked:
            if idle < cfg.uncap * cfg.budget_w:
                return
        elif self._decide(idle) != self.level or (cfg.brake and idle > cfg.budget_w and self.applied_level == 2):
            return
        self.peak_row_w = max(self.peak_row_w, idle)
        if idle > cfg.budget_w:
            self.over_budget_s += steps * cfg.control_s
        self.t_next = t + steps * cfg.control_s

    # ------------------------------------------------------------------ actions
    def _command(self, t: float, state: ClusterState, level: int, power: float) -> None:
        self.level = level
        self.commands += 1
        self.log.append({"t_s": t, "event": "command", "level": level, "power_w": power})
        due = t + self.config.actuation_delay_s
        self._pending.append((due, level))
        if due <= t + EPS:
            self._apply_due(t, state)

    def _apply_due(self, t: float, state: ClusterState) -> bool:
        applied = False
        while self._pending and self._pending[0][0] <= t + EPS:
            _, level = self._pending.popleft()
            self._take_effect(t, state, level)
            applied = True
        return applied

    def _take_effect(self, t: float, state: ClusterState, level: int) -> None:
        if self._open is not None:
            self._open["end_s"] = t
            self.episodes.append(self._open)
            self._open = None
        if level > 0:
            self._open = {"level": level, "start_s": t, "end_s": None}
        self.applied_level, self._applied_since = level, t
        self.log.append({"t_s": t, "event": "apply", "level": level})
        if not self.braked:  # under the brake the servers stay at its clock; the level waits for the release
            self._set_clocks(t, state, f"polca level {level}")

    def _engage_brake(self, t: float, state: ClusterState, power: float) -> None:
        self.braked, self._brake_since = True, t
        self.brake_events += 1
        self.log.append({"t_s": t, "event": "brake", "power_w": power})
        self._set_clocks(t, state, "polca power brake")

    def _release_brake(self, t: float, state: ClusterState, power: float) -> None:
        self.braked = False
        self.braked_s += t - self._brake_since
        self._decide_from = t  # readings of the braked row say nothing about the load
        self.log.append({"t_s": t, "event": "release", "power_w": power, "level": self.applied_level})
        self._set_clocks(t, state, f"polca brake released, level {self.applied_level}")

    def _clock_for(self, inst) -> float | None:
        """The SM clock ``inst`` runs at now: its pool's (None: the highest profiled), lowered to
        the brake's or the level's cap (a cap never raises a clock)."""
        cfg = self.config
        base = inst.pool.sm_clock_mhz
        low = inst.pool.priority == "low"
        if self.braked:
            target = cfg.brake_mhz
        elif self.applied_level == 0 or (self.applied_level == 1 and not low):
            return base
        else:
            target = cfg.low_cap_mhz if low else cfg.high_cap_mhz
        target = self._floor(target)
        return target if base is None else min(base, target)

    def _floor(self, clock: float) -> float:
        floor = self.min_clock_mhz
        return clock if floor is None or floor == "auto" else max(clock, floor)

    def _resolve_floor(self, state: ClusterState) -> None:
        """``min_clock_mhz = "auto"``: the highest of the replay's bundles' lowest profiled clocks
        (the engine keeps its bundles on the state; a state without them sets no floor)."""
        if self.min_clock_mhz == "auto":
            bundles = [b for b in (getattr(state, "_bundles", None) or {}).values() if b is not None]
            floors = [f for f in (profiled_clock_floor(b) for b in bundles) if f is not None]
            self.min_clock_mhz = max(floors) if floors else None

    def clamped_clocks(self) -> dict:
        """The cap and brake clocks raised to ``min_clock_mhz``: {setting: clock used, MHz}."""
        cfg = self.config
        return {k: self._floor(v) for k, v in (("low_cap_mhz", cfg.low_cap_mhz), ("high_cap_mhz", cfg.high_cap_mhz),
                                               ("brake_mhz", cfg.brake_mhz)) if self._floor(v) != v}

    def _set_clocks(self, t: float, state: ClusterState, reason: str) -> None:
        self._resolve_floor(state)
        for inst in state.instances:
            clock = self._clock_for(inst)
            if clock != inst.clock:
                state.set_clock(t, inst.index, clock, reason)

    def describe(self) -> dict:
        """The settings and what the policy did, for the replay summary's ``policy`` entry."""
        episodes = self.episodes + ([self._open] if self._open else [])
        durations = {1: 0.0, 2: 0.0}
        for e in episodes:
            end = e["end_s"] if e["end_s"] is not None else max(self.t_next, e["start_s"])
            durations[e["level"]] += end - e["start_s"]
        braked = self.braked_s + (max(0.0, self.t_next - self._brake_since) if self.braked else 0.0)
        return {"name": "polca", **asdict(self.config), "capping_events": len(episodes),
                "capped_low_s": durations[1] + durations[2], "capped_all_s": durations[2],
                "brake_events": self.brake_events, "braked_s": braked, "commands": self.commands,
                "min_clock_mhz": self.min_clock_mhz if self.min_clock_mhz != "auto" else None,
                "clamped_clocks_mhz": self.clamped_clocks(),
                "peak_row_power_w": self.peak_row_w, "over_budget_s": self.over_budget_s}


def profiled_clock_floor(bundle: ModelBundle | None) -> float | None:
    """The lowest SM clock (MHz) ``bundle``'s latency models were profiled at - below it a replay
    would extrapolate, which it refuses unless the bundle allows extrapolation (then None: no
    floor) - or None when the models do not say."""
    if bundle is None or getattr(bundle, "allow_extrapolation", False):
        return None
    lows = []
    for phase in ("prefill", "decode"):
        model = bundle.find("latency_s", phase)
        clocks = ((getattr(model, "support", None) or {}).get("sm_clock_mhz")) if model is not None else None
        if clocks:
            lows.append(float(clocks[0]))
    return max(lows) if lows else None


def latency_by_priority(requests: pd.DataFrame) -> pd.DataFrame:
    """Median and p99 TTFT and E2E latency (s) of the finished requests per priority (``none``
    for requests without one), from a replay's per-request frame."""
    done = requests[~requests["dropped"]]
    return done.groupby(done["priority"].fillna("none")).agg(
        ttft_p50_s=("ttft_s", "median"), ttft_p99_s=("ttft_s", lambda x: x.quantile(0.99)),
        e2e_p50_s=("e2e_s", "median"), e2e_p99_s=("e2e_s", lambda x: x.quantile(0.99)))


def scaled_cluster(config: ClusterConfig, extra: int) -> ClusterConfig:
    """The row with ``extra`` more servers, spread over pools in proportion to their size."""
    total = config.instances
    pools = []
    added = 0
    for i, pool in enumerate(config.pools):
        share = round(extra * pool.instances / total) if i < len(config.pools) - 1 else extra - added
        added += share
        pools.append(replace(pool, instances=pool.instances + share))
    return replace(config, pools=pools)


# ---------------------------------------------------------------------------- the search
SEED_SALT = 0x9A1CA  # the rotation's random stream (labels keep seed s: seed 0 labels as before)


def seeded_trace(trace: pd.DataFrame, seed: int, high_priority_fraction: float = 0.5) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Replication ``seed`` of ``trace``: (the trace, its priority per request).

    Seed 0 is the trace as given.  Seed s > 0 rotates it in time by a random offset (arrivals
    shifted, those past the end wrapped to the start, keeping every request and the load), so
    bursts meet the control loop at other phases and other requests share them.  Without a
    priority column requests are labelled at random, ``high_priority_fraction`` high, seeded
    with ``seed`` (seed 0: the labels ``polca-search`` always gave)."""
    out = trace.reset_index(drop=True)
    if seed > 0 and len(out) > 1:
        arrival = out["arrival_s"].to_numpy(dtype=np.float64)
        start = arrival[0]
        span = arrival[-1] - start + (arrival[-1] - start) / (len(arrival) - 1)  # one mean gap past the last
        offset = np.random.default_rng([SEED_SALT, seed]).uniform(0, span)
        shifted = (arrival - start + offset) % span + start
        order = np.argsort(shifted, kind="stable")
        out = out.iloc[order].assign(arrival_s=shifted[order]).reset_index(drop=True)
    if "priority" in out and out["priority"].notna().any():
        return out, out["priority"].to_numpy(dtype=object)
    if high_priority_fraction is None:
        return out, None
    rng = np.random.default_rng(seed)
    labels = np.where(rng.random(len(out)) < high_priority_fraction, "high", "low").astype(object)
    return out.assign(priority=labels), labels


def monotone_answer(passes: list[bool]) -> int:
    """The largest N such that every N' <= N passes (``passes[n]``: addition n within bounds); 0
    when none does (the original row itself failing is reported apart)."""
    best = 0
    for n, ok in enumerate(passes):
        if not ok:
            break
        best = n
    return best


def is_monotone(passes: list[bool]) -> bool:
    """Whether the frontier passes up to some N and fails from there on (no pass after a failure)."""
    return all(a or not b for a, b in zip(passes, passes[1:]))


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float | None, float | None]:
    """(mean, low, high): the mean of ``values`` (NaN left out) and its two-sided Student-t
    confidence interval at ``level``; no interval (None) from fewer than two values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if not v.size:
        return math.nan, None, None
    mean = float(v.mean())
    if v.size < 2:
        return mean, None, None
    from scipy import stats

    half = float(stats.t.ppf((1 + level) / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return mean, mean - half, mean + half


def _over_budget_seconds(result, budget_w: float) -> float | None:
    """Seconds the row's metered power (timeline bins) was over ``budget_w``, or None without a timeline."""
    timeline = getattr(result, "timeline", None)
    if timeline is None or not len(timeline) or "power_w" not in timeline or timeline["power_w"].isna().all():
        return None
    from ..engine import cluster_power

    row = cluster_power(timeline)
    return float(row.loc[row["power_w"] > budget_w * (1 + 1e-9), "duration_s"].sum())


def resolve_polca(config: ClusterConfig, polca: PolcaConfig | None, budget_source: str | None = None) -> tuple[dict, str]:
    """(PolcaConfig keyword arguments without the budget, budget source) from an explicit config
    or the cluster's ``[polca]`` settings; ``budget_source`` overrides."""
    settings = asdict(polca) if polca is not None else dict(config.polca)
    source = budget_source or settings.get("budget_source") or ("fixed" if settings.get("budget_w") else "provisioned_peak")
    if source not in BUDGET_SOURCES:
        raise ValueError(f"budget source {source!r} is not one of {', '.join(BUDGET_SOURCES)}")
    if source == "fixed" and not settings.get("budget_w"):
        raise ValueError('a fixed budget needs budget_w (W) in [polca]')
    settings["budget_source"] = source
    return settings, source


def oversubscription_search(trace: pd.DataFrame, bundle: ModelBundle, config: ClusterConfig, polca: PolcaConfig | None,
                            max_extra: int, bound_high: float = 0.05, bound_low: float = 0.50,
                            runner: Callable[..., ReplayResult] | None = None,
                            max_over_budget_fraction: float = 0.005, seeds: int = 1,
                            budget_source: str | None = None, high_priority_fraction: float = 0.5,
                            confidence: float = 0.95, progress: Callable[[int, int], None] | None = None) -> dict:
    """Largest number of added servers N such that every addition up to N keeps the p99 E2E
    impact within the bounds per priority.

    Each added server brings load in proportion (arrivals compressed in time).  Every addition is
    replayed with ``seeds`` replications (:func:`seeded_trace`, and the router seed offset by the
    replication); impact compares, replication by replication, the capped replay with the same
    servers, load and seed without a power limit, and is judged on its mean over replications
    (``within_bounds``; ``within_bounds_ci`` judges the upper end of the ``confidence`` interval).
    Capping lowers dynamic power only, so a point also fails when the row's metered power (timeline
    bins) is over budget for more than ``max_over_budget_fraction`` of the time in any replication.

    The budget (``budget_source``, else ``polca.budget_source``, else the ``[polca]`` settings):
    ``provisioned_peak`` is the original servers' full-load power summed, ``measured_peak`` the
    original row's peak metered power replaying the trace uncapped (highest over replications),
    ``fixed`` is ``budget_w``.

    ``runner`` replays (default :func:`replay.engine.replay`, whose arguments it takes);
    ``progress(done, total)`` is called after each replay.  Returns ``budget_w``,
    ``budget_source``, the original ``servers``, ``best_servers_added`` (monotone by construction),
    ``best_servers_added_ci``, ``raw_monotone``, ``original_row_passes``, ``seeds``, ``polca``
    (the settings used), ``table`` (one row per addition: means over replications) and ``runs``
    (one row per addition and replication) and ``timeline`` (the first replication of every
    addition over time: the row's power and what the controller did, :func:`write_search_timeline`).
    """
    from ..engine import replay

    runner = runner or replay
    if seeds < 1:
        raise ValueError("seeds must be >= 1")
    base_n = config.instances
    settings, source = resolve_polca(config, polca, budget_source)
    replicas = [seeded_trace(trace, s, high_priority_fraction) for s in range(seeds)]
    total = (max_extra + 1) * seeds * 2 + (source == "provisioned_peak")
    done = [0]

    def run(*args, **kwargs):
        result = runner(*args, **kwargs)
        done[0] += 1
        if progress is not None:
            progress(done[0], total)
        return result

    def point(extra: int, s: int) -> tuple[ClusterConfig, pd.DataFrame, np.ndarray | None]:
        cluster = replace(scaled_cluster(config, extra), seed=config.seed + s)
        replica, priority = replicas[s]
        return cluster, replica.assign(arrival_s=replica["arrival_s"] * base_n / (base_n + extra)), priority

    free_results: dict[tuple[int, int], dict] = {}

    def free_run(extra: int, s: int) -> dict:
        cluster, scaled, priority = point(extra, s)
        result = run(scaled, bundle, cluster, priority=priority)
        free_results[(extra, s)] = {"latency": latency_by_priority(result.requests),
                                    "peak_row_power_w": result.summary.get("peak_row_power_w")}
        return free_results[(extra, s)]

    if source == "fixed":
        budget = float(settings["budget_w"])
        per_server = None
    elif source == "provisioned_peak":
        _, priority = replicas[0]
        probe = run(replicas[0][0].iloc[:1], bundle, config, priority=None if priority is None else priority[:1])
        per_server = float(probe.summary["peak_instance_power_w"])
        budget = base_n * per_server
    else:
        peaks = [free_run(0, s)["peak_row_power_w"] for s in range(seeds)]
        budget, per_server = float(max(peaks)), None
    settings["budget_w"] = budget
    polca = PolcaConfig(**settings)
    floor = profiled_clock_floor(bundle)
    clamped = PolcaController(polca, min_clock_mhz=floor).clamped_clocks()

    rows, runs, timelines = [], [], []
    for extra in range(0, max_extra + 1):
        per_seed = []
        for s in range(seeds):
            cluster, scaled, priority = point(extra, s)
            free = free_results.pop((extra, s), None) or free_run(extra, s)
            controller = PolcaController(replace(polca), min_clock_mhz=floor)
            capped = run(scaled, bundle, cluster, priority=priority, controller=controller)
            if s == 0:  # the row over time, for people: the first replication of every addition
                timelines.append(_timeline_rows(extra, s, capped, controller))
            a, b = free["latency"], latency_by_priority(capped.requests)
            impact = (b["e2e_p99_s"] / a["e2e_p99_s"] - 1.0).to_dict()
            p50_impact = (b["e2e_p50_s"] / a["e2e_p50_s"] - 1.0).to_dict()
            policy = capped.summary["policy"]
            duration = max(capped.summary["duration_s"], 1e-9)
            metered = _over_budget_seconds(capped, budget)
            over_s = metered if metered is not None else policy["over_budget_s"]
            per_seed.append({
                "servers_added": extra, "seed": s, "servers": base_n + extra,
                "p99_impact_high": impact.get("high", math.nan), "p99_impact_low": impact.get("low", math.nan),
                "p50_impact_high": p50_impact.get("high", math.nan), "p50_impact_low": p50_impact.get("low", math.nan),
                "peak_row_power_uncapped_w": free["peak_row_power_w"], "peak_row_power_capped_w": capped.summary.get("peak_row_power_w"),
                "over_budget_s": over_s, "over_budget_fraction": over_s / duration,
                "capping_events": policy["capping_events"], "capped_low_s": policy["capped_low_s"],
                "capped_all_s": policy["capped_all_s"], "brake_events": policy.get("brake_events", 0),
                "braked_s": policy.get("braked_s", 0.0), "energy_kwh": capped.summary.get("energy_kwh")})
        runs += per_seed
        frame = pd.DataFrame(per_seed)
        stats = {k: mean_ci(frame[f"p99_impact_{k}"].tolist(), confidence) for k in ("high", "low")}
        over_fraction = float(pd.to_numeric(frame["over_budget_fraction"]).max())

        def within(pick: int) -> bool:  # pick 0: the mean, 2: the upper end of the interval
            vals = {k: (stats[k][pick] if stats[k][pick] is not None else stats[k][0]) for k in stats}
            vals = {k: (0.0 if v is None or not math.isfinite(v) else v) for k, v in vals.items()}  # no such requests
            return vals["high"] <= bound_high and vals["low"] <= bound_low and over_fraction <= max_over_budget_fraction

        numeric = frame.drop(columns=["seed"]).apply(pd.to_numeric, errors="coerce")  # (None: no power model)
        mean = numeric.mean()
        rows.append({"servers_added": extra, "servers": base_n + extra, "budget_w": budget, "seeds": seeds,
                     "peak_row_power_uncapped_w": numeric["peak_row_power_uncapped_w"].max(),
                     "peak_row_power_capped_w": numeric["peak_row_power_capped_w"].max(),
                     **{k: mean[k] for k in ("over_budget_s", "capping_events", "capped_low_s", "capped_all_s",
                                             "brake_events", "braked_s")},
                     "over_budget_fraction_max": over_fraction,
                     "p99_impact_high": stats["high"][0], "p99_impact_low": stats["low"][0],
                     "p50_impact_high": mean["p50_impact_high"], "p50_impact_low": mean["p50_impact_low"],
                     "p99_high_ci_low": stats["high"][1], "p99_high_ci_high": stats["high"][2],
                     "p99_low_ci_low": stats["low"][1], "p99_low_ci_high": stats["low"][2],
                     "energy_kwh": mean["energy_kwh"], "within_bounds": within(0), "within_bounds_ci": within(2)})
    table = pd.DataFrame(rows)
    passes = table["within_bounds"].tolist()
    return {"budget_w": budget, "budget_source": source, "per_server_peak_w": per_server, "servers": base_n,
            "best_servers_added": monotone_answer(passes),
            "best_servers_added_ci": monotone_answer(table["within_bounds_ci"].tolist()),
            "raw_monotone": is_monotone(passes), "original_row_passes": bool(passes[0]), "seeds": seeds,
            "confidence": confidence, "bounds": {"p99_high": bound_high, "p99_low": bound_low,
                                                 "over_budget_time": max_over_budget_fraction},
            "polca": polca, "min_clock_mhz": floor, "clamped_clocks_mhz": clamped,
            "table": table, "runs": pd.DataFrame(runs),
            "timeline": pd.concat(timelines, ignore_index=True) if timelines else pd.DataFrame(columns=TIMELINE_COLUMNS)}


# ---------------------------------------------------------------------------- the row over time
TIMELINE_COLUMNS = ["servers_added", "seed", "kind", "t_s", "duration_s", "power_w", "level"]


def _timeline_rows(extra: int, seed: int, result, controller: PolcaController) -> pd.DataFrame:
    """One capped replay over time, as rows of :data:`TIMELINE_COLUMNS`: ``kind`` ``row_power``,
    the row's metered power (W) over a stretch of ``duration_s`` from ``t_s`` (the timeline's
    stretches of constant total); or an entry of the controller's log - ``command`` (a decision,
    with the reading ``power_w`` it was taken on and the new ``level``), ``apply`` (a level taking
    effect on the servers), ``brake`` (with its reading) or ``release`` (back to ``level``)."""
    parts = []
    timeline = getattr(result, "timeline", None)
    if timeline is not None and len(timeline) and "power_w" in timeline:
        from ..engine import cluster_power

        parts.append(cluster_power(timeline).assign(kind="row_power", level=np.nan))
    log = pd.DataFrame(controller.log)
    if len(log):
        parts.append(pd.DataFrame({"t_s": log["t_s"].astype(float), "duration_s": 0.0, "kind": log["event"].astype(object),
                                   "power_w": pd.to_numeric(log["power_w"], errors="coerce") if "power_w" in log else np.nan,
                                   "level": pd.to_numeric(log["level"], errors="coerce") if "level" in log else np.nan}))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=TIMELINE_COLUMNS)
    return frame.assign(servers_added=extra, seed=seed)[TIMELINE_COLUMNS]


def search_timeline_table(result: dict, simulated: bool = False):
    """The search's ``timeline`` as an Arrow table (:func:`_timeline_rows` columns), with the
    budget (W), the thresholds and delays in the schema metadata ``wattlas.polca`` (JSON) and
    ``wattlas.simulated``."""
    import json

    import pyarrow as pa

    polca = result["polca"]
    frame = result.get("timeline")
    frame = (frame if frame is not None else pd.DataFrame(columns=TIMELINE_COLUMNS))[TIMELINE_COLUMNS]
    settings = {k: getattr(polca, k) for k in ("t1", "t2", "uncap", "low_cap_mhz", "high_cap_mhz", "control_s",
                                               "telemetry_delay_s", "actuation_delay_s", "brake", "brake_mhz")}
    settings.update(budget_w=float(result["budget_w"]), budget_source=result["budget_source"], servers=result["servers"])
    schema = pa.schema([("servers_added", pa.int64()), ("seed", pa.int64()), ("kind", pa.string()), ("t_s", pa.float64()),
                        ("duration_s", pa.float64()), ("power_w", pa.float64()), ("level", pa.float64())],
                       metadata={"wattlas.polca": json.dumps(settings), "wattlas.simulated": str(bool(simulated)).lower()})
    columns = {"servers_added": frame["servers_added"].astype("int64"), "seed": frame["seed"].astype("int64"),
               "kind": frame["kind"].astype(object), **{c: pd.to_numeric(frame[c], errors="coerce").astype(float)
                                                         for c in ("t_s", "duration_s", "power_w", "level")}}
    return pa.Table.from_pandas(pd.DataFrame(columns), schema=schema, preserve_index=False)


def write_search_timeline(result: dict, path, simulated: bool = False):
    """Write :func:`search_timeline_table` to ``path`` (Parquet; ``wattlas report`` reads it
    beside the search CSV as ``<csv name>_timeline.parquet``); returns the path."""
    from toolkit.parquet_io import atomic_write_table

    return atomic_write_table(search_timeline_table(result, simulated), path)


# ---------------------------------------------------------------------------- output for people
def _num(value, digits: int = 4):
    """A float for JSON: rounded to ``digits`` decimals, at most 4 (no float noise, and never the
    scientific notation Python writes below 1e-4), ``-0.0`` as ``0.0``, None when unknown."""
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        return None
    rounded = round(value, min(digits, 4))
    return 0.0 if rounded == 0 else rounded


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))


def signed_pct(fraction) -> str:
    """A latency change as words: ``"3.2 % slower"``, ``"1.0 % faster"``, ``"no change"``, ``"n/a"``."""
    if not _finite(fraction):
        return "n/a"
    pct = 100 * float(fraction)
    if abs(pct) < 0.05:
        return "no change"
    return f"{abs(pct):.1f} % {'slower' if pct > 0 else 'faster'}"


def search_json(result: dict, simulated: bool = False) -> dict:
    """The search as a JSON-ready dict: ``servers_added`` (the largest N whose every N' <= N
    passes), ``base_servers``, ``frontier`` (per addition: ``passes``, mean p99 impacts, their
    ``ci``), ``delays`` and the budget; numbers rounded for people (impacts as fractions, 4
    decimals), unknowns null."""
    table, polca = result["table"], result["polca"]
    base = result["servers"]
    frontier = []
    for row in table.to_dict("records"):
        ci = {"level": result["confidence"]}
        for k in ("high", "low"):
            lo, hi = row[f"p99_{k}_ci_low"], row[f"p99_{k}_ci_high"]
            ci[f"p99_impact_{k}"] = [_num(lo), _num(hi)] if _finite(lo) and _finite(hi) else None
        frontier.append({
            "added": int(row["servers_added"]), "servers": int(row["servers"]), "passes": bool(row["within_bounds"]),
            "passes_at_ci_upper": bool(row["within_bounds_ci"]),
            "p99_impact_high": _num(row["p99_impact_high"]), "p99_impact_low": _num(row["p99_impact_low"]),
            "p99_impact_high_words": signed_pct(row["p99_impact_high"]), "p99_impact_low_words": signed_pct(row["p99_impact_low"]),
            "ci": ci, "over_budget_pct_max": _num(100 * row["over_budget_fraction_max"], 3),
            "peak_row_power_uncapped_w": _num(row["peak_row_power_uncapped_w"], 1),
            "peak_row_power_capped_w": _num(row["peak_row_power_capped_w"], 1),
            "capping_events_mean": _num(row["capping_events"], 2), "brake_events_mean": _num(row["brake_events"], 2),
            "braked_s_mean": _num(row["braked_s"], 2), "capped_low_s_mean": _num(row["capped_low_s"], 1),
            "capped_all_s_mean": _num(row["capped_all_s"], 1)})
    n = result["best_servers_added"]
    return {
        "label": "[SIMULATED]" if simulated else None, "simulated": bool(simulated),
        "servers_added": n, "servers_added_pct": _num(100 * n / base, 1), "base_servers": base,
        "servers_added_at_ci_upper": result["best_servers_added_ci"], "raw_frontier_monotone": result["raw_monotone"],
        "original_row_passes": result["original_row_passes"], "seeds": result["seeds"],
        "budget": {"source": result["budget_source"], "w": _num(result["budget_w"], 1),
                   "per_server_peak_w": _num(result["per_server_peak_w"], 1)},
        "bounds_pct": {k: _num(100 * v, 3) for k, v in result["bounds"].items()},
        "thresholds": {"t1": polca.t1, "t2": polca.t2, "uncap": polca.uncap, "low_cap_mhz": polca.low_cap_mhz,
                       "high_cap_mhz": polca.high_cap_mhz, "brake": polca.brake, "brake_mhz": polca.brake_mhz,
                       "control_s": polca.control_s},
        "clocks_raised_to_profiled_floor_mhz": result.get("clamped_clocks_mhz") or None,
        "delays": {"telemetry_s": polca.telemetry_delay_s, "actuation_s": polca.actuation_delay_s},
        "frontier": frontier,
    }


def format_search(result: dict, simulated: bool = False) -> str:
    """The search as lines for the terminal: the answer, how the budget was set, the frontier."""
    label = " [SIMULATED]" if simulated else ""
    polca, base, n = result["polca"], result["servers"], result["best_servers_added"]
    how = {"provisioned_peak": f"provisioned peak: {base} servers x {result['per_server_peak_w'] or 0:,.0f} W full-load power",
           "measured_peak": "measured peak of the original row, uncapped",
           "fixed": "fixed budget_w"}[result["budget_source"]]
    lines = [
        f"POLCA{label}: row of {base} servers, budget {result['budget_w']:,.0f} W ({how}); {result['seeds']} seed(s); "
        f"telemetry delay {polca.telemetry_delay_s:g} s, actuation delay {polca.actuation_delay_s:g} s, "
        f"power brake {'at ' + format(polca.brake_mhz, 'g') + ' MHz' if polca.brake else 'off'}",
        f"largest addition within bounds (every smaller one passing too): {n} server{'' if n == 1 else 's'} "
        f"(+{100 * n / base:.0f} %); "
        f"judged on the {result['confidence']:.0%} CI upper end: {result['best_servers_added_ci']}; "
        f"the raw frontier is {'monotone' if result['raw_monotone'] else 'NOT monotone'}"
        + ("" if result["original_row_passes"] else "; the original row itself fails the bounds"),
    ]
    if result.get("clamped_clocks_mhz"):
        lines.append("  the models were profiled down to " + format(result["min_clock_mhz"], "g") + " MHz only: "
                     + ", ".join(f"{k} {getattr(polca, k):g} -> {v:g} MHz" for k, v in result["clamped_clocks_mhz"].items())
                     + " (--allow-extrapolation to use the settings as given, extrapolating the latency models)")
    for row in result["table"].to_dict("records"):
        ci = ""
        if _finite(row["p99_high_ci_low"]) and _finite(row["p99_high_ci_high"]):
            ci = f" (CI {signed_pct(row['p99_high_ci_low'])} .. {signed_pct(row['p99_high_ci_high'])})"
        lines.append(f"  +{int(row['servers_added'])} ({int(row['servers'])} servers): "
                     f"{'passes' if row['within_bounds'] else 'fails '}  p99 high {signed_pct(row['p99_impact_high'])}{ci}, "
                     f"low {signed_pct(row['p99_impact_low'])}; over budget {100 * row['over_budget_fraction_max']:.2f} % "
                     f"of the time at most; {row['capping_events']:.1f} capping, {row['brake_events']:.1f} brake events")
    return "\n".join(lines)


def provisioned_peak_w(config: ClusterConfig, bundle: ModelBundle) -> float:
    """What the row's routed servers were provisioned for: each instance's full-load power (its
    power model at a saturating prefill, at its pool's clock) summed, W."""
    from characterize.model_io import ModelBundle as _Bundle

    from ..cost_model import InstanceCost

    total = 0.0
    for pool in config.pools:
        if pool.standby:
            continue
        pool_bundle = _Bundle.load(pool.models) if pool.models else bundle
        cost = InstanceCost.from_bundle(pool_bundle, pool.tp, pool.sm_clock_mhz, pool.pp, pool.kvp)  # (power: the GPUs)
        total += pool.instances * (cost.iteration_power(1e6, 0) or 0.0)
    return total
