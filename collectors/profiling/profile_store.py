"""Durable storage of a profiling sweep in progress, so that an interrupted sweep loses one point at most.

A full sweep runs for an hour or more.  Each finished point's rows are appended (fsynced) to
segment files in ``<output>.partial/``; when the sweep completes they become ``<output>`` and the
directory goes away.  After a crash, SIGTERM or Ctrl-C the directory stays, and the same command
with ``--resume`` skips the points it holds.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pandas as pd
import pyarrow as pa

from toolkit.errors import InputError
from toolkit.parquet_io import atomic_write_table
from toolkit.schemas import PROFILE_ITERATIONS

from .profiler import PROFILE_COLUMNS, SweepPoint, completed_points, profile_table, provenance_of
from ..telemetry.segments import SegmentWriter, read_segments

PREFIX = "profile"


class PartialProfile:
    """The finished points of an interrupted sweep (OUTPUT.partial/), appended and fsynced one point at a time so --resume can skip them."""
    def __init__(self, output: Path, resume: bool, model_label: str, tp: int) -> None:
        self.output = Path(output)
        self.directory = self.output.with_name(self.output.name + ".partial")
        if self.directory.exists() and not resume:
            raise InputError(self.directory, "holds an interrupted sweep: pass --resume to continue it, or delete it")
        schema = PROFILE_ITERATIONS.arrow(PROFILE_COLUMNS)
        self.writer = SegmentWriter(self.directory, PREFIX, schema, rotate_s=float("inf"))  # salvages a crash's stream
        self.previous = read_segments(self.directory, PREFIX, schema).to_pandas()
        other = self.previous[(self.previous["model"] != model_label) | (self.previous["tp"] != tp)]
        if len(other):
            self.writer.close()
            raise InputError(self.directory, f"holds a sweep of {other['model'].iloc[0]} tp={other['tp'].iloc[0]}, "
                                             f"not {model_label} tp={tp}: resume it with its own options, or delete it")
        self.appended = 0

    def done(self) -> set[SweepPoint]:
        """The sweep points already measured (their keys), for --resume."""
        return completed_points(self.previous)

    def append(self, table: pa.Table) -> None:
        """Store one finished point's rows durably."""
        self.writer.append(table)
        self.appended += 1

    def finish(self, new_rows: pa.Table, enrich: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> pa.Table:
        """Write previous and new rows (through ``enrich``) to the output atomically, then drop the partial directory."""
        self.writer.close()
        provenance = provenance_of(new_rows)
        if len(self.previous):
            provenance["wattlas.resumed_from_runs"] = ",".join(sorted(self.previous["run_id"].unique()))
        frame = pd.concat([self.previous, new_rows.to_pandas()], ignore_index=True) if len(self.previous) else new_rows.to_pandas()
        table = profile_table(enrich(frame) if enrich is not None else frame, provenance)
        atomic_write_table(table, self.output)
        shutil.rmtree(self.directory)
        return table

    def suspend(self) -> Path | None:
        """Close the segment; the rows stay in the partial directory, which is returned (None, and
        the directory removed, when it holds no point at all)."""
        self.writer.close()
        if not self.appended and not len(self.previous):
            shutil.rmtree(self.directory, ignore_errors=True)
            return None
        return self.directory
