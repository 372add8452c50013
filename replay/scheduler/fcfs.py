"""First come, first served (the engine's original policy, unchanged).

Admission: requests start in arrival order while the batch has room; the head of the queue waits
for KV to free up and nothing overtakes it.  Iteration: every prefilling prompt, oldest first,
adds a chunk (without SPP one chunk each, one batch; with ``pp`` > 1 up to ``pp`` chunks fill the
stage slots, consecutive chunks of one prompt included, each at most ``max_batch_tokens``), within
the iteration's token budget; a chunk is ``chunk_size`` tokens, or with the adaptive policy the
largest chunk keeping the iteration within ``tbt_slo_s`` (the first piece always progresses by at
least ``MIN_CHUNK``, later ones wait when the SLO budget is spent).  Under a long adaptive prefill
the oldest prompt takes the whole budget: short prompts behind it get only what the chunk's
rounding to 32 tokens leaves over (with SPP, whose stage slots the long prompt's chunks fill,
nothing), so they wait for most of the prefill.
"""

from __future__ import annotations

from . import register
from .base import MIN_CHUNK, BatchScheduler, drop_if_never_fits, start


@register("fcfs")
class FcfsScheduler(BatchScheduler):
    """First come, first served admission and chunking (module docstring)."""

    def admit(self, inst) -> None:
        pool, req, queue = inst.pool, inst.req, inst.queue
        capacity = inst.kv_capacity
        while queue and len(inst.prefilling) + len(inst.heap) < pool.max_batch_size:
            r = queue[0]
            need = int(req.input[r] + req.output[r])
            if drop_if_never_fits(inst, r, need):
                queue.popleft()
                continue
            if inst.kv_reserved + need > capacity:
                return  # wait for KV to free up
            queue.popleft()
            start(inst, r, need)

    def plan(self, inst, b: int, k_sum: float, groups: int) -> list[tuple[list[int], int, int]]:
        pool, cost, req = inst.pool, inst.cost, inst.req
        pp = pool.pp
        budget = pool.max_batch_tokens * pp - b
        adaptive = pool.chunk_policy == "adaptive"
        pieces = []  # (item, chunk tokens, prefix tokens)
        c_sum = cp_sum = c2_sum = p_sum = 0.0
        largest = 0.0  # SPP x KVP: the longest piece's unsplit time (its full pass carries the combine)
        spp_kvp = pp > 1 and cost.combine_terms(pool.kvp)[1] > 0
        for item in inst.prefilling:
            r, done = item
            while budget > 0 and (pp == 1 or len(pieces) < pp):
                cap = pool.chunk_size
                if adaptive:
                    g = max(groups, inst.groups(done))
                    cap = cost.largest_chunk(done, b, k_sum, pool.tbt_slo_s, scheduled=(c_sum, cp_sum, c2_sum, p_sum),
                                             n=len(pieces), groups=g, largest=largest)
                    if pieces and cap < MIN_CHUNK:
                        break  # the SLO budget of this iteration is spent; later pieces wait
                    cap = max(MIN_CHUNK, cap)  # the first piece always progresses
                c = min(int(req.input[r]) - done, budget, cap, pool.max_batch_tokens)
                if c <= 0:
                    break
                pieces.append((item, c, done))
                if spp_kvp:
                    largest = max(largest, cost.piece_latency(c, done, max(groups, inst.groups(done))))
                c_sum += c
                cp_sum += c * done
                c2_sum += c * c
                p_sum += done
                budget -= c
                done += c
                if pp == 1:
                    break  # without SPP a prompt gives one chunk an iteration
            if budget <= 0 or (pp > 1 and len(pieces) >= pp):
                break
        return pieces
