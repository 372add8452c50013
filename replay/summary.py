"""What a replay's summary is made of: per-request columns and their totals, the timeline's row
power, and each instance's accounts, so an in-memory replay, a streaming one (results written as
they come) and a partitioned one (parts merged) assemble ``summary.json`` the same way.

Request latency quantiles are exact when the totals keep the values (``exact=True``: an
in-memory replay); a streaming or partitioned replay keeps log histograms instead (200 bins a
decade, so a quantile is within 0.6 % of the exact one), which merge by addition and hold the
same memory for ten requests or ten million.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .recorder import TBT_BINS_PER_DECADE, TBT_MIN_LOG
from .recorder import tbt_quantile as hist_quantile
from .timeline import grid_weighted_kwh, sum_steps, weighted_quantile

if TYPE_CHECKING:
    from .config import ClusterConfig
    from .instance import Instance
    from .recorder import Recorder
    from .requests import Requests

# the TBT histogram's bins (200 a decade from 1 us), on to 1e8 s: one quantile function reads both
LAT_BINS_PER_DECADE = TBT_BINS_PER_DECADE
LAT_MIN_LOG = TBT_MIN_LOG
LAT_BINS = LAT_BINS_PER_DECADE * 14


def _lat_bins(values: np.ndarray) -> np.ndarray:
    idx = ((np.log10(np.maximum(values, 1e-6)) - LAT_MIN_LOG) * LAT_BINS_PER_DECADE).astype(np.int64)
    return np.clip(idx, 0, LAT_BINS - 1)


def _q(values: np.ndarray, q: float) -> float:
    values = values[np.isfinite(values)]
    return float(np.quantile(values, q)) if values.size else float("nan")


def request_columns(req: Requests, slots: np.ndarray, config: ClusterConfig, pool_names: list[str],
                    priority: np.ndarray | None, has_power: bool, request_id: np.ndarray | None = None) -> dict:
    """The ``replay_requests`` columns of the requests in ``slots`` (in that order); ``request_id``
    defaults to the requests' rows in the trace, ``priority`` is per row of ``slots`` or None."""
    names = np.array(pool_names, dtype=object)
    arrival, first, finish = req.arrival[slots], req.first_token[slots], req.finish[slots]
    inputs, outputs = req.input[slots], req.output[slots]
    reasons = req.drop_reason[slots]
    with np.errstate(invalid="ignore", divide="ignore"):
        tbt_mean = np.where(outputs > 1, (finish - first) / (outputs - 1), np.nan)
    return {
        "request_id": request_id if request_id is not None else req.row[slots].copy(),
        "pool": names[req.pool[slots]],
        "instance": req.instance[slots].copy(),
        "priority": priority if priority is not None else None,
        "arrival_s": arrival,
        "input_tokens": inputs,
        "output_tokens": outputs,
        "first_token_s": first,
        "finish_s": finish,
        "ttft_s": first - arrival,
        "tbt_mean_s": tbt_mean,
        "tbt_max_s": np.where(outputs > 1, req.tbt_max[slots], np.nan),
        "e2e_s": finish - arrival,
        "energy_j": req.energy[slots] if has_power else np.full(len(slots), np.nan),
        "dropped": reasons != None,  # noqa: E711  (object array)
        "drop_reason": reasons,
        "_pool_index": req.pool[slots],  # (for the SLOs; not written)
    }


class RequestTotals:
    """Counts, SLO attainment, latency quantiles and energy of the requests added so far."""

    def __init__(self, exact: bool) -> None:
        self.exact = exact
        self.requests = self.finished = self.met = 0
        self.output_tokens_done = 0
        self.energy_j = 0.0
        self._values: dict[str, list[np.ndarray]] = {"ttft": [], "e2e": []}
        self._hist = {"ttft": np.zeros(LAT_BINS), "e2e": np.zeros(LAT_BINS)}

    def add(self, columns: dict, config: ClusterConfig) -> None:
        """Count the requests of ``columns`` (:func:`request_columns`), whose outcomes are final."""
        pool = columns["_pool_index"]
        slo_ttft = np.array([p.ttft_slo_s for p in config.pools])[pool]
        slo_tbt = np.array([p.tbt_slo_s for p in config.pools])[pool]
        done = ~columns["dropped"]
        ttft, e2e, outputs = columns["ttft_s"], columns["e2e_s"], columns["output_tokens"]
        met = done & (ttft <= slo_ttft) & ((outputs <= 1) | (columns["tbt_mean_s"] <= slo_tbt))
        self.requests += len(pool)
        self.finished += int(done.sum())
        self.met += int(met.sum())
        self.output_tokens_done += int(outputs[done].sum())
        energy = columns["energy_j"]
        self.energy_j += float(np.nansum(energy))
        for key, values in (("ttft", ttft[done]), ("e2e", e2e[done])):
            if self.exact:
                self._values[key].append(values)
            else:
                values = values[np.isfinite(values)]
                self._hist[key] += np.bincount(_lat_bins(values), minlength=LAT_BINS)

    def merge(self, other: RequestTotals) -> None:
        """Add another part's totals (both from histograms)."""
        if self.exact or other.exact:
            raise ValueError("only histogram totals merge")
        self.requests += other.requests
        self.finished += other.finished
        self.met += other.met
        self.output_tokens_done += other.output_tokens_done
        self.energy_j += other.energy_j
        for key in self._hist:
            self._hist[key] += other._hist[key]

    def quantile(self, key: str, q: float) -> float:
        """Quantile ``q`` of ``ttft`` or ``e2e`` over finished requests (s; NaN without any)."""
        if self.exact:
            values = self._values[key]
            return _q(np.concatenate(values) if values else np.empty(0), q)
        return hist_quantile(self._hist[key], q)


@dataclass
class InstanceEnd:
    """An instance's accounts after its last event: what ending the run (idling to the end) and
    the summary need, small enough to send back from a worker."""

    pool_index: int
    standby: bool
    gpus: int
    t: float
    idle_w: float | None
    powered: bool
    powered_s: float
    powered_since: float
    busy_j: float
    idle_j: float
    iterations: int
    has_power: bool
    peak_power_w: float

    @classmethod
    def of(cls, inst: Instance) -> InstanceEnd:
        """The accounts of ``inst`` now."""
        return cls(inst.pool_index, inst.pool.standby, inst.cost.gpus, inst.t, inst.idle_power, inst.powered,
                   inst.powered_s, inst.powered_since, inst.busy_energy, inst.idle_energy, inst.iterations,
                   inst.cost.has_power, inst.cost.iteration_power(1e6, 0) or 0.0)

    def powered_seconds(self, t_end: float) -> float:
        """Seconds the instance has been powered up to ``t_end``."""
        return self.powered_s + (t_end - self.powered_since if self.powered else 0.0)

    def idle_until(self, t_end: float, recorder: Recorder, index: int) -> None:
        """Idle from the last event to ``t_end`` (s), at idle power while powered, into the accounts
        and into ``recorder``'s bins of instance ``index`` (as :meth:`Instance.idle_until` does live)."""
        if self.idle_w is not None and self.powered and t_end > self.t:
            self.idle_j += self.idle_w * (t_end - self.t)
            recorder.add_energy(index, self.t, t_end, self.idle_w)
        self.t = max(self.t, t_end)


class TimelineTotals:
    """The timeline's runs taken out of a recorder so far, summed over instances into the row's
    power (as stretches of equal bins, merged across takes), and the energy they hold."""

    def __init__(self, bin_s: float) -> None:
        self.bin_s = bin_s
        self.energy_j = 0.0
        self._row_starts: list[np.ndarray] = []
        self._row_j: list[np.ndarray] = []

    def take(self, recorder: Recorder, k: int, pool_names: list[str], pool_of: list[int]) -> list[pd.DataFrame]:
        """Take every instance's runs of bins before ``k`` out of ``recorder``; returns them as
        ``power_timeline`` frames, one per instance (empty ones left out)."""
        runs = recorder.take_before(k)
        frames = []
        for i, (starts, counts, energy) in enumerate(runs):
            if len(starts):
                frames.append(pd.DataFrame({
                    "pool": pool_names[pool_of[i]], "instance": i, "t_s": starts * self.bin_s,
                    "duration_s": counts * self.bin_s, "power_w": energy / self.bin_s}))
                self.energy_j += float(np.dot(counts, energy))
        self.add_row([r[0] for r in runs if len(r[0])], [r[2] for r in runs if len(r[0])])
        return frames

    def add_row(self, starts: list[np.ndarray], values: list[np.ndarray]) -> None:
        """Add the row power of one take: per instance, runs of bins (first bin, energy per bin),
        each instance's runs covering the same bins."""
        if not starts:
            return
        row_starts, row_j = sum_steps(starts, values)
        self._row_starts.append(row_starts)
        self._row_j.append(row_j)

    def row(self, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(first bin, bins, energy J per bin) of the row's stretches of equal bins over ``[0, n_bins)``."""
        if not self._row_starts:
            return np.zeros(1, dtype=np.int64), np.array([n_bins]), np.zeros(1)
        starts, energy = np.concatenate(self._row_starts), np.concatenate(self._row_j)
        new = np.r_[True, energy[1:] != energy[:-1]]
        starts, energy = starts[new], energy[new]
        return starts, np.diff(np.r_[starts, n_bins]), energy

    def merge(self, others: list[TimelineTotals], n_bins: int) -> None:
        """Make this the row of several parts replayed apart over the same bins: their sum."""
        rows = [o.row(n_bins) for o in [self, *others]]
        self.energy_j = sum(o.energy_j for o in [self, *others])
        self._row_starts, self._row_j = [], []
        self.add_row([r[0] for r in rows], [r[2] for r in rows])


def summarise(config: ClusterConfig, totals: RequestTotals, timeline: TimelineTotals, ends: list[InstanceEnd],
              tbt_hist: np.ndarray, t_end: float, wall_s: float) -> dict:
    """``summary.json`` of a run that ended at ``t_end`` (s): see the README's key list."""
    has_power = all(e.has_power for e in ends)
    bin_s = config.bin_s
    n_bins = int(math.ceil(t_end / bin_s)) if t_end > 0 else 1
    row_starts, row_bins, row_j = timeline.row(n_bins)
    row_power = row_j / bin_s
    busy = sum(e.busy_j for e in ends)
    idle = sum(e.idle_j for e in ends)
    it_kwh = (busy + idle) / 3.6e6
    if config.carbon_csv:  # time-varying grid intensity, applied bin by bin
        from .config import load_carbon_series

        t_series, g_series = load_carbon_series(config.carbon_csv)
        carbon_kg = grid_weighted_kwh(row_starts, row_j, n_bins, bin_s, t_series, g_series) * config.pue / 1000.0
    else:
        carbon_kg = it_kwh * config.pue * config.carbon_g_per_kwh / 1000.0
    gpu_hours = sum(e.gpus * e.powered_seconds(t_end) for e in ends) / 3600.0
    summary = {
        "requests": totals.requests,
        "finished": totals.finished,
        "dropped": totals.requests - totals.finished,
        "duration_s": float(t_end),
        "instances": sum(1 for e in ends if not e.standby),
        "gpus": int(sum(e.gpus for e in ends if not e.standby)),  # standby layouts share these
        "iterations": int(sum(e.iterations for e in ends)),
        "ttft_p50_s": totals.quantile("ttft", 0.5), "ttft_p99_s": totals.quantile("ttft", 0.99),
        "tbt_p50_s": hist_quantile(tbt_hist, 0.5), "tbt_p99_s": hist_quantile(tbt_hist, 0.99),
        "e2e_p50_s": totals.quantile("e2e", 0.5), "e2e_p99_s": totals.quantile("e2e", 0.99),
        "slo_attainment": totals.met / totals.requests if totals.requests else float("nan"),
        "energy_kwh": it_kwh if has_power else None,
        "energy_busy_kwh": busy / 3.6e6 if has_power else None,
        "energy_idle_kwh": idle / 3.6e6 if has_power else None,
        "facility_energy_kwh": it_kwh * config.pue if has_power else None,
        "carbon_kg": carbon_kg if has_power else None,
        "gpu_hours": gpu_hours,
        "cost_usd": gpu_hours * config.gpu_hour_usd,
        "energy_per_output_token_j": (busy + idle) / max(1, totals.output_tokens_done) if has_power else None,
        "replay_wall_s": wall_s,
        "bin_s": bin_s,
        "peak_row_power_w": float(row_power.max()) if has_power else None,
        # over every bin of the run, idle ones included (what a row's power budget sees)
        "row_power_p50_w": weighted_quantile(row_power, row_bins, 0.5) if has_power else None,
        "row_power_p99_w": weighted_quantile(row_power, row_bins, 0.99) if has_power else None,
        "peak_instance_power_w": max(e.peak_power_w for e in ends) if has_power else None,
    }
    # KV capacity (tokens of one TP x PP group) and how it was decided: the first routed pool's,
    # then every pool's
    routed = [p for p in config.pools if not p.standby] or config.pools
    summary["kv_capacity_tokens"] = int(routed[0].kv_capacity_tokens)
    summary["kv_capacity_source"] = routed[0].kv_capacity_source
    summary["kv_capacity_by_pool"] = [{"pool": p.name, "kv_capacity_tokens": int(p.kv_capacity_tokens),
                                       "instance_kv_tokens": int(p.kv_capacity_tokens * p.kvp),
                                       "kv_capacity_source": p.kv_capacity_source} for p in config.pools]
    if has_power:
        summary["conservation"] = {"timeline_j": timeline.energy_j, "instances_j": busy + idle,
                                   "requests_plus_idle_j": totals.energy_j + idle}
    return summary
