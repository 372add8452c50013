"""POLCA: power oversubscription of a row with priority-aware frequency capping.

A row is provisioned for ``budget_w``.  Every ``control_s`` the controller reads row power
averaged over the last interval (as a PDU meter would); above ``t1 * budget`` it caps the SM clock of the
instances serving low-priority pools, above ``t2 * budget`` it caps every instance (high
priority less deeply); it lifts the caps only once power falls below ``uncap * budget``
(hysteresis, so capping does not flap).  ``oversubscription_search`` adds servers to the row
(with proportionally more load) and finds the largest addition whose latency impact, against the
same cluster without power limits, stays within bounds per priority.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

from dataclasses import asdict, dataclass, field, replace

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


@dataclass
class PolcaConfig:
    """POLCA settings: the row's power budget (W), the thresholds ``t1``, ``t2`` (cap low
    priority, cap all) and ``uncap`` as fractions of it, the SM clocks (MHz) low- and
    high-priority instances are capped to, and the control interval (s)."""

    budget_w: float
    t1: float = 0.85
    t2: float = 0.95
    uncap: float = 0.80
    low_cap_mhz: float = 1110.0
    high_cap_mhz: float = 1410.0
    control_s: float = 1.0

    @classmethod
    def settings(cls, table: Settings) -> dict:
        """The ``[polca]`` table (a :class:`toolkit.validation.Settings`) checked, as keyword
        arguments of this class, absent keys filled with the defaults (``budget_w`` left out when
        absent: the search derives it from the servers' full-load power).

        Besides each value's range: ``0 < uncap < t1 <= t2`` (caps are lifted below uncap only once
        power is under the first threshold, and capping all happens at or after capping low) and
        ``low_cap_mhz <= high_cap_mhz`` (low priority is capped deeper)."""
        fraction = dict(minimum=0, exclusive_minimum=True, maximum=MAX_THRESHOLD)
        clock = dict(minimum=0, exclusive_minimum=True, maximum=MAX_CLOCK_MHZ)
        values = {
            "budget_w": table.number("budget_w", None, minimum=0, exclusive_minimum=True, maximum=MAX_BUDGET_W),
            "t1": table.number("t1", cls.t1, **fraction),
            "t2": table.number("t2", cls.t2, **fraction),
            "uncap": table.number("uncap", cls.uncap, **fraction),
            "low_cap_mhz": table.number("low_cap_mhz", cls.low_cap_mhz, **clock),
            "high_cap_mhz": table.number("high_cap_mhz", cls.high_cap_mhz, **clock),
            "control_s": table.number("control_s", cls.control_s, minimum=MIN_CONTROL_S, maximum=MAX_CONTROL_S),
        }
        # the key named is one the table sets (the other side of the relation may be a default)
        for low, high, strict in (("uncap", "t1", True), ("t1", "t2", False), ("low_cap_mhz", "high_cap_mhz", False)):
            if values[low] > values[high] or (strict and values[low] == values[high]):
                key = low if table.has(low) or not table.has(high) else high
                raise table.error(key, f"{low} ({values[low]:g}) must be {'<' if strict else '<='} "
                                       f"{high} ({values[high]:g})")
        return {k: v for k, v in values.items() if v is not None}


@dataclass
class PolcaController:
    """The POLCA policy as a replay controller: every ``control_s`` it reads the row's power and
    moves between capping levels (0 none, 1 low priority, 2 all); ``describe`` reports the capping
    episodes, the peak row power (W) and the seconds over budget."""

    config: PolcaConfig
    level: int = 0
    t_next: float = 0.0
    episodes: list[dict] = field(default_factory=list)
    _open: dict | None = None
    peak_row_w: float = 0.0
    over_budget_s: float = 0.0

    def next_time(self) -> float:
        """When the controller acts next, s since the trace start."""
        return self.t_next

    def _decide(self, power: float) -> int:
        cfg = self.config
        if power > cfg.t2 * cfg.budget_w:
            return 2
        if power > cfg.t1 * cfg.budget_w:
            return max(self.level, 1)
        if power < cfg.uncap * cfg.budget_w:
            return 0
        return self.level  # between uncap and t1: hold (hysteresis)

    def act(self, t: float, state: ClusterState) -> None:
        """Read the row power over the last ``control_s`` at ``t`` and cap or uncap clocks."""
        cfg = self.config
        power = state.row_power(t, cfg.control_s)
        self.peak_row_w = max(self.peak_row_w, power)
        if power > cfg.budget_w:
            self.over_budget_s += cfg.control_s
        level = self._decide(power)
        if level != self.level:
            self._apply(t, state, level)
        self.t_next = t + cfg.control_s

    def skip_idle(self, t: float, until: float, state: ClusterState) -> None:
        """Nothing runs before ``until``: once the meter's window holds only idle draw, every act
        would read the same power and keep the same level, so the acts up to ``until`` are taken at
        once (their over-budget seconds counted) rather than one per ``control_s`` across an idle day."""
        cfg = self.config
        idle = float(sum(inst.power_now or 0.0 for inst in state.instances))
        power = state.row_power(t, cfg.control_s)
        steps = math.floor((until - t) / cfg.control_s)
        if steps < 2 or not math.isclose(power, idle, rel_tol=1e-9, abs_tol=1e-9) or self._decide(power) != self.level:
            return
        self.peak_row_w = max(self.peak_row_w, power)
        if power > cfg.budget_w:
            self.over_budget_s += steps * cfg.control_s
        self.t_next = t + steps * cfg.control_s

    def _apply(self, t: float, state: ClusterState, level: int) -> None:
        cfg = self.config
        for inst in state.instances:
            low = inst.pool.priority == "low"
            if level == 0:
                clock = inst.pool.sm_clock_mhz
            elif level == 1:
                clock = cfg.low_cap_mhz if low else inst.pool.sm_clock_mhz
            else:
                clock = cfg.low_cap_mhz if low else cfg.high_cap_mhz
            if clock != inst.clock:
                state.set_clock(t, inst.index, clock, f"polca level {level}")
        if self._open is not None:
            self._open["end_s"] = t
            self.episodes.append(self._open)
            self._open = None
        if level > 0:
            self._open = {"level": level, "start_s": t, "end_s": None}
        self.level = level

    def describe(self) -> dict:
        """The settings and what the policy did, for the replay summary's ``policy`` entry."""
        episodes = self.episodes + ([self._open] if self._open else [])
        durations = {1: 0.0, 2: 0.0}
        for e in episodes:
            end = e["end_s"] if e["end_s"] is not None else self.t_next
            durations[e["level"]] += end - e["start_s"]
        return {"name": "polca", **asdict(self.config), "capping_events": len(episodes),
                "capped_low_s": durations[1] + durations[2], "capped_all_s": durations[2],
                "peak_row_power_w": self.peak_row_w, "over_budget_s": self.over_budget_s}


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


def oversubscription_search(trace: pd.DataFrame, bundle: ModelBundle, config: ClusterConfig, polca: PolcaConfig | None,
                            max_extra: int, bound_high: float = 0.05, bound_low: float = 0.50,
                            runner: Callable[..., ReplayResult] | None = None,
                            max_over_budget_fraction: float = 0.005) -> dict:
    """Largest number of added servers whose p99 E2E impact stays within the bounds per priority.

    The row budget is what the original servers draw at full load; each added server brings
    load in proportion (arrivals compressed in time).  Impact compares the capped replay with
    the same servers and load without a power limit.  Capping lowers dynamic power only, so a
    point is also rejected when row power stays over budget for more than
    ``max_over_budget_fraction`` of the time (1-s meter intervals).

    ``runner`` replays (default :func:`replay.engine.replay`, whose arguments it takes).  Returns
    the ``budget_w``, the original ``servers``, ``best_servers_added`` and the per-point ``table``.
    """
    from ..engine import replay

    runner = runner or replay
    base_n = config.instances
    priority = trace["priority"].to_numpy(dtype=object) if "priority" in trace else None
    probe = runner(trace.iloc[:1], bundle, config, priority=None if priority is None else priority[:1])
    peak = probe.summary["peak_instance_power_w"]
    budget = polca.budget_w if polca else base_n * peak
    # without a budget in [polca], its thresholds still apply
    polca = polca or PolcaConfig(**{**config.polca, "budget_w": budget})
    rows, best = [], 0
    for extra in range(0, max_extra + 1):
        cluster = scaled_cluster(config, extra)
        scaled = trace.assign(arrival_s=trace["arrival_s"] * base_n / (base_n + extra))
        free = runner(scaled, bundle, cluster, priority=priority)
        capped = runner(scaled, bundle, cluster, priority=priority, controller=PolcaController(replace(polca)))
        a, b = latency_by_priority(free.requests), latency_by_priority(capped.requests)
        impact = (b["e2e_p99_s"] / a["e2e_p99_s"] - 1.0).to_dict()
        p50_impact = (b["e2e_p50_s"] / a["e2e_p50_s"] - 1.0).to_dict()
        policy = capped.summary["policy"]
        over_fraction = policy["over_budget_s"] / max(capped.summary["duration_s"], 1e-9)
        ok = (impact.get("high", 0.0) <= bound_high and impact.get("low", 0.0) <= bound_low
              and over_fraction <= max_over_budget_fraction)
        rows.append({"servers_added": extra, "servers": base_n + extra, "budget_w": budget,
                     "peak_row_power_uncapped_w": free.summary["peak_row_power_w"],
                     "peak_row_power_capped_w": policy["peak_row_power_w"], "over_budget_s": policy["over_budget_s"],
                     "capping_events": policy["capping_events"], "capped_low_s": policy["capped_low_s"],
                     "capped_all_s": policy["capped_all_s"],
                     **{f"p99_impact_{k}": v for k, v in impact.items()}, **{f"p50_impact_{k}": v for k, v in p50_impact.items()},
                     "energy_kwh": capped.summary["energy_kwh"], "within_bounds": ok})
        if ok:
            best = extra
    return {"budget_w": budget, "servers": base_n, "best_servers_added": best, "table": pd.DataFrame(rows)}
