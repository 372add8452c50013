"""One simulated inference instance: continuous batching with chunked prefill, iteration by iteration.

Each iteration carries all running decodes plus prefill chunk(s) from the queue, up to the
iteration's token budget; a chunk is ``chunk_size`` tokens, or with the adaptive policy the
largest chunk whose mixed iteration keeps the TBT SLO at the current KV prefix.  KV memory is
reserved for a request's prompt and output when its prefill starts; a request that could never
fit is dropped with a reason, every other one finishes.  Admission and the prefill pieces of each
iteration are the pool's replica scheduler's (``replay/scheduler/``: ``fcfs`` or ``lars``).

Speed: between events (an arrival, a completion) a decode-only batch does not change, and
iteration latency is linear in the iteration index (each iteration adds b KV entries), so the
whole stretch is computed in closed form instead of iteration by iteration.
"""

from __future__ import annotations

import heapq
import math
from collections import deque

from .config import PoolConfig
from .cost_model import InstanceCost
from .memory_planner import MemoryPlan
from .recorder import Recorder
from .requests import Requests
from .scheduler import make_scheduler

HISTORY_KEEP = 4096  # latency-history entries an instance keeps before it drops those no running sequence needs


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
        self.history_base = 0  # entries dropped from the front of history (h_join counts them)
        self._trim_at = HISTORY_KEEP
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
        self._kv_heap: list[tuple[float, int, int]] = []  # (-KV at g = 0, slot, trace row)
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
        heap, finish, row = self._kv_heap, self.req.finish, self.req.row
        # (a slot whose request finished may already hold a later request: the row tells them apart)
        while heap and (finish[heap[0][1]] == finish[heap[0][1]] or row[heap[0][1]] != heap[0][2]):
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
            heapq.heappush(self._kv_heap, (-(float(req.input[r] + 1) - self.g), r, int(req.row[r])))
        req.e_join[r] = self.e_seq
        req.h_join[r] = self.history_base + len(self.history)

    def _decoded(self, n: int, latency_max: float, energy_per_seq: float) -> None:
        """Every running sequence produced n more tokens; retire those that are done."""
        self.g += n
        self.e_seq += energy_per_seq
        history = self.history
        history.append(latency_max)
        heap, req = self.heap, self.req
        self.tokens_left -= n * len(heap)
        g, base = self.g, self.history_base
        while heap and heap[0][0] <= g:
            _, r = heapq.heappop(heap)
            self.s -= float(req.input[r] + 1) - (g - (int(req.output[r]) - 1))
            req.energy[r] += self.e_seq - req.e_join[r]
            req.tbt_max[r] = max(history[int(req.h_join[r]) - base:])
            self._release(r)
        if len(history) >= self._trim_at:
            self._trim_history()

    def _trim_history(self) -> None:
        """Drop the latency history no running sequence lived through: memory follows the running
        batch, not the instance's age."""
        h_join = self.req.h_join
        keep_from = min((int(h_join[r]) for _, r in self.heap), default=self.history_base + len(self.history))
        drop = keep_from - self.history_base
        if drop > 0:
            del self.history[:drop]
            self.history_base = keep_from
        self._trim_at = len(self.history) + HISTORY_KEEP

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
            if item[1] >= req.input[item[0]] and req.first_token[item[0]] != req.first_token[item[0]]:  # (NaN: not yet)
                completed = True
                self.scheduler.forget(item[0])
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
        heap = self.heap
        b = len(heap)
        g = self.g
        k_sum = self.s + b * g
        kvp_cap = self.kvp_cap
        groups = self.decode_groups() if kvp_cap is not None else self.pool.kvp
        # InstanceCost.decode_stretch, inlined here and in outstanding_at: the call cost 8-10 % of a replay
        const, per_token, slope = self.cost.decode_coefficients(b, groups)
        first = const + per_token * k_sum
        if first < 1e-6 or first + slope < 1e-6:  # (the 1 us floor of every iteration)
            first, slope = self.cost.decode_stretch(b, k_sum, groups)
        n = heap[0][0] - g if self.fast_forward else 1
        if kvp_cap is not None and groups < self.pool.kvp:
            # the stretch ends where the longest sequence outgrows its groups (one more joins)
            longest = self._longest_decode()
            n = max(1, min(n, int(groups * kvp_cap - longest) + 1))
        if n > 1 and until != math.inf:
            # iterations that *start* before ``until``: S(m) = m*first + slope*m(m-1)/2 < until - t
            gap = until - self.t
            if slope > 1e-15:
                a2, a1 = slope / 2, first - slope / 2
                m = int((-a1 + math.sqrt(a1 * a1 + 4 * a2 * gap)) / (2 * a2))
            else:
                m = int(gap / first)
            if m + 1 < n:
                n = m + 1 if m > 0 else 1
        duration = n * first + slope * n * (n - 1) / 2
        power = self.cost.decode_power_w(b)
        self.power_now = power
        self.busy_s += duration
        if power is not None:
            self.busy_energy += power * duration
            self.rec.add_energy(self.index, self.t, self.t + duration, power)
        self.rec.add_tbt(first, slope, n, b)
        self.t += duration
        self.iterations += n
        last = first + slope * (n - 1)
        self._decoded(n, last if last > first else first, power * duration / b if power is not None else 0.0)

    def outstanding_at(self, t: float) -> int:
        """:attr:`outstanding` once advanced to ``t`` (s), advancing only when that can differ from
        now: a decode-only batch whose next completion's last iteration starts after ``t`` keeps
        its count, and is left running so its decode stretch is not cut (the routers compare counts
        at every arrival)."""
        heap = self.heap
        if self.t < t and heap and not self.queue and not self.prefilling and self.kvp_cap is None and self.fast_forward:
            b, g = len(heap), self.g
            const, per_token, slope = self.cost.decode_coefficients(b, self.pool.kvp)
            first = const + per_token * (self.s + b * g)
            if first < 1e-6 or first + slope < 1e-6:  # (the 1 us floor of every iteration)
                first, slope = self.cost.decode_stretch(b, self.s + b * g, self.pool.kvp)
            m = heap[0][0] - g - 1  # iterations before the one that completes the next sequence
            last_start = self.t + m * first + slope * m * (m - 1) / 2
            if t < last_start - 1e-9 * (1.0 + abs(last_start)):  # (a margin against rounding at the boundary)
                return b
        self.advance(t)
        return len(self.queue) + len(self.prefilling) + len(heap)

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
