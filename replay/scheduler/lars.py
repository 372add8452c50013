"""LARS: length-aware least-slack scheduling (Mnemosyne/Medha), so that short requests are not
starved behind a million-token prefill.

Each request gets a TTFT deadline scaled by its own length::

    deadline = arrival + ttft_slo_s + work(whole prompt)
    slack    = deadline - now - work(prompt tokens still to prefill)
             = ttft_slo_s - (time waited) + (work already done)

where ``work`` is the prompt's prefill time alone on the instance (its chunks' compute at
``max_batch_tokens`` a chunk, SPP and KVP applied: :meth:`LarsScheduler.work`).  A short prompt's
slack is the SLO minus its wait; a long one's also credits the work it has done, so neither length
class is favoured by length alone - a request is urgent when it has waited without progress.

Iteration (``plan``): the prefilling prompts in slack order (least first, ties by arrival):

1. every prompt that can *finish* in this iteration - its remaining tokens within the chunk the
   TBT budget still allows beside the decodes and the pieces already chosen
   (``InstanceCost.largest_chunk``), and within the token budget - is scheduled whole, least
   slack first: several short prefills ride beside the long one in one iteration;
2. the prompts that cannot finish (the long prefill) then get, in slack order, the adaptive chunk
   sized with what budget is left after the short prefills and the decodes (with ``pp`` > 1 it
   fills the remaining stage slots with consecutive chunks).  When nothing else was scheduled the
   first one progresses by at least ``MIN_CHUNK`` tokens, as under FCFS.

With a fixed ``chunk_policy`` the chunk is ``chunk_size`` instead of the adaptive one.

Admission (``admit``): among queued requests (nothing done yet) slack order is arrival order, so
requests start first come, first served; but a request that must wait for KV does not block the
ones behind it (up to ``LOOKAHEAD`` of them) unless its own slack is already negative - then
nothing overtakes it, so KV frees up for it (no starvation of large requests by small ones).

What is left out: preemption of a running prefill's KV (the paper's scheduler may evict), and
per-request TTFT targets other than the pool's ``ttft_slo_s``.
"""

from __future__ import annotations

import math
from collections import deque

from . import register
from .base import MIN_CHUNK, BatchScheduler, drop_if_never_fits, start

LOOKAHEAD = 64  # queued requests admission looks past one waiting for KV


@register("lars")
class LarsScheduler(BatchScheduler):
    """Length-aware least-slack admission and batching (module docstring)."""

    def __init__(self) -> None:
        self._total: dict[int, float] = {}  # request -> work of its whole prompt (s)

    # ------------------------------------------------------------------ slack
    @staticmethod
    def work(inst, lo: int, hi: int) -> float:
        """Prefill time (s) of prompt tokens ``[lo, hi)`` alone on the instance: chunks of
        ``max_batch_tokens`` (sums over them in closed form), SPP and KVP applied, no decodes."""
        n_tokens = hi - lo
        if n_tokens <= 0:
            return 0.0
        pool, cost = inst.pool, inst.cost
        q = cost.pre
        chunk = min(pool.max_batch_tokens, n_tokens)
        chunks = math.ceil(n_tokens / chunk)
        groups = inst.groups((lo + hi) // 2)  # the groups the prefix spans half way (dynamic KVP)
        attention = (q["kcp"] * n_tokens * (lo + hi) / 2 + q["kp"] * chunks * (lo + hi) / 2) / groups
        compute = chunks * q["k0"] + q["kc"] * n_tokens + q["kc2"] * chunk * n_tokens + attention
        return compute / pool.pp + chunks * cost.combine(groups, chunk)

    def total_work(self, inst, r: int) -> float:
        """Work of request ``r``'s whole prompt (s), computed once."""
        w = self._total.get(r)
        if w is None:
            w = self._total[r] = self.work(inst, 0, int(inst.req.input[r]))
        return w

    def forget(self, r: int) -> None:
        self._total.pop(r, None)

    def slack(self, inst, r: int, done: int) -> float:
        """Slack (s) of request ``r`` with ``done`` prompt tokens prefilled, at the instance's time."""
        req = inst.req
        deadline = req.arrival[r] + inst.pool.ttft_slo_s + self.total_work(inst, r)
        return deadline - inst.t - self.work(inst, done, int(req.input[r]))

    # ------------------------------------------------------------------ admission
    def admit(self, inst) -> None:
        pool, req, queue = inst.pool, inst.req, inst.queue
        capacity = inst.kv_capacity
        waiting: deque[int] = deque()
        looked = 0
        while queue and len(inst.prefilling) + len(inst.heap) < pool.max_batch_size and looked <= LOOKAHEAD:
            r = queue.popleft()
            need = int(req.input[r] + req.output[r])
            if drop_if_never_fits(inst, r, need):
                continue
            if inst.kv_reserved + need <= capacity:
                start(inst, r, need)
                continue
            waiting.append(r)
            if waiting[0] == r and req.arrival[r] + pool.ttft_slo_s - inst.t < 0:
                break  # late, and first in line: nothing overtakes it
            looked += 1
        queue.extendleft(reversed(waiting))

    # ------------------------------------------------------------------ batching
    def plan(self, inst, b: int, k_sum: float, groups: int) -> list[tuple[list[int], int, int]]:
        pool, cost, req = inst.pool, inst.cost, inst.req
        pp = pool.pp
        budget = pool.max_batch_tokens * pp - b
        adaptive = pool.chunk_policy == "adaptive"
        order = sorted(inst.prefilling, key=lambda item: (self.slack(inst, item[0], item[1]), req.arrival[item[0]]))
        pieces: list[tuple[list[int], int, int]] = []
        sums = [0.0, 0.0, 0.0, 0.0]  # c, c*p, c^2, p over the pieces
        longest = [0.0]  # SPP x KVP: the longest piece's unsplit time (its full pass carries the combine)
        spp_kvp = pp > 1 and cost.combine_terms(pool.kvp)[1] > 0

        def cap(done: int) -> int:
            if not adaptive:
                return pool.chunk_size
            return cost.largest_chunk(done, b, k_sum, pool.tbt_slo_s, scheduled=tuple(sums), n=len(pieces),
                                      groups=max(groups, inst.groups(done)), largest=longest[0])

        def add(item, c: int, done: int) -> None:
            pieces.append((item, c, done))
            if spp_kvp:
                longest[0] = max(longest[0], cost.piece_latency(c, done, max(groups, inst.groups(done))))
            sums[0] += c
            sums[1] += c * done
            sums[2] += c * c
            sums[3] += done

        def full() -> bool:
            return budget <= 0 or (pp > 1 and len(pieces) >= pp)

        unfinished = []
        for item in order:  # 1. whatever can finish now, least slack first
            if full():
                break
            r, done = item
            rest = int(req.input[r]) - done
            allowed = cap(done)
            if adaptive and not pieces:
                allowed = max(MIN_CHUNK, allowed)
            if rest <= min(allowed, budget, pool.max_batch_tokens):
                add(item, rest, done)
                budget -= rest
            else:
                unfinished.append(item)
        for item in unfinished:  # 2. the long prefill(s): the chunk that what is left allows
            r, done = item
            while not full():
                allowed = cap(done)
                if adaptive:
                    if pieces and allowed < MIN_CHUNK:
                        break  # the SLO budget of this iteration is spent
                    allowed = max(MIN_CHUNK, allowed)
                c = min(int(req.input[r]) - done, budget, allowed, pool.max_batch_tokens)
                if c <= 0:
                    break
                add(item, c, done)
                budget -= c
                done += c
                if pp == 1:
                    break  # without SPP a prompt gives one chunk an iteration
            if full():
                break
        return pieces
