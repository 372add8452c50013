"""Discrete-event replay of a request trace through a simulated cluster.

The loop: arrivals in time order are routed (:mod:`replay.routing`) to an instance of the pool
that accepts them (:func:`replay.config.route_requests`), each instance runs its iterations
(:mod:`replay.instance`) up to the time it is looked at, and a policy controller, if any, acts at
the times it asks for (:mod:`replay.cluster_state`).  What happened is recorded per request
(:mod:`replay.requests`), as a TBT histogram and per-instance energy per time bin
(:mod:`replay.recorder`).

Arrivals come in batches (:class:`ReplayCore`): :func:`replay` passes the whole trace at once and
returns tables; :mod:`replay.stream` passes Parquet row groups and writes results as requests
finish, so memory follows the requests in flight; :mod:`replay.partition` replays independent
parts on dask.distributed and merges them.  All three end a run alike (:func:`end_of_run`): every
instance idles to the run's end, the timeline is closed and the summary assembled from the same
accumulators (:mod:`replay.summary`).

Energy: each iteration's power comes from the power model at its load, idle time at the idle
power; energy is attributed to requests by tokens processed, and binned per instance into a
power timeline.  The two accountings are checked against each other (``conservation``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd

from .cluster_state import ClusterState
from .config import ClusterConfig, route_requests
from .cost_model import InstanceCost
from .instance import Instance
from .memory_planner import pool_plan, resolve_cluster
from .recorder import TBT_BINS, Recorder  # noqa: F401  (re-exported)
from .requests import Requests
from .routing import Router
from .scheduler import MIN_CHUNK  # noqa: F401  (re-exported)
from .summary import InstanceEnd, RequestTotals, TimelineTotals, request_columns, summarise
from .timeline import cluster_power  # noqa: F401  (re-exported: reports and POLCA read timelines with it)

if TYPE_CHECKING:
    from typing import Protocol

    from characterize.model_io import ModelBundle

    class _Controller(Protocol):
        """What :func:`replay` calls on a policy (``skip_idle`` is optional, found by ``getattr``)."""

        def next_time(self) -> float: ...

        def act(self, t: float, state: ClusterState) -> None: ...

        def describe(self) -> dict: ...

__all__ = ["ClusterState", "Instance", "Recorder", "ReplayCore", "ReplayResult", "Requests", "cluster_power", "replay"]


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


class ReplayCore:
    """A cluster being replayed: its instances, router, controller and recorder, fed arrivals in
    batches (:meth:`arrive`), then drained (:meth:`drain`) and ended (:func:`end_of_run`)."""

    def __init__(self, bundle: ModelBundle, config: ClusterConfig, req: Requests, controller: _Controller | None = None,
                 fast_forward: bool = True, pool_ids: list[int] | None = None) -> None:
        """``pool_ids``: per pool, its index in the whole cluster when this is a part of it (which
        random stream its routing draws: :class:`~replay.routing.Router`)."""
        bundles = {}
        for pool in config.pools:
            if pool.models and pool.models not in bundles:  # a pool of another GPU type brings its own models
                from characterize.model_io import ModelBundle

                bundles[pool.models] = ModelBundle.load(pool.models)
        config = resolve_cluster(config, bundle, bundles=bundles)  # KV capacity: as set, or from the model shape
        self.config = config
        self.req = req
        self.recorder = rec = Recorder(config.instances, config.bin_s)
        self.instances: list[Instance] = []
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
                members[-1].append(len(self.instances))
                inst = Instance(len(self.instances), p_index, pool, cost, req, rec, memory)
                inst.fast_forward = fast_forward
                self.instances.append(inst)
        self.state = ClusterState(self.instances, members, config, bundles, rec)
        self.router = Router(config.router, pool_ids or list(range(len(config.pools))), config.seed)
        self.controller = controller
        self._skip_idle = getattr(controller, "skip_idle", None)  # (a controller may set it None: act every period)
        self.horizon = 0.0  # the last arrival so far (s)

    def _control_until(self, t: float) -> None:
        controller, instances, state = self.controller, self.instances, self.state
        while controller is not None and controller.next_time() <= t:
            tc = controller.next_time()
            for inst in instances:
                inst.advance(tc)
            if self._skip_idle is not None and not any(inst.busy for inst in instances):
                self._skip_idle(tc, t, state)  # an idle stretch costs the controller O(1), not one act per period
                if controller.next_time() > tc:
                    continue
            controller.act(tc, state)

    def arrive(self, slots: np.ndarray, progress: Callable[[int], None] | None = None) -> None:
        """Route the requests in ``slots`` (in arrival order, already given their pool) to instances,
        running the cluster up to each arrival.  ``progress``, if given, is called with the number
        of requests routed so far in this batch, every 1 % of it."""
        req, instances, state, router = self.req, self.instances, self.state, self.router
        members, active, redirect = state.members, state.active, state.redirect
        arrivals = req.arrival[slots].tolist()
        pools = req.pool[slots].tolist()
        slot_list = slots.tolist()
        controlled = self.controller is not None
        step = max(1, len(slot_list) // 100)
        groups: dict[tuple[int, int], list[int]] = {}  # (pool, active) -> the active members
        for j, r in enumerate(slot_list):
            t = arrivals[j]
            if controlled:
                self._control_until(t)
            p = redirect[pools[j]]
            key = (p, active[p])
            group = groups.get(key)
            if group is None:
                group = groups[key] = members[p][: active[p]]
            target = router.pick(p, group, instances, t)
            instances[target].advance(t)  # (the router may have left it running past t's batch: see routing)
            instances[target].enqueue(r)
            req.pool[r] = p
            req.instance[r] = target
            if progress is not None and j % step == 0:
                progress(j)
        if arrivals:
            self.horizon = max(self.horizon, arrivals[-1])

    def catch_up(self, t: float) -> None:
        """Let the instances with nothing to do idle up to ``t`` (s), so the timeline's bins before
        ``t`` close on them too (a streaming replay writes bins every instance has passed).  The
        busy ones are left alone: cutting their decode stretches would only cost time."""
        for inst in self.instances:
            if not inst.busy and inst.t < t:
                inst.advance(t)

    def drain(self) -> None:
        """Run every instance until all its requests are done (the controller acting while any is busy)."""
        controller, instances = self.controller, self.instances
        while controller is not None and any(inst.busy for inst in instances) and math.isfinite(controller.next_time()):
            self._control_until(controller.next_time())
        for inst in instances:
            inst.advance(math.inf)

    @property
    def t_last(self) -> float:
        """The latest time any instance has reached, or the last arrival (s)."""
        return max([self.horizon] + [inst.t for inst in self.instances])

    def ends(self) -> list[InstanceEnd]:
        """Each instance's accounts after its last event (what :func:`end_of_run` extends)."""
        return [InstanceEnd.of(inst) for inst in self.instances]


def end_of_run(recorder: Recorder, ends: list[InstanceEnd], t_end: float, timeline: TimelineTotals,
               pool_names: list[str]) -> list[pd.DataFrame]:
    """End a run at ``t_end`` (s): each powered instance idles from its last event to ``t_end`` (its
    accounts in ``ends`` and its bins in ``recorder`` extended), the open bins close, and the runs
    still held go to ``timeline``; returns them as ``power_timeline`` frames (one per instance)."""
    bin_s = recorder.bin_s
    for i, end in enumerate(ends):
        end.idle_until(t_end, recorder, i)
    n_bins = int(math.ceil(t_end / bin_s)) if t_end > 0 else 1
    for track in recorder._tracks:
        if track.open_bin < n_bins:
            track.close_until(n_bins)
    return timeline.take(recorder, n_bins, pool_names, [e.pool_index for e in ends])


def replay(trace: pd.DataFrame, bundle: ModelBundle, config: ClusterConfig, priority: np.ndarray | None = None,
           progress: Callable[[float], None] | None = None, fast_forward: bool = True,
           controller: _Controller | None = None, source: str | Path | None = None) -> ReplayResult:
    """Replay ``trace`` (arrival_s, input_tokens, output_tokens) through ``config``, all in memory.

    ``fast_forward=False`` steps decode iterations one at a time: the plain reference run the
    closed-form stretches are checked against.  A ``controller`` (a policy: DynamoLLM, POLCA)
    is called at the times it asks for, with every instance advanced to that time, and may change
    clocks and the number of active instances per pool through :class:`ClusterState`.  A request
    no pool accepts is refused before anything runs, naming ``source`` (the trace file) and its row.
    ``progress``, if given, is called with the fraction of requests routed so far (0 to 1).
    For traces too long for memory, see :func:`replay.stream.replay_stream`.
    """
    started = time.perf_counter()
    arrival = trace["arrival_s"].to_numpy(dtype=np.float64)
    req = Requests(arrival, trace["input_tokens"].to_numpy(dtype=np.int64), trace["output_tokens"].to_numpy(dtype=np.int64))
    core = ReplayCore(bundle, config, req, controller, fast_forward)
    config = core.config
    req.pool[:] = route_requests(config, req.input, req.output, priority, source)
    n = len(arrival)
    core.arrive(np.arange(n), (lambda j: progress(j / max(1, n))) if progress is not None else None)
    core.drain()
    pool_names = [p.name for p in config.pools]
    timeline = TimelineTotals(config.bin_s)
    ends = core.ends()
    t_end = core.t_last
    frames = end_of_run(core.recorder, ends, t_end, timeline, pool_names)
    if progress is not None:
        progress(1.0)
    has_power = all(e.has_power for e in ends)
    columns = request_columns(req, np.arange(n), config, pool_names, priority, has_power,
                              trace["request_id"].to_numpy() if "request_id" in trace else None)
    totals = RequestTotals(exact=True)
    totals.add(columns, config)
    summary = summarise(config, totals, timeline, ends, core.recorder.tbt_hist, t_end, time.perf_counter() - started)
    requests = pd.DataFrame({k: v for k, v in columns.items() if not k.startswith("_")})
    result = ReplayResult(requests, pd.concat(frames, ignore_index=True), summary)
    result.events = pd.DataFrame(core.state.events)
    if controller is not None:
        result.summary["policy"] = controller.describe()
    return result
