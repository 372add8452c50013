"""Partitioned replay on dask.distributed: independent parts of one replay on separate workers,
merged into one result.

Parts (:class:`~replay.stream.Part`):

* ``pools``: one part per routed pool.  Pools share nothing once a request is routed (each
  pool draws its routing choices from its own random stream), so the merged result equals a
  single-process streaming replay of the whole cluster: the same requests on the same instances
  at the same times (energies equal to rounding, as idle stretches split at other points).
* ``cells`` (``--partitions N``): a documented top-level random split, the way a fleet spreads
  load over identical cells behind a front door: request ``i`` goes to cell
  ``splitmix64(i + seed * golden) mod N`` (:func:`~replay.stream.cell_of`) and every pool's
  instances are shared out over the cells (:func:`~replay.stream.cell_config`).  Within a cell the
  router (JSQ(2) etc.) works as usual; across cells there is no balancing, so this is a different
  (slightly less balanced) cluster than one big pool, not an approximation of it.  It is what lets
  one large pool replay on many cores.

Each worker reads the trace itself (a Parquet file, in batches) and keeps its part's requests;
the output directory must be reachable from every worker (a LocalCluster, the default, shares
this machine's).  Workers report rows read to a ``distributed.Queue``; ``progress`` gets the
rows read over all parts (a part reads every row, so the total is parts x rows).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from .config import ClusterConfig, cluster_from_dict
from .stream import BATCH_ROWS, Part, PartState, finish_parts, replay_part


def parts_of(config: ClusterConfig, split: str | int) -> list[Part]:
    """The parts of ``config`` for ``split``: "pools" (one per routed pool) or a number of cells."""
    if split == "pools":
        routed = [i for i, p in enumerate(config.pools) if not p.standby]
        if any(p.standby for p in config.pools):
            raise ValueError("a cluster with standby layouts (DynamoLLM re-sharding) cannot be split by pool")
        return [Part("pool", i, len(routed)) for i in routed]
    count = int(split)
    if count < 1:
        raise ValueError(f"--partitions must be >= 1 (got {count})")
    return [Part("cell", i, count) for i in range(count)]


def _run_part(trace_path: str, models_path: str, cluster: dict, part: Part, out_dir: str, simulated: bool,
              batch_rows: int, queue_name: str | None, bundle_choice: dict) -> PartState:
    from .runner import load_bundle

    bundle = load_bundle(models_path, **bundle_choice)
    report = None
    if queue_name is not None:
        from distributed import Queue

        report = lambda rows, queue=Queue(queue_name): queue.put((part.index, rows))  # noqa: E731  (rows read so far)
    return replay_part(trace_path, bundle, cluster_from_dict(cluster), part, out_dir, simulated, batch_rows, report)


def replay_partitioned(trace_path: str | Path, models_path: str | Path, config: ClusterConfig, out_dir: str | Path,
                       simulated: bool, split: str | int, address: str | None = None, workers: int | None = None,
                       batch_rows: int = BATCH_ROWS, progress: Callable[[int], None] | None = None,
                       gpu_name: str | None = None, model_name: str | None = None,
                       allow_extrapolation: bool = False) -> dict:
    """Replay the parts of ``split`` (:func:`parts_of`) on the dask scheduler at ``address`` or on a
    LocalCluster of ``workers`` processes (None: one per core, closed afterwards); write the merged
    ``requests.parquet`` and ``power_timeline.parquet`` under ``out_dir``; return the summary.
    Each worker loads the bundle at ``models_path`` itself, narrowed to ``gpu_name``/``model_name``
    and allowed to extrapolate or not (:func:`replay.runner.load_bundle`)."""
    from distributed import Client, LocalCluster, Queue, wait

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = parts_of(config, split)
    if parts[0].kind == "cell":
        from .stream import cell_config

        cell_config(config, 0, len(parts))  # (refuse a pool smaller than the split before starting workers)
    cluster_dict = {**{k: v for k, v in asdict(config).items() if k != "pools"}, "pool": [asdict(p) for p in config.pools]}
    local = None if address else LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                              dashboard_address=None)
    client = Client(address or local)
    try:
        queue_name = f"wattlas-progress-{uuid.uuid4().hex}" if progress is not None else None
        queue = Queue(queue_name, client=client) if queue_name else None
        choice = {"gpu_name": gpu_name, "model_name": model_name, "allow_extrapolation": allow_extrapolation}
        futures = [client.submit(_run_part, str(trace_path), str(models_path), cluster_dict, part, str(out_dir), simulated,
                                 batch_rows, queue_name, choice, pure=False) for part in parts]
        if queue is not None:
            read = [0] * len(parts)
            while not all(f.done() for f in futures):
                try:
                    index, rows = queue.get(timeout=0.5)
                except Exception:  # (a timeout: nothing reported in the last half second)
                    continue
                read[index] = rows  # (a part's index is its place in parts)
                progress(sum(read))
        wait(futures)
        states = client.gather(futures)
    finally:
        client.close()
        if local is not None:
            local.close()
    summary = finish_parts(states, config, out_dir, simulated, time.perf_counter() - started, batch_rows)
    summary["streamed"]["scheduler"] = address or f"LocalCluster({workers or 'one worker per core'})"
    return summary

