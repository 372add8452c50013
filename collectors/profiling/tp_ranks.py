"""Profiling one tensor-parallel instance as torchrun ranks: every rank drives its own GPU (its own
sampler, clock and power settings, its shard of the model, the all-reduces between them), and
rank 0 gathers each point's rows, combines them into the instance's rows and keeps the output.

    torchrun --standalone --nproc-per-node 4 -m toolkit.cli collect profile --backend gpu --tp 4 ...

The ranks run every point in lockstep: they agree on skipping a point and on the number of
iterations per repeat (``workload.Collectives``), or one would wait in an all-reduce forever.
"""

from __future__ import annotations

import os

import click
import pyarrow as pa

from .profiler import combine_ranks, profile_table, provenance_of
from .workload import Collectives


class Ranks:
    """This process's place among the torchrun ranks of one tensor-parallel instance."""
    def __init__(self, tp: int, backend: str) -> None:
        import torch
        import torch.distributed as dist

        world = int(os.environ["WORLD_SIZE"])
        if tp != world:
            raise click.ClickException(f"--tp {tp} must equal the number of torchrun ranks ({world})")
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if backend == "gpu":
            torch.cuda.set_device(self.local_rank)
        dist.init_process_group("nccl" if backend == "gpu" else "gloo")
        self.dist = dist
        self.collectives = Collectives()
        self.rank = self.collectives.rank
        self.combined: list[dict] = []  # rank 0: the instance's rows so far

    @property
    def is_writer(self) -> bool:
        """Rank 0 merges every point into the instance's rows and writes the file."""
        return self.rank == 0

    def device(self, backend: str) -> str:
        """The device this rank drives: its local GPU, or the CPU for the cpu backend."""
        return f"cuda:{self.local_rank}" if backend == "gpu" else "cpu"

    def gathering(self, append) -> callable:
        """An ``on_point`` for run_profile: every rank hands in its rows, rank 0 appends the combination."""
        def on_point(table: pa.Table) -> None:
            per_rank = self.collectives.gather(table.to_pylist())
            if per_rank is None:
                return
            rows = combine_ranks(per_rank)
            self.combined.extend(rows)
            append(profile_table(rows, provenance_of(table)))
        return on_point

    def close(self) -> None:
        """Leave the process group."""
        if self.dist.is_initialized():
            self.dist.destroy_process_group()


def start_ranks(tp: int, backend: str) -> Ranks | None:
    """The torchrun ranks of this process, or None when it runs alone."""
    return Ranks(tp, backend) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
