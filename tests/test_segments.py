"""Crash safety of the rolling segment store and of the collector process."""

import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pytest

from collectors.telemetry.segments import SegmentWriter, apply_retention, read_segments, read_stream_salvaging

SCHEMA = pa.schema([pa.field("i", pa.int64())])


def batch(lo, hi):
    return pa.table({"i": list(range(lo, hi))}, schema=SCHEMA)


def test_truncated_stream_keeps_complete_batches(tmp_path):
    writer = SegmentWriter(tmp_path, "t", SCHEMA)
    writer.append(batch(0, 10))
    writer.append(batch(10, 20))
    live = next(tmp_path.glob("t-*.arrows"))
    size = live.stat().st_size
    writer.append(batch(20, 30))
    os.truncate(live, size + 20)  # the third batch was torn mid-write
    table = read_stream_salvaging(live)
    assert table.column("i").to_pylist() == list(range(20))


def _write_and_die(directory, lo, hi):
    """A child process appends rows and dies without closing (its lock dies with it)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            SegmentWriter(directory, "t", SCHEMA).append(batch(lo, hi))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def test_restart_salvages_and_appends_never_overwrites(tmp_path):
    _write_and_die(tmp_path, 0, 5)
    second = SegmentWriter(tmp_path, "t", SCHEMA)
    assert len(second.salvaged) == 1
    second.append(batch(5, 8))
    second.close()
    assert not list(tmp_path.glob("*.arrows"))
    assert len(list(tmp_path.glob("t-*.parquet"))) == 2
    assert sorted(read_segments(tmp_path, "t", SCHEMA).column("i").to_pylist()) == list(range(8))


def test_rotation_and_retention(tmp_path):
    writer = SegmentWriter(tmp_path, "t", SCHEMA, rotate_s=0.0)
    writer.append(batch(0, 3))
    writer.append(batch(3, 6))
    files = sorted(tmp_path.glob("t-*.parquet"))
    assert len(files) == 2
    old = files[0]
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert apply_retention(tmp_path, "t", max_age_s=3600) == [old]
    assert read_segments(tmp_path, "t", SCHEMA).column("i").to_pylist() == [3, 4, 5]


def _start_collector(out, flush="0.2"):
    cmd = [sys.executable, "-m", "toolkit.cli", "collect", "sample", "--backend", "sim", "--period", "0.02",
           "--flush", flush, "--duration", "600s", "-o", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_rows(proc, out, rows, timeout=120):  # a bound for a slow machine, not a speed check
    from toolkit.schemas import TELEMETRY_SAMPLES

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:  # it died: say why, rather than wait
            raise AssertionError(f"collector exited {proc.returncode}: {proc.stderr.read()}")
        if list(out.glob("telemetry-*")) and read_segments(out, "telemetry", TELEMETRY_SAMPLES.arrow()).num_rows >= rows:
            return
        time.sleep(0.1)
    raise AssertionError(f"collector wrote fewer than {rows} rows in {timeout} s")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_signal_mid_collection_keeps_everything_durable(tmp_path, sig):
    """SIGTERM finalizes, and its last sample is taken after the signal; SIGKILL loses nothing that
    was already flushed (so at most one flush interval), and a restart salvages it exactly once."""
    from toolkit.schemas import TELEMETRY_SAMPLES

    out = tmp_path / "out"
    proc = _start_collector(out)
    try:
        _wait_for_rows(proc, out, 20)
        durable = read_segments(out, "telemetry", TELEMETRY_SAMPLES.arrow()).to_pandas()
        killed_at = time.monotonic()  # CLOCK_MONOTONIC is one clock for every process on the host
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if sig == signal.SIGTERM:
        assert proc.returncode == 0, proc.stderr.read()
        assert not list(out.glob("*.arrows"))  # finalized to Parquet
        assert "flushing" in proc.stderr.read()
    else:
        assert list(out.glob("*.arrows"))  # live segment left behind, readable as is
    table = read_segments(out, "telemetry", TELEMETRY_SAMPLES.arrow()).to_pandas()
    key = ["gpu_index", "t_mono_ns"]
    assert set(map(tuple, durable[key].to_numpy())) <= set(map(tuple, table[key].to_numpy()))
    if sig == signal.SIGTERM:
        assert table["t_mono_ns"].max() / 1e9 >= killed_at  # the closing sample follows the signal
    if sig == signal.SIGKILL:
        SegmentWriter(out, "telemetry", TELEMETRY_SAMPLES.arrow()).close()  # a restart salvages it
        assert not list(out.glob("*.arrows"))
        salvaged = read_segments(out, "telemetry", TELEMETRY_SAMPLES.arrow()).to_pandas()
        assert len(salvaged) == len(table) and not salvaged.duplicated(key).any()
