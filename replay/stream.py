"""Streaming replay: a trace of any length through a cluster in memory that follows the requests in
flight, not the trace.

Arrivals are read a batch at a time (Parquet row groups / CSV chunks, validated as they come);
each request gets a slot (:class:`~replay.requests.Requests`) and gives it back once its results
are written.  Results are written in arrival order as soon as every earlier request is done, and
the power timeline's bins are written once every instance has passed them, so what is held is the
requests since the oldest one still running, the bins still open, and the row's power (one entry
per change of the row's total, not per request).

Summary figures are those of an in-memory :func:`replay.engine.replay` of the same trace, except
request latency quantiles (TTFT, E2E), which come from log histograms (within 0.6 %, see
:mod:`replay.summary`).  Policies (DynamoLLM plans over the whole trace; POLCA reads recent
bins) are replayed in memory only.

A run is split in two so that :mod:`replay.partition` can replay parts on other processes:
:func:`replay_part` replays a part (the whole trace, one pool, or one cell of a random split) up
to its last event and writes its files; :func:`finish_parts` ends all parts at the same time (the
latest any part reached), writes their last bins and merges the summary.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .config import ClusterConfig, route_requests
from .engine import ReplayCore, end_of_run
from .recorder import Recorder
from .requests import Requests
from .summary import InstanceEnd, RequestTotals, TimelineTotals, request_columns, summarise

if TYPE_CHECKING:
    from characterize.model_io import ModelBundle

BATCH_ROWS = 65_536  # arrivals read and routed at a time
TIMELINE_TAKE_BINS = 4_096  # bins gathered before a take writes them (fewer, larger row groups)


@dataclass
class Part:
    """Which requests and instances a part replays: all of them (``kind`` None), the requests
    routed to pool ``index`` (``kind`` "pool", on that pool's instances alone), or cell ``index`` of
    ``count`` of a random split of the requests (``kind`` "cell", on ``1/count`` of every pool's
    instances: :func:`cell_of` and :func:`cell_config`)."""

    kind: str | None = None
    index: int = 0
    count: int = 1


@dataclass
class PartState:
    """A part replayed to its last event: what ending it needs (small: sent back from a worker)."""

    part: Part
    config: ClusterConfig  # the part's own cluster (its pools and instances)
    pool_names: list[str]
    ends: list[InstanceEnd]
    recorder: Recorder  # holding only the bins not yet written
    timeline: TimelineTotals
    totals: RequestTotals
    t_last: float
    requests_path: str
    timeline_path: str
    wall_s: float
    peak_held: int = 0  # most requests held at once (in flight or waiting to be written in order)
    peak_rss_mib: float | None = None  # the replaying process's peak resident memory (Linux; None elsewhere)
    extrapolated: list[str] = field(default_factory=list)


def peak_rss_mib() -> float | None:
    """This process's peak resident memory (MiB) from /proc (VmHWM: unlike getrusage's maxrss it
    is not inherited from the process that started this one); None where /proc has no such line."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cell_of(rows: np.ndarray, count: int, seed: int) -> np.ndarray:
    """The cell (0 .. count-1) of each trace row in a random split: a hash of the row and the
    seed (splitmix64), so any process finds the same cell for a row without coordination and
    each cell receives an equal share of every stretch of the trace."""
    with np.errstate(over="ignore"):  # (arithmetic modulo 2^64, as splitmix64 has it)
        x = np.asarray(rows, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(count)).astype(np.int64)


def cell_config(config: ClusterConfig, index: int, count: int) -> ClusterConfig:
    """Cell ``index`` of ``count``: every pool with its instances shared out (the first cells take
    one more where they do not divide).  ValueError when a routed pool has fewer instances than cells."""
    from dataclasses import replace

    pools = []
    for pool in config.pools:
        if pool.instances < count and not pool.standby:
            raise ValueError(f"pool {pool.name!r} has {pool.instances} instance(s), fewer than the {count} cells")
        share = pool.instances // count + (1 if index < pool.instances % count else 0)
        pools.append(replace(pool, instances=max(share, 0)))
    return replace(config, pools=pools)


def part_config(config: ClusterConfig, part: Part) -> tuple[ClusterConfig, list[int]]:
    """The part's cluster and, per its pools, the index of that pool in ``config`` (its random stream)."""
    from dataclasses import replace

    if part.kind == "pool":
        return replace(config, pools=[config.pools[part.index]]), [part.index]
    if part.kind == "cell":
        return cell_config(config, part.index, part.count), list(range(len(config.pools)))
    return config, list(range(len(config.pools)))


def _arrow_table(columns: dict, schema: pa.Schema) -> pa.Table:
    """The ``schema`` columns of ``columns`` (:func:`~replay.summary.request_columns`) as an Arrow
    table, straight from the arrays (no DataFrame on the way: a week is 27 M rows)."""
    n = len(columns["arrival_s"])
    arrays = []
    for field_ in schema:
        values = columns.get(field_.name)
        if values is None:
            arrays.append(pa.nulls(n, field_.type))
        else:
            arrays.append(pa.array(values, type=field_.type, from_pandas=True))  # (NaN -> null, as Table.from_pandas)
    return pa.Table.from_arrays(arrays, schema=schema)


def _writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    return pq.ParquetWriter(path, schema, compression="zstd")


def replay_part(trace_path: str | Path, bundle: ModelBundle, config: ClusterConfig, part: Part, out_dir: str | Path,
                simulated: bool, batch_rows: int = BATCH_ROWS,
                progress: Callable[[int], None] | None = None) -> PartState:
    """Replay ``part`` of the trace at ``trace_path`` to its last event, writing its requests and
    its complete timeline bins under ``out_dir`` (``requests.part-K.parquet``,
    ``power_timeline.part-K.parquet``); ``progress`` gets the number of trace rows read so far."""
    from toolkit.schemas import POWER_TIMELINE, REPLAY_REQUESTS
    from toolkit.traces.formats import iter_trace

    started = time.perf_counter()
    out_dir = Path(out_dir)
    own, pool_ids = part_config(config, part)
    req = Requests.empty(batch_rows)
    core = ReplayCore(bundle, own, req, pool_ids=pool_ids)
    own = core.config
    names = [p.name for p in own.pools]
    has_power = all(inst.cost.has_power for inst in core.instances)
    meta = {"wattlas.simulated": str(simulated).lower()}
    suffix = f".part-{part.kind or 'all'}-{part.index}.parquet"
    requests_path, timeline_path = out_dir / f"requests{suffix}", out_dir / f"power_timeline{suffix}"
    req_schema, tl_schema = REPLAY_REQUESTS.arrow(metadata=meta), POWER_TIMELINE.arrow(metadata=meta)
    totals, timeline = RequestTotals(exact=False), TimelineTotals(own.bin_s)
    pending = np.empty(0, dtype=np.int64)  # slots not yet written, in arrival order
    taken = 0  # timeline bins written
    peak_held = 0
    with _writer(requests_path, req_schema) as req_out, _writer(timeline_path, tl_schema) as tl_out:

        def write_done(final: bool) -> None:
            nonlocal pending
            if not len(pending):
                return
            done = req.done(pending)
            k = len(pending) if done.all() else int(np.argmin(done))
            if k < (1 if final else min(len(pending), batch_rows // 4)):
                return  # (few rows: wait for more, fewer and larger row groups)
            slots = pending[:k]
            columns = request_columns(req, slots, own, names, req.priority[slots], has_power, req.request_id[slots].copy())
            totals.add(columns, own)
            req_out.write_table(_arrow_table(columns, req_schema))
            req.release(slots)
            pending = pending[k:]

        def write_bins(until_bin: int) -> None:
            nonlocal taken
            frames = timeline.take(core.recorder, until_bin, names, [i.pool_index for i in core.instances])
            taken = until_bin
            if frames:
                tl_out.write_table(pa.Table.from_pandas(pd.concat(frames, ignore_index=True), schema=tl_schema,
                                                        preserve_index=False))

        by_priority = any(p.priority is not None for p in config.pools)  # (else routing never reads it)
        for table, offset in iter_trace(trace_path, "auto", batch_rows):
            rows = offset + np.arange(table.num_rows, dtype=np.int64)
            columns = {name: table.column(name).to_numpy() for name in ("arrival_s", "input_tokens", "output_tokens",
                                                                          "request_id") if name in table.column_names}
            cell = cell_of(rows, part.count, own.seed) == part.index if part.kind == "cell" else None
            priority = None
            if "priority" in table.column_names:
                text = table.column("priority")
                # (strings to objects only for the rows kept, unless routing reads every row's)
                priority = (text if by_priority or cell is None else text.filter(pa.array(cell))).to_numpy(zero_copy_only=False)
            # (a pool part routes over every pool of the cluster: a request goes to the first that takes it)
            pools = route_requests(config, columns["input_tokens"], columns["output_tokens"],
                                   priority if by_priority else None, trace_path, offset)
            keep = cell
            if part.kind == "pool":
                keep = pools == part.index
                pools = np.zeros(len(pools), dtype=np.int64)
            if keep is not None:
                rows, pools = rows[keep], pools[keep]
                columns = {k: v[keep] for k, v in columns.items()}
                if priority is not None and (by_priority or cell is None):
                    priority = priority[keep]
            columns["priority"] = priority
            slots = req.add(rows, columns["arrival_s"], columns["input_tokens"], columns["output_tokens"], pools,
                            columns.get("request_id"), columns.get("priority"))
            core.arrive(slots)
            pending = np.concatenate([pending, slots])
            peak_held = max(peak_held, len(pending))
            write_done(False)
            if len(columns["arrival_s"]):
                core.catch_up(float(columns["arrival_s"][-1]))
            complete = min(core.recorder.open_bins(), default=0)
            if complete - taken >= TIMELINE_TAKE_BINS:
                write_bins(complete)
            if progress is not None:
                progress(offset + table.num_rows)
        core.drain()
        write_done(True)
        write_bins(min(core.recorder.open_bins(), default=0))
    return PartState(part, own, names, core.ends(), core.recorder, timeline, totals, core.t_last, str(requests_path),
                     str(timeline_path), time.perf_counter() - started, peak_held, peak_rss_mib(), list(bundle.extrapolated))


def finish_parts(parts: list[PartState], config: ClusterConfig, out_dir: str | Path, simulated: bool,
                 wall_s: float, batch_rows: int) -> dict:
    """End every part at the latest time any reached (each instance idles to it), write the merged
    ``requests.parquet`` (in arrival order) and ``power_timeline.parquet`` under ``out_dir`` (the
    part files removed) and return the merged summary (without writing it)."""
    from toolkit.schemas import POWER_TIMELINE, REPLAY_REQUESTS
    from toolkit.traces.formats import streaming_parquet

    out_dir = Path(out_dir)
    t_end = max(p.t_last for p in parts)
    meta = {"wattlas.simulated": str(simulated).lower()}
    tl_schema = POWER_TIMELINE.arrow(metadata=meta)
    offset = 0
    tails = []
    for state in parts:
        frames = end_of_run(state.recorder, state.ends, t_end, state.timeline, state.pool_names)
        tail = pd.concat(frames, ignore_index=True) if frames else None
        tails.append((state, offset, tail))
        offset += len(state.ends)
    n_bins = int(math.ceil(t_end / config.bin_s)) if t_end > 0 else 1
    timeline = parts[0].timeline
    timeline.merge([p.timeline for p in parts[1:]], n_bins)
    tl_tmp = out_dir / "power_timeline.parquet.tmp"
    with _writer(tl_tmp, tl_schema) as out:
        for state, first_instance, tail in tails:
            for batch in streaming_parquet(state.timeline_path).iter_batches(batch_size=BATCH_ROWS):
                out.write_table(_renumber(pa.Table.from_batches([batch]), first_instance).cast(tl_schema))
            if tail is not None:
                out.write_table(_renumber(pa.Table.from_pandas(tail, preserve_index=False), first_instance).cast(tl_schema))
    os.replace(tl_tmp, out_dir / "power_timeline.parquet")
    if len(parts) == 1:  # already in arrival order, instances numbered from 0
        os.replace(parts[0].requests_path, out_dir / "requests.parquet")
    else:
        _merge_by_arrival([p.requests_path for p in parts], out_dir / "requests.parquet",
                          REPLAY_REQUESTS.arrow(metadata=meta), [sum(len(q.ends) for q in parts[:i]) for i in range(len(parts))])
    for state in parts:
        Path(state.requests_path).unlink(missing_ok=True)
        Path(state.timeline_path).unlink(missing_ok=True)
    totals = parts[0].totals
    for state in parts[1:]:
        totals.merge(state.totals)
    ends = [e for p in parts for e in p.ends]
    tbt_hist = sum(p.recorder.tbt_hist for p in parts)
    summary = summarise(_whole(config, parts), totals, timeline, ends, tbt_hist, t_end, wall_s)
    summary["streamed"] = {"parts": len(parts), "kind": parts[0].part.kind, "batch_rows": batch_rows,
                           "part_wall_s": [p.wall_s for p in parts],
                           "peak_requests_held": max(p.peak_held for p in parts),
                           "part_peak_rss_mib": [p.peak_rss_mib for p in parts],
                           "latency_quantiles": "log histogram, 200 bins a decade (within 0.6 %)"}
    summary["extrapolated"] = sorted({note for p in parts for note in p.extrapolated}) or None
    return summary


def _whole(config: ClusterConfig, parts: list[PartState]) -> ClusterConfig:
    """The cluster as the parts resolved it (KV capacity per pool), for the summary."""
    from dataclasses import replace

    if parts[0].part.kind == "pool":
        return replace(config, pools=[p.config.pools[0] for p in parts])
    resolved = parts[0].config.pools
    return replace(config, pools=[replace(p, kv_capacity_tokens=r.kv_capacity_tokens, kv_capacity_source=r.kv_capacity_source)
                                  for p, r in zip(config.pools, resolved)])


def _renumber(table: pa.Table, first_instance: int) -> pa.Table:
    """A part's rows with its instances numbered after those of the parts before it."""
    import pyarrow.compute as pc

    if first_instance == 0 or "instance" not in table.column_names:
        return table
    index = table.schema.get_field_index("instance")
    return table.set_column(index, "instance", pc.add(table.column("instance"), first_instance))


def _merge_by_arrival(paths: list[str], dst: Path, schema: pa.Schema, first_instances: list[int]) -> None:
    """Merge part files each in arrival order into ``dst`` in arrival order (ties: by request id),
    a batch of each at a time: everything up to the earliest last arrival of the batches in hand
    is written, the rest waits for the next batches."""
    import pyarrow.compute as pc

    from toolkit.traces.formats import streaming_parquet

    readers = [streaming_parquet(p).iter_batches(batch_size=BATCH_ROWS) for p in paths]
    held: list[pa.Table | None] = [None] * len(paths)
    live = list(range(len(paths)))
    tmp = dst.with_name(dst.name + ".tmp")
    with _writer(tmp, schema) as out:
        while live:
            for i in list(live):
                if held[i] is None or held[i].num_rows == 0:
                    batch = next(readers[i], None)
                    if batch is None:
                        live.remove(i)
                        held[i] = None
                        continue
                    held[i] = _renumber(pa.Table.from_batches([batch]), first_instances[i])
            if not live:
                break
            # the parts still being read bound what is safe to write; exhausted parts are written out whole
            bound = min(pc.max(held[i].column("arrival_s")).as_py() for i in live)
            chunks = []
            for i, table in enumerate(held):
                if table is None:
                    continue
                mask = pc.less_equal(table.column("arrival_s"), bound)
                chunks.append(table.filter(mask))
                held[i] = table.filter(pc.invert(mask))
            merged = pa.concat_tables(chunks).sort_by([("arrival_s", "ascending"), ("request_id", "ascending")])
            out.write_table(merged.cast(schema))
        rest = [t for t in held if t is not None and t.num_rows]
        if rest:
            out.write_table(pa.concat_tables(rest).sort_by([("arrival_s", "ascending"), ("request_id", "ascending")]).cast(schema))
    os.replace(tmp, dst)


def replay_stream(trace_path: str | Path, bundle: ModelBundle, config: ClusterConfig, out_dir: str | Path,
                  simulated: bool, batch_rows: int = BATCH_ROWS, progress: Callable[[int], None] | None = None) -> dict:
    """Replay the trace at ``trace_path`` in one process, streaming (module docstring): writes
    ``requests.parquet`` and ``power_timeline.parquet`` under ``out_dir``; returns the summary."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = replay_part(trace_path, bundle, config, Part(), out_dir, simulated, batch_rows, progress)
    summary = finish_parts([state], config, out_dir, simulated, time.perf_counter() - started, batch_rows)
    return summary
