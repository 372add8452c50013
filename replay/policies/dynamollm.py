"""DynamoLLM: energy-minimizing reconfiguration of per-class instance pools.

Requests are binned by input and output length into classes (default short/medium/long on both
axes), each served by its own pool.  Every ``period_s`` the controller forecasts each class's
arrival rate from the past only (the larger of the previous period's rate and its last minute's;
the first period uses its own first minute)
and picks, from the profiled latency and power models, the number of active instances and the
SM clock that minimize energy while an instance's capacity at that clock, with headroom
(``utilization_target``), covers the forecast and the TBT/TTFT SLOs hold.  Each pool's TP is
fixed for the run (re-sharding is not modelled): the TP that minimizes the planned energy over
the whole run.  A newly activated instance takes requests only after ``scale_out_s``.

Capacity model of an instance for a class with mean input I and output O: the largest decode
batch B whose iteration (with a share of prefill interference) stays under the TBT SLO; each
request then costs prefill(I) plus O iterations shared by B requests, so it serves
mu = 1 / (prefill(I) + O * decode(B) / B) requests/s, drawing the decode power at batch B while busy.

The baseline is the usual static deployment: one pool, the same GPUs, the smallest TP, the
highest clock, every instance active.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd

from ..config import ClusterConfig, PoolConfig
from ..cost_model import InstanceCost

CLASS_NAMES = ("S", "M", "L")


@dataclass
class DynamoConfig:
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


def profiled_values(bundle, key: str) -> list:
    model = bundle.find("latency_s", "decode")
    values = sorted({g["key"][key] for g in model.groups if key in g["key"]})
    return values or [None]


def classify(inputs: np.ndarray, outputs: np.ndarray, cfg: DynamoConfig) -> np.ndarray:
    i = np.searchsorted(np.asarray(cfg.input_bins), inputs, side="left")
    o = np.searchsorted(np.asarray(cfg.output_bins), outputs, side="left")
    return i * (len(cfg.output_bins) + 1) + o


def class_name(code: int, cfg: DynamoConfig) -> str:
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
    code: int
    name: str
    tp: int
    instances: int
    schedule: list[tuple[float, int, float | None]]  # (t, active instances, clock)


@dataclass
class DynamoPlan:
    config: ClusterConfig
    classes: list[ClassPlan]
    cfg: DynamoConfig

    def controller(self) -> "DynamoController":
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


def plan(trace: pd.DataFrame, bundle, base: ClusterConfig, cfg: DynamoConfig) -> DynamoPlan:
    arrival = trace["arrival_s"].to_numpy(dtype=np.float64)
    inputs = trace["input_tokens"].to_numpy()
    outputs = trace["output_tokens"].to_numpy()
    codes = classify(inputs, outputs, cfg)
    periods = max(1, int(math.ceil((arrival[-1] + 1e-9) / cfg.period_s)))
    template = base.pools[0]
    tps = list(cfg.tps or profiled_values(bundle, "tp"))
    clocks = list(cfg.clocks or profiled_values(bundle, "sm_clock_mhz"))
    pools, class_plans = [], []
    for code in sorted(np.unique(codes)):
        mask = codes == code
        mean_in, mean_out = float(inputs[mask].mean()), float(outputs[mask].mean())
        forecast = _rates(arrival, mask, cfg.period_s, periods)
        best = None
        for tp in tps:
            pool = replace(template, tp=tp or 1)
            options = {f: InstanceCost.from_bundle(bundle, pool.tp, f) for f in clocks}
            total, schedule = 0.0, []
            for k, rate in enumerate(forecast):
                choices = []
                for f, cost in options.items():
                    option = plan_option(cost, cost.idle_power() or 0.0, rate, mean_in, mean_out, pool, cfg)
                    if option is not None:
                        choices.append((option[1], option[0], f))
                if not choices:
                    total = math.inf
                    break
                energy, n, f = min(choices)
                total += energy
                schedule.append((k * cfg.period_s, n, f))
            if best is None or total < best[0]:
                best = (total, tp, schedule)
        total, tp, schedule = best
        if not math.isfinite(total):
            raise ValueError(f"class {class_name(code, cfg)}: no TP/clock meets the SLOs (TTFT {template.ttft_slo_s}s, "
                             f"TBT {template.tbt_slo_s}s) for mean input {mean_in:.0f}, output {mean_out:.0f}")
        n_max = max(n for _, n, _ in schedule) + cfg.spare_instances
        lo_in = ([0] + list(cfg.input_bins))[code // (len(cfg.output_bins) + 1)]
        hi_in = (list(cfg.input_bins) + [1e12])[code // (len(cfg.output_bins) + 1)]
        hi_out = (list(cfg.output_bins) + [1e12])[code % (len(cfg.output_bins) + 1)]
        name = class_name(code, cfg)
        pools.append((lo_in, replace(template, name=name, tp=tp or 1, instances=n_max, sm_clock_mhz=schedule[0][2],
                                      max_input_tokens=hi_in, max_output_tokens=hi_out, models=None)))
        class_plans.append(ClassPlan(int(code), name, tp or 1, n_max, schedule))
    # routing takes the first pool that accepts a request: order pools by (input bin, output bin)
    ordered = [p for _, p in sorted(pools, key=lambda x: (x[0], x[1].max_output_tokens))]
    order = {p.name: i for i, p in enumerate(ordered)}
    class_plans.sort(key=lambda c: order[c.name])
    return DynamoPlan(replace(base, pools=ordered), class_plans, cfg)


@dataclass
class DynamoController:
    plan: DynamoPlan
    pending: list[tuple[float, int, str, object]] = field(default_factory=list)  # (t, pool, kind, value)
    reconfigurations: int = 0
    clock_changes: int = 0
    scale_outs: int = 0
    reactive_scale_outs: int = 0
    next_check: float = 0.0

    def _react(self, t: float, state) -> None:
        """Queues building between decisions (forecast too low): one more instance, after warm-up."""
        cfg = self.plan.cfg
        for p_index, members in enumerate(state.members):
            active = members[: state.active[p_index]]
            # requests not yet through prefill: queued, or admitted and waiting for prefill budget
            waiting = max(len(state.instances[i].queue) + len(state.instances[i].prefilling) for i in active)
            # an activation already warming up (due within scale_out_s) answers the same queue
            pending_here = any(e[1] == p_index and e[2] == "active" and e[0] <= t + cfg.scale_out_s for e in self.pending)
            if waiting > cfg.reactive_queue and state.active[p_index] < len(members) and not pending_here:
                self.pending.append((t + cfg.scale_out_s, p_index, "active", state.active[p_index] + 1))
                self.pending.sort(key=lambda e: (e[0], e[1], e[2]))
                self.reactive_scale_outs += 1

    def __post_init__(self) -> None:
        for p_index, cls in enumerate(self.plan.classes):
            previous_n, previous_f = None, None
            for t, n, f in cls.schedule:
                if f != previous_f:
                    self.pending.append((t, p_index, "clock", f))
                if n != previous_n:
                    delay = self.plan.cfg.scale_out_s if previous_n is not None and n > previous_n else 0.0
                    self.pending.append((t + delay, p_index, "active", n))
                previous_n, previous_f = n, f
        self.pending.sort(key=lambda e: (e[0], e[1], e[2]))

    def next_time(self) -> float:
        planned = self.pending[0][0] if self.pending else math.inf
        return min(planned, self.next_check)

    def act(self, t: float, state) -> None:
        if t >= self.next_check:
            self._react(t, state)
            self.next_check = t + self.plan.cfg.reactive_check_s
        while self.pending and self.pending[0][0] <= t:
            _, p_index, kind, value = self.pending.pop(0)
            if kind == "clock":
                for i in state.members[p_index]:
                    if state.instances[i].clock != value:
                        state.set_clock(t, i, value, "dynamollm")
                self.clock_changes += 1
            else:
                if value > state.active[p_index] and t > 0:
                    self.scale_outs += 1
                state.set_active(t, p_index, value, "dynamollm")
            self.reconfigurations += 1

    def describe(self) -> dict:
        return {"name": "dynamollm", **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.plan.cfg).items()},
                "classes": [{"class": c.name, "tp": c.tp, "instances": c.instances,
                             "mean_active": float(np.mean([n for _, n, _ in c.schedule])),
                             "clocks_used": sorted({f for _, _, f in c.schedule if f is not None})} for c in self.plan.classes],
                "reconfigurations": self.reconfigurations, "clock_changes": self.clock_changes, "scale_outs": self.scale_outs,
                "reactive_scale_outs": self.reactive_scale_outs}


def baseline_for(plan: DynamoPlan, bundle) -> ClusterConfig:
    """Static deployment with the same GPUs: one pool, smallest TP, highest clock, all active."""
    gpus = sum(c.tp * c.instances for c in plan.classes)
    tp = min(profiled_values(bundle, "tp") or [1]) or 1
    clock = max(profiled_values(bundle, "sm_clock_mhz"), key=lambda f: f or 0)
    template = plan.config.pools[0]
    pool = replace(template, name="baseline", tp=tp, instances=max(1, gpus // tp), sm_clock_mhz=clock,
                   max_input_tokens=1e12, max_output_tokens=1e12)
    return replace(plan.config, pools=[pool])
