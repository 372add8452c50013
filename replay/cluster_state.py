"""What a policy controller sees of a running replay and may change: clocks, active instances per
pool, re-sharding between layouts of the same GPUs, power states; every change is an event."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import ClusterConfig
from .cost_model import InstanceCost
from .instance import Instance
from .recorder import Recorder

if TYPE_CHECKING:
    from characterize.model_io import ModelBundle


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
