"""DynamoLLM: energy-minimizing reconfiguration of per-class instance pools.

Requests are binned by input and output length into classes (default short/medium/long on both
axes), each served by its own pool.  Every ``period_s`` the controller forecasts each class's
arrival rate from the past only (the larger of the previous period's rate and its last minute's;
the first period uses its own first minute)
and picks, from the profiled latency and power models, the number of active instances and the
SM clock that minimize energy while an instance's capacity at that clock, with headroom
(``utilization_target``), covers the forecast and the TBT/TTFT SLOs hold.  A newly activated
instance powers on at the decision and takes requests after ``scale_out_s``; with
``power_off_inactive`` (default) instances beyond the active count power off once drained, as the
plan, which counts active instances only, assumes.

TP: by default each class's TP is fixed for the run, the one whose plan needs the least energy.
With ``reshard`` the TP is chosen every period too: the class's GPUs are laid out as one pool per
TP used (the others are standby pools sharing the same GPUs); switching layout is worth it only
when the period's planned saving repays ``reshard_s`` of the new layout loading its weights.  At
a switch the old layout takes no new requests and powers off as it drains, while the new one
loads: for up to one drain both hold power (the GPUs are really the same, so this over-counts a
little, and ``gpu_hours`` shows it).

Capacity model of an instance for a class with mean input I and output O: the largest decode
batch B whose iteration (with a share of prefill interference) stays under the TBT SLO; each
request then costs prefill(I) plus O iterations shared by B requests, so it serves
mu = 1 / (prefill(I) + O * decode(B) / B) requests/s, drawing the decode power at batch B while busy.

The baseline is the usual static deployment: one pool, the same GPUs, the smallest TP, the
highest clock, every instance active and powered.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from toolkit.validation import MAX_CLOCK_MHZ, MAX_TOKENS

from ..config import MAX_INSTANCES, MAX_PARALLEL, ClusterConfig, PoolConfig
from ..cost_model import InstanceCost

if TYPE_CHECKING:
    from characterize.model_io import ModelBundle
    from toolkit.validation import Settings

    from ..engine import ClusterState

CLASS_NAMES = ("S", "M", "L")
# Bounds of the [dynamollm] settings (inclusive), beside those shared with the pools (replay.config)
MIN_POLICY_STEP_S = 1.0  # period_s, reactive_check_s
MAX_POLICY_S = 7 * 86_400.0  # period_s, reactive_check_s, scale_out_s, reshard_s: a week
MAX_REACTIVE_QUEUE = 1_000_000


@dataclass
class DynamoConfig:
    """DynamoLLM settings (the ``[dynamollm]`` table): the length-class bounds (tokens), the
    decision period (s), utilization target, scale-out delay (s), the TPs and SM clocks to choose
    from (None: the profiled ones), instance limits per class, reactive scale-out and re-sharding."""

    input_bins: tuple[float, ...] = (1024, 4096)
    output_bins: tuple[float, ...] = (128, 512)
    period_s: float = 300.0
    utilization_target: float = 0.7
    scale_out_s: float = 30.0
    tps: tuple[int, ...] | None = None  # default: the TPs the models were fitted for
    clocks: tuple[float, ...] | None = None  # default: the profiled SM clocks
    max_instances_per_class: int = 64
    spare_instances: int = 1  # provisioned per class beyond the plan's peak, for reactive scale-out
    reactive_check_s: float = 10.0  # between period decisions: scale out when queues build
    reactive_queue: int = 4  # requests waiting for prefill on an active instance that trigger a scale-out
    reshard: bool = False  # also choose each class's TP every period (re-sharding its GPUs)
    reshard_s: float = 30.0  # a new TP layout loads its weights this long (powered, serving nothing)
    power_off_inactive: bool = True  # inactive instances' GPUs power off (the plan counts active ones only)

    @classmethod
    def settings(cls, table: Settings) -> dict:
        """The ``[dynamollm]`` table (a :class:`toolkit.validation.Settings`) checked, as keyword
        arguments of this class (lists for the tuples; absent keys take the defaults)."""
        d = cls()
        # class names are letters (S/M/L) or one digit per axis: at most 10 classes, 9 bounds
        bins = dict(max_length=9, increasing=True, integer=True, minimum=1, maximum=MAX_TOKENS)
        seconds = dict(minimum=0, maximum=MAX_POLICY_S)
        values = {
            "input_bins": table.numbers("input_bins", list(d.input_bins), **bins),
            "output_bins": table.numbers("output_bins", list(d.output_bins), **bins),
            # a period, or a reactive check, shorter than a second only multiplies controller calls
            "period_s": table.number("period_s", d.period_s, minimum=MIN_POLICY_STEP_S, maximum=MAX_POLICY_S),
            "utilization_target": table.number("utilization_target", d.utilization_target, minimum=0,
                                               exclusive_minimum=True, maximum=1),
            "scale_out_s": table.number("scale_out_s", d.scale_out_s, **seconds),
            "tps": table.numbers("tps", None, min_length=1, integer=True, minimum=1, maximum=MAX_PARALLEL),
            "clocks": table.numbers("clocks", None, min_length=1, minimum=0, exclusive_minimum=True, maximum=MAX_CLOCK_MHZ),
            "max_instances_per_class": table.number("max_instances_per_class", d.max_instances_per_class, integer=True,
                                                    minimum=1, maximum=MAX_INSTANCES),
            "spare_instances": table.number("spare_instances", d.spare_instances, integer=True, minimum=0,
                                            maximum=MAX_INSTANCES),
            "reactive_check_s": table.number("reactive_check_s", d.reactive_check_s, minimum=MIN_POLICY_STEP_S,
                                             maximum=MAX_POLICY_S),
            "reactive_queue": table.number("reactive_queue", d.reactive_queue, integer=True, minimum=1,
                                           maximum=MAX_REACTIVE_QUEUE),
            "reshard": table.flag("reshard", d.reshard),
            "reshard_s": table.number("reshard_s", d.reshard_s, **seconds),
            "power_off_inactive": table.flag("power_off_inactive", d.power_off_inactive),
        }
        return {k: v for k, v in values.items() if v is not None}


def profiled_values(bundle: ModelBundle, key: str) -> list:
    """The distinct values of group key ``key`` (``tp``, ``sm_clock_mhz``) in the bundle's decode
    latency model, sorted; ``[None]`` where it is not grouped by that key."""
    model = bundle.find("latency_s", "decode")
    values = sorted({g["key"][key] for g in model.groups if key in g["key"]})
    return values or [None]


def classify(inputs: np.ndarray, outputs: np.ndarray, cfg: DynamoConfig) -> np.ndarray:
    """Class code per request: input bin * (output bins + 1) + output bin, where a length equal
    to a bound falls in the bin below it."""
    i = np.searchsorted(np.asarray(cfg.input_bins), inputs, side="left")
    o = np.searchsorted(np.asarray(cfg.output_bins), outputs, side="left")
    return i * (len(cfg.output_bins) + 1) + o


def class_name(code: int, cfg: DynamoConfig) -> str:
    """The name of class ``code``: ``in-S/out-M`` with the default three bins per axis, digits
    (``in-0/out-2``) otherwise."""
    n_out = len(cfg.output_bins) + 1
    names = CLASS_NAMES if len(cfg.input_bins) == 2 and n_out == 3 else [str(k) for k in range(10)]
    return f"in-{names[code // n_out]}/out-{names[code % n_out]}"


def instance_capacity(cost: InstanceCost, mean_in: float, mean_out: float, pool: PoolConfig) -> tuple[float, float, float]:
    """(requests/s at full batch, busy power W, prefill latency s) of one instance for a class."""
    prefill = cost.prefill_latency(mean_in, 0.0, mean_in * mean_in, 0.0)
    best_b = 1
    for b in range(1, pool.max_batch_size + 1):
        k_sum = b * (mean_in + mean_out / 2)
        # a decode iteration plus, on average, a share of one prefill chunk per request lifetime
        interference = prefill / max(1.0, mean_out)
        if cost.decode_latency(b, k_sum) + interference > pool.tbt_slo_s or b * (mean_in + mean_out) > pool.kv_capacity_tokens:
            break
        best_b = b
    decode = cost.decode_latency(best_b, best_b * (mean_in + mean_out / 2))
    # each prefill iteration also carries the running decodes (one launch constant shared)
    prefill_iterations = math.ceil(mean_in / max(1, pool.max_batch_tokens - best_b))
    interference = prefill_iterations * (decode - cost.dec["d0"])
    mu = 1.0 / (prefill + interference + max(0.0, mean_out - 1) * decode / best_b)
    power = cost.iteration_power(0, best_b)
    return mu, (power if power is not None else 0.0), prefill


def plan_option(cost: InstanceCost, idle_w: float, rate: float, mean_in: float, mean_out: float, pool: PoolConfig,
                cfg: DynamoConfig) -> tuple[int, float] | None:
    """(instances, energy rate W) to serve ``rate`` with this cost model, or None if SLOs fail."""
    mu, busy_w, prefill = instance_capacity(cost, mean_in, mean_out, pool)
    if prefill > pool.ttft_slo_s / 2:
        return None
    n = max(1, math.ceil(rate / (mu * cfg.utilization_target)))
    if n > cfg.max_instances_per_class:
        return None
    u = min(1.0, rate / (n * mu)) if mu > 0 else 1.0
    return n, n * (u * busy_w + (1 - u) * idle_w)


@dataclass
class ClassPlan:
    """One length class's plan: its code and name, the schedule of (period start s, active
    instances, SM clock MHz or None, TP), the GPUs it holds and the pool name of each TP layout."""

    code: int
    name: str
    schedule: list[tuple[float, int, float | None, int]]  # (t, active instances, clock, TP)
    gpus: int  # GPUs the class holds (every layout shares them)
    layouts: dict[int, str] = field(default_factory=dict)  # TP -> pool name of that layout

    @property
    def tp(self) -> int:
        """The TP of the first period's layout."""
        return self.schedule[0][3]

    @property
    def instances(self) -> int:
        """Instances of that layout."""
        return self.gpus // self.tp


@dataclass
class DynamoPlan:
    """A DynamoLLM plan: the cluster with one pool per class (standby layouts after them), the
    classes' plans, and the settings it was made with."""

    config: ClusterConfig
    classes: list[ClassPlan]
    cfg: DynamoConfig

    def controller(self) -> "DynamoController":
        """A fresh controller that carries out this plan during a replay."""
        return DynamoController(self)


def _rates(arrival: np.ndarray, mask: np.ndarray, period_s: float, periods: int, recent_s: float = 60.0) -> np.ndarray:
    """Forecast rate per period from the past only: the larger of the previous period's mean rate
    and the rate of its last ``recent_s`` seconds (so a rising load is not averaged away).
    Period 0 has no past: it uses its own first ``recent_s`` seconds."""
    times = arrival[mask]
    counts = np.bincount((times // period_s).astype(np.int64), minlength=periods)[:periods] / period_s
    window = min(recent_s, period_s)
    forecast = np.empty(periods)
    forecast[0] = np.count_nonzero(times < window) / window
    for k in range(1, periods):
        boundary = k * period_s
        recent = np.count_nonzero((times >= boundary - window) & (times < boundary)) / window
        forecast[k] = max(counts[k - 1], recent)
    return forecast


def plan(trace: pd.DataFrame, bundle: ModelBundle, base: ClusterConfig, cfg: DynamoConfig) -> DynamoPlan:
    """Plan ``trace`` (arrival_s, input_tokens, output_tokens): classes by length, each a pool
    modelled on ``base``'s first pool, and per class and period the TP, active instances and SM
    clock of least energy that meet the SLOs for the forecast rate.  Raises ``ValueError`` when
    no TP and clock meet a class's SLOs."""
    arrival = trace["arrival_s"].to_numpy(dtype=np.float64)
    inputs = trace["input_tokens"].to_numpy()
    outputs = trace["output_tokens"].to_numpy()
    codes = classify(inputs, outputs, cfg)
    periods = max(1, int(math.ceil((arrival[-1] + 1e-9) / cfg.period_s)))
    template = base.pools[0]
    tps = list(cfg.tps or profiled_values(bundle, "tp"))
    clocks = list(cfg.clocks or profiled_values(bundle, "sm_clock_mhz"))
    pools, standby, class_plans = [], [], []
    for code in sorted(np.unique(codes)):
        mask = codes == code
        mean_in, mean_out = float(inputs[mask].mean()), float(outputs[mask].mean())
        forecast = _rates(arrival, mask, cfg.period_s, periods)
        by_tp = {tp: _period_choices(bundle, replace(template, tp=tp or 1), clocks, forecast, mean_in, mean_out, cfg)
                 for tp in tps}
        schedule = _reshard_schedule(by_tp, cfg) if cfg.reshard else _static_schedule(by_tp, cfg.period_s)
        if schedule is None:
            raise ValueError(f"class {class_name(code, cfg)}: no TP/clock meets the SLOs (TTFT {template.ttft_slo_s}s, "
                             f"TBT {template.tbt_slo_s}s) for mean input {mean_in:.0f}, output {mean_out:.0f}")
        used = list(dict.fromkeys(tp for *_, tp in schedule))  # in order of first use
        step = math.lcm(*used)
        gpus = max((n + cfg.spare_instances) * tp for _, n, _, tp in schedule)
        gpus = -(-gpus // step) * step
        lo_in = ([0] + list(cfg.input_bins))[code // (len(cfg.output_bins) + 1)]
        hi_in = (list(cfg.input_bins) + [1e12])[code // (len(cfg.output_bins) + 1)]
        hi_out = (list(cfg.output_bins) + [1e12])[code % (len(cfg.output_bins) + 1)]
        name = class_name(code, cfg)
        layouts = {tp: (name if i == 0 else f"{name}@tp{tp}") for i, tp in enumerate(used)}
        for i, tp in enumerate(used):
            clock = next(f for _, _, f, t in schedule if t == tp)
            pool = replace(template, name=layouts[tp], tp=tp, instances=gpus // tp, sm_clock_mhz=clock,
                           max_input_tokens=hi_in, max_output_tokens=hi_out, models=None, standby=i > 0)
            (pools if i == 0 else standby).append((lo_in, pool))
        class_plans.append(ClassPlan(int(code), name, schedule, gpus, layouts))
    # routing takes the first pool that accepts a request: order pools by (input bin, output bin)
    # (standby layouts, never routed to, go after every routed pool; pool i < classes is class i's)
    ordered = [p for _, p in sorted(pools, key=lambda x: (x[0], x[1].max_output_tokens))]
    order = {p.name: i for i, p in enumerate(ordered)}
    class_plans.sort(key=lambda c: order[c.name])
    return DynamoPlan(replace(base, pools=ordered + [p for _, p in standby]), class_plans, cfg)


def _period_choices(bundle, pool: PoolConfig, clocks: list, forecast: np.ndarray, mean_in: float, mean_out: float,
                    cfg: DynamoConfig) -> list[tuple[float, int, float | None] | None]:
    """Per period, the cheapest (energy rate W, instances, clock) of this TP that meets the SLOs, or None."""
    options = {f: InstanceCost.from_bundle(bundle, pool.tp, f) for f in clocks}
    best = []
    for rate in forecast:
        choices = [(option[1], option[0], f) for f, cost in options.items()
                   if (option := plan_option(cost, cost.idle_power() or 0.0, rate, mean_in, mean_out, pool, cfg)) is not None]
        best.append(min(choices) if choices else None)
    return best


def _static_schedule(by_tp: dict, period_s: float) -> list[tuple[float, int, float | None, int]] | None:
    """One TP for the whole run: the one with the least planned energy (periods are equally long)."""
    feasible = {tp: periods for tp, periods in by_tp.items() if all(p is not None for p in periods)}
    if not feasible:
        return None
    tp = min(feasible, key=lambda t: sum(p[0] for p in feasible[t]))
    return [(k * period_s, n, f, tp) for k, (_, n, f) in enumerate(feasible[tp])]


def _reshard_schedule(by_tp: dict, cfg: DynamoConfig) -> list[tuple[float, int, float | None, int]] | None:
    """Each period's cheapest TP, switching only when a period's saving repays the re-shard: the new
    layout's instances draw power through ``reshard_s`` while loading (estimated at the current
    layout's mean power per instance, which bounds idle power from above)."""
    periods = len(next(iter(by_tp.values())))
    schedule, previous = [], None
    for k in range(periods):
        feasible = {tp: choice[k] for tp, choice in by_tp.items() if choice[k] is not None}
        if not feasible:
            return None
        tp = min(feasible, key=lambda t: feasible[t][0])
        if previous is not None and tp != previous and previous in feasible:
            saving_j = (feasible[previous][0] - feasible[tp][0]) * cfg.period_s
            _, n_new, _ = feasible[tp]
            power_per_instance = feasible[previous][0] / max(1, feasible[previous][1])
            if saving_j <= cfg.reshard_s * n_new * power_per_instance:
                tp = previous
        _, n, f = feasible[tp]
        schedule.append((k * cfg.period_s, n, f, tp))
        previous = tp
    return schedule


@dataclass
class DynamoController:
    """A :class:`DynamoPlan` as a replay controller: it applies the planned clock, scale and
    re-shard changes at their times, scales out between them when queues build, and counts what
    it did."""

    plan: DynamoPlan
    pending: list[tuple[float, int, str, object]] = field(default_factory=list)  # (t, pool, kind, value)
    reconfigurations: int = 0
    clock_changes: int = 0
    scale_outs: int = 0
    reactive_scale_outs: int = 0
    reshards: int = 0
    next_check: float = 0.0

    def _react(self, t: float, state: ClusterState) -> None:
        """Queues building between decisions (forecast too low): one more instance, after warm-up."""
        cfg = self.plan.cfg
        for c_index in range(len(self.plan.classes)):
            p_index = state.redirect[c_index]  # the class's current layout
            members = state.members[p_index]
            active = members[: state.active[p_index]]
            # requests not yet through prefill: queued, or admitted and waiting for prefill budget
            waiting = max(len(state.instances[i].queue) + len(state.instances[i].prefilling) for i in active)
            # an activation already warming up (due within scale_out_s) answers the same queue
            pending_here = any(e[1] == c_index and e[2] == "active" and e[0] <= t + cfg.scale_out_s for e in self.pending)
            if waiting > cfg.reactive_queue and state.active[p_index] < len(members) and not pending_here:
                state.power_up(t, p_index, state.active[p_index] + 1)  # warms up now, takes requests after scale_out_s
                self.pending.append((t + cfg.scale_out_s, c_index, "active", (p_index, state.active[p_index] + 1)))
                self.pending.sort(key=lambda e: (e[0], e[1], e[2]))
                self.reactive_scale_outs += 1

    def __post_init__(self) -> None:
        pool_index = {p.name: i for i, p in enumerate(self.plan.config.pools)}
        for c_index, cls in enumerate(self.plan.classes):
            previous_n, previous_f, previous_tp = None, None, cls.tp
            for t, n, f, tp in cls.schedule:
                layout = pool_index[cls.layouts[tp]]
                if tp != previous_tp:  # re-shard: the new layout comes up with its own count and clock
                    self.pending.append((t, c_index, "reshard", (layout, n, f)))
                    previous_n, previous_f, previous_tp = n, f, tp
                    continue
                if f != previous_f:
                    self.pending.append((t, c_index, "clock", (layout, f)))
                if n != previous_n:
                    delay = self.plan.cfg.scale_out_s if previous_n is not None and n > previous_n else 0.0
                    if delay:
                        self.pending.append((t, c_index, "power", (layout, n)))
                    self.pending.append((t + delay, c_index, "active", (layout, n)))
                previous_n, previous_f = n, f
        self.pending.sort(key=lambda e: (e[0], e[1], e[2]))

    def next_time(self) -> float:
        """When the controller acts next, s: the next planned change or reactive check."""
        planned = self.pending[0][0] if self.pending else math.inf
        return min(planned, self.next_check)

    def act(self, t: float, state: ClusterState) -> None:
        """Apply the changes due at ``t``; when a reactive check is due, scale out classes whose
        queues build."""
        if t >= self.next_check:
            self._react(t, state)
            self.next_check = t + self.plan.cfg.reactive_check_s
        while self.pending and self.pending[0][0] <= t:
            _, c_index, kind, value = self.pending.pop(0)
            if kind == "reshard":
                layout, n, f = value
                state.reshard(t, c_index, layout, n, f, self.plan.cfg.reshard_s, "dynamollm", self.plan.cfg.power_off_inactive)
                self.reshards += 1
                self.reconfigurations += 1
                continue
            p_index, value = value
            if p_index != state.redirect[c_index]:
                continue  # meant for a layout the class has since re-sharded away from
            if kind == "power":  # warm-up of instances that take requests after scale_out_s
                state.power_up(t, p_index, value)
            elif kind == "clock":
                for i in state.members[p_index]:
                    if state.instances[i].clock != value:
                        state.set_clock(t, i, value, "dynamollm")
                self.clock_changes += 1
            else:
                if value > state.active[p_index] and t > 0:
                    self.scale_outs += 1
                state.set_active(t, p_index, value, "dynamollm", self.plan.cfg.power_off_inactive)
            self.reconfigurations += 1

    def describe(self) -> dict:
        """The settings, each class's layouts and clocks, and the counts of changes, for the
        replay summary's ``policy`` entry."""
        return {"name": "dynamollm", **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.plan.cfg).items()},
                "classes": [{"class": c.name, "tp": c.tp, "instances": c.instances, "gpus": c.gpus,
                             "tps_used": sorted({tp for *_, tp in c.schedule}),
                             "mean_active": float(np.mean([n for _, n, _, _ in c.schedule])),
                             "clocks_used": sorted({f for _, _, f, _ in c.schedule if f is not None})} for c in self.plan.classes],
                "reconfigurations": self.reconfigurations, "clock_changes": self.clock_changes, "scale_outs": self.scale_outs,
                "reactive_scale_outs": self.reactive_scale_outs, "reshards": self.reshards}


def baseline_for(plan: DynamoPlan, bundle: ModelBundle) -> ClusterConfig:
    """Static deployment with the same GPUs: one pool, smallest TP, highest clock, all active."""
    gpus = sum(c.gpus for c in plan.classes)
    tp = min(profiled_values(bundle, "tp") or [1]) or 1
    clock = max(profiled_values(bundle, "sm_clock_mhz"), key=lambda f: f or 0)
    template = plan.config.pools[0]
    pool = replace(template, name="baseline", tp=tp, instances=max(1, gpus // tp), sm_clock_mhz=clock,
                   max_input_tokens=1e12, max_output_tokens=1e12)
    return replace(plan.config, pools=[pool])
