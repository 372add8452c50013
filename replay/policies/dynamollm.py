"""DynamoLLM: energy-minimizing reconfiguration of per-class instance pools, on three timescales.

Requests are binned by input and *predicted* output length into classes (default short/medium/
long on both axes), each served by its own pool.  The output length is not known at arrival: by
default (``output_length = "predicted"``) it is predicted from the input length and the outputs
of earlier requests (:mod:`replay.policies.output_predictor`); ``"oracle"`` routes by the true
length instead (what this module did before; only for comparison).  A request that outgrows its
predicted class is served in place, late (no KV migration is modelled), and counted
(``policy.outgrown``, with those requests' SLO attainment).  Routing is by label: each class pool
accepts the requests labelled with its class (:attr:`DynamoPlan.labels`, passed to the replay as
the per-request label ``route_requests`` matches against a pool's ``priority``), whatever their
true length; a replay routed otherwise is refused.  Pools are made for the classes some request is
predicted into.

The controller acts on three timescales, as the paper's hierarchy of cluster, pool and instance
managers (each period configurable):

* instance count, every ``scale_period_s`` (30 min): per class the instances (and so GPUs) to hold
  for the next period, sized from the past only - the peak of the previous scale period's
  ``period_s`` rates and its last minute - at the TP and clock of least energy that meet the
  TBT/TTFT SLOs with ``utilization_target`` headroom.  A new instance powers on at the decision
  and takes requests after ``scale_out_s`` (instance start); with ``power_off_inactive`` instances
  beyond the active count power off once drained.  Between decisions, a queue building on an
  active instance (more than ``reactive_queue`` waiting, checked every ``reactive_check_s``) adds
  one instance (after ``scale_out_s``, up to the ``spare_instances`` the class holds beyond its
  planned peak) until the next scale decision, which sets the count again;
* TP re-shard, every ``period_s`` (5 min), with ``reshard``: the class's GPUs re-laid out as the
  TP of least energy for the period's forecast rate, switching only when the period's saving
  repays the re-shard: the new layout loads its weights for ``reshard_s`` (None: the model's weight
  bytes per GPU / ``weight_load_gb_s``; 30 s when the bundle names no model shape) before it
  serves.  Without ``reshard`` the TP of the first decision is kept for the run;
* SM clock, every ``clock_period_s`` (5 s): per pool the clock of least energy whose capacity,
  with headroom, covers the class's arrival rate over the last ``clock_window_s`` on the instances
  now active (the highest clock while queues build).  A clock change stalls each powered instance
  of the pool: ``clock_switch_s`` per GPU, serialised over the GPUs of a node (``gpus_per_node``),
  so the k-th GPU switched on a node waits k x ``clock_switch_s``.  The default 5 ms per GPU is an
  assumption (not measured here, and not a figure taken from the DynamoLLM paper).

Every change is an event (``ClusterState.events``: kind, time, pool, from/to values, cost).

Forecasts use the past only (arrival times and, for the capacity model, the lengths of requests
that arrived before the decision); the first decision has no past and uses the trace's first
minute as a stand-in for the history a running service would have.

Capacity model of an instance for a class with mean input I and output O: the largest decode
batch B whose iteration (with a share of prefill interference) stays under the TBT SLO; each
request then costs prefill(I) plus O iterations shared by B requests, so it serves
mu = 1 / (prefill(I) + O * decode(B) / B) requests/s, drawing the decode power at batch B while busy.

Baselines (:mod:`replay.policies.baselines`): ``peak_static`` (one pool sized for the trace's
peak at the highest clock, the paper's baseline) and ``best_static`` (the static deployment of
least energy meeting the SLOs, found by replaying candidates).  :func:`baseline_for` is the old
comparison - DynamoLLM's own GPUs all at the highest clock - kept as ``same_gpus_static``.
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
from .output_predictor import OutputPredictor, accuracy_report, output_class

if TYPE_CHECKING:
    from characterize.model_io import ModelBundle
    from toolkit.validation import Settings

    from ..engine import ClusterState

CLASS_NAMES = ("S", "M", "L")
# Bounds of the [dynamollm] settings (inclusive), beside those shared with the pools (replay.config)
MIN_POLICY_STEP_S = 1.0  # period_s, scale_period_s, reactive_check_s
MIN_CLOCK_PERIOD_S = 0.1  # clock_period_s, clock_window_s
MAX_POLICY_S = 7 * 86_400.0  # periods, scale_out_s, reshard_s: a week
MAX_REACTIVE_QUEUE = 1_000_000
MAX_SWITCH_S = 60.0  # clock_switch_s per GPU
MAX_GPUS_PER_NODE = 1024
MAX_LOAD_GB_S = 10_000.0
MAX_PRICE = 10_000.0  # $/GPU-hour, $/kWh
MAX_INTENSITY = 10_000.0  # g/kWh (coal is ~1,000), g/GPU-hour
DEFAULT_RESHARD_S = 30.0  # re-shard time when the model's weight bytes are not known (assumed)
OUTPUT_LENGTH_MODES = ("predicted", "oracle")


@dataclass
class DynamoConfig:
    """DynamoLLM settings (the ``[dynamollm]`` table): the length-class bounds (tokens); the three
    control periods (s) - TP/forecast ``period_s``, instance count ``scale_period_s``, clock
    ``clock_period_s`` - and their costs (instance start ``scale_out_s``, re-shard ``reshard_s`` or
    weights / ``weight_load_gb_s``, clock switch ``clock_switch_s`` per GPU serialised over
    ``gpus_per_node``); utilization target; the TPs and SM clocks to choose from (None: the
    profiled ones); instance limits per class; reactive scale-out; output-length prediction; the
    baselines' SLO target and peak window; and the carbon and cost accounting of the comparison."""

    input_bins: tuple[float, ...] = (1024, 4096)
    output_bins: tuple[float, ...] = (128, 512)
    period_s: float = 300.0  # TP re-shard decisions and rate forecasts (the paper's pool manager: ~5 min)
    scale_period_s: float = 1800.0  # instance-count decisions (the paper's cluster manager: ~30 min)
    clock_period_s: float = 5.0  # SM clock decisions (the paper's instance manager: ~5 s)
    clock_window_s: float = 30.0  # arrival rate a clock decision sees: the last this many seconds
    utilization_target: float = 0.7
    scale_out_s: float = 30.0  # instance start: powered, serving nothing (assumed: engine start + weight load)
    tps: tuple[int, ...] | None = None  # default: the TPs the models were fitted for
    clocks: tuple[float, ...] | None = None  # default: the profiled SM clocks
    max_instances_per_class: int = 64
    spare_instances: int = 1  # provisioned per class beyond the plan's peak, for reactive scale-out
    reactive_check_s: float = 10.0  # between scale decisions: scale out when queues build
    reactive_queue: int = 4  # requests waiting for prefill on an active instance that trigger a scale-out
    reshard: bool = False  # also choose each class's TP every period_s (re-sharding its GPUs)
    reshard_s: float | None = None  # a new TP layout loads this long; None: weight bytes per GPU / weight_load_gb_s
    weight_load_gb_s: float = 5.0  # GB/s one GPU loads its weight shard at (assumed: local NVMe class)
    clock_switch_s: float = 0.005  # stall per GPU of an SM clock change (assumed, see module docstring)
    gpus_per_node: int = 8  # clock switches are serialised over the GPUs of a node
    power_off_inactive: bool = True  # inactive instances' GPUs power off (the plan counts active ones only)
    output_length: str = "predicted"  # route by the predicted output length, or "oracle": the true one
    predictor_quantile: float = 0.5  # the predictor's quantile of past outputs per input bucket
    predictor_refit_s: float = 300.0  # the predictor is refitted this often ...
    predictor_window_s: float = 3600.0  # ... on the requests of this past window ...
    predictor_lag_s: float = 60.0  # ... less those of the last lag_s (not finished yet)
    predictor_prior_tokens: float | None = None  # prediction before any past; None: the output bins' geometric middle
    baselines: bool = True  # replay peak_static and best_static beside DynamoLLM (the CLI)
    slo_target: float = 0.99  # SLO attainment a baseline must reach to count as meeting the SLOs
    peak_window_s: float = 60.0  # peak_static is sized for the busiest window of this length
    # Accounting of the comparison (every run alike; facility energy = IT energy x the cluster's pue):
    carbon_g_per_kwh: float = 366.0  # US grid 2023: 1.53 Gt CO2 / 4.18 PWh (EIA FAQ "How much carbon
    #                                   dioxide is produced per kilowatthour of U.S. electricity generation?")
    embodied_g_per_gpu_hour: float = 0.0  # embodied carbon per GPU-hour: off by default (no figure built in)
    gpu_hour_usd: float = 2.5  # H100 SXM on-demand at specialty clouds, $2.49-3.99 (pricegpu.pages.dev, 2026)
    energy_usd_per_kwh: float = 0.0806  # US industrial average 2023, 8.06 cents/kWh (EIA, via Statista)

    @classmethod
    def settings(cls, table: Settings) -> dict:
        """The ``[dynamollm]`` table (a :class:`toolkit.validation.Settings`) checked, as keyword
        arguments of this class (lists for the tuples; absent keys take the defaults)."""
        d = cls()
        # class names are letters (S/M/L) or one digit per axis: at most 10 classes, 9 bounds
        bins = dict(max_length=9, increasing=True, integer=True, minimum=1, maximum=MAX_TOKENS)
        seconds = dict(minimum=0, maximum=MAX_POLICY_S)
        step = dict(minimum=MIN_POLICY_STEP_S, maximum=MAX_POLICY_S)
        fine = dict(minimum=MIN_CLOCK_PERIOD_S, maximum=MAX_POLICY_S)
        positive = dict(minimum=0, exclusive_minimum=True)
        values = {
            "input_bins": table.numbers("input_bins", list(d.input_bins), **bins),
            "output_bins": table.numbers("output_bins", list(d.output_bins), **bins),
            # a period, or a reactive check, shorter than a second only multiplies controller calls
            "period_s": table.number("period_s", d.period_s, **step),
            "scale_period_s": table.number("scale_period_s", d.scale_period_s, **step),
            "clock_period_s": table.number("clock_period_s", d.clock_period_s, **fine),
            "clock_window_s": table.number("clock_window_s", d.clock_window_s, **fine),
            "utilization_target": table.number("utilization_target", d.utilization_target, minimum=0,
                                               exclusive_minimum=True, maximum=1),
            "scale_out_s": table.number("scale_out_s", d.scale_out_s, **seconds),
            "tps": table.numbers("tps", None, min_length=1, integer=True, minimum=1, maximum=MAX_PARALLEL),
            "clocks": table.numbers("clocks", None, min_length=1, minimum=0, exclusive_minimum=True, maximum=MAX_CLOCK_MHZ),
            "max_instances_per_class": table.number("max_instances_per_class", d.max_instances_per_class, integer=True,
                                                    minimum=1, maximum=MAX_INSTANCES),
            "spare_instances": table.number("spare_instances", d.spare_instances, integer=True, minimum=0,
                                            maximum=MAX_INSTANCES),
            "reactive_check_s": table.number("reactive_check_s", d.reactive_check_s, **step),
            "reactive_queue": table.number("reactive_queue", d.reactive_queue, integer=True, minimum=1,
                                           maximum=MAX_REACTIVE_QUEUE),
            "reshard": table.flag("reshard", d.reshard),
            "reshard_s": table.number("reshard_s", None, **seconds),
            "weight_load_gb_s": table.number("weight_load_gb_s", d.weight_load_gb_s, **positive, maximum=MAX_LOAD_GB_S),
            "clock_switch_s": table.number("clock_switch_s", d.clock_switch_s, minimum=0, maximum=MAX_SWITCH_S),
            "gpus_per_node": table.number("gpus_per_node", d.gpus_per_node, integer=True, minimum=1,
                                          maximum=MAX_GPUS_PER_NODE),
            "power_off_inactive": table.flag("power_off_inactive", d.power_off_inactive),
            "output_length": table.choice("output_length", OUTPUT_LENGTH_MODES, d.output_length),
            "predictor_quantile": table.number("predictor_quantile", d.predictor_quantile, minimum=0, maximum=1),
            "predictor_refit_s": table.number("predictor_refit_s", d.predictor_refit_s, **step),
            "predictor_window_s": table.number("predictor_window_s", d.predictor_window_s, **step),
            "predictor_lag_s": table.number("predictor_lag_s", d.predictor_lag_s, **seconds),
            "predictor_prior_tokens": table.number("predictor_prior_tokens", None, minimum=1, maximum=MAX_TOKENS),
            "baselines": table.flag("baselines", d.baselines),
            "slo_target": table.number("slo_target", d.slo_target, **positive, maximum=1),
            "peak_window_s": table.number("peak_window_s", d.peak_window_s, **step),
            "carbon_g_per_kwh": table.number("carbon_g_per_kwh", d.carbon_g_per_kwh, minimum=0, maximum=MAX_INTENSITY),
            "embodied_g_per_gpu_hour": table.number("embodied_g_per_gpu_hour", d.embodied_g_per_gpu_hour, minimum=0,
                                                    maximum=MAX_INTENSITY),
            "gpu_hour_usd": table.number("gpu_hour_usd", d.gpu_hour_usd, minimum=0, maximum=MAX_PRICE),
            "energy_usd_per_kwh": table.number("energy_usd_per_kwh", d.energy_usd_per_kwh, minimum=0, maximum=MAX_PRICE),
        }
        return {k: v for k, v in values.items() if v is not None}

    def predictor(self) -> OutputPredictor:
        """The output-length predictor these settings describe."""
        bins = [float(b) for b in self.output_bins]
        prior = self.predictor_prior_tokens
        if prior is None:  # the geometric middle of the bins: the middle class with the defaults (128, 512 -> 256)
            prior = math.sqrt(bins[0] * bins[-1]) if bins else 256.0
        return OutputPredictor(refit_s=self.predictor_refit_s, window_s=self.predictor_window_s, lag_s=self.predictor_lag_s,
                               quantile=self.predictor_quantile, prior_tokens=prior)


def profiled_values(bundle: ModelBundle, key: str) -> list:
    """The distinct values of group key ``key`` (``tp``, ``sm_clock_mhz``) in the bundle's decode
    latency model, sorted; where it is not grouped by that key, those of the model's recorded
    support (the TPs fitted on; the lowest and highest clock profiled); else ``[None]``."""
    model = bundle.find("latency_s", "decode")
    values = sorted({g["key"][key] for g in model.groups if key in g["key"]})
    if not values:
        support = (getattr(model, "support", None) or {}).get(key) or []
        values = sorted({float(v) if key == "sm_clock_mhz" else int(v) for v in support})
    return values or [None]


def classify(inputs: np.ndarray, outputs: np.ndarray, cfg: DynamoConfig) -> np.ndarray:
    """Class code per request: input bin * (output bins + 1) + output bin, where a length equal
    to a bound falls in the bin below it.  ``outputs`` are the lengths routed by: predicted ones,
    unless the oracle is asked for."""
    i = np.searchsorted(np.asarray(cfg.input_bins), inputs, side="left")
    o = output_class(outputs, cfg.output_bins)
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


@dataclass(frozen=True)
class Capacity:
    """One instance of a TP at a clock, for a class's mean lengths: requests/s at full batch (``mu``),
    busy and idle power (W), and whether its prefill keeps within half the TTFT SLO."""

    mu: float
    busy_w: float
    idle_w: float
    prefill_ok: bool

    def energy_rate(self, n: int, rate: float) -> float:
        """Mean power (W) of ``n`` instances serving ``rate`` requests/s."""
        u = min(1.0, rate / (n * self.mu)) if self.mu > 0 else 1.0
        return n * (u * self.busy_w + (1 - u) * self.idle_w)

    def covers(self, n: int, rate: float, utilization: float) -> bool:
        """Whether ``n`` instances serve ``rate`` within the utilization target and the TTFT bound."""
        return self.prefill_ok and rate <= n * self.mu * utilization


def cheapest(options: dict, rate: float, cfg: DynamoConfig, n: int | None = None) -> tuple[float, int, float | None] | None:
    """(energy rate W, instances, clock) of least energy among ``options`` ({clock: Capacity}) that
    serves ``rate``: with ``n`` instances given, the clocks they suffice at; else each clock's fewest
    instances (at most ``max_instances_per_class``).  None when nothing does."""
    best = None
    for f, cap in options.items():
        if not cap.prefill_ok or cap.mu <= 0:
            continue
        count = n if n is not None else max(1, math.ceil(rate / (cap.mu * cfg.utilization_target)))
        if count > cfg.max_instances_per_class and n is None:
            continue
        if not cap.covers(count, rate, cfg.utilization_target):
            continue
        option = (cap.energy_rate(count, rate), count, f)
        if best is None or option[:2] < best[:2]:
            best = option
    return best


@dataclass
class ClassPlan:
    """One length class's plan: its code and name, the schedule of (period start s, active
    instances, SM clock MHz or None, TP) per ``period_s``, the GPUs it holds, the pool name of each
    TP layout, each layout's re-shard time (s), the capacity options the clock controller picks
    from (per period, TP and clock) and the arrival times of its requests (for the rate it sees)."""

    code: int
    name: str
    schedule: list[tuple[float, int, float | None, int]]  # (t, active instances, clock, TP)
    gpus: int  # GPUs the class holds (every layout shares them)
    layouts: dict[int, str] = field(default_factory=dict)  # TP -> pool name of that layout
    reshard_s: dict[int, float] = field(default_factory=dict)  # TP -> load time of that layout
    options: list[dict] = field(default_factory=list, repr=False)  # per period: {tp: {clock: Capacity}}
    arrivals: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)  # sorted, of requests routed here

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
    classes' plans, the settings it was made with, each request's routing label (the class name of
    its predicted class: pass it as ``priority`` to :func:`replay.engine.replay`) and the pool index
    that gives, and how the predicted classes compare with the true ones."""

    config: ClusterConfig
    classes: list[ClassPlan]
    cfg: DynamoConfig
    labels: np.ndarray | None = None
    route: np.ndarray | None = None
    prediction: dict = field(default_factory=dict)
    predicted_bin: np.ndarray | None = None
    true_bin: np.ndarray | None = None
    scale_every: int = 1  # periods between instance-count decisions

    def controller(self) -> "DynamoController":
        """A fresh controller that carries out this plan during a replay."""
        return DynamoController(self)

    def replay(self, trace: pd.DataFrame, bundle: ModelBundle, **kwargs):
        """Replay ``trace`` (the one planned) under this plan: its cluster, its controller, and its
        routing labels (the request's ``priority`` column of the result is the trace's, if any)."""
        from ..engine import replay

        result = replay(trace, bundle, self.config, priority=self.labels, controller=self.controller(), **kwargs)
        result.requests["priority"] = trace["priority"].to_numpy(dtype=object) if "priority" in trace else None
        return result


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


def _past_means(times: np.ndarray, inputs: np.ndarray, outputs: np.ndarray, period_s: float, periods: int,
                nominal: tuple[float, float], recent_s: float = 60.0) -> list[tuple[float, float]]:
    """(mean input, mean output) per period of one class's requests (``times`` sorted), from those
    that arrived before the period (period 0: its first ``recent_s``, as the rate forecast; a class
    without past requests: ``nominal``)."""
    cum_in, cum_out = np.cumsum(inputs, dtype=np.float64), np.cumsum(outputs, dtype=np.float64)
    means = []
    for k in range(periods):
        seen = int(np.searchsorted(times, k * period_s if k else min(recent_s, period_s), side="left"))
        means.append((cum_in[seen - 1] / seen, cum_out[seen - 1] / seen) if seen else nominal)
    return means


def _nominal(code: int, cfg: DynamoConfig) -> tuple[float, float]:
    """Mean lengths assumed for a class before any of its requests are seen: the middle of its
    bounds (the open top bin: up to twice its lower bound)."""
    n_out = len(cfg.output_bins) + 1

    def middle(bounds, index):
        lo = ([0.0] + [float(b) for b in bounds])[index]
        hi = ([float(b) for b in bounds] + [max(2 * lo, 2.0)])[index]
        return max(1.0, (lo + hi) / 2)

    return middle(cfg.input_bins, code // n_out), middle(cfg.output_bins, code % n_out)


def reshard_seconds(cfg: DynamoConfig, pool: PoolConfig, bundle: ModelBundle | None) -> float:
    """How long a layout of ``pool`` (its TP) loads its weights: ``reshard_s`` when set, else the
    weight bytes one GPU holds / ``weight_load_gb_s`` (GPUs load their shards in parallel), or
    ``DEFAULT_RESHARD_S`` when no model shape is known."""
    if cfg.reshard_s is not None:
        return float(cfg.reshard_s)
    from ..memory_planner import pool_plan

    memory = pool_plan(pool, bundle)
    return memory.weight_bytes / (cfg.weight_load_gb_s * 1e9) if memory is not None else DEFAULT_RESHARD_S


def predict_lengths(trace: pd.DataFrame, cfg: DynamoConfig) -> np.ndarray:
    """The output length each request is routed by: predicted from the past (default), or the true
    one with ``output_length = "oracle"``."""
    outputs = trace["output_tokens"].to_numpy(dtype=np.float64)
    if cfg.output_length == "oracle":
        return outputs
    return cfg.predictor().predict(trace["arrival_s"].to_numpy(dtype=np.float64),
                                   trace["input_tokens"].to_numpy(dtype=np.float64), outputs)


def plan(trace: pd.DataFrame, bundle: ModelBundle, base: ClusterConfig, cfg: DynamoConfig) -> DynamoPlan:
    """Plan ``trace`` (arrival_s, input_tokens, output_tokens): classes by input and predicted
    output length, each a pool modelled on ``base``'s first pool, and per class the instance count
    every ``scale_period_s`` and the TP every ``period_s`` (module docstring), from the past only.
    Raises ``ValueError`` when no TP and clock meet a class's SLOs."""
    arrival = trace["arrival_s"].to_numpy(dtype=np.float64)
    inputs = trace["input_tokens"].to_numpy()
    outputs = trace["output_tokens"].to_numpy()
    routed_by = predict_lengths(trace, cfg)
    predicted_bin, true_bin = output_class(routed_by, cfg.output_bins), output_class(outputs, cfg.output_bins)
    codes = classify(inputs, routed_by, cfg)
    period = cfg.period_s
    per_scale = max(1, int(round(cfg.scale_period_s / period)))  # scale decisions fall on period boundaries
    periods = max(1, int(math.ceil((arrival[-1] + 1e-9) / period)))
    template = base.pools[0]
    tps = list(cfg.tps or profiled_values(bundle, "tp"))
    clocks = list(cfg.clocks or profiled_values(bundle, "sm_clock_mhz"))
    costs = {(tp, f): InstanceCost.from_bundle(bundle, tp or 1, f) for tp in tps for f in clocks}
    pool_of = {tp: replace(template, tp=tp or 1) for tp in tps}
    load_s = {tp: reshard_seconds(cfg, pool_of[tp], bundle) for tp in tps}
    capacity_cache: dict = {}

    def capacity(tp, f, mean_in, mean_out) -> Capacity:
        key = (tp, f, round(mean_in), round(mean_out))
        if key not in capacity_cache:
            cost = costs[(tp, f)]
            mu, busy_w, prefill = instance_capacity(cost, mean_in, mean_out, pool_of[tp])
            capacity_cache[key] = Capacity(mu, busy_w, cost.idle_power() or 0.0, prefill <= pool_of[tp].ttft_slo_s / 2)
        return capacity_cache[key]

    pools, standby, class_plans = [], [], []
    for code in sorted(np.unique(codes)):
        mask = codes == code
        name = class_name(code, cfg)
        order = np.argsort(arrival[mask], kind="stable")
        times = arrival[mask][order]
        forecast = _rates(arrival, mask, period, periods)
        realized = np.bincount((times // period).astype(np.int64), minlength=periods)[:periods] / period
        means = _past_means(times, inputs[mask][order], outputs[mask][order], period, periods, _nominal(code, cfg))
        options = [{tp: {f: capacity(tp, f, *means[k]) for f in clocks} for tp in tps} for k in range(periods)]
        schedule = _schedule(options, forecast, realized, per_scale, load_s, cfg)
        if schedule is None:
            mean_in, mean_out = float(inputs[mask].mean()), float(outputs[mask].mean())
            raise ValueError(f"class {name}: no TP/clock meets the SLOs (TTFT {template.ttft_slo_s}s, "
                             f"TBT {template.tbt_slo_s}s) for mean input {mean_in:.0f}, output {mean_out:.0f}")
        used = list(dict.fromkeys(tp for *_, tp in schedule))  # in order of first use
        step = math.lcm(*[tp or 1 for tp in used])
        gpus = max((n + cfg.spare_instances) * (tp or 1) for _, n, _, tp in schedule)
        gpus = -(-gpus // step) * step
        lo_in = ([0] + list(cfg.input_bins))[code // (len(cfg.output_bins) + 1)]
        layouts = {tp: (name if i == 0 else f"{name}@tp{tp}") for i, tp in enumerate(used)}
        for i, tp in enumerate(used):
            clock = next(f for _, _, f, t in schedule if t == tp)
            # routed by label (the predicted class), never by the true length: the pool accepts any length
            pool = replace(template, name=layouts[tp], tp=tp or 1, instances=gpus // (tp or 1), sm_clock_mhz=clock,
                           max_input_tokens=1e12, max_output_tokens=1e12, models=None, standby=i > 0, priority=name)
            (pools if i == 0 else standby).append(((lo_in, int(code)), pool))
        class_plans.append(ClassPlan(int(code), name, schedule, gpus, layouts, {tp: load_s[tp] for tp in used}, options, times))
    # pools by (input bin, output bin); standby layouts, never routed to, after every routed pool
    # (pool i < classes is class i's)
    ordered = [p for _, p in sorted(pools, key=lambda x: x[0])]
    index = {p.name: i for i, p in enumerate(ordered)}
    class_plans.sort(key=lambda c: index[c.name])
    names = np.array([class_name(int(c), cfg) for c in range(int(codes.max()) + 1)], dtype=object)
    labels = names[codes]
    route = np.array([index.get(n, -1) for n in names], dtype=np.int64)[codes] if len(codes) else np.empty(0, dtype=np.int64)
    prediction = {"output_length": cfg.output_length, **accuracy_report(predicted_bin, true_bin)}
    return DynamoPlan(replace(base, pools=ordered + [p for _, p in standby]), class_plans, cfg, labels, route, prediction,
                      predicted_bin, true_bin, per_scale)


def _schedule(options: list[dict], forecast: np.ndarray, realized: np.ndarray, per_scale: int, load_s: dict,
              cfg: DynamoConfig) -> list[tuple[float, int, float | None, int]] | None:
    """Per period: (start s, active instances, starting clock, TP).  Every ``per_scale`` periods the
    instance count: the cheapest (TP, clock, count) for the peak of the previous scale period's
    rates and the latest forecast (the TP kept from the first decision unless ``reshard``); in
    between, with ``reshard``, the TP of least energy on the GPUs held, switched only when the
    period's saving repays loading the new layout (estimated at the current layout's mean power per
    instance, which bounds idle power from above).  None when a scale decision finds nothing that
    meets the SLOs."""
    schedule: list = []
    tp = gpus = None
    for k, opts in enumerate(options):
        if k % per_scale == 0:
            past = realized[max(0, k - per_scale):k]
            rate = max(float(forecast[k]), float(past.max()) if len(past) else 0.0)
            choices = {t: c for t, o in opts.items() if (c := cheapest(o, rate, cfg)) is not None}
            if not choices:
                return None
            if tp is None or (cfg.reshard and tp not in choices):
                tp = min(choices, key=lambda t: choices[t][:2])
            elif cfg.reshard:
                tp = _switch(tp, min(choices, key=lambda t: choices[t][:2]), choices, load_s, cfg)
            if tp not in choices:  # the TP fixed for the run cannot serve this load: as many as allowed
                gpus = cfg.max_instances_per_class * (tp or 1)
            else:
                gpus = choices[tp][1] * (tp or 1)
        elif cfg.reshard:
            rate = float(forecast[k])
            held = {t: gpus // (t or 1) for t in opts if gpus // (t or 1) >= 1}
            choices = {t: c for t in held if (c := cheapest(opts[t], rate, cfg, held[t])) is not None}
            if choices:
                tp = _switch(tp, min(choices, key=lambda t: choices[t][:2]), choices, load_s, cfg) if tp in choices else \
                    min(choices, key=lambda t: choices[t][:2])
        n = max(1, gpus // (tp or 1))
        choice = cheapest(opts[tp], float(forecast[k]), cfg, n)
        clock = choice[2] if choice is not None else max(opts[tp], key=lambda f: f or 0)
        schedule.append((k * cfg.period_s, n, clock, tp))
    return schedule


def _switch(current: int, best: int, choices: dict, load_s: dict, cfg: DynamoConfig) -> int:
    """``best`` if moving from ``current`` repays its load time within one period, else ``current``."""
    if best == current:
        return current
    saving_j = (choices[current][0] - choices[best][0]) * cfg.period_s
    power_per_instance = choices[current][0] / max(1, choices[current][1])
    return best if saving_j > load_s[best] * choices[best][1] * power_per_instance else current


@dataclass
class DynamoController:
    """A :class:`DynamoPlan` as a replay controller: it applies the planned instance counts and
    re-shards at their times, picks each pool's SM clock every ``clock_period_s``, scales out
    between scale decisions when queues build, and counts what it did.  Every change goes through
    :class:`~replay.engine.ClusterState`, which stalls the instances it costs time (clock switches,
    layouts loading, instances starting) and records an event."""

    plan: DynamoPlan
    pending: list[tuple[float, int, str, object]] = field(default_factory=list)  # (t, class, kind, value)
    reconfigurations: int = 0
    clock_changes: int = 0  # pool-wide clock changes
    clock_stalls: int = 0  # instances stalled by them
    clock_stall_s: float = 0.0  # their stalls together, s
    scale_outs: int = 0
    scale_ins: int = 0
    reactive_scale_outs: int = 0
    reshards: int = 0
    next_check: float = 0.0
    next_clock: float = 0.0
    clocks_used: dict = field(default_factory=dict)  # class index -> clocks chosen
    routing_checked: bool = False

    def __post_init__(self) -> None:
        pool_index = {p.name: i for i, p in enumerate(self.plan.config.pools)}
        cfg = self.plan.cfg
        for c_index, cls in enumerate(self.plan.classes):
            previous_n, previous_tp = None, cls.tp
            for k, (t, n, f, tp) in enumerate(cls.schedule):
                layout = pool_index[cls.layouts[tp]]
                if tp != previous_tp:  # re-shard: the new layout comes up with its own count and clock
                    self.pending.append((t, c_index, "reshard", (layout, n, f, cls.reshard_s[tp])))
                    previous_n, previous_tp = n, tp
                    continue
                # a scale decision sets the count even when unchanged: reactive additions end there
                if n != previous_n or k % self.plan.scale_every == 0:
                    delay = cfg.scale_out_s if previous_n is not None and n > previous_n else 0.0
                    if delay:
                        self.pending.append((t, c_index, "power", (layout, n, "dynamollm scale-out")))
                    self.pending.append((t + delay, c_index, "active", (layout, n, "dynamollm")))
                previous_n = n
        self.pending.sort(key=lambda e: (e[0], e[1], e[2]))

    def next_time(self) -> float:
        """When the controller acts next, s: the next planned change, reactive check or clock decision."""
        planned = self.pending[0][0] if self.pending else math.inf
        return min(planned, self.next_check, self.next_clock)

    def act(self, t: float, state: ClusterState) -> None:
        """Apply the changes due at ``t``; when due, scale out classes whose queues build and pick
        each pool's clock."""
        cfg = self.plan.cfg
        if not self.routing_checked:
            self._check_routing(state)
        while self.pending and self.pending[0][0] <= t:
            self._apply(t, state, *self.pending.pop(0)[1:])
        if t >= self.next_check:
            self._react(t, state)
            self.next_check = t + cfg.reactive_check_s
        if t >= self.next_clock:
            self._clocks(t, state)
            self.next_clock = t + cfg.clock_period_s

    def _check_routing(self, state: ClusterState) -> None:
        """Refuse a replay that routed by length rather than by the plan's labels (the predicted
        classes): it would serve every request in the first pool that takes its length."""
        self.routing_checked = True
        route = self.plan.route
        if route is None or not state.instances:
            return
        routed = state.instances[0].req.pool  # (before the first arrival: the router's choice, untouched)
        if len(routed) != len(route) or not np.array_equal(routed, route):
            raise ValueError("the replay did not route requests by the DynamoLLM plan's labels: replay the planned "
                             "trace with priority=plan.labels (DynamoPlan.replay does)")

    def _apply(self, t: float, state: ClusterState, c_index: int, kind: str, value) -> None:
        cfg = self.plan.cfg
        if kind == "reshard":
            layout, n, f, load_s = value
            state.reshard(t, c_index, layout, n, f, load_s, "dynamollm", cfg.power_off_inactive)
            self.reshards += 1
            self.reconfigurations += 1
            return
        p_index, n, reason = value
        if p_index != state.redirect[c_index]:
            return  # meant for a layout the class has since re-sharded away from
        if kind == "power":  # warm-up of instances that take requests after scale_out_s
            state.power_up(t, p_index, n, reason, cfg.scale_out_s)
            return
        if reason == "dynamollm":  # (reactive scale-outs are counted when they start)
            if n > state.active[p_index] and t > 0:
                self.scale_outs += 1
            elif n < state.active[p_index] and t > 0:  # (at 0: from every instance down to the first plan)
                self.scale_ins += 1
        state.set_active(t, p_index, n, reason, cfg.power_off_inactive)
        self.reconfigurations += 1

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
                n = state.active[p_index] + 1
                state.power_up(t, p_index, n, "dynamollm reactive scale-out", cfg.scale_out_s)  # takes requests after scale_out_s
                self.pending.append((t + cfg.scale_out_s, c_index, "active", (p_index, n, "dynamollm reactive scale-out")))
                self.pending.sort(key=lambda e: (e[0], e[1], e[2]))
                self.reactive_scale_outs += 1

    def _clocks(self, t: float, state: ClusterState) -> None:
        """Each class's pool at the clock of least energy that serves the class's arrival rate over
        the last ``clock_window_s`` on its active instances (the highest while queues build)."""
        cfg = self.plan.cfg
        for c_index, cls in enumerate(self.plan.classes):
            p_index = state.redirect[c_index]
            tp = next(tp for tp, name in cls.layouts.items() if name == state.config.pools[p_index].name)
            k = min(int(t // cfg.period_s), len(cls.options) - 1)
            options = cls.options[k][tp]
            n = state.active[p_index]
            window = min(cfg.clock_window_s, t) if t > 0 else cfg.clock_window_s
            seen = np.searchsorted(cls.arrivals, [t - cfg.clock_window_s, t], side="left")  # arrived before t
            rate = float(seen[1] - seen[0]) / window
            members = state.members[p_index]
            waiting = max(len(state.instances[i].queue) + len(state.instances[i].prefilling) for i in members[:n])
            top = max(options, key=lambda f: f or 0)
            choice = None if waiting > cfg.reactive_queue else cheapest(options, rate, cfg, n)
            clock = choice[2] if choice is not None else top
            self.clocks_used.setdefault(c_index, set()).add(clock)
            if any(state.instances[i].clock != clock for i in members):
                self._switch_clock(t, state, p_index, clock)

    def _switch_clock(self, t: float, state: ClusterState, p_index: int, clock: float | None) -> None:
        """Set the pool's clock: each powered instance stalls while its GPUs switch, one GPU after
        another on a node (a pool's GPUs fill nodes in member order, ``gpus_per_node`` each)."""
        cfg = self.plan.cfg
        pool = state.config.pools[p_index]
        gpus = pool.tp * pool.pp * pool.kvp
        switched: dict[int, int] = {}  # node -> GPUs switched on it so far
        for m, i in enumerate(state.members[p_index]):
            inst = state.instances[i]
            if inst.clock == clock:
                continue
            stall = 0.0
            if inst.powered and cfg.clock_switch_s > 0:
                node = (m * gpus) // cfg.gpus_per_node
                switched[node] = switched.get(node, 0) + gpus
                stall = cfg.clock_switch_s * switched[node]
                self.clock_stalls += 1
                self.clock_stall_s += stall
            state.set_clock(t, i, clock, "dynamollm", stall_s=stall)
        self.clock_changes += 1
        self.reconfigurations += 1

    def describe(self) -> dict:
        """The settings, each class's layouts and clocks, the counts of changes and their stalls,
        and the output-length prediction, for the replay summary's ``policy`` entry."""
        cfg = self.plan.cfg
        return {"name": "dynamollm", **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
                "classes": [{"class": c.name, "tp": c.tp, "instances": c.instances, "gpus": c.gpus,
                             "requests": int(len(c.arrivals)),
                             "tps_used": sorted({tp for *_, tp in c.schedule}),
                             "mean_active": float(np.mean([n for _, n, _, _ in c.schedule])),
                             "clocks_used": sorted(f for f in self.clocks_used.get(i, {c.schedule[0][2]}) if f is not None)}
                            for i, c in enumerate(self.plan.classes)],
                "reconfigurations": self.reconfigurations, "clock_changes": self.clock_changes,
                "clock_stalls": self.clock_stalls, "clock_stall_s": self.clock_stall_s,
                "scale_outs": self.scale_outs, "scale_ins": self.scale_ins,
                "reactive_scale_outs": self.reactive_scale_outs, "reshards": self.reshards,
                "reshard_s_by_tp": {str(tp): s for c in self.plan.classes for tp, s in c.reshard_s.items()},
                **self.plan.prediction, "migrated": 0, "served_in_place": self.plan.prediction.get("outgrown", 0)}


def outgrown_outcomes(requests: pd.DataFrame, dyn_plan: DynamoPlan) -> dict:
    """SLO attainment of the requests that outgrew their predicted class (served late in place) and
    of those predicted right, from a replay's request table (trace order)."""
    if dyn_plan.predicted_bin is None or len(requests) != len(dyn_plan.predicted_bin):
        return {}
    pool = dyn_plan.config.pools[0]
    output = requests["output_tokens"].to_numpy()
    met = (~requests["dropped"].to_numpy(dtype=bool)) & (requests["ttft_s"].to_numpy() <= pool.ttft_slo_s) & (
        (output <= 1) | (requests["tbt_mean_s"].to_numpy() <= pool.tbt_slo_s))
    outgrown = dyn_plan.true_bin > dyn_plan.predicted_bin
    right = dyn_plan.true_bin == dyn_plan.predicted_bin
    return {"outgrown_slo_attainment": float(met[outgrown].mean()) if outgrown.any() else None,
            "predicted_right_slo_attainment": float(met[right].mean()) if right.any() else None}


def baseline_for(plan: DynamoPlan, bundle: ModelBundle) -> ClusterConfig:
    """Static deployment with the same GPUs: one pool, smallest TP, highest clock, all active.
    (DynamoLLM's own, oversized for the load: kept as ``same_gpus_static``; the baselines it is
    judged by are in :mod:`replay.policies.baselines`.)"""
    gpus = sum(c.gpus for c in plan.classes)
    tp = min(profiled_values(bundle, "tp") or [1]) or 1
    clock = max(profiled_values(bundle, "sm_clock_mhz"), key=lambda f: f or 0)
    template = plan.config.pools[0]
    pool = replace(template, name="baseline", tp=tp, instances=max(1, gpus // tp), sm_clock_mhz=clock,
                   max_input_tokens=1e12, max_output_tokens=1e12, priority=None)
    return replace(plan.config, pools=[pool])


EVENT_COLUMNS = ("t_s", "kind", "pool", "instance", "from_value", "to_value", "cost_s", "reason")


def events_table(events: pd.DataFrame | None, simulated: bool):
    """A replay's policy events as the Arrow table of ``events.parquet``: one row per change, in
    order - ``t_s``, ``kind`` (clock, scale, power_up, reshard), ``pool``, ``instance`` (null: the
    pool), ``from_value`` and ``to_value`` (MHz for clock, instances for scale and power_up, TP for
    reshard; null: the highest profiled clock), ``cost_s`` (the stall or load time it cost) and
    ``reason``."""
    import pyarrow as pa

    frame = pd.DataFrame(events if events is not None else [])
    for column in EVENT_COLUMNS:
        if column not in frame:
            frame[column] = None
    schema = pa.schema([("t_s", pa.float64()), ("kind", pa.string()), ("pool", pa.string()), ("instance", pa.int64()),
                        ("from_value", pa.float64()), ("to_value", pa.float64()), ("cost_s", pa.float64()),
                        ("reason", pa.string())], metadata={"wattlas.simulated": str(simulated).lower()})
    columns = {
        "t_s": frame["t_s"].astype(float), "kind": frame["kind"].astype(object), "pool": frame["pool"].astype(object),
        "instance": pd.array([None if v is None or v != v else int(v) for v in frame["instance"]], dtype="Int64"),
        "from_value": pd.to_numeric(frame["from_value"], errors="coerce").astype(float),
        "to_value": pd.to_numeric(frame["to_value"], errors="coerce").astype(float),
        "cost_s": pd.to_numeric(frame["cost_s"], errors="coerce").fillna(0.0).astype(float),
        "reason": frame["reason"].astype(object),
    }
    return pa.Table.from_pandas(pd.DataFrame(columns), schema=schema, preserve_index=False)
