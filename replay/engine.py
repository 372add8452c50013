"""Discrete-event replay of a request trace through a simulated cluster, iteration by iteration.

Each instance runs continuous batching with chunked prefill (Sarathi/Mnemosyne style): every
iteration carries all running decodes plus prefill chunk(s) from the queue, up to the
iteration's token budget; a chunk is ``chunk_size`` tokens, or with the adaptive policy the
largest chunk whose mixed iteration keeps the TBT SLO at the current KV prefix.  KV memory is
reserved for a request's prompt and output when its prefill starts; a request that could never
fit is dropped with a reason, every other one finishes.

Speed: between events (an arrival, a completion) a decode-only batch does not change, and
iteration latency is linear in the iteration index (each iteration adds b KV entries), so
the whole stretch is computed in closed form instead of iteration by iteration.  Routing is
join-the-shortest-queue over two random instances (``power_of_two``, the default: O(1) per
arrival), over all instances (``least_loaded``: exact but it advances every instance at every
arrival), to the instance with the fewest outstanding tokens (``token_jsq``: prompt tokens not yet
prefilled plus output tokens not yet generated, over all instances) or round robin.  Admission and
the prefill pieces of each iteration are the pool's replica scheduler's (``replay/scheduler/``:
``fcfs`` or ``lars``).

Energy: each iteration's power comes from the power model at its load, idle time at the idle
power; energy is attributed to requests by tokens processed, and binned per instance into a
power timeline.  The two accountings are checked against each other.  The timeline is kept
run-length encoded (a stretch of equal bins is one run), so memory follows the events of a
trace, not its time span: ten idle years cost one run per instance.
"""

from __future__ import annotations

import heapq
import math
import time
from array import array
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd

from .config import ClusterConfig, PoolConfig, route_requests
from .cost_model import InstanceCost
from .memory_planner import MemoryPlan, pool_plan, resolve_cluster
from .scheduler import MIN_CHUNK, make_scheduler  # noqa: F401  (MIN_CHUNK: re-exported)

if TYPE_CHECKING:
    from typing import Protocol

    from characterize.model_io import ModelBundle

    class _Controller(Protocol):
        """What :func:`replay` calls on a policy (``skip_idle`` is optional, found by ``getattr``)."""

        def next_time(self) -> float: ...

        def act(self, t: float, state: ClusterState) -> None: ...

        def describe(self) -> dict: ...

TBT_BINS_PER_DECADE = 200
TBT_MIN_LOG = -6.0
TBT_BINS = TBT_BINS_PER_DECADE * 10


class Requests:
    """Column arrays of the trace plus each request's outcome."""

    def __init__(self, arrival: np.ndarray, inputs: np.ndarray, outputs: np.ndarray) -> None:
        n = len(arrival)
        self.arrival = arrival
        self.input = inputs
        self.output = outputs
        self.pool = np.full(n, -1, dtype=np.int64)
        self.instance = np.full(n, -1, dtype=np.int64)
        self.first_token = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.tbt_max = np.zeros(n)
        self.energy = np.zeros(n)
        self.drop_reason = np.full(n, None, dtype=object)
        self.e_join = np.zeros(n)  # instance's energy-per-sequence counter when decoding began
        self.h_join = np.zeros(n, dtype=np.int64)  # instance's latency-history length then


class _Track:
    """One instance's energy per time bin, run-length encoded: bins ``[0, open_bin)`` as runs of
    ``counts[i]`` bins holding ``energy[i]`` joules each, then the bin still being filled.

    Plain ``array`` columns (16 bytes a run) rather than Python objects: a busy instance has a
    run per bin, and that must not cost more than a few times the dense array it replaces.
    """

    __slots__ = ("counts", "energy", "open_bin", "open_j")

    def __init__(self) -> None:
        self.counts = array("q")
        self.energy = array("d")
        self.open_bin = 0
        self.open_j = 0.0

    def push(self, n: int, energy_j: float) -> None:
        """Append ``n`` bins of ``energy_j`` each (merged into the last run when equal)."""
        if self.energy and self.energy[-1] == energy_j:
            self.counts[-1] += n
        else:
            self.counts.append(n)
            self.energy.append(energy_j)

    def close_until(self, k: int) -> None:
        """Complete the open bin, leave the bins before ``k`` empty and open bin ``k``."""
        self.push(1, self.open_j)
        if k > self.open_bin + 1:
            self.push(k - self.open_bin - 1, 0.0)  # powered off, or not recorded yet
        self.open_bin, self.open_j = k, 0.0


class Recorder:
    """Token-weighted TBT histogram and per-instance energy per time bin (run-length encoded)."""

    def __init__(self, n_instances: int, bin_s: float) -> None:
        self.tbt_hist = np.zeros(TBT_BINS)
        self.bin_s = bin_s
        self._tracks = [_Track() for _ in range(n_instances)]

    @staticmethod
    def _tbt_bin(latency: float) -> int:
        idx = int((math.log10(max(latency, 1e-6)) - TBT_MIN_LOG) * TBT_BINS_PER_DECADE)
        return min(max(idx, 0), TBT_BINS - 1)

    def add_tbt(self, first: float, slope: float, n: int, weight: float) -> None:
        """``n`` iterations of latency first + slope*j, each giving ``weight`` token gaps."""
        lo, hi = self._tbt_bin(first), self._tbt_bin(first + slope * (n - 1))
        if lo == hi:  # the common case: the whole stretch falls in one bin
            self.tbt_hist[lo] += n * weight
            return
        latencies = first + slope * np.arange(n)
        idx = ((np.log10(np.maximum(latencies, 1e-6)) - TBT_MIN_LOG) * TBT_BINS_PER_DECADE).astype(np.int64)
        np.add.at(self.tbt_hist, np.clip(idx, 0, TBT_BINS - 1), weight)

    def add_energy(self, instance: int, t0: float, t1: float, power_w: float) -> None:
        """Spread constant power over [t0, t1) into the instance's bins.

        An instance records its time in order (each call starts where its previous one ended),
        so only the bin being filled is open; the whole bins of a long stretch become one run.
        """
        if t1 <= t0:
            return
        track = self._tracks[instance]
        w = self.bin_s
        first, last = int(t0 // w), int(t1 // w)
        if first != track.open_bin:
            if first < track.open_bin:
                raise ValueError(f"instance {instance}: energy at {t0} s recorded after later energy")
            track.close_until(first)
        if first == last:
            track.open_j += power_w * (t1 - t0)
            return
        track.open_j += power_w * ((first + 1) * w - t0)
        track.close_until(first + 1)
        if last > first + 1:
            track.push(last - first - 1, power_w * w)
        track.open_bin, track.open_j = last, power_w * (t1 - last * w)

    def energy_in_bins(self, first: int, last: int) -> float:
        """Energy (J) of all instances in bins ``[first, last)``.

        Reads each instance's runs backwards from its newest, so a window near the present (what a
        controller asks for) costs a few runs, however long the timeline already is."""
        total = 0.0
        for track in self._tracks:
            if first <= track.open_bin < last:
                total += track.open_j
            end, k = track.open_bin, len(track.counts) - 1
            while k >= 0 and end > first:
                start = end - track.counts[k]
                overlap = min(end, last) - max(start, first)
                if overlap > 0:
                    total += overlap * track.energy[k]
                end, k = start, k - 1
        return total

    def runs(self, instance: int, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(first bin, bins, energy per bin in J) of each run of equal bins of ``instance``, covering
        exactly bins ``[0, n_bins)``: empty bins are a zero run, energy past ``n_bins`` is cut off."""
        track = self._tracks[instance]
        counts = np.append(np.asarray(track.counts, dtype=np.int64), [1, max(0, n_bins - track.open_bin - 1)])
        energy = np.append(np.asarray(track.energy, dtype=np.float64), [track.open_j, 0.0])
        starts = np.cumsum(counts) - counts
        keep = (counts > 0) & (starts < n_bins)
        starts, counts, energy = starts[keep], np.minimum(counts[keep], n_bins - starts[keep]), energy[keep]
        new = np.r_[True, energy[1:] != energy[:-1]]  # the open bin or the padding may equal their neighbour
        return starts[new], np.add.reduceat(counts, np.flatnonzero(new)), energy[new]

    def tbt_quantile(self, q: float) -> float:
        """Quantile ``q`` (0 to 1) of the token-weighted time between tokens, s, to the histogram's
        resolution (200 bins a decade); NaN before any decode."""
        total = self.tbt_hist.sum()
        if total == 0:
            return float("nan")
        idx = int(np.searchsorted(np.cumsum(self.tbt_hist), q * total))
        return float(10 ** (TBT_MIN_LOG + (idx + 0.5) / TBT_BINS_PER_DECADE))


class Instance:
    """One inference instance.  The running decode batch is kept in O(1)-per-event form:

    * ``g`` counts the decode iterations the instance has run; a sequence that joined at
      ``g0`` with KV ``kv0`` has KV ``kv0 + (g - g0)``, so the batch's KV sum is ``s + b*g``;
    * a heap holds each sequence's finishing ``g``, so the next completion is ``heap[0]``;
    * energy per decoding sequence accumulates in ``e_seq`` (each sequence takes
      ``e_seq - e_seq_at_join``), and iteration latencies go to ``history`` so a sequence's
      longest gap is the max of the history it lived through.
    Nothing is touched per running sequence per iteration.
    """

    def __init__(self, index: int, pool_index: int, pool: PoolConfig, cost: InstanceCost, req: Requests, rec: Recorder,
                 memory: MemoryPlan | None = None) -> None:
        self.index = index
        self.pool_index = pool_index
        self.pool = pool
        self.cost = cost
        self.req = req
        self.rec = rec
        self.t = 0.0
        self.queue: deque[int] = deque()
        self.prefilling: list[list[int]] = []  # [request, prompt tokens done]
        self.g = 0
        self.heap: list[tuple[int, int]] = []  # (g at which the sequence finishes, request)
        self.s = 0.0  # sum over running of (kv at join - g at join)
        self.e_seq = 0.0
        self.history: list[float] = []
        self.kv_reserved = 0
        self.busy_energy = 0.0
        self.idle_energy = 0.0
        self.busy_s = 0.0
        self.iterations = 0
        self.idle_power = cost.idle_power()
        self.fast_forward = True  # False: one decode iteration at a time (the reference run)
        self.clock = pool.sm_clock_mhz  # SM clock the instance runs at now (policies change it)
        self.power_now = self.idle_power  # power of the iteration in flight, idle power when idle
        # kv_capacity_tokens is per TP x PP group (the stages together hold each token once); KVP
        # groups hold 1/kvp of the tokens each
        self.kv_capacity = pool.kv_capacity_tokens * pool.kvp
        self.memory = memory  # the memory plan of one GPU, when the model shape is known (drop reasons in bytes)
        self.scheduler = make_scheduler(pool.scheduler)  # admission and prefill pieces (replay/scheduler/)
        self.tokens_left = 0  # prompt tokens not yet prefilled + output tokens not yet generated (token_jsq)
        # KVP groups join as a sequence outgrows max_tokens_per_kvp_group (None: all kvp, always);
        # the KV of running decodes, largest first (lazy: finished ones are skipped when read)
        self.kvp_cap = pool.max_tokens_per_kvp_group if pool.kvp > 1 else None
        self._kv_heap: list[tuple[float, int]] = []
        # Power state (re-sharding): a standby instance's GPUs belong to another layout and draw
        # nothing here; a parked one finishes its requests, then hands its GPUs over (powers off).
        self.powered = not pool.standby
        self.parked = False
        self.powered_since = 0.0
        self.powered_s = 0.0

    @property
    def outstanding(self) -> int:
        """Requests on the instance and not finished: queued, prefilling or decoding."""
        return len(self.queue) + len(self.prefilling) + len(self.heap)

    def enqueue(self, r: int) -> None:
        """Queue request ``r`` (its row in the trace) for admission."""
        self.queue.append(r)
        self.tokens_left += int(self.req.input[r] + self.req.output[r])

    def dropped_tokens(self, r: int) -> None:
        """Request ``r`` was dropped before its prefill: its tokens are no longer outstanding."""
        self.tokens_left -= int(self.req.input[r] + self.req.output[r])

    def groups(self, tokens: float) -> int:
        """KVP groups a sequence of ``tokens`` KV tokens spans: all ``kvp`` without
        ``max_tokens_per_kvp_group``, else ``ceil(tokens / max_tokens_per_kvp_group)`` (1 to kvp)."""
        if self.kvp_cap is None:
            return self.pool.kvp
        return min(self.pool.kvp, max(1, -(-int(tokens) // self.kvp_cap)))

    def _longest_decode(self) -> float:
        """KV tokens of the longest running decode (0 without one); dynamic KVP only."""
        heap, finish = self._kv_heap, self.req.finish
        while heap and not np.isnan(finish[heap[0][1]]):
            heapq.heappop(heap)
        return -heap[0][0] + self.g if heap else 0.0

    def decode_groups(self) -> int:
        """KVP groups the running decodes' KV spans: those of the longest (1 without decodes)."""
        if self.kvp_cap is None:
            return self.pool.kvp
        return self.groups(self._longest_decode()) if self.heap else 1

    # ------------------------------------------------------------------ bookkeeping
    def _admit(self) -> None:
        """Start what the pool's scheduler admits (``fcfs``: arrival order, the head waits for KV)."""
        self.scheduler.admit(self)

    def _spend(self, duration: float, power: float | None) -> None:
        self.power_now = power
        self.busy_s += duration
        if power is not None:
            self.busy_energy += power * duration
            self.rec.add_energy(self.index, self.t, self.t + duration, power)

    def _release(self, r: int) -> None:
        self.req.finish[r] = max(self.t, self.req.first_token[r])  # (an SPP first token may still be draining)
        self.kv_reserved -= int(self.req.input[r] + self.req.output[r])

    def _join(self, r: int) -> None:
        """Request r finished its prompt (first token out) and starts decoding."""
        req = self.req
        left = int(req.output[r]) - 1
        self.tokens_left -= 1  # the first token
        if left <= 0:
            self._release(r)
            return
        heapq.heappush(self.heap, (self.g + left, r))
        self.s += float(req.input[r] + 1) - self.g
        if self.kvp_cap is not None:
            heapq.heappush(self._kv_heap, (-(float(req.input[r] + 1) - self.g), r))
        req.e_join[r] = self.e_seq
        req.h_join[r] = len(self.history)

    def _decoded(self, n: int, latency_max: float, energy_per_seq: float) -> None:
        """Every running sequence produced n more tokens; retire those that are done."""
        self.g += n
        self.e_seq += energy_per_seq
        self.history.append(latency_max)
        heap, req = self.heap, self.req
        self.tokens_left -= n * len(heap)
        while heap and heap[0][0] <= self.g:
            _, r = heapq.heappop(heap)
            self.s -= float(req.input[r] + 1) - (self.g - (int(req.output[r]) - 1))
            req.energy[r] += self.e_seq - req.e_join[r]
            req.tbt_max[r] = max(self.history[req.h_join[r]:])
            self._release(r)

    # ------------------------------------------------------------------ iterations
    def _mixed_iteration(self) -> bool:
        """One iteration with the prefill pieces the pool's scheduler picks (``fcfs``: without SPP
        every prefilling prompt may add a chunk (one batch); with ``pp`` > 1 up to ``pp`` chunks fill
        the stage slots, consecutive chunks of one prompt included, each at most
        ``max_batch_tokens`` - cost_model module docstring) beside all running decodes.  With dynamic
        KVP the iteration's KV spans the groups of its longest sequence or prefix."""
        pool, cost, req = self.pool, self.cost, self.req
        pp = pool.pp
        b = len(self.heap)
        k_sum = self.s + b * self.g
        groups = self.decode_groups()
        pieces = self.scheduler.plan(self, b, k_sum, groups)  # (item, chunk tokens, prefix tokens)
        if not pieces:
            return False
        c_sum = cp_sum = c2_sum = p_sum = 0.0
        for _, c, done in pieces:
            c_sum += c
            cp_sum += c * done
            c2_sum += c * c
            p_sum += done
            if self.kvp_cap is not None:
                groups = max(groups, self.groups(done))
        self.tokens_left -= int(c_sum)  # (the decodes' tokens: in _decoded)
        full = [cost.piece_latency(c, done, groups) for _, c, done in pieces] if pp > 1 else []
        latency = cost.iteration_latency(c_sum, cp_sum, c2_sum, p_sum, b, k_sum, n=len(pieces), largest=max(full, default=0.0),
                                         groups=groups)
        power = cost.iteration_power(c_sum, b)
        share = power * latency / (c_sum + b) if power is not None else 0.0
        for (r, _), c, _ in pieces:
            req.energy[r] += share * c
        start = self.t
        self._spend(latency, power)
        self.t += latency
        self.iterations += 1
        if b:
            self.rec.add_tbt(latency, 0.0, 1, b)
            self._decoded(1, latency, share)
        completed = False
        offset = 0.0  # SPP: when the piece's slot starts, after the slots before it
        for j, (item, c, _) in enumerate(pieces):
            item[1] += c
            if item[1] >= req.input[item[0]] and np.isnan(req.first_token[item[0]]):
                completed = True
                # SPP: the last chunk passes every stage (its full unsplit time and the transfers)
                # while the first stage goes on with other work, so one short prompt gains nothing
                req.first_token[item[0]] = self.t if pp == 1 else max(self.t, start + offset + full[j] + cost.transfer_s)
                self._join(item[0])
            if pp > 1:
                offset += full[j] / pp
        if completed:
            self.prefilling = [item for item in self.prefilling if item[1] < req.input[item[0]]]
        return True

    def _decode_stretch(self, until: float) -> None:
        cost = self.cost
        b = len(self.heap)
        k_sum = self.s + b * self.g
        groups = self.decode_groups()
        first = cost.iteration_latency(0, 0, 0, 0, b, k_sum, groups=groups)
        slope = cost.iteration_latency(0, 0, 0, 0, b, k_sum + b, groups=groups) - first
        n = self.heap[0][0] - self.g if self.fast_forward else 1
        if self.kvp_cap is not None and groups < self.pool.kvp:
            # the stretch ends where the longest sequence outgrows its groups (one more joins)
            longest = self._longest_decode()
            n = max(1, min(n, int(groups * self.kvp_cap - longest) + 1))
        if math.isfinite(until) and n > 1:
            # iterations that *start* before ``until``: S(m) = m*first + slope*m(m-1)/2 < until - t
            gap = until - self.t
            if slope > 1e-15:
                a2, a1 = slope / 2, first - slope / 2
                m = int((-a1 + math.sqrt(a1 * a1 + 4 * a2 * gap)) / (2 * a2))
            else:
                m = int(gap / first)
            n = max(1, min(n, m + 1))
        duration = n * first + slope * n * (n - 1) / 2
        power = cost.iteration_power(0, b)
        self._spend(duration, power)
        self.rec.add_tbt(first, slope, n, b)
        self.t += duration
        self.iterations += n
        self._decoded(n, max(first, first + slope * (n - 1)), power * duration / b if power is not None else 0.0)

    def advance(self, until: float) -> None:
        """Run until ``until`` (the iteration in flight may end past it) or until out of work."""
        while self.t < until:
            if self.queue:
                self._admit()
            if self.prefilling and self._mixed_iteration():
                continue
            if self.heap:
                self._decode_stretch(until)
                continue
            if self.parked:
                self.power_off(self.t)  # drained: its GPUs now serve the new layout
            self.power_now = self.idle_power if self.powered else 0.0
            if math.isfinite(until):
                if self.idle_power is not None and self.powered:
                    self.idle_energy += self.idle_power * (until - self.t)
                    self.rec.add_energy(self.index, self.t, until, self.idle_power)
                self.t = until
            return

    @property
    def busy(self) -> bool:
        """Whether a request is queued, prefilling or decoding here."""
        return bool(self.queue or self.prefilling or self.heap)

    def set_cost(self, cost: InstanceCost) -> None:
        """New clock or power cap from now on (call after advancing to now)."""
        self.cost = cost
        self.idle_power = cost.idle_power()

    def idle_until(self, t_end: float) -> None:
        """Idle up to ``t_end`` (s), at idle power while powered; the instance's time never goes back."""
        if t_end > self.t and self.idle_power is not None and self.powered:
            self.idle_energy += self.idle_power * (t_end - self.t)
            self.rec.add_energy(self.index, self.t, t_end, self.idle_power)
        self.t = max(self.t, t_end)

    def power_off(self, t: float) -> None:
        """Power off at ``t`` (s): no power drawn from now on, powered time counted up to ``t``."""
        if self.powered:
            self.powered_s += t - self.powered_since
        self.powered, self.parked = False, False
        self.power_now = 0.0

    def power_on(self, t: float, ready_at: float) -> None:
        """Take over GPUs at ``t``; idle (loading weights) until ``ready_at``, then serve."""
        self.parked = False
        if not self.powered:  # (an instance still powered - draining, or never off - just stays)
            self.powered, self.powered_since = True, t
            self.t = max(self.t, t)
            self.idle_until(ready_at)

    def powered_seconds(self, t_end: float) -> float:
        """Seconds the instance has been powered up to ``t_end``."""
        return self.powered_s + (t_end - self.powered_since if self.powered else 0.0)


@dataclass
class ReplayResult:
    """What a replay produced: one row per request (the ``replay_requests`` columns), the power
    timeline (``power_timeline`` columns, one row per run of equal bins), the summary (times in s,
    energy in kWh; energy, power and carbon None without power models) and the policy's events
    (one row per change; None until :func:`replay` sets it)."""

    requests: pd.DataFrame
    timeline: pd.DataFrame
    summary: dict
    events: pd.DataFrame | None = None


class ClusterState:
    """What a policy controller sees and may change while a replay runs."""

    def __init__(self, instances: list[Instance], members: list[list[int]], config: ClusterConfig,
                 bundles: dict[str | None, ModelBundle], recorder: Recorder) -> None:
        self.instances = instances
        self.recorder = recorder
        self.members = members
        self.config = config
        self.active = [len(m) for m in members]  # routing goes to the first `active` members of each pool
        self.redirect = list(range(len(members)))  # requests routed to pool p go to pool redirect[p]
        self._bundles = bundles
        self._costs: dict = {}
        self.events: list[dict] = []

    def row_power(self, t: float, window_s: float) -> float:
        """Mean row power over the whole timeline bins in [t - window_s, t), as a power meter
        averaging over its interval would read it (instances must be advanced to ``t``)."""
        rec = self.recorder
        last = int(t // rec.bin_s)
        first = max(0, last - max(1, int(round(window_s / rec.bin_s))))
        if last <= first:
            return float(sum(inst.power_now or 0.0 for inst in self.instances))
        return float(rec.energy_in_bins(first, last) / ((last - first) * rec.bin_s))

    def cost_at(self, pool_index: int, sm_clock_mhz: float | None) -> InstanceCost:
        """The compiled costs of pool ``pool_index``'s instances at ``sm_clock_mhz`` (None: the
        highest profiled clock), from the pool's bundle; compiled once per (pool, clock)."""
        key = (pool_index, sm_clock_mhz)
        if key not in self._costs:
            pool = self.config.pools[pool_index]
            bundle = self._bundles.get(pool.models) or next(iter(self._bundles.values()))
            self._costs[key] = InstanceCost.from_bundle(bundle, pool.tp, sm_clock_mhz, pool.pp, pool.kvp, pool.kvp_combine_s,
                                                        pp_transfer_s=pool.pp_transfer_s, model_shape=pool.model_shape,
                                                        network=pool.kvp_network_csv)
        return self._costs[key]

    def _event(self, t: float, kind: str, pool: str, from_value, to_value, cost_s: float, reason: str,
               instance: int | None = None, **extra) -> None:
        """Record a policy event: its kind (clock, scale, power_up, reshard), time (s), pool and
        instance (None: the pool), the value before and after (MHz, instances, TP), its cost (s
        the instances stall or load) and reason; ``extra`` keys as earlier events had them."""
        self.events.append({"t_s": t, "kind": kind, "pool": pool, "instance": instance, "from_value": from_value,
                            "to_value": to_value, "cost_s": cost_s, "reason": reason, **extra})

    def set_clock(self, t: float, instance: int, sm_clock_mhz: float | None, reason: str = "",
                  stall_s: float = 0.0) -> None:
        """Run ``instance`` at ``sm_clock_mhz`` (None: the highest profiled clock) from ``t`` on,
        recording an event with ``reason``.  A powered instance first stalls ``stall_s`` (the clock
        switch): it runs nothing, at idle power, from ``t`` (or the end of the iteration in flight)
        for that long; its requests wait."""
        inst = self.instances[instance]
        before = inst.clock
        inst.set_cost(self.cost_at(inst.pool_index, sm_clock_mhz))
        inst.clock = sm_clock_mhz
        stalled = stall_s if stall_s > 0 and inst.powered else 0.0
        if stalled:
            inst.idle_until(max(inst.t, t) + stalled)
        self._event(t, "clock", inst.pool.name, before, sm_clock_mhz, stalled, reason, instance, sm_clock_mhz=sm_clock_mhz)

    def reshard(self, t: float, routed_pool: int, layout_pool: int, n: int, sm_clock_mhz: float | None,
                warmup_s: float, reason: str = "", power_off_rest: bool = False) -> None:
        """Serve ``routed_pool``'s requests with ``layout_pool`` (another TP layout of the same GPUs)
        from now on: the current layout takes no new requests and powers off once drained; the new
        one powers on, loads for ``warmup_s`` and then serves with ``n`` active instances."""
        current = self.redirect[routed_pool]
        if current == layout_pool:
            return
        self._park(t, self.members[current])
        n = max(1, min(n, len(self.members[layout_pool])))
        for i in self.members[layout_pool][: n if power_off_rest else None]:
            inst = self.instances[i]
            inst.power_on(t, t + warmup_s)
            if inst.clock != sm_clock_mhz:
                inst.set_cost(self.cost_at(layout_pool, sm_clock_mhz))
                inst.clock = sm_clock_mhz
        self.redirect[routed_pool] = layout_pool
        self.active[layout_pool] = n
        self._event(t, "reshard", self.config.pools[layout_pool].name, self.config.pools[current].tp,
                    self.config.pools[layout_pool].tp, warmup_s, f"{reason} re-shard from {self.config.pools[current].name}",
                    active=self.active[layout_pool], sm_clock_mhz=sm_clock_mhz)

    def set_active(self, t: float, pool_index: int, n: int, reason: str = "", power_off_rest: bool = False) -> None:
        """Route to the first ``n`` members; with ``power_off_rest`` the others power off once drained
        (an instance that becomes active again is powered on, see :meth:`power_up`)."""
        members = self.members[pool_index]
        n = max(1, min(n, len(members)))
        if n != self.active[pool_index]:
            self._event(t, "scale", self.config.pools[pool_index].name, self.active[pool_index], n, 0.0, reason, active=n)
        self.active[pool_index] = n
        self.power_up(t, pool_index, n, reason)
        if power_off_rest:
            self._park(t, members[n:])

    def power_up(self, t: float, pool_index: int, n: int, reason: str = "", cost_s: float = 0.0) -> None:
        """Power on the first ``n`` members (warming up ahead of routing to them: the caller routes
        to them ``cost_s`` later, the instance start recorded as the event's cost)."""
        members = self.members[pool_index]
        before = sum(1 for i in members if self.instances[i].powered)
        for i in members[:n]:
            self.instances[i].power_on(t, t)
        after = sum(1 for i in members if self.instances[i].powered)
        if after != before:
            self._event(t, "power_up", self.config.pools[pool_index].name, before, after, cost_s, reason)

    def _park(self, t: float, indices) -> None:
        for i in indices:
            inst = self.instances[i]
            if inst.busy:
                inst.parked = True
            elif inst.powered:
                inst.power_off(max(inst.t, t))


def replay(trace: pd.DataFrame, bundle: ModelBundle, config: ClusterConfig, priority: np.ndarray | None = None,
           progress: Callable[[float], None] | None = None, fast_forward: bool = True,
           controller: _Controller | None = None, source: str | Path | None = None) -> ReplayResult:
    """Replay ``trace`` (arrival_s, input_tokens, output_tokens) through ``config``.

    ``fast_forward=False`` steps decode iterations one at a time: the plain reference run the
    closed-form stretches are checked against.  A ``controller`` (a policy: DynamoLLM, POLCA)
    is called at the times it asks for, with every instance advanced to that time, and may change
    clocks and the number of active instances per pool through :class:`ClusterState`.  A request
    no pool accepts is refused before anything runs, naming ``source`` (the trace file) and its row.
    ``progress``, if given, is called with the fraction of requests routed so far (0 to 1).
    """
    started = time.perf_counter()
    bundles = {}
    for pool in config.pools:
        if pool.models and pool.models not in bundles:  # a pool of another GPU type brings its own models
            from characterize.model_io import ModelBundle

            bundles[pool.models] = ModelBundle.load(pool.models)
    config = resolve_cluster(config, bundle, bundles=bundles)  # KV capacity: as set, or from the model shape
    arrival = trace["arrival_s"].to_numpy(dtype=np.float64)
    req = Requests(arrival, trace["input_tokens"].to_numpy(dtype=np.int64), trace["output_tokens"].to_numpy(dtype=np.int64))
    horizon = float(arrival[-1]) if len(arrival) else 0.0
    rec = Recorder(config.instances, config.bin_s)
    instances: list[Instance] = []
    members: list[list[int]] = []
    for p_index, pool in enumerate(config.pools):
        pool_bundle = bundles[pool.models] if pool.models else bundle
        bundles.setdefault(None, bundle)
        cost = InstanceCost.from_bundle(pool_bundle, pool.tp, pool.sm_clock_mhz, pool.pp, pool.kvp, pool.kvp_combine_s,
                                        pp_transfer_s=pool.pp_transfer_s, model_shape=pool.model_shape,
                                        network=pool.kvp_network_csv)
        if not pool.standby:
            cost.check_range(pool)
        memory = pool_plan(pool, pool_bundle)
        members.append([])
        for _ in range(pool.instances):
            members[-1].append(len(instances))
            instances.append(Instance(len(instances), p_index, pool, cost, req, rec, memory))
            instances[-1].fast_forward = fast_forward
    req.pool[:] = route_requests(config, req.input, req.output, priority, source)
    state = ClusterState(instances, members, config, bundles, rec)
    round_robin = [0] * len(config.pools)
    router = config.router
    rng = np.random.default_rng(config.seed)
    step = max(1, len(arrival) // 100)

    skip_idle = getattr(controller, "skip_idle", None)  # (a controller may set it to None: act every period)

    def control_until(t: float) -> None:
        while controller is not None and controller.next_time() <= t:
            tc = controller.next_time()
            for inst in instances:
                inst.advance(tc)
            if skip_idle is not None and not any(inst.busy for inst in instances):
                skip_idle(tc, t, state)  # an idle stretch costs the controller O(1), not one act per period
                if controller.next_time() > tc:
                    continue
            controller.act(tc, state)

    for r in range(len(arrival)):
        t = arrival[r]
        control_until(t)
        req.pool[r] = state.redirect[req.pool[r]]
        group = members[req.pool[r]][: state.active[req.pool[r]]]
        if router == "least_loaded" or (router == "power_of_two" and len(group) <= 2):
            for i in group:
                instances[i].advance(t)
            target = min(group, key=lambda i: instances[i].outstanding)
        elif router == "token_jsq":  # the fewest outstanding tokens (prompt to prefill + output to generate)
            for i in group:
                instances[i].advance(t)
            target = min(group, key=lambda i: instances[i].tokens_left)
        elif router == "power_of_two":
            # JSQ(2): two distinct instances at random, the shorter queue wins.  Only those two are
            # advanced, so the others' decode stretches are not cut at every arrival.
            a, b = rng.choice(len(group), 2, replace=False)
            first, second = group[a], group[b]
            instances[first].advance(t)
            instances[second].advance(t)
            target = first if instances[first].outstanding <= instances[second].outstanding else second
        else:
            target = group[round_robin[req.pool[r]] % len(group)]
            round_robin[req.pool[r]] += 1
            instances[target].advance(t)
        instances[target].enqueue(r)
        req.instance[r] = target
        if progress is not None and r % step == 0:
            progress(r / max(1, len(arrival)))
    while controller is not None and any(inst.busy for inst in instances) and math.isfinite(controller.next_time()):
        control_until(controller.next_time())
    for inst in instances:
        inst.advance(math.inf)
    t_end = max([horizon] + [inst.t for inst in instances])
    for inst in instances:
        inst.idle_until(t_end)
    if progress is not None:
        progress(1.0)
    result = _result(trace, req, rec, instances, config, priority, t_end, time.perf_counter() - started)
    result.events = pd.DataFrame(state.events)
    if controller is not None:
        result.summary["policy"] = controller.describe()
    return result


def _result(trace, req: Requests, rec: Recorder, instances, config: ClusterConfig, priority, t_end, wall_s) -> ReplayResult:
    pool_names = np.array([p.name for p in config.pools], dtype=object)
    has_power = all(inst.cost.has_power for inst in instances)
    dropped = req.drop_reason != None  # noqa: E711  (object array)
    ttft = req.first_token - req.arrival
    e2e = req.finish - req.arrival
    with np.errstate(invalid="ignore", divide="ignore"):
        tbt_mean = np.where(req.output > 1, (req.finish - req.first_token) / (req.output - 1), np.nan)
    requests = pd.DataFrame({
        "request_id": trace["request_id"].to_numpy() if "request_id" in trace else np.arange(len(req.arrival)),
        "pool": pool_names[req.pool],
        "instance": req.instance,
        "priority": priority if priority is not None else None,
        "arrival_s": req.arrival,
        "input_tokens": req.input,
        "output_tokens": req.output,
        "first_token_s": req.first_token,
        "finish_s": req.finish,
        "ttft_s": ttft,
        "tbt_mean_s": tbt_mean,
        "tbt_max_s": np.where(req.output > 1, req.tbt_max, np.nan),
        "e2e_s": e2e,
        "energy_j": req.energy if has_power else np.nan,
        "dropped": dropped,
        "drop_reason": req.drop_reason,
    })
    bin_s = config.bin_s
    n_bins = int(math.ceil(t_end / bin_s)) if t_end > 0 else 1
    runs = [rec.runs(i, n_bins) for i in range(len(instances))]
    starts, counts, energy = (np.concatenate([r[k] for r in runs]) for k in range(3))
    lengths = [len(r[0]) for r in runs]
    timeline = pd.DataFrame({  # one row per run of equal bins: an idle day is one row, not 86,400
        "pool": np.repeat([config.pools[inst.pool_index].name for inst in instances], lengths),
        "instance": np.repeat(np.arange(len(instances)), lengths),
        "t_s": starts * bin_s,
        "duration_s": counts * bin_s,
        "power_w": energy / bin_s if has_power else np.nan,
    })
    # the row (all instances) per bin, as stretches of bins with the same total
    row_starts, row_j = _sum_steps([r[0] for r in runs], [r[2] for r in runs])
    row_bins = np.diff(np.r_[row_starts, n_bins])
    row_power = row_j / bin_s
    slo_ttft = np.array([p.ttft_slo_s for p in config.pools])[req.pool]
    slo_tbt = np.array([p.tbt_slo_s for p in config.pools])[req.pool]
    done = ~dropped
    met = done & (ttft <= slo_ttft) & ((req.output <= 1) | (tbt_mean <= slo_tbt))
    busy = sum(i.busy_energy for i in instances)
    idle = sum(i.idle_energy for i in instances)
    it_kwh = (busy + idle) / 3.6e6
    if config.carbon_csv:  # time-varying grid intensity, applied bin by bin
        from .config import load_carbon_series

        t_series, g_series = load_carbon_series(config.carbon_csv)
        carbon_kg = _grid_weighted_kwh(row_starts, row_j, n_bins, bin_s, t_series, g_series) * config.pue / 1000.0
    else:
        carbon_kg = it_kwh * config.pue * config.carbon_g_per_kwh / 1000.0
    gpu_hours = sum(i.cost.gpus * i.powered_seconds(t_end) for i in instances) / 3600.0
    summary = {
        "requests": int(len(req.arrival)),
        "finished": int(done.sum()),
        "dropped": int(dropped.sum()),
        "duration_s": float(t_end),
        "instances": sum(1 for i in instances if not i.pool.standby),
        "gpus": int(sum(i.cost.gpus for i in instances if not i.pool.standby)),  # standby layouts share these
        "iterations": int(sum(i.iterations for i in instances)),
        "ttft_p50_s": _q(ttft[done], 0.5), "ttft_p99_s": _q(ttft[done], 0.99),
        "tbt_p50_s": rec.tbt_quantile(0.5), "tbt_p99_s": rec.tbt_quantile(0.99),
        "e2e_p50_s": _q(e2e[done], 0.5), "e2e_p99_s": _q(e2e[done], 0.99),
        "slo_attainment": float(met.sum() / len(met)) if len(met) else float("nan"),
        "energy_kwh": it_kwh if has_power else None,
        "energy_busy_kwh": busy / 3.6e6 if has_power else None,
        "energy_idle_kwh": idle / 3.6e6 if has_power else None,
        "facility_energy_kwh": it_kwh * config.pue if has_power else None,
        "carbon_kg": carbon_kg if has_power else None,
        "gpu_hours": gpu_hours,
        "cost_usd": gpu_hours * config.gpu_hour_usd,
        "energy_per_output_token_j": (busy + idle) / max(1, int(req.output[done].sum())) if has_power else None,
        "replay_wall_s": wall_s,
        "bin_s": bin_s,
        "peak_row_power_w": float(row_power.max()) if has_power else None,
        # over every bin of the run, idle ones included (what a row's power budget sees)
        "row_power_p50_w": _weighted_quantile(row_power, row_bins, 0.5) if has_power else None,
        "row_power_p99_w": _weighted_quantile(row_power, row_bins, 0.99) if has_power else None,
        "peak_instance_power_w": max(i.cost.iteration_power(1e6, 0) or 0.0 for i in instances) if has_power else None,
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
        summary["conservation"] = {
            "timeline_j": float(np.dot(counts, energy)), "instances_j": busy + idle,
            "requests_plus_idle_j": float(req.energy.sum()) + idle,
        }
    return ReplayResult(requests, timeline, summary)


def _q(values: np.ndarray, q: float) -> float:
    values = values[np.isfinite(values)]
    return float(np.quantile(values, q)) if values.size else float("nan")


def _sum_steps(starts: list[np.ndarray], values: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Sum step functions over one domain: ``values[i][j]`` holds from ``starts[i][j]`` (sorted,
    each beginning at the domain's start) to the next start.  Returns the union of the starts
    and the sum from each; the sum goes instance by instance, in the order a dense
    instances x bins array summed over its first axis would take."""
    union = np.unique(np.concatenate(starts))
    total = np.zeros(len(union))
    for s, v in zip(starts, values):
        total += v[np.searchsorted(s, union, side="right") - 1]
    return union, total


def cluster_power(timeline: pd.DataFrame) -> pd.DataFrame:
    """Total power of all instances of a power timeline: rows ``t_s``, ``duration_s``, ``power_w``,
    one per stretch of constant total, in time order.

    Takes the run-length timeline a replay writes; a dense one without ``duration_s`` (one row per
    bin, as written before runs) is read as bins of its smallest time step."""
    if "duration_s" not in timeline:
        steps = np.diff(np.unique(timeline["t_s"]))
        timeline = timeline.assign(duration_s=steps.min() if len(steps) else 1.0)
    groups = [g.sort_values("t_s") for _, g in timeline.groupby("instance", sort=True)]
    if not groups:
        return pd.DataFrame({"t_s": [], "duration_s": [], "power_w": []})
    union, total = _sum_steps([g["t_s"].to_numpy(dtype=float) for g in groups],
                              [g["power_w"].to_numpy(dtype=float) for g in groups])
    end = max(float((g["t_s"] + g["duration_s"]).iloc[-1]) for g in groups)
    new = np.r_[True, total[1:] != total[:-1]]  # NaN (no power model) stays one row per change point
    union, total = union[new], total[new]
    return pd.DataFrame({"t_s": union, "duration_s": np.diff(np.r_[union, end]), "power_w": total})


def _weighted_quantile(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """``np.quantile`` (linear) of the array holding ``values[i]`` ``counts[i]`` times, without
    building it: an idle year is one value with a count, not millions of equal bins."""
    if not len(values) or counts.sum() <= 0:
        return float("nan")
    order = np.argsort(values, kind="stable")
    v, cum = values[order], np.cumsum(counts[order])
    h = q * (int(cum[-1]) - 1)
    lo = math.floor(h)
    a = v[np.searchsorted(cum, lo, side="right")]
    b = v[np.searchsorted(cum, min(lo + 1, int(cum[-1]) - 1), side="right")]
    return float(a + (h - lo) * (b - a))


def _grid_weighted_kwh(starts: np.ndarray, energy_j: np.ndarray, n_bins: int, bin_s: float,
                       t_series: np.ndarray, g_series: np.ndarray) -> float:
    """Sum over bins of (energy in the bin, kWh) x (grid intensity at the bin's midpoint, g/kWh).

    Stretches of equal bins (``energy_j[i]`` from bin ``starts[i]`` on) are cut where a midpoint
    passes a point of the series; within a piece the intensity is linear in time, so the piece's
    bins sum to (bins) x (intensity at their mean midpoint), exactly as bin by bin."""
    cuts = np.ceil(np.asarray(t_series, dtype=float) / bin_s - 0.5)  # first bin whose midpoint is at or after t
    cuts = cuts[(cuts > 0) & (cuts < n_bins)].astype(np.int64)
    pieces = np.union1d(starts, cuts)
    n = np.diff(np.r_[pieces, n_bins])
    midpoint = (pieces + n / 2) * bin_s  # the mean of (k + 0.5) * bin_s over the piece's bins
    energy = energy_j[np.searchsorted(starts, pieces, side="right") - 1]
    return float((energy / 3.6e6 * n * np.interp(midpoint, t_series, g_series)).sum())
