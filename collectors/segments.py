"""Rolling, crash-safe storage of an append-only stream of rows (telemetry, windows).

The open segment is an Arrow IPC *stream* file (``*.arrows``): each flush appends one record
batch and fsyncs, and a stream cut short by a crash, SIGKILL or power loss is still readable up
to its last complete batch.  So at most one flush interval of data is ever lost.  When a segment
rotates or the writer closes, it becomes a Parquet file (written atomically) and the stream file
is removed.  A writer that starts in a directory holding stream files left by a crash salvages
them to Parquet first.  Names carry the start time and process id and are never reused, so a
restart appends new segments and never overwrites old ones.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from toolkit.parquet_io import atomic_write_table

LIVE_SUFFIX = ".arrows"


def read_stream_salvaging(path: Path) -> pa.Table | None:
    """Every complete record batch of a (possibly truncated) IPC stream file; None if it has none."""
    try:
        reader = pa.ipc.open_stream(pa.memory_map(str(path)))
    except (pa.ArrowInvalid, OSError):
        return None  # not even a complete schema message was written
    batches = []
    while True:
        try:
            batches.append(reader.read_next_batch())
        except StopIteration:
            break
        except (pa.ArrowInvalid, OSError):
            break  # torn final batch: everything before it is intact
    return pa.Table.from_batches(batches, schema=reader.schema)


class SegmentWriter:
    def __init__(self, directory: str | Path, prefix: str, schema: pa.Schema, rotate_s: float = 3600.0) -> None:
        self.directory = Path(directory)
        self.prefix = prefix
        self.schema = schema
        self.rotate_s = rotate_s
        self.directory.mkdir(parents=True, exist_ok=True)
        self._sink = None
        self._writer = None
        self._live: Path | None = None
        self._opened_at = 0.0
        self.salvaged = self.recover()

    # ------------------------------------------------------------------ recovery
    def recover(self) -> list[Path]:
        """Turn stream files left by a crashed writer into Parquet segments."""
        done = []
        for live in sorted(self.directory.glob(f"{self.prefix}-*{LIVE_SUFFIX}")):
            table = read_stream_salvaging(live)
            if table is not None and table.num_rows:
                done.append(atomic_write_table(table, self._final_name(live)))
            live.unlink()
        return done

    def _final_name(self, live: Path) -> Path:
        target = live.with_suffix(".parquet")
        n = 1
        while target.exists():  # never overwrite
            target = live.with_name(f"{live.stem}.{n}.parquet")
            n += 1
        return target

    # ------------------------------------------------------------------ writing
    def _open(self) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        self._live = self.directory / f"{self.prefix}-{stamp}-{os.getpid()}{LIVE_SUFFIX}"
        self._sink = open(self._live, "wb")
        self._writer = pa.ipc.new_stream(self._sink, self.schema)
        self._opened_at = time.monotonic()

    def append(self, table: pa.Table) -> None:
        """Append rows durably (fsync); rotate the segment when it is old enough."""
        if table.num_rows == 0:
            return
        if self._writer is None:
            self._open()
        self._writer.write_table(table.cast(self.schema))
        self._sink.flush()
        os.fsync(self._sink.fileno())
        if time.monotonic() - self._opened_at >= self.rotate_s:
            self.rotate()

    def rotate(self) -> Path | None:
        """Close the live segment into a Parquet file; returns it (None when nothing was open)."""
        if self._writer is None:
            return None
        self._writer.close()
        self._sink.close()
        live = self._live
        self._writer = self._sink = self._live = None
        table = read_stream_salvaging(live)
        final = atomic_write_table(table, self._final_name(live)) if table is not None and table.num_rows else None
        live.unlink()
        return final

    def close(self) -> Path | None:
        return self.rotate()


def segment_files(directory: str | Path, prefix: str) -> list[Path]:
    directory = Path(directory)
    return sorted(directory.glob(f"{prefix}-*.parquet")) + sorted(directory.glob(f"{prefix}-*{LIVE_SUFFIX}"))


def read_segments(directory: str | Path, prefix: str, schema: pa.Schema) -> pa.Table:
    """All rows of a stream directory: finished Parquet segments plus what a live writer has flushed."""
    tables = []
    for path in segment_files(directory, prefix):
        table = read_stream_salvaging(path) if path.suffix == LIVE_SUFFIX else pq.read_table(path)
        if table is not None and table.num_rows:
            tables.append(table.cast(schema))
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables)


def apply_retention(directory: str | Path, prefix: str, max_age_s: float, now: float | None = None) -> list[Path]:
    """Delete finished segments last written more than ``max_age_s`` ago; returns what was removed."""
    now = time.time() if now is None else now
    removed = []
    for path in Path(directory).glob(f"{prefix}-*.parquet"):
        if now - path.stat().st_mtime > max_age_s:
            path.unlink()
            removed.append(path)
    return removed
