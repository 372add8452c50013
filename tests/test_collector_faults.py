"""The collector under faults: it never loses data silently and never stops for one GPU's sake.

Every test drives the sampler by hand on an injected clock (``open`` / ``tick`` / ``flush`` /
``close``), so nothing depends on how fast this machine runs.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pyarrow as pa
import pytest

from collectors.telemetry import segments as segments_module
from collectors.telemetry.markers import MarkerReader
from collectors.telemetry.nvml_source import NvmlSource
from collectors.telemetry.prometheus import format_textfile
from collectors.telemetry.sampler import MAX_RETRY_S, Sampler
from collectors.telemetry.segments import SegmentWriter, read_segments
from collectors.telemetry.summary import summarize_telemetry
from collectors.telemetry.windows import WindowTracker
from toolkit.schemas import PHASE_WINDOWS, TELEMETRY_SAMPLES

from .fake_clock import WALL0, FakeClock, finish
from .test_segments import SCHEMA
from .test_segments import batch as rows
from .fake_pynvml import FakeGpu, FakeNVML

PERIOD = 0.1


def make_sampler(tmp_path, gpus, clock, **kw):
    nvml = FakeNVML(gpus, clock=clock)
    sampler = Sampler(NvmlSource(nvml), tmp_path, period_s=PERIOD, flush_s=1.0, clock=clock,
                      wall_clock=lambda: WALL0 + clock(), **kw)
    return sampler, nvml


def drive(sampler, clock, seconds, during=None):
    """Tick every PERIOD and flush every second of fake time; ``during(t)`` runs before each tick."""
    for i in range(int(round(seconds / PERIOD))):
        clock.advance(PERIOD)
        if during is not None:
            during(i * PERIOD)
        sampler.tick()
        if i % 10 == 9:
            sampler.flush()


def telemetry(path):
    return read_segments(path, "telemetry", TELEMETRY_SAMPLES.arrow()).to_pandas()


# ---------------------------------------------------------------------------- ownership


def test_a_second_writer_never_touches_a_live_writers_stream(tmp_path):
    first = SegmentWriter(tmp_path, "t", SCHEMA)
    first.append(rows(0, 5))
    second = SegmentWriter(tmp_path, "t", SCHEMA)  # its salvage must leave the first's stream alone
    assert second.salvaged == []
    first.append(rows(5, 10))
    second.append(rows(100, 103))
    first.close()
    second.close()
    got = sorted(read_segments(tmp_path, "t", SCHEMA).column("i").to_pylist())
    assert got == list(range(10)) + [100, 101, 102]  # all rows, none twice
    assert not list(tmp_path.glob("*.arrows")) and not list(tmp_path.glob(".*"))


def _collector(out):
    cmd = [sys.executable, "-m", "toolkit.cli", "collect", "sample", "--backend", "sim", "--period", "0.05",
           "--flush", "0.2", "--duration", "120s", "-o", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout=60.0):
    import time

    deadline = time.monotonic() + timeout  # a generous bound for a slow machine, not a speed check
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def test_two_collector_processes_share_one_directory(tmp_path):
    out = tmp_path / "out"
    first = _collector(out)
    procs = [first]
    try:
        _wait_for(lambda: len(list(out.glob("telemetry-*.arrows"))) >= 1)
        second = _collector(out)
        procs.append(second)
        _wait_for(lambda: len(list(out.glob("telemetry-*.arrows"))) >= 2)
        durable = telemetry(out)  # everything flushed by both so far
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        results = [(proc.wait(timeout=120), proc.stderr.read()) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for returncode, stderr in results:
        assert returncode == 0, stderr
    final = telemetry(out)
    assert not list(out.glob("*.arrows"))
    pids = {p.name.split("-")[2] for p in out.glob("telemetry-*.parquet")}
    assert {str(first.pid), str(procs[1].pid)} <= pids
    # nothing that was durable before the stop went missing, and nothing is duplicated
    key = ["gpu_index", "t_mono_ns"]
    assert not final.duplicated(key).any()
    assert set(map(tuple, durable[key].to_numpy())) <= set(map(tuple, final[key].to_numpy()))


# ---------------------------------------------------------------------------- storage faults
def test_failed_append_is_cut_back_and_retried_without_duplicates(tmp_path, monkeypatch):
    writer = SegmentWriter(tmp_path, "t", SCHEMA)
    writer.append(rows(0, 3))
    real_fsync = os.fsync
    failures = iter([True])

    def fsync(fd):
        if next(failures, False):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(segments_module.os, "fsync", fsync)
    with pytest.raises(OSError):
        writer.append(rows(3, 6))  # written but not durable: must not survive as well as the retry
    assert writer.pending == 1
    writer.append(rows(3, 6))  # the retry: pending stream converted, a new one opened
    writer.close()
    assert sorted(read_segments(tmp_path, "t", SCHEMA).column("i").to_pylist()) == list(range(6))
    assert not list(tmp_path.glob("*.arrows"))


class FailingStore:
    """Makes a sampler's segment stores fail with ENOSPC while ``failing`` is set."""

    def __init__(self, sampler) -> None:
        self.failing = False
        self.calls = 0
        for queue in (sampler._telemetry, sampler._windows):
            real = queue.store.append

            def append(table, real=real):
                self.calls += 1
                if self.failing:
                    raise OSError(errno.ENOSPC, "No space left on device")
                real(table)

            queue.store.append = append


def test_disk_full_for_ten_seconds_then_freed(tmp_path):
    clock = FakeClock()
    sampler, _ = make_sampler(tmp_path, [FakeGpu(uuid="GPU-a"), FakeGpu(uuid="GPU-b")], clock)
    sampler.open()
    store = FailingStore(sampler)
    drive(sampler, clock, 5.0)
    store.failing, store.calls = True, 0
    drive(sampler, clock, 10.0)
    attempts_while_full = store.calls
    store.failing = False
    drive(sampler, clock, 5.0)
    finish(sampler, clock)
    frame = telemetry(tmp_path)
    readings = frame[frame["status"].isna()]
    assert len(readings) == 2 * 200 + 2  # every tick of both GPUs, plus close()'s last tick
    assert not readings.duplicated(["gpu_index", "t_mono_ns"]).any()
    gaps = frame[frame["status"].fillna("").str.startswith("gap:")]
    assert sorted(gaps["gpu_index"]) == [0, 1]
    stalled_s = float(re.search(r"not writable for ([0-9.]+) s", gaps["status"].iloc[0]).group(1))
    assert 10.0 <= stalled_s <= 10.0 + MAX_RETRY_S + 1.0  # noticed within one back-off of the disk freeing
    assert "no rows lost" in gaps["status"].iloc[0]
    assert "ENOSPC" in gaps["status"].iloc[0] or "No space" in gaps["status"].iloc[0]
    assert attempts_while_full <= 6  # backed off (1, 2, 2, 2 ... s): not one attempt per flush
    assert sampler.gaps and (summarize_telemetry(frame)["status"] == "ok (1 write stall, no rows lost)").all()


def test_an_outage_longer_than_the_buffer_drops_the_oldest_and_says_so(tmp_path):
    clock = FakeClock()
    sampler, _ = make_sampler(tmp_path, [FakeGpu()], clock, max_buffer_rows=30)
    sampler.open()
    store = FailingStore(sampler)
    drive(sampler, clock, 2.0)
    store.failing = True
    drive(sampler, clock, 10.0)  # 100 samples, 30 kept
    store.failing = False
    drive(sampler, clock, 2.0)
    finish(sampler, clock)
    frame = telemetry(tmp_path)
    gap = frame[frame["status"].fillna("").str.startswith("gap:")]["status"].iloc[0]
    lost = int(re.search(r"(\d+) rows lost", gap).group(1))
    stalled_s = float(re.search(r"not writable for ([0-9.]+) s", gap).group(1))
    assert lost == round(stalled_s / PERIOD) + 10 - 30  # since the last good flush, less the buffer
    assert len(frame[frame["status"].isna()]) + lost == 140 + 1  # every tick stored or counted lost


def test_the_output_directory_removed_mid_run_loses_nothing(tmp_path):
    clock = FakeClock()
    out = tmp_path / "out"
    sampler, _ = make_sampler(out, [FakeGpu()], clock)
    sampler.open()
    drive(sampler, clock, 3.0)
    shutil.rmtree(out)
    drive(sampler, clock, 3.0)
    finish(sampler, clock)
    frame = telemetry(out)
    assert len(frame[frame["status"].isna()]) == 61


def test_unwritable_output_at_start_is_one_line(run_cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run_cli("collect", "sample", "--backend", "sim", "--duration", "1s", "-o", str(blocker / "out"))
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and "file" in lines[0]


# ---------------------------------------------------------------------------- GPU and driver faults
def test_one_gpu_lost_at_start_the_others_are_collected(tmp_path):
    clock = FakeClock()
    sampler, _ = make_sampler(tmp_path, [FakeGpu(uuid="GPU-a"), FakeGpu(uuid="GPU-b", lost_after_reads=0)], clock)
    sampler.open()
    drive(sampler, clock, 2.0)
    finish(sampler, clock)
    frame = telemetry(tmp_path)
    assert len(frame[(frame["gpu_index"] == 0) & frame["status"].isna()]) == 21
    lost = frame[frame["gpu_index"] == 1]
    assert len(lost) == 1 and lost["status"].iloc[0].startswith("lost: at start")


class Exploding(NvmlSource):
    """GPU 1's reads raise something no NVML error class covers, for a while."""

    def __init__(self, nvml, bad_ticks) -> None:
        super().__init__(nvml)
        self.bad_ticks = bad_ticks
        self.n = 0

    def read(self, gpu_index, slow=False):
        if gpu_index == 1:
            self.n += 1
            if self.n in self.bad_ticks:
                raise RuntimeError("ctypes went sideways")
        return super().read(gpu_index, slow)


def test_a_read_raising_anything_is_that_gpus_problem_for_that_tick(tmp_path):
    clock = FakeClock()
    nvml = FakeNVML([FakeGpu(uuid="GPU-a"), FakeGpu(uuid="GPU-b")], clock=clock)
    sampler = Sampler(Exploding(nvml, set(range(5, 15))), tmp_path, period_s=PERIOD, clock=clock,
                      wall_clock=lambda: WALL0 + clock())
    sampler.open()
    drive(sampler, clock, 3.0)
    finish(sampler, clock)
    frame = telemetry(tmp_path)
    gpu0, gpu1 = (frame[frame["gpu_index"] == g] for g in (0, 1))
    assert gpu0["status"].isna().all() and len(gpu0) == 31
    statuses = gpu1["status"].dropna().tolist()
    assert statuses[0].startswith("read_error: RuntimeError") and statuses[1].startswith("read_ok: after 10 failed")
    assert gpu1["status"].isna().sum() == 31 - 10


def test_driver_unloaded_mid_run_is_said_and_energy_never_silently_short(tmp_path):
    clock = FakeClock()
    sampler, nvml = make_sampler(tmp_path, [FakeGpu(power_w=lambda t: 300.0)], clock)
    sampler.open()
    events = {10.0: nvml.unload_driver, 14.0: nvml.load_driver}

    def during(t):
        for at, action in list(events.items()):
            if t >= at:
                action()
                del events[at]

    drive(sampler, clock, 20.0, during)
    finish(sampler, clock)
    frame = telemetry(tmp_path)
    statuses = frame["status"].dropna().tolist()
    assert statuses[0].startswith("driver_unavailable") and statuses[1].startswith("driver_restored")
    readings = frame[frame["status"].isna()]
    assert readings["energy_epoch"].max() == 1 and readings["energy_j"].notna().all()  # no rows of nulls
    (row,) = summarize_telemetry(frame).to_dict("records")
    assert row["status"].startswith("degraded: 1 driver outage,")
    assert row["energy_method"] == "counter"
    # 20 s drawn at 300 W; ~4 s of it while the driver was away: said, not hidden
    assert 4.0 <= row["unmeasured_s"] <= 4.0 + MAX_RETRY_S + PERIOD  # noticed within one back-off
    measured = row["duration_s"] - row["unmeasured_s"]
    assert row["energy_j"] == pytest.approx(300.0 * measured, rel=0.02)
    assert row["mean_power_w"] == pytest.approx(300.0, rel=0.02)


def test_energy_counter_reset_starts_a_new_epoch(tmp_path):
    clock = FakeClock()
    gpu = FakeGpu(power_w=lambda t: 200.0)
    sampler, nvml = make_sampler(tmp_path, [gpu], clock)
    sampler.open()
    drive(sampler, clock, 5.0, lambda t: nvml.load_driver(reset_counters=True) if abs(t - 2.5) < 1e-9 else None)
    finish(sampler, clock)
    frame = telemetry(tmp_path)
    readings = frame[frame["status"].isna()].sort_values("t_mono_ns")
    assert readings["energy_epoch"].is_monotonic_increasing and readings["energy_epoch"].max() == 1
    (row,) = summarize_telemetry(frame).to_dict("records")
    assert row["energy_j"] == pytest.approx(200.0 * (row["duration_s"] - row["unmeasured_s"]), rel=0.03)
    assert row["unmeasured_s"] <= 2 * PERIOD


def test_a_failing_nvlink_field_nulls_the_sum_instead_of_going_backwards():
    clock = FakeClock()
    gpu = FakeGpu(nvlinks=4)
    source = NvmlSource(FakeNVML([gpu], clock=clock))
    source.open()
    gpu.nvlink_fail_calls = {gpu.calls["fields"] + 3}  # the third read's link 0 fails
    values = [source.read(0)["nvlink_tx_kib"] for _ in range(6)]
    assert values == [10_000, 10_000, None, 10_000, 10_000, 10_000]  # never a partial 9,000


def test_window_energy_is_not_taken_across_a_counter_epoch():
    tracker = WindowTracker([0], "r", "nvml")
    tracker.observe(0, 0.0, 1000.0, None, epoch=0)
    window = tracker.open("w", 0.5)
    tracker.observe(0, 1.0, 1100.0, None, epoch=0)
    tracker.observe(0, 2.0, 50.0, None, epoch=1)  # reset: 50 J into the new epoch
    tracker.close(window, 1.5)
    tracker.observe(0, 3.0, 150.0, None, epoch=1)
    (row,) = window.rows
    assert row["energy_j"] is None and row["energy_method"] is None  # unknown, not 100 J or -1000 J


def test_power_is_not_integrated_across_an_outage():
    tracker = WindowTracker([0], "r", "nvml", max_bridge_s=5.0)
    tracker.observe(0, 0.0, None, 100.0)
    window = tracker.open("w", 0.5)
    tracker.observe(0, 1.0, None, 100.0)
    tracker.observe(0, 60.0, None, 100.0)  # a minute with no observation
    tracker.close(window, 61.0)
    tracker.observe(0, 62.0, None, 100.0)
    (row,) = window.rows
    assert row["energy_j"] is None


# ---------------------------------------------------------------------------- markers
def test_bad_marker_lines_are_skipped_and_rows_keep_coming(tmp_path):
    clock = FakeClock()
    marker = tmp_path / "markers.jsonl"
    sampler, _ = make_sampler(tmp_path / "out", [FakeGpu()], clock, marker_file=marker)
    sampler.open()
    drive(sampler, clock, 1.0)
    now = WALL0 + clock()
    bad = ["[1]", '"text"', "not json", '{"event": "start", "window": "w", "t": NaN}',
           '{"event": "start", "window": "w", "t": 1e300}', '{"event": "start", "window": "w", "t": 5}',
           '{"event": "start", "window": "", "t": %r}' % now, '{"event": "stop", "window": "w", "t": %r}' % now,
           '{"event": "start", "window": "w", "t": %r, "attrs": [1]}' % now, "[" * 100000]
    marker.write_text("\n".join(bad) + "\n")
    drive(sampler, clock, 1.0)
    with open(marker, "a") as handle:
        handle.write(json.dumps({"event": "start", "window": "ok", "t": WALL0 + clock()}) + "\n")
    drive(sampler, clock, 1.0)
    with open(marker, "a") as handle:
        handle.write(json.dumps({"event": "end", "window": "ok", "t": WALL0 + clock()}) + "\n")
    drive(sampler, clock, 1.0)
    finish(sampler, clock)
    assert len(sampler.markers.errors) == len(bad)
    assert all(f"line {i + 1}:" in e for i, e in enumerate(sampler.markers.errors))
    frame = telemetry(tmp_path / "out")
    assert len(frame) == 41  # every tick stored
    windows = read_segments(tmp_path / "out", "windows", PHASE_WINDOWS.arrow()).to_pandas()
    assert windows["window"].tolist() == ["ok"] and windows["duration_s"].iloc[0] == pytest.approx(1.0)


def test_marker_reader_waits_for_a_half_written_line(tmp_path):
    marker = tmp_path / "m.jsonl"
    marker.write_text('{"event": "start", "window": "a", "t": 10}\n{"event": "end", "wind')
    reader = MarkerReader(marker)
    assert [e["event"] for e in reader.poll(0, 20)] == ["start"]
    with open(marker, "a") as handle:
        handle.write('ow": "a", "t": 11}\n')
    assert [e["event"] for e in reader.poll(0, 20)] == ["end"] and reader.errors == []


# ---------------------------------------------------------------------------- readers and exports
def test_readers_tolerate_segments_vanishing_under_them(tmp_path, monkeypatch):
    writer = SegmentWriter(tmp_path, "t", SCHEMA, rotate_s=0.0)
    writer.append(rows(0, 3))
    writer.append(rows(3, 6))
    files = segments_module.segment_files(tmp_path, "t")
    files[0].unlink()  # retention removed it between the listing and the read
    monkeypatch.setattr(segments_module, "segment_files", lambda d, p: files)
    assert read_segments(tmp_path, "t", SCHEMA).column("i").to_pylist() == [3, 4, 5]


def test_a_stream_converted_while_listed_is_read_once(tmp_path, monkeypatch):
    writer = SegmentWriter(tmp_path, "t", SCHEMA)
    writer.append(rows(0, 4))
    listed = segments_module.segment_files(tmp_path, "t")  # the live stream
    writer.close()  # converted to Parquet before the reader gets to it
    monkeypatch.setattr(segments_module, "segment_files", lambda d, p: listed)
    assert read_segments(tmp_path, "t", SCHEMA).column("i").to_pylist() == [0, 1, 2, 3]


def test_prometheus_energy_counter_is_exact_in_millijoules():
    from prometheus_client.parser import text_string_to_metric_families

    row = {"gpu_index": 0, "energy_j": 2_500_000_123.456, "power_avg_w": 312.25}
    families = {f.name: f for f in text_string_to_metric_families(format_textfile([row]))}
    assert families["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"].samples[0].value == 2_500_000_123_456  # every mJ
    assert families["wattlas_gpu_energy_joules"].samples[0].value == 2_500_000_123.456
    assert families["DCGM_FI_DEV_POWER_USAGE"].samples[0].value == 312.25


@pytest.mark.parametrize("content, message", [
    (b"junk", "not a readable segment"),
    (None, "missing column"),
])
def test_a_foreign_file_among_the_segments_is_one_line(run_cli, tmp_path, content, message):
    import pyarrow.parquet as pq

    path = tmp_path / "telemetry-foreign.parquet"
    if content is None:
        pq.write_table(pa.table({"a": [1]}), path)
    else:
        path.write_bytes(content)
    result = run_cli("collect", "summary", tmp_path)
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and str(path) in lines[0] and message in lines[0]
