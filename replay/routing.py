"""Global routing: which instance of its pool each arrival goes to (``ClusterConfig.router``).

* ``power_of_two`` (default): JSQ(2), two distinct instances at random, the one with fewer
  outstanding requests wins; only those two are advanced to the arrival (and then only when their
  count can have changed: :meth:`~replay.instance.Instance.outstanding_at`), so decode stretches
  are not cut at every arrival (O(1) per arrival).
* ``least_loaded``: the fewest outstanding requests over all active instances (exact, but every
  instance is advanced at every arrival).
* ``token_jsq``: the fewest outstanding tokens (prompt tokens not yet prefilled plus output
  tokens not yet generated) over all active instances.
* ``round_robin``.

Each pool draws from its own random stream (seeded by the cluster's seed and the pool's index),
drawn in blocks: a pool's choices do not depend on the arrivals of other pools, so pools replayed
apart (:mod:`replay.partition`) route exactly as in one replay.
"""

from __future__ import annotations

import numpy as np

from .instance import Instance

DRAW_BLOCK = 4096  # random pairs drawn at once per pool


class Router:
    """Routes arrivals to instances, per pool (module docstring)."""

    def __init__(self, kind: str, pool_ids: list[int], seed: int) -> None:
        """``pool_ids``: per pool, its index in the whole cluster (its random stream's seed)."""
        self.kind = kind
        n_pools = len(pool_ids)
        self._rngs = [np.random.default_rng([seed, p]) for p in pool_ids]
        self._draws: list[list[float]] = [[] for _ in range(n_pools)]
        self._next = [0] * n_pools
        self._round_robin = [0] * n_pools

    def _uniform_pair(self, pool: int) -> tuple[float, float]:
        draws, i = self._draws[pool], self._next[pool]
        if i + 2 > len(draws):
            draws = self._draws[pool] = self._rngs[pool].random(2 * DRAW_BLOCK).tolist()
            i = 0
        self._next[pool] = i + 2
        return draws[i], draws[i + 1]

    def pick(self, pool: int, group: list[int], instances: list[Instance], t: float) -> int:
        """The instance (index) of ``group`` (the pool's active members) an arrival at ``t`` goes
        to; the instances looked at are advanced to ``t`` first."""
        kind = self.kind
        if kind == "power_of_two" and len(group) > 2:
            u, v = self._uniform_pair(pool)
            n = len(group)
            a = int(u * n)
            b = int(v * (n - 1))
            b += b >= a  # two distinct instances, each pair equally likely
            first, second = instances[group[a]], instances[group[b]]
            return group[a] if first.outstanding_at(t) <= second.outstanding_at(t) else group[b]
        if kind in ("least_loaded", "power_of_two"):  # (JSQ(2) over <= 2 instances looks at both)
            return min(group, key=lambda i: instances[i].outstanding_at(t))
        if kind == "token_jsq":
            for i in group:
                instances[i].advance(t)
            return min(group, key=lambda i: instances[i].tokens_left)
        target = group[self._round_robin[pool] % len(group)]
        self._round_robin[pool] += 1
        instances[target].advance(t)
        return target
