"""Rolling, crash-safe storage of an append-only stream of rows (telemetry, windows).

The open segment is an Arrow IPC *stream* file (``*.arrows``): each flush appends one record
batch and fsyncs, and a stream cut short by a crash, SIGKILL or power loss is still readable up
to its last complete batch.  So at most one flush interval of data is ever lost.  When a segment
rotates or the writer closes, it becomes a Parquet file (written atomically) and the stream file
is removed.

Ownership: every live stream is created under a hidden name, locked (``flock``, exclusive) and
only then renamed into view, and its writer holds that lock until the stream is converted.  A
writer starting in a directory salvages only the streams it can lock - those whose writer died -
so any number of collectors can share one directory without touching each other's files.  Names
carry the start time, the process id and a random tag and are never reused: a restart appends
new segments and never overwrites old ones.

Faults: an append that fails (disk full, file-size limit, the directory removed) is cut back to
the last durable batch and raised to the caller, who keeps the rows and retries; the stream the
failure hit is converted later from the descriptor still held, even if its directory was removed
and recreated in between.  Readers tolerate segments that vanish under them (retention, rotation).
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from toolkit.errors import InputError
from toolkit.parquet_io import atomic_write_table

LIVE_SUFFIX = ".arrows"


def _batches(reader) -> list[pa.RecordBatch]:
    batches = []
    while True:
        try:
            batches.append(reader.read_next_batch())
        except StopIteration:
            break
        except (pa.ArrowInvalid, OSError):
            break  # torn final batch: everything before it is intact
    return batches


def read_stream_salvaging(source: Path | pa.Buffer) -> pa.Table | None:
    """Every complete record batch of a (possibly truncated) IPC stream; None if it has none.

    ``source`` is a path or the stream's bytes (read from a descriptor whose path is gone).
    """
    try:
        stream = pa.memory_map(str(source)) if isinstance(source, (str, Path)) else pa.BufferReader(source)
        reader = pa.ipc.open_stream(stream)
    except (pa.ArrowInvalid, OSError):
        return None  # not even a complete schema message was written
    return pa.Table.from_batches(_batches(reader), schema=reader.schema)


def _try_lock(handle: BinaryIO) -> bool:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


@dataclass
class _Stream:
    """One live stream this writer owns: its path, the locked handle and its durable size."""

    path: Path
    handle: BinaryIO
    durable_size: int = 0

    def contents(self) -> pa.Buffer:
        """The durable bytes, read through the descriptor (works after the path was removed)."""
        return pa.py_buffer(os.pread(self.handle.fileno(), self.durable_size, 0))


class SegmentWriter:
    """Appends tables durably to rolling segments in ``directory`` named ``PREFIX-*``."""

    def __init__(self, directory: str | Path, prefix: str, schema: pa.Schema, rotate_s: float = 3600.0,
                 clock=time.monotonic) -> None:
        self.directory = Path(directory)
        self.prefix = prefix
        self.schema = schema
        self.rotate_s = rotate_s
        self.clock = clock
        self.directory.mkdir(parents=True, exist_ok=True)
        self._live: _Stream | None = None
        self._writer = None
        self._opened_at = 0.0
        # Streams closed for writing whose Parquet conversion is still owed (it failed: disk full,
        # directory gone).  Their handles stay open, so their locks hold and their bytes survive.
        self._pending: list[_Stream] = []
        self.salvaged = self.recover()

    # ------------------------------------------------------------------ recovery
    def recover(self) -> list[Path]:
        """Turn stream files left by dead writers into Parquet segments; live writers' are left alone."""
        done = []
        for live in sorted(self.directory.glob(f"{self.prefix}-*{LIVE_SUFFIX}")):
            try:
                handle = open(live, "rb")
            except FileNotFoundError:
                continue  # its writer just converted it
            with handle:
                if not _try_lock(handle):
                    continue  # a running collector owns it
                if not live.exists():
                    continue  # converted between our glob and our lock
                table = read_stream_salvaging(live)
                if table is not None and table.num_rows:
                    done.append(atomic_write_table(table, self._final_name(live)))
                live.unlink()
        for hidden in self.directory.glob(f".{self.prefix}-*{LIVE_SUFFIX}.new"):
            with open(hidden, "rb") as handle:  # a writer that died before its stream was named
                if _try_lock(handle):
                    hidden.unlink(missing_ok=True)
        return done

    def _final_name(self, live: Path) -> Path:
        target = self.directory / (live.stem + ".parquet")
        n = 1
        while target.exists():  # never overwrite
            target = self.directory / f"{live.stem}.{n}.parquet"
            n += 1
        return target

    # ------------------------------------------------------------------ writing
    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)  # it may have been removed under us
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        name = f"{self.prefix}-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:6]}{LIVE_SUFFIX}"
        hidden = self.directory / f".{name}.new"  # out of every glob until it is locked
        # Unbuffered, so a failed write leaves nothing queued to surface later; readable, so a stream
        # whose path is gone can still be converted through the descriptor.
        handle = open(hidden, "x+b", buffering=0)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            os.rename(hidden, self.directory / name)
        except BaseException:
            handle.close()
            hidden.unlink(missing_ok=True)
            raise
        self._live = _Stream(self.directory / name, handle)
        self._writer = pa.ipc.new_stream(handle, self.schema)
        self._opened_at = self.clock()

    def append(self, table: pa.Table) -> None:
        """Append rows durably (fsync); rotate the segment when it is old enough.

        On failure the stream is cut back to its last durable batch, set aside for conversion
        later, and the error raised: the caller still holds the rows and may retry.
        """
        if table.num_rows == 0:
            return
        table = table.cast(self.schema)
        if self._live is not None and not self._live.path.exists():
            # The directory (or the file) was removed under us: writing on would feed an unlinked
            # inode that vanishes with the process.  Its rows are converted through the handle.
            self._set_aside_live()
        self._finish_pending()
        try:
            if self._writer is None:
                self._open()
            self._writer.write_table(table)
            self._live.handle.flush()
            os.fsync(self._live.handle.fileno())
        except BaseException:
            self._set_aside_live()
            raise
        self._live.durable_size = self._live.handle.tell()
        if self.clock() - self._opened_at >= self.rotate_s:
            self.rotate()

    def _set_aside_live(self) -> None:
        """The live stream failed mid-append: keep only its durable batches and stop writing to it."""
        live, self._live, self._writer = self._live, None, None
        if live is None:
            return
        try:
            os.ftruncate(live.handle.fileno(), live.durable_size)  # drop the torn batch: no duplicates on retry
        except OSError:
            pass  # the torn tail is skipped by the salvaging reader anyway
        if live.durable_size:
            self._pending.append(live)
        else:
            self._discard(live)

    def _discard(self, stream: _Stream) -> None:
        try:
            stream.path.unlink(missing_ok=True)
        finally:
            stream.handle.close()

    def _convert(self, stream: _Stream) -> Path | None:
        """Write a closed stream's rows as a Parquet segment and remove the stream (raises on I/O errors)."""
        table = read_stream_salvaging(stream.contents())
        final = None
        if table is not None and table.num_rows:
            self.directory.mkdir(parents=True, exist_ok=True)
            final = atomic_write_table(table, self._final_name(stream.path))
        self._discard(stream)
        return final

    def _finish_pending(self) -> list[Path]:
        done = []
        while self._pending:
            path = self._convert(self._pending[0])  # an I/O error leaves it pending, for the next try
            self._pending.pop(0)
            if path is not None:
                done.append(path)
        return done

    def rotate(self) -> Path | None:
        """Close the live segment into a Parquet file; returns it (None when nothing was open).

        If the conversion fails the stream stays durable and pending, and the error is raised.
        """
        if self._writer is None:
            self._finish_pending()
            return None
        live, writer = self._live, self._writer
        self._live = self._writer = None
        try:
            writer.close()  # end-of-stream marker; harmless if it cannot be written
            live.handle.flush()
            live.durable_size = live.handle.tell()
        except (OSError, pa.ArrowException):
            pass
        self._pending.append(live)
        done = self._finish_pending()
        return done[-1] if done else None

    def close(self) -> Path | None:
        """Finalize every stream this writer owns (raises if one cannot be converted)."""
        return self.rotate()

    @property
    def pending(self) -> int:
        """Streams whose conversion to Parquet is still owed (after an I/O failure)."""
        return len(self._pending)


def segment_files(directory: str | Path, prefix: str) -> list[Path]:
    """Finished Parquet segments and live streams of ``prefix``; a stream already converted is skipped."""
    directory = Path(directory)
    live = sorted(directory.glob(f"{prefix}-*{LIVE_SUFFIX}"))
    finished = sorted(directory.glob(f"{prefix}-*.parquet"))  # globbed after the streams: a stream
    names = [p.name for p in finished]                        # converted in between is seen as Parquet

    def converted(stream: Path) -> bool:  # STEM.parquet or STEM.N.parquet
        return any(name.startswith(stream.stem + ".") for name in names)

    return finished + [p for p in live if not converted(p)]


def read_segments(directory: str | Path, prefix: str, schema: pa.Schema) -> pa.Table:
    """All rows of a stream directory: finished Parquet segments plus what live writers have flushed.

    A segment that vanishes while being read (retention, or a stream converted to Parquet) is
    skipped - or, for a stream, read from the Parquet file it became.  Columns a segment lacks
    (files written by an older wattlas) are null.
    """
    tables = []
    for path in segment_files(directory, prefix):
        table = _read_segment(path)
        if table is None and path.suffix == LIVE_SUFFIX:
            converted = sorted(path.parent.glob(f"{path.stem}*.parquet"))
            table = _read_segment(converted[0]) if converted else None
        if table is not None and table.num_rows:
            tables.append(_conform(table, schema, path))
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables)


def _read_segment(path: Path) -> pa.Table | None:
    try:
        return read_stream_salvaging(path) if path.suffix == LIVE_SUFFIX else pq.read_table(path)
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError) as exc:
        raise InputError(path, f"not a readable segment ({exc}); move it out of the directory") from None


def _conform(table: pa.Table, schema: pa.Schema, path: Path) -> pa.Table:
    """``table`` with ``schema``'s columns: absent nullable ones (older files) as nulls."""
    for field in schema:
        if field.name not in table.column_names:
            if not field.nullable:
                raise InputError(path, "is not a segment of this kind (missing column)", column=field.name)
            table = table.append_column(field.name, pa.nulls(table.num_rows, field.type))
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowException, ValueError) as exc:
        raise InputError(path, f"has columns of the wrong type ({exc})") from None


def apply_retention(directory: str | Path, prefix: str, max_age_s: float, now: float | None = None) -> list[Path]:
    """Delete finished segments last written more than ``max_age_s`` ago; returns what was removed.

    A reader that opened a segment keeps reading it after the unlink (POSIX); one that only listed
    it skips it (:func:`read_segments`).
    """
    now = time.time() if now is None else now
    removed = []
    for path in Path(directory).glob(f"{prefix}-*.parquet"):
        try:
            if now - path.stat().st_mtime > max_age_s:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            continue  # another process's retention got there first
    return removed
