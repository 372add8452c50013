"""The background sampler: one thread per process polling every GPU of a telemetry source.

Rows are buffered and appended to a rolling segment store every ``flush_s`` seconds (fsynced),
so a crash or SIGTERM loses at most one flush interval.  Windows (phases) come from
:meth:`Sampler.window` in-process or from a marker file written by another process; their
energy is tracked by :class:`~collectors.windows.WindowTracker`.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import pyarrow as pa

from toolkit.schemas import PHASE_WINDOWS, SIMULATED_KEY, TELEMETRY_SAMPLES

from .markers import MarkerReader
from .segments import SegmentWriter
from .source import GpuLost, TelemetrySource, power_for_integration
from .windows import WindowTracker

MIN_PERIOD_S = 0.01


class Sampler:
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
    ) -> None:
        if period_s < MIN_PERIOD_S:
            raise ValueError(f"sampling period {period_s}s is below the {MIN_PERIOD_S}s minimum")
        self.source = source
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.period_s = period_s
        self.flush_s = flush_s
        self.rotate_s = rotate_s
        self.slow_every = max(1, round(slow_every_s / period_s))
        self.markers = MarkerReader(marker_file) if marker_file else None
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.on_flush = on_flush
        self.host = socket.gethostname()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rows: list[dict] = []
        self._latest: dict[int, dict] = {}
        self._marker_windows: dict[str, list] = {}
        self.error: BaseException | None = None
        self.ticks = 0
        self.missed_ticks = 0
        self.lost: dict[int, str] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Sampler":
        self.gpus = {info.index: info for info in self.source.open()}
        self.wall_offset = time.time() - time.monotonic()
        self.tracker = WindowTracker(list(self.gpus), self.run_id, self.source.backend, self.wall_offset)
        meta = {SIMULATED_KEY.decode(): str(self.source.simulated).lower(), "wattlas.run_id": self.run_id,
                "wattlas.host": self.host, "wattlas.period_s": self.period_s}
        self.telemetry_schema = TELEMETRY_SAMPLES.arrow(metadata=meta)
        self.windows_schema = PHASE_WINDOWS.arrow(metadata=meta)
        if self.out_dir is not None:
            self.telemetry_store = SegmentWriter(self.out_dir, "telemetry", self.telemetry_schema, self.rotate_s)
            self.windows_store = SegmentWriter(self.out_dir, "windows", self.windows_schema, self.rotate_s)
        self._thread = threading.Thread(target=self._run, name="wattlas-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling, close open windows, flush and finalize the segments."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        # Markers the command wrote just before it exited, then one last sample to close them on.
        if self.markers is not None:
            self._apply_markers()
        self.tick()
        with self._lock:
            self.tracker.flush_open(time.monotonic())
        self.flush()
        if self.out_dir is not None:
            self.telemetry_store.close()
            self.windows_store.close()
        self.source.close()
        if self.error is not None:
            raise RuntimeError(f"sampler thread failed: {self.error}") from self.error

    def __enter__(self) -> "Sampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        next_tick = time.monotonic()
        last_flush = next_tick
        try:
            while not self._stop.is_set():
                self.tick()
                now = time.monotonic()
                if now - last_flush >= self.flush_s:
                    self.flush()
                    last_flush = now
                next_tick += self.period_s
                if next_tick < now:  # fell behind (slow NVML call, loaded host): skip, don't burst
                    skipped = int((now - next_tick) / self.period_s) + 1
                    self.missed_ticks += skipped
                    next_tick += skipped * self.period_s
                self._stop.wait(next_tick - now)
        except BaseException as exc:  # keep what was collected; report on stop()
            self.error = exc
            print(f"wattlas sampler: {exc!r}", file=sys.stderr)

    def tick(self) -> None:
        slow = self.ticks % self.slow_every == 0
        self.ticks += 1
        for gpu, info in self.gpus.items():
            if gpu in self.lost:
                continue
            with self._lock:
                self._sample(gpu, info, slow)
        if self.markers is not None:
            self._apply_markers()

    def _sample(self, gpu: int, info, slow: bool) -> None:
        t_mono = time.monotonic()
        row = {"host": self.host, "backend": self.source.backend, "gpu_index": gpu, "gpu_uuid": info.uuid,
               "gpu_name": info.name, "t_wall_s": t_mono + self.wall_offset, "t_mono_ns": int(t_mono * 1e9),
               "status": None}
        try:
            reading = self.source.read(gpu, slow)
        except GpuLost as exc:
            self.lost[gpu] = str(exc)
            row["status"] = f"lost: {exc}"
            self._rows.append(row)
            self.tracker.gpu_lost(gpu)
            print(f"wattlas sampler: GPU {gpu} lost ({exc}); its stream ends, other GPUs continue", file=sys.stderr)
            return
        row.update(reading)
        self._rows.append(row)
        self._latest[gpu] = row
        self.tracker.observe(gpu, t_mono, reading.get("energy_j"), power_for_integration(reading))

    def _apply_markers(self) -> None:
        for event in self.markers.poll():
            t = event["t"] - self.wall_offset
            with self._lock:
                if event["event"] == "start":
                    window = self.tracker.open(event["window"], t, event.get("attrs"))
                    self._marker_windows.setdefault(event["window"], []).append(window)
                elif self._marker_windows.get(event["window"]):
                    self.tracker.close(self._marker_windows[event["window"]].pop(), t)

    def flush(self) -> None:
        with self._lock:
            rows, self._rows = self._rows, []
            windows = self.tracker.pop_completed()
            latest = list(self._latest.values())
        if self.out_dir is not None:
            if rows:
                self.telemetry_store.append(pa.Table.from_pylist(rows, schema=self.telemetry_schema))
            if windows:
                self.windows_store.append(pa.Table.from_pylist(windows, schema=self.windows_schema))
        if self.on_flush is not None and latest:
            self.on_flush(latest)

    # ------------------------------------------------------------------ windows
    def _edge_reads(self, t: float) -> None:
        for gpu in self.gpus:
            if gpu in self.lost:
                continue
            try:
                energy, power = self.source.read_energy_power(gpu)
            except GpuLost as exc:
                self.lost[gpu] = str(exc)
                self.tracker.gpu_lost(gpu)
                continue
            self.tracker.observe(gpu, max(t, time.monotonic()), energy, power)

    @contextmanager
    def window(self, name: str, **attrs):
        """Measure the energy of the enclosed code on every GPU; rows go to the windows store.

        The yielded window's ``rows`` are filled as soon as it closes (edges are read
        synchronously, so no waiting for the next tick).
        """
        with self._lock:
            t0 = time.monotonic()
            window = self.tracker.open(name, t0, attrs)
            self._edge_reads(t0)
        try:
            yield window
        finally:
            with self._lock:
                t1 = time.monotonic()
                self.tracker.close(window, t1)
                self._edge_reads(t1)
