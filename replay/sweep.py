"""Parameter sweeps of replay fanned out over dask.distributed.

Each grid point is a full replay of the same trace with one cluster setting changed; points run
as independent tasks on a LocalCluster (processes, one per core) or on a running scheduler
(``address``), so a sweep scales from a laptop to a cluster without code changes.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import pandas as pd

from toolkit.errors import InputError

from .config import ClusterConfig, cluster_from_dict


def parse_vary(items: list[str]) -> dict[str, list]:
    """['pool.sm_clock_mhz=1980,1410', 'router=round_robin'] -> {key: [values]} (numbers parsed)."""
    grid = {}
    for item in items:
        if "=" not in item:
            raise InputError(None, f"--vary expects KEY=V1,V2,... (got {item!r})")
        key, values = item.split("=", 1)
        grid[key.strip()] = [_number(v.strip()) for v in values.split(",") if v.strip()]
    return grid


def _number(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def expand(base: ClusterConfig, grid: dict[str, list]) -> list[tuple[dict, dict]]:
    """(setting, cluster dict) per grid point; ``pool.X`` applies to every pool."""
    base_dict = {**{k: v for k, v in asdict(base).items() if k != "pools"}, "pool": [asdict(p) for p in base.pools]}
    points = []
    for values in itertools.product(*grid.values()) if grid else [()]:
        setting = dict(zip(grid, values))
        data = copy.deepcopy(base_dict)
        for key, value in setting.items():
            if key.startswith("pool."):
                for pool in data["pool"]:
                    pool[key[5:]] = value
            else:
                data[key] = value
        cluster_from_dict(data, "--vary")  # validate before shipping anywhere
        points.append((setting, data))
    return points


def _run_point(trace_path: str, models_path: str, cluster: dict) -> dict:
    from characterize.model_io import ModelBundle
    from toolkit.traces.formats import read_trace

    from .engine import replay

    trace = read_trace(trace_path).to_pandas()
    result = replay(trace, ModelBundle.load(models_path), cluster_from_dict(cluster))
    return {k: v for k, v in result.summary.items() if not isinstance(v, dict)}


def run_sweep(trace_path: Path, models_path: Path, base: ClusterConfig, grid: dict[str, list],
              address: str | None = None, workers: int | None = None,
              progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """One row per point of ``grid`` (see :func:`expand`): the varied settings and the replay's
    scalar summary, with ``progress(done, total)`` called as points finish.  Runs on the dask
    scheduler at ``address``, or on a LocalCluster of ``workers`` processes (None: one per core)
    that is closed afterwards."""
    from distributed import Client, LocalCluster, as_completed

    points = expand(base, grid)
    if progress is not None:
        progress(0, len(points))
    cluster = None if address else LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                dashboard_address=None)
    client = Client(address or cluster)
    try:
        futures = {client.submit(_run_point, str(trace_path), str(models_path), data, pure=False): i
                   for i, (_, data) in enumerate(points)}
        rows = [None] * len(points)
        for done, future in enumerate(as_completed(futures), 1):
            rows[futures[future]] = {**points[futures[future]][0], **future.result()}
            if progress is not None:
                progress(done, len(points))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return pd.DataFrame(rows)
