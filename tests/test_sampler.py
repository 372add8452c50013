"""The sampler end to end on the fake NVML and the simulated device."""

import time

import pyarrow.parquet as pq
import pytest

from collectors.telemetry.markers import MarkerReader, write_marker
from collectors.telemetry.sampler import Sampler
from collectors.telemetry.segments import read_segments
from collectors.telemetry.sim_source import SimSource
from collectors.telemetry.nvml_source import NvmlSource
from collectors.telemetry.summary import summarize_telemetry
from toolkit.schemas import PHASE_WINDOWS, TELEMETRY_SAMPLES

from .fake_pynvml import FakeGpu, FakeNVML
from .fake_clock import WALL0, FakeClock, finish


def make_sampler(out, gpus, clock, period_s, **kw):
    sampler = Sampler(NvmlSource(FakeNVML(gpus, clock=clock)), out, period_s=period_s, flush_s=0.1, clock=clock,
                      wall_clock=lambda: WALL0 + clock(), **kw)
    return sampler.open(), sampler.source.nvml


def drive(sampler, clock, seconds):
    for _ in range(int(round(seconds / sampler.period_s))):
        clock.advance(sampler.period_s)
        sampler.tick()


def telemetry(path):
    return read_segments(path, "telemetry", TELEMETRY_SAMPLES.arrow()).to_pandas()


def windows(path):
    return read_segments(path, "windows", PHASE_WINDOWS.arrow()).to_pandas()


def test_window_energy_from_counter_delta(tmp_path):
    clock = FakeClock()
    sampler, _ = make_sampler(tmp_path, [FakeGpu(power_w=lambda t: 300.0)], clock, period_s=0.02)
    drive(sampler, clock, 0.1)
    with sampler.window("prefill", chunk=4096) as window:
        drive(sampler, clock, 0.3)
    finish(sampler, clock)
    (row,) = window.rows
    assert row["energy_method"] == "counter"
    assert row["duration_s"] == pytest.approx(0.3)
    assert row["energy_j"] == pytest.approx(300.0 * row["duration_s"], rel=0.01)
    assert row["mean_power_w"] == pytest.approx(300.0, rel=0.01)
    stored = windows(tmp_path)
    assert stored["window"].tolist() == ["prefill"] and stored["attrs_json"].iloc[0] == '{"chunk": 4096}'


def test_step_power_integrated_without_counter(tmp_path):
    # pre-Volta: no energy counter, no field API; power steps from 100 W to 500 W at t = 0.4 s
    step = lambda t: 100.0 if t < 0.4 else 500.0
    clock = FakeClock()
    sampler, nvml = make_sampler(tmp_path, [FakeGpu(energy_counter=False, field_api=False, power_w=step)], clock,
                                 period_s=0.01)
    drive(sampler, clock, 0.15)
    with sampler.window("mixed") as window:
        drive(sampler, clock, 0.6)
    finish(sampler, clock)
    (row,) = window.rows
    assert row["energy_method"] == "integrated_power"
    start = row["start_wall_s"] - sampler.wall_offset - nvml.t0
    end = row["end_wall_s"] - sampler.wall_offset - nvml.t0
    exact = 100.0 * max(0.0, 0.4 - start) + 500.0 * (end - max(start, 0.4))
    assert row["energy_j"] == pytest.approx(exact, rel=0.02)  # one 10-ms trapezoid straddles the step
    assert row["peak_power_w"] == pytest.approx(500.0)
    frame = telemetry(tmp_path)
    assert frame["energy_j"].isna().all() and frame["power_instant_w"].isna().all()  # null, never 0
    summary = summarize_telemetry(frame)
    assert summary["energy_method"].tolist() == ["integrated_power"]


def test_gpu_lost_ends_that_stream_only(tmp_path):
    clock = FakeClock()
    gpus = [FakeGpu(uuid="GPU-a"), FakeGpu(uuid="GPU-b", lost_after_reads=10)]
    sampler, _ = make_sampler(tmp_path, gpus, clock, period_s=0.01)
    with sampler.window("decode") as window:
        drive(sampler, clock, 0.4)
    finish(sampler, clock)
    frame = telemetry(tmp_path)
    lost_rows = frame[frame["status"].notna()]
    assert lost_rows["gpu_index"].tolist() == [1]
    assert "GPU is lost" in lost_rows["status"].iloc[0]
    t_lost = lost_rows["t_mono_ns"].iloc[0]
    gpu1 = frame[frame["gpu_index"] == 1]
    assert gpu1["t_mono_ns"].max() == t_lost  # nothing after the loss
    gpu0 = frame[frame["gpu_index"] == 0]
    assert (gpu0["t_mono_ns"] > t_lost).sum() == 41 - len(gpu1)  # the other GPU went on, every tick
    by_gpu = {r["gpu_index"]: r for r in window.rows}
    assert by_gpu[0]["energy_j"] is not None and by_gpu[1]["energy_j"] is None
    summary = summarize_telemetry(frame).set_index("gpu_index")
    assert summary.loc[1, "status"].startswith("lost") and summary.loc[0, "status"] == "ok"


def test_marker_file_windows_from_another_process(tmp_path):
    clock = FakeClock()
    marker = tmp_path / "markers.jsonl"
    sampler, _ = make_sampler(tmp_path / "out", [FakeGpu(power_w=lambda t: 200.0)], clock, period_s=0.01,
                              marker_file=marker)
    drive(sampler, clock, 0.1)
    t0 = sampler.wall_clock()
    write_marker(marker, "start", "prefill", t=t0, tokens=8192)
    drive(sampler, clock, 0.3)
    write_marker(marker, "end", "prefill", t=t0 + 0.25)
    with open(marker, "a") as handle:
        handle.write("not json\n")
    drive(sampler, clock, 0.1)
    finish(sampler, clock)
    stored = windows(tmp_path / "out")
    assert stored["window"].tolist() == ["prefill"]
    assert stored["duration_s"].iloc[0] == pytest.approx(0.25)
    assert stored["energy_j"].iloc[0] == pytest.approx(50.0, rel=0.01)
    assert stored["energy_method"].iloc[0] == "counter"
    assert len(sampler.markers.errors) == 1 and "line 3" in sampler.markers.errors[0]


def test_sim_counter_and_integrated_power_agree(tmp_path):
    clock = FakeClock()
    sampler = Sampler(SimSource(gpus=1, seed=3, clock=clock), tmp_path, period_s=0.01, flush_s=0.1, clock=clock,
                      wall_clock=lambda: WALL0 + clock()).open()
    drive(sampler, clock, 1.5)
    finish(sampler, clock)
    frame = telemetry(tmp_path)
    assert (frame["backend"] == "sim").all()
    counter = summarize_telemetry(frame)["energy_j"].iloc[0]
    integrated = summarize_telemetry(frame.assign(energy_j=None))["energy_j"].iloc[0]
    assert integrated == pytest.approx(counter, rel=0.05)
    meta = pq.read_schema(next(tmp_path.glob("telemetry-*.parquet"))).metadata
    assert meta[b"wattlas.simulated"] == b"true"


def test_the_sampler_thread_outlives_a_failing_step(tmp_path):
    """The one test of the real thread: a tick that raises is reported and the loop goes on."""
    sampler = Sampler(SimSource(gpus=1), tmp_path, period_s=0.01, flush_s=0.05)
    calls = []
    real_apply = sampler._apply_markers

    def exploding():
        calls.append(1)
        if len(calls) <= 3:
            raise RuntimeError("marker parser bug")
        real_apply()

    sampler.markers = MarkerReader(tmp_path / "m.jsonl")
    sampler._apply_markers = exploding
    sampler.start()
    try:
        deadline = time.monotonic() + 60  # a bound for a very slow machine, not a speed check
        while len(calls) < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sampler.stop()
    assert len(calls) >= 10  # it kept ticking after three failures
    assert sampler.faults == {"sampler: RuntimeError: marker parser bug": 3}


def test_period_below_minimum_rejected(tmp_path):
    with pytest.raises(ValueError, match="minimum"):
        Sampler(SimSource(), tmp_path, period_s=0.001)
