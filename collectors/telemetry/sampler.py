"""The background sampler: one thread per process polling every GPU of a telemetry source.

Rows are buffered and appended to a rolling segment store every ``flush_s`` seconds (fsynced),
so a crash or SIGKILL loses at most one flush interval.  Windows (phases) come from
:meth:`Sampler.window` in-process or from a marker file written by another process; their
energy is tracked by :class:`~collectors.telemetry.windows.WindowTracker`.

The sampler survives its own faults, because a collector that stops silently loses unbounded
data:

* one GPU's failure (lost at start or mid-run, a read raising anything) never stops the others;
* a driver that stops answering for every GPU (unloaded, reloading) is recorded as an outage,
  NVML is re-initialized with back-off, and a new energy-counter epoch starts when it is back;
  an energy counter that goes backwards also starts a new epoch (``energy_epoch``), so no delta
  is ever taken across a reset;
* a write that fails (disk full, directory removed, file-size limit) keeps the rows in memory
  (up to ``max_buffer_rows``) and retries with back-off; when writing works again the stall is
  recorded as a ``gap: ...`` status row per GPU saying how long and how many samples were lost;
* a bad marker line is skipped and reported; any other exception in the loop is reported
  (rate-limited) and the loop goes on.

Status rows (``status`` not null) carry no reading; their text starts with ``lost:``,
``driver_unavailable:``, ``driver_restored:``, ``read_error:``, ``read_ok:`` or ``gap:``.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import pyarrow as pa

from toolkit.schemas import PHASE_WINDOWS, SIMULATED_KEY, TELEMETRY_SAMPLES

from .gpu_selection import select_gpus
from .markers import MarkerReader
from .measurement import Measurement
from .segments import SegmentWriter
from .source import DriverUnavailable, GpuLost, TelemetrySource, power_for_integration
from .windows import WindowTracker

MIN_PERIOD_S = 0.01
# Longest back-off between retries of a failing write or a driver re-init: retries are cheap (one
# fsync, one nvmlInit), and the back-off bounds how late a freed disk or a reloaded driver is noticed.
MAX_RETRY_S = 2.0
WARN_EVERY_S = 60.0  # the same fault is printed at most this often


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text[:200]}"


class _Backoff:
    """When to try again after consecutive failures: ``base``, 2x, 4x ... capped at MAX_RETRY_S."""

    def __init__(self, base_s: float) -> None:
        self.base_s = base_s
        self.failures = 0
        self.since: float | None = None  # first failure of the current streak
        self.next_try = 0.0
        self.reason = ""

    def due(self, now: float) -> bool:
        return self.failures == 0 or now >= self.next_try

    def failed(self, now: float, reason: str) -> None:
        if self.failures == 0:
            self.since = now
        self.failures += 1
        self.reason = reason
        self.next_try = now + min(MAX_RETRY_S, self.base_s * 2 ** (self.failures - 1))

    def succeeded(self) -> tuple[float | None, int, str]:
        """End the streak; returns (its start, failures, last reason)."""
        streak = (self.since, self.failures, self.reason)
        self.failures, self.since, self.reason = 0, None, ""
        return streak


class _StoreQueue:
    """Tables waiting for one segment store: written in order, kept while the store fails."""

    def __init__(self, store: SegmentWriter | None, max_rows: int) -> None:
        self.store = store
        self.max_rows = max_rows
        self.tables: list[pa.Table] = []
        self.dropped: list[pa.Table] = []  # oldest rows given up while the buffer was full

    @property
    def rows(self) -> int:
        return sum(t.num_rows for t in self.tables)

    def put(self, table: pa.Table) -> None:
        if table.num_rows:
            self.tables.append(table)
        excess = self.rows - self.max_rows
        while excess > 0 and self.tables:  # keep the newest: bounded memory, however long the outage
            head = self.tables[0]
            cut = min(excess, head.num_rows)
            self.dropped.append(head.slice(0, cut))
            self.tables[0] = head.slice(cut)
            if not self.tables[0].num_rows:
                self.tables.pop(0)
            excess -= cut

    def write(self) -> None:
        """Append everything queued (raises on I/O failure; what was not written stays queued)."""
        while self.tables:
            if self.store is not None:
                self.store.append(self.tables[0])
            self.tables.pop(0)


class Sampler:
    """Polls every GPU of ``source`` each ``period_s`` and stores telemetry and phase windows.

    ``clock`` (monotonic seconds) and ``wall_clock`` (Unix seconds) are injectable so tests can
    drive :meth:`tick` and :meth:`flush` by hand between :meth:`open` and :meth:`close` without
    any thread or real time.
    """

    def __init__(
        self,
        source: TelemetrySource,
        out_dir: str | Path | None,
        period_s: float = 0.1,
        flush_s: float = 1.0,
        rotate_s: float = 3600.0,
        slow_every_s: float = 1.0,
        marker_file: str | Path | None = None,
        run_id: str | None = None,
        on_flush: Callable[[list[dict]], None] | None = None,
        max_buffer_rows: int = 500_000,
        gpus: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not period_s >= MIN_PERIOD_S:
            raise ValueError(f"sampling period {period_s}s is below the {MIN_PERIOD_S}s minimum")
        if not flush_s > 0:
            raise ValueError(f"flush interval {flush_s}s must be > 0")
        self.source = source
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.period_s = period_s
        self.flush_s = flush_s
        self.rotate_s = rotate_s
        self.slow_every = max(1, round(slow_every_s / period_s))
        self.markers = MarkerReader(marker_file) if marker_file else None
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.on_flush = on_flush
        self.max_buffer_rows = max_buffer_rows
        self.gpu_spec = gpus
        self.clock = clock
        self.wall_clock = wall_clock
        self.host = socket.gethostname()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._opened = False
        self._rows: list[dict] = []
        self._latest: dict[int, dict] = {}
        self._marker_windows: dict[str, list] = {}
        self._named_windows: dict[str, object] = {}  # begin_window / end_window
        self.ticks = 0
        self.missed_ticks = 0
        self.lost: dict[int, str] = {}
        self.epoch: dict[int, int] = {}  # energy-counter epoch per GPU
        self._last_counter: dict[int, float] = {}
        self._read_errors: dict[int, tuple[float, int, str]] = {}  # gpu -> (since, count, reason)
        self._driver = _Backoff(base_s=max(period_s, 0.5))
        self._write = _Backoff(base_s=flush_s)
        self.faults: dict[str, int] = {}  # fault description -> occurrences
        self._warned: dict[str, float] = {}
        self.gaps: list[str] = []  # one line per storage gap, for the caller to print

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> "Sampler":
        """Open the source and the stores (errors here are the caller's: nothing is collected yet)."""
        try:
            infos = select_gpus(self.source.open(), self.gpu_spec)
        except BaseException:
            self.source.close()  # e.g. --gpus names no GPU: leave NVML as we found it
            raise
        self.gpus = {info.index: info for info in infos}
        self.started_wall = self.wall_clock()
        self.wall_offset = self.started_wall - self.clock()
        # Power is never integrated over a stretch this long without an observation.
        self.tracker = WindowTracker(list(self.gpus), self.run_id, self.source.backend, self.wall_offset,
                                     max_bridge_s=max(5.0, 20 * self.period_s))
        meta = {SIMULATED_KEY.decode(): str(self.source.simulated).lower(), "wattlas.run_id": self.run_id,
                "wattlas.host": self.host, "wattlas.period_s": self.period_s}
        self.telemetry_schema = TELEMETRY_SAMPLES.arrow(metadata=meta)
        self.windows_schema = PHASE_WINDOWS.arrow(metadata=meta)
        stores = (None, None)
        if self.out_dir is not None:
            stores = (SegmentWriter(self.out_dir, "telemetry", self.telemetry_schema, self.rotate_s, clock=self.clock),
                      SegmentWriter(self.out_dir, "windows", self.windows_schema, self.rotate_s, clock=self.clock))
        self._telemetry = _StoreQueue(stores[0], self.max_buffer_rows)
        self._windows = _StoreQueue(stores[1], self.max_buffer_rows)
        for info in infos:
            self.epoch[info.index] = 0
            if info.error:
                self._mark_lost(info.index, f"at start: {info.error}")
        self._opened = True
        return self

    def start(self) -> "Sampler":
        """Open, then sample in a background thread until :meth:`stop`."""
        self.open()
        self._thread = threading.Thread(target=self._run, name="wattlas-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling, close open windows, flush and finalize the segments."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.close()

    def close(self) -> None:
        """Close the windows still open, write what is buffered and finalize the segments.

        Raises (one ``OSError``) only if rows could not be written even now; they are then saved
        in a new directory under the system's temporary directory, which the message names.
        """
        if not self._opened:
            return
        self._opened = False
        # Markers the command wrote just before it exited, then one last sample to close them on.
        if self.markers is not None:
            self._guarded(self._apply_markers)
        self._guarded(self.tick)
        with self._lock:
            self.tracker.flush_open(self.clock())
        self._write.next_try = 0.0  # a last attempt, whatever the back-off says
        self.flush()
        try:
            self.source.close()
        except Exception as exc:  # the driver may be gone already: nothing left to release
            self._fault(exc)
        unwritten = self._telemetry.rows + self._windows.rows
        for queue in (self._telemetry, self._windows):
            if queue.store is not None and not unwritten:
                queue.store.close()
        if unwritten:
            raise OSError(f"{unwritten} rows could not be written to {self.out_dir} ({self._write.reason}); "
                          f"{self._rescue()}")

    def _rescue(self) -> str:
        """Last resort at exit: the rows the output directory refused go to a fresh temporary directory."""
        try:
            rescue = Path(tempfile.mkdtemp(prefix="wattlas-unwritten-"))
            for prefix, queue, schema in (("telemetry", self._telemetry, self.telemetry_schema),
                                          ("windows", self._windows, self.windows_schema)):
                if queue.tables:
                    writer = SegmentWriter(rescue, prefix, schema)
                    writer.append(pa.concat_tables(queue.tables))
                    writer.close()
                    queue.tables = []
        except Exception as exc:
            return f"saving them elsewhere failed too ({_describe(exc)})"
        return f"saved to {rescue} instead (move them next to the others)"

    def __enter__(self) -> "Sampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ faults
    def _fault(self, exc: BaseException, what: str = "sampler") -> None:
        """Count a fault and print it, at most once per WARN_EVERY_S for the same description."""
        text = f"{what}: {_describe(exc)}"
        self.faults[text] = self.faults.get(text, 0) + 1
        self._warn(text)

    def _warn(self, text: str) -> None:
        now = self.clock()
        if now - self._warned.get(text, -WARN_EVERY_S) >= WARN_EVERY_S:
            self._warned[text] = now
            print(f"wattlas sampler: {text}", file=sys.stderr)

    def _guarded(self, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as exc:  # the loop must outlive any one step's failure
            self._fault(exc)

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        next_tick = self.clock()
        last_flush = next_tick
        while not self._stop.is_set():
            self._guarded(self.tick)
            now = self.clock()
            if now - last_flush >= self.flush_s:
                self._guarded(self.flush)
                last_flush = now
            next_tick += self.period_s
            if next_tick < now:  # fell behind (slow NVML call, loaded host): skip, don't burst
                skipped = int((now - next_tick) / self.period_s) + 1
                self.missed_ticks += skipped
                next_tick += skipped * self.period_s
            self._stop.wait(next_tick - now)

    def tick(self) -> None:
        """One sample of every GPU still streaming, then the marker file.

        Safe to call from another thread beside the sampler's own (the profiler samples at each
        window's end): the whole tick holds the lock, so two threads never re-initialize NVML at once.
        """
        with self._lock:
            self._tick()

    def _tick(self) -> None:
        slow = self.ticks % self.slow_every == 0
        self.ticks += 1
        if self._driver.failures:
            if not self._driver.due(self.clock()):
                return
            self._reopen()
            if self._driver.failures:
                return
        for gpu, info in self.gpus.items():
            if gpu in self.lost:
                continue
            try:
                self._sample(gpu, info, slow)
            except DriverUnavailable as exc:
                self._driver_down(str(exc))
                return
        if self.markers is not None:
            self._apply_markers()

    def _base_row(self, gpu: int, t_mono: float, status: str | None = None) -> dict:
        info = self.gpus[gpu]
        return {"host": self.host, "backend": self.source.backend, "gpu_index": gpu, "gpu_uuid": info.uuid,
                "gpu_name": info.name, "t_wall_s": t_mono + self.wall_offset, "t_mono_ns": int(t_mono * 1e9),
                "energy_epoch": self.epoch.get(gpu, 0), "status": status}

    def _status_row(self, gpu: int, status: str, t_mono: float | None = None) -> None:
        self._rows.append(self._base_row(gpu, self.clock() if t_mono is None else t_mono, status))

    def _sample(self, gpu: int, info, slow: bool) -> None:
        t_mono = self.clock()
        try:
            reading = self.source.read(gpu, slow)
        except DriverUnavailable:
            raise  # every GPU's problem: tick() handles it once
        except GpuLost as exc:
            self._mark_lost(gpu, str(exc))
            return
        except Exception as exc:  # any other failure is this GPU's, for this tick
            self._read_failed(gpu, t_mono, _describe(exc))
            return
        if gpu in self._read_errors:
            since, count, reason = self._read_errors.pop(gpu)
            self._status_row(gpu, f"read_ok: after {count} failed reads over {t_mono - since:.1f} s ({reason})", t_mono)
        row = self._base_row(gpu, t_mono)
        row.update(reading)
        counter = reading.get("energy_j")
        if counter is not None:
            last = self._last_counter.get(gpu)
            if last is not None and counter < last:  # reset: a delta across it would be garbage
                self.epoch[gpu] += 1
                row["energy_epoch"] = self.epoch[gpu]
                self._warn(f"GPU {gpu}: energy counter went backwards ({last:.1f} J -> {counter:.1f} J); "
                           f"epoch {self.epoch[gpu]} starts")
            self._last_counter[gpu] = counter
        self._rows.append(row)
        self._latest[gpu] = row
        self.tracker.observe(gpu, t_mono, counter, power_for_integration(reading), self.epoch[gpu])

    def _read_failed(self, gpu: int, t_mono: float, reason: str) -> None:
        since, count, _ = self._read_errors.get(gpu, (t_mono, 0, reason))
        if count == 0:
            self._status_row(gpu, f"read_error: {reason}", t_mono)
            self._warn(f"GPU {gpu}: read failed ({reason}); retrying every tick")
        self._read_errors[gpu] = (since, count + 1, reason)
        self.tracker.gap(gpu)

    def _mark_lost(self, gpu: int, reason: str) -> None:
        self.lost[gpu] = reason
        self._status_row(gpu, f"lost: {reason}")
        self.tracker.gpu_lost(gpu)
        print(f"wattlas sampler: GPU {gpu} lost ({reason}); its stream ends, other GPUs continue", file=sys.stderr)

    def _driver_down(self, reason: str) -> None:
        now = self.clock()
        first = self._driver.failures == 0
        self._driver.failed(now, reason)
        if first:
            with self._lock:
                for gpu in self.gpus:
                    if gpu not in self.lost:
                        self._status_row(gpu, f"driver_unavailable: {reason}", now)
                        self.tracker.gap(gpu)
            print(f"wattlas sampler: the driver stopped answering ({reason}); retrying", file=sys.stderr)

    def _reopen(self) -> None:
        reopen = getattr(self.source, "reopen", None)
        now = self.clock()
        if reopen is None:  # a source that cannot re-initialize: keep polling it
            self._driver.succeeded()
            return
        try:
            infos = {info.index: info for info in reopen()}
        except Exception as exc:
            self._driver.failed(now, _describe(exc))
            return
        since, _, reason = self._driver.succeeded()
        with self._lock:
            for gpu in self.gpus:
                if gpu in self.lost:
                    continue
                info = infos.get(gpu)
                if info is None or info.error or info.uuid != self.gpus[gpu].uuid:
                    self._mark_lost(gpu, "not found again after the driver came back")
                    continue
                # The counter counts from the driver's load: a new epoch, whatever its value says.
                self.epoch[gpu] += 1
                self._last_counter.pop(gpu, None)
                self._status_row(gpu, f"driver_restored: after {now - since:.1f} s unavailable ({reason}); "
                                      f"energy epoch {self.epoch[gpu]}", now)
        print(f"wattlas sampler: the driver is back after {now - since:.1f} s", file=sys.stderr)

    def _apply_markers(self) -> None:
        for event in self.markers.poll(not_before=self.started_wall, not_after=self.wall_clock()):
            t = event["t"] - self.wall_offset
            with self._lock:
                if event["event"] == "start":
                    window = self.tracker.open(event["window"], t, event.get("attrs"))
                    self._marker_windows.setdefault(event["window"], []).append(window)
                elif self._marker_windows.get(event["window"]):
                    self.tracker.close(self._marker_windows[event["window"]].pop(), t)

    # ------------------------------------------------------------------ storage
    def flush(self) -> None:
        """Queue what was sampled and write the queues; a failing store is retried with back-off."""
        with self._lock:
            rows, self._rows = self._rows, []
            windows = self.tracker.pop_completed()
            latest = list(self._latest.values())
        if rows:
            self._telemetry.put(pa.Table.from_pylist(rows, schema=self.telemetry_schema))
        if windows:
            self._windows.put(pa.Table.from_pylist(windows, schema=self.windows_schema))
        now = self.clock()
        if self._write.due(now):
            try:
                self._windows.write()
                self._telemetry.write()
            except Exception as exc:
                first = self._write.failures == 0
                self._write.failed(now, _describe(exc))
                if first:
                    print(f"wattlas sampler: cannot write to {self.out_dir} ({_describe(exc)}); holding rows "
                          f"in memory (up to {self.max_buffer_rows:,}) and retrying", file=sys.stderr)
            else:
                if self._write.failures:
                    self._record_gap(now)
        if self.on_flush is not None and latest:
            try:
                self.on_flush(latest)
            except Exception as exc:  # an export (Prometheus textfile) failing never stops collection
                self._fault(exc, "export")

    def _record_gap(self, now: float) -> None:
        """Writing works again: a status row per GPU says how long it did not, and what it cost."""
        since, failures, reason = self._write.succeeded()
        dropped = [t for q in (self._telemetry, self._windows) for t in q.dropped]
        lost_rows = sum(t.num_rows for t in dropped)
        self._telemetry.dropped, self._windows.dropped = [], []
        lost = (f"{lost_rows} rows lost (the oldest, beyond the {self.max_buffer_rows:,}-row buffer)"
                if lost_rows else "no rows lost, all written late")
        text = f"gap: output not writable for {now - since:.1f} s ({reason}; {failures} attempts); {lost}"
        self.gaps.append(text)
        print(f"wattlas sampler: {text}", file=sys.stderr)
        with self._lock:
            if lost_rows:  # the samples themselves are gone: never integrate power across them
                for gpu in self.gpus:
                    self.tracker.gap(gpu)
        gap_rows = [self._base_row(gpu, since, text) for gpu in self.gpus]
        self._telemetry.put(pa.Table.from_pylist(gap_rows, schema=self.telemetry_schema))
        try:
            self._telemetry.write()
        except Exception as exc:  # failing again already: the rows stay queued for the next flush
            self._write.failed(now, _describe(exc))

    # ------------------------------------------------------------------ windows
    def _edge_reads(self, t: float) -> None:
        if self._driver.failures:
            return
        for gpu in self.gpus:
            if gpu in self.lost:
                continue
            try:
                energy, power = self.source.read_energy_power(gpu)
            except GpuLost as exc:
                self._mark_lost(gpu, str(exc))
                continue
            except Exception as exc:  # the next tick says what is wrong; the edge is interpolated
                self._fault(exc, f"GPU {gpu} window edge")
                continue
            last = self._last_counter.get(gpu)
            if energy is not None and last is not None and energy < last:
                energy = None  # a reset between ticks: the next tick opens the new epoch
            self.tracker.observe(gpu, max(t, self.clock()), energy, power, self.epoch[gpu])

    def _open_window(self, name: str, attrs: dict):
        with self._lock:
            t0 = self.clock()
            window = self.tracker.open(name, t0, attrs)
            self._edge_reads(t0)
        return window

    def _close_window(self, window) -> None:
        with self._lock:
            t1 = self.clock()
            self.tracker.close(window, t1)
            self._edge_reads(t1)

    def begin_window(self, name: str, **attrs) -> None:
        """Start measuring ``name`` on every GPU (as Zeus's monitor does; one open window per name)."""
        if name in self._named_windows:
            raise ValueError(f"window {name!r} is already open")
        self._named_windows[name] = self._open_window(name, attrs)

    def end_window(self, name: str) -> Measurement:
        """Close ``name`` and return its :class:`Measurement` (its rows also go to the windows store)."""
        try:
            window = self._named_windows.pop(name)
        except KeyError:
            raise ValueError(f"no open window {name!r}") from None
        self._close_window(window)
        if window.rows is None:  # the driver is away: edges resolve later, the energy is unknown now
            unknown = dict.fromkeys(self.gpus)
            return Measurement(name, window.end - window.start, unknown, dict(unknown), window.start + self.wall_offset,
                               window.end + self.wall_offset, self.source.simulated, dict(window.attrs))
        return Measurement.from_rows(window.rows, simulated=self.source.simulated)

    @contextmanager
    def window(self, name: str, **attrs):
        """Measure the energy of the enclosed code on every GPU; rows go to the windows store.

        The yielded window's ``rows`` are filled as soon as it closes: edges are read
        synchronously, so there is no waiting for the next tick.
        """
        window = self._open_window(name, attrs)
        try:
            yield window
        finally:
            self._close_window(window)
