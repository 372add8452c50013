"""The static deployments DynamoLLM is judged against, and the carbon and cost of a replay.

* ``peak_static`` - the paper's baseline: one pool sized for the trace's peak load at the highest
  clock, every instance powered for the whole run.  The peak is the busiest ``peak_window_s`` of
  arrivals; the instances are those the capacity model (:func:`~replay.policies.dynamollm.instance_capacity`,
  the trace's mean lengths, the ``utilization_target`` headroom DynamoLLM plans with) needs for it,
  on the TP needing the fewest GPUs.  The deployment is replayed; should it miss the SLO target
  (``slo_target`` of requests within TTFT and TBT), instances are added (replayed again, then
  bisected down to the fewest that meet it) and ``sized_by`` says so.
* ``best_static`` - the cheapest static deployment that meets the SLOs over the whole trace: for
  every TP and clock, the fewest instances (bisection on the count, each candidate replayed, never
  more GPUs than ``peak_static``) whose replay meets ``slo_target``; of those, the one of least
  energy.  It knows the whole trace in hindsight, so it is the strongest static deployment, not
  one a provider could size beforehand.

Carbon and cost come from the replay's IT energy and powered GPU-hours, the same way for every
run (:func:`accounting`): facility energy = IT energy x the cluster's ``pue``; carbon =
facility kWh x ``carbon_g_per_kwh`` + GPU-hours x ``embodied_g_per_gpu_hour``; cost = GPU-hours x
``gpu_hour_usd`` + facility kWh x ``energy_usd_per_kwh`` (the ``[dynamollm]`` settings).
Savings are fractions of the baseline's figure: positive saves, negative costs more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd

from ..config import MAX_INSTANCES, ClusterConfig
from ..cost_model import InstanceCost
from .dynamollm import DynamoConfig, instance_capacity, profiled_values

if TYPE_CHECKING:
    from characterize.model_io import ModelBundle

    from ..engine import ReplayResult

# the figures of a replay summary a baseline entry carries
SUMMARY_KEYS = ("requests", "finished", "dropped", "duration_s", "instances", "gpus", "gpu_hours", "energy_kwh",
                "energy_busy_kwh", "energy_idle_kwh", "facility_energy_kwh", "slo_attainment", "ttft_p50_s", "ttft_p99_s",
                "tbt_p50_s", "tbt_p99_s", "e2e_p50_s", "e2e_p99_s")


def static_config(base: ClusterConfig, tp: int | None, clock: float | None, instances: int, name: str) -> ClusterConfig:
    """One pool modelled on ``base``'s first: ``instances`` of ``tp`` at ``clock``, any length, no
    priority or standby layout."""
    template = base.pools[0]
    pool = replace(template, name=name, tp=tp or 1, instances=instances, sm_clock_mhz=clock, max_input_tokens=1e12,
                   max_output_tokens=1e12, priority=None, standby=False)
    return replace(base, pools=[pool])


def peak_rate(arrival: np.ndarray, window_s: float) -> float:
    """Requests/s of the busiest ``window_s`` (windows start at every arrival)."""
    arrival = np.sort(np.asarray(arrival, dtype=np.float64))
    if not len(arrival):
        return 0.0
    ends = np.searchsorted(arrival, arrival + window_s, side="left")
    return float((ends - np.arange(len(arrival))).max()) / window_s


def accounting(summary: dict, cfg: DynamoConfig, pue: float) -> dict:
    """Energy (IT and facility kWh), carbon (kg) and cost (USD) of a replay summary with the
    ``[dynamollm]`` intensities and prices (module docstring)."""
    it_kwh = summary.get("energy_kwh")
    gpu_hours = float(summary["gpu_hours"])
    if it_kwh is None:
        return {"energy_kwh": None, "facility_energy_kwh": None, "gpu_hours": gpu_hours, "carbon_kg": None,
                "cost_usd": gpu_hours * cfg.gpu_hour_usd}
    facility = float(it_kwh) * pue
    return {"energy_kwh": float(it_kwh), "facility_energy_kwh": facility, "gpu_hours": gpu_hours,
            "carbon_kg": (facility * cfg.carbon_g_per_kwh + gpu_hours * cfg.embodied_g_per_gpu_hour) / 1000.0,
            "cost_usd": gpu_hours * cfg.gpu_hour_usd + facility * cfg.energy_usd_per_kwh}


def savings(run: dict, baseline: dict) -> dict:
    """Fractions saved against ``baseline`` (both :func:`accounting` dicts): 1 - run / baseline for
    energy, carbon and cost; positive saves, negative costs more; None where unknown."""
    def saved(key):
        a, b = run.get(key), baseline.get(key)
        return None if a is None or not b else 1.0 - a / b

    return {"energy": saved("energy_kwh"), "carbon": saved("carbon_kg"), "cost": saved("cost_usd")}


@dataclass
class Baseline:
    """A replayed static deployment: its name, TP, clock and instances, the replay, how it was
    sized, whether it meets the SLO target, and the candidates tried (best_static's search)."""

    name: str
    tp: int
    clock: float | None
    instances: int
    result: ReplayResult
    sized_by: str
    meets_slo: bool
    searched: list[dict] = field(default_factory=list)
    replays: int = 1

    def figures(self, cfg: DynamoConfig, pue: float) -> dict:
        """The summary entry: the replay's figures, the deployment and the accounting."""
        s = self.result.summary
        entry = {k: s.get(k) for k in SUMMARY_KEYS}
        entry.update({"tp": self.tp, "clock": self.clock, "pool_instances": self.instances, "meets_slo": self.meets_slo,
                      "slo_target": cfg.slo_target, "sized_by": self.sized_by, "replays": self.replays,
                      **accounting(s, cfg, pue)})
        if self.searched:
            entry["searched"] = self.searched
        return entry


class _Replayer:
    """Replays static deployments of one trace, each (TP, clock, instances) once."""

    def __init__(self, trace: pd.DataFrame, bundle: ModelBundle, base: ClusterConfig, cfg: DynamoConfig,
                 replay_fn: Callable | None = None) -> None:
        from ..engine import replay

        self.trace, self.bundle, self.base, self.cfg = trace, bundle, base, cfg
        self.replay_fn = replay_fn or replay
        self.runs: dict = {}
        self.asked: list = []  # every deployment asked for, in order (a search's replays: the distinct ones)

    def __call__(self, tp, clock, n: int, name: str) -> ReplayResult:
        key = (tp, clock, n)
        self.asked.append(key)
        if key not in self.runs:
            self.runs[key] = self.replay_fn(self.trace, self.bundle, static_config(self.base, tp, clock, n, name))
        return self.runs[key]

    def meets(self, tp, clock, n: int, name: str) -> bool:
        attainment = self(tp, clock, n, name).summary["slo_attainment"]
        return bool(attainment is not None and attainment >= self.cfg.slo_target)


def _fewest_meeting(run: _Replayer, tp, clock, lo: int, hi: int, name: str) -> int:
    """The fewest instances in (lo, hi] that meet the SLO target, by bisection (``hi`` meets, ``lo`` does not)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if run.meets(tp, clock, mid, name):
            hi = mid
        else:
            lo = mid
    return hi


def peak_static(trace: pd.DataFrame, bundle: ModelBundle, base: ClusterConfig, cfg: DynamoConfig,
                run: _Replayer | None = None) -> Baseline:
    """The paper's baseline (module docstring), replayed."""
    run = run or _Replayer(trace, bundle, base, cfg)
    clock = max(profiled_values(bundle, "sm_clock_mhz"), key=lambda f: f or 0)
    tps = list(cfg.tps or profiled_values(bundle, "tp"))
    rate = peak_rate(trace["arrival_s"].to_numpy(), cfg.peak_window_s)
    mean_in, mean_out = float(trace["input_tokens"].mean()), float(trace["output_tokens"].mean())
    template = base.pools[0]
    sized = {}
    for tp in tps:
        pool = replace(template, tp=tp or 1)
        mu, _, prefill = instance_capacity(InstanceCost.from_bundle(bundle, tp or 1, clock), mean_in, mean_out, pool)
        if prefill <= pool.ttft_slo_s / 2 and mu > 0:
            n = max(1, math.ceil(rate / (mu * cfg.utilization_target)))
            sized[tp] = min(n, MAX_INSTANCES)
    if sized:
        tp = min(sized, key=lambda t: (sized[t] * (t or 1), t or 1))
        n, how = sized[tp], f"capacity model: peak {rate:.2f} req/s over {cfg.peak_window_s:g} s"
    else:
        tp, n, how = min(tps, key=lambda t: t or 1), 1, "no TP meets TTFT/2 in the capacity model: grown by replay"
    name = "static"  # (one name for every static run: best_static's search reuses these replays)
    if run.meets(tp, clock, n, name):
        return Baseline("peak_static", tp or 1, clock, n, run(tp, clock, n, name), how, True, replays=len(set(run.asked)))
    lo, hi = n, n
    while hi < MAX_INSTANCES and not run.meets(tp, clock, hi, name):
        lo, hi = hi, min(MAX_INSTANCES, max(hi + 1, hi * 2))
    meets = run.meets(tp, clock, hi, name)
    if meets:
        hi = _fewest_meeting(run, tp, clock, lo, hi, name)
    how += f"; missed the SLO target at {n} instances, grown by replay to {hi}"
    return Baseline("peak_static", tp or 1, clock, hi, run(tp, clock, hi, name), how, meets, replays=len(set(run.asked)))


def best_static(trace: pd.DataFrame, bundle: ModelBundle, base: ClusterConfig, cfg: DynamoConfig, max_gpus: int,
                run: _Replayer | None = None) -> Baseline | None:
    """The static deployment of least energy meeting the SLO target over the whole trace, with at
    most ``max_gpus`` GPUs (module docstring); None when no TP and clock meets it."""
    run = run or _Replayer(trace, bundle, base, cfg)
    before = len(run.asked)
    name = "static"
    tps = list(cfg.tps or profiled_values(bundle, "tp"))
    clocks = list(cfg.clocks or profiled_values(bundle, "sm_clock_mhz"))
    found, searched = [], []
    for tp in tps:
        hi = max_gpus // (tp or 1)
        for clock in clocks:
            if hi < 1 or not run.meets(tp, clock, hi, name):
                searched.append({"tp": tp or 1, "clock": clock, "instances": None, "gpus": None, "meets_slo": False})
                continue
            n = _fewest_meeting(run, tp, clock, 0, hi, name)
            s = run(tp, clock, n, name).summary
            searched.append({"tp": tp or 1, "clock": clock, "instances": n, "gpus": n * (tp or 1), "meets_slo": True,
                             "energy_kwh": s["energy_kwh"], "slo_attainment": s["slo_attainment"]})
            energy = s["energy_kwh"] if s["energy_kwh"] is not None else math.inf
            found.append(((energy, n * (tp or 1), clock or 0, tp or 1), tp, clock, n))
    if not found:
        return None
    _, tp, clock, n = min(found, key=lambda x: x[0])
    how = (f"search: fewest instances meeting SLO attainment >= {cfg.slo_target:g} per TP and clock (bisection, "
           f"each candidate replayed, at most {max_gpus} GPUs), then least energy")
    return Baseline("best_static", tp or 1, clock, n, run(tp, clock, n, name), how, True, searched,
                    replays=len(set(run.asked[before:])))


def judge(trace: pd.DataFrame, bundle: ModelBundle, base: ClusterConfig, cfg: DynamoConfig, dynamollm_summary: dict,
          replay_fn: Callable | None = None) -> tuple[dict, dict, dict, dict]:
    """Replay ``peak_static`` and ``best_static`` on ``trace`` and ``bundle`` and compare DynamoLLM's
    summary with them.  Returns (baselines entry, savings entry, DynamoLLM's accounting, the two
    :class:`Baseline` by name - for writing their replays out)."""
    run = _Replayer(trace, bundle, base, cfg, replay_fn)
    peak = peak_static(trace, bundle, base, cfg, run)
    best = best_static(trace, bundle, base, cfg, peak.tp * peak.instances, run)
    runs = {"peak_static": peak, **({"best_static": best} if best is not None else {})}
    entries = {name: b.figures(cfg, base.pue) for name, b in runs.items()}
    if best is None:
        entries["best_static"] = {"meets_slo": False, "sized_by": "no TP and clock meets the SLO target within "
                                                                  f"{peak.tp * peak.instances} GPUs"}
    mine = accounting(dynamollm_summary, cfg, base.pue)
    saved = {f"vs_{name}": savings(mine, entries[name]) for name in runs}
    if best is None:
        saved["vs_best_static"] = {"energy": None, "carbon": None, "cost": None}
    # a saving is like for like only when DynamoLLM meets the SLO target the baselines were held to
    attainment = dynamollm_summary.get("slo_attainment")
    saved.update({"slo_target": cfg.slo_target, "dynamollm_slo_attainment": attainment,
                  "dynamollm_meets_slo": bool(attainment is not None and attainment >= cfg.slo_target)})
    return entries, saved, mine, runs
