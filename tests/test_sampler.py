"""The sampler end to end on the fake NVML and the simulated device."""

import time

import pyarrow.parquet as pq
import pytest

from collectors.markers import write_marker
from collectors.sampler import Sampler
from collectors.segments import read_segments
from collectors.sim_source import SimSource
from collectors.nvml_source import NvmlSource
from collectors.summary import summarize_telemetry
from toolkit.schemas import PHASE_WINDOWS, TELEMETRY_SAMPLES

from .fake_pynvml import FakeGpu, FakeNVML


def telemetry(path):
    return read_segments(path, "telemetry", TELEMETRY_SAMPLES.arrow()).to_pandas()


def windows(path):
    return read_segments(path, "windows", PHASE_WINDOWS.arrow()).to_pandas()


def test_window_energy_from_counter_delta(tmp_path):
    source = NvmlSource(FakeNVML([FakeGpu(power_w=lambda t: 300.0)]))
    with Sampler(source, tmp_path, period_s=0.02, flush_s=0.1) as sampler:
        time.sleep(0.1)
        with sampler.window("prefill", chunk=4096) as window:
            time.sleep(0.3)
    (row,) = window.rows
    assert row["energy_method"] == "counter"
    assert row["energy_j"] == pytest.approx(300.0 * row["duration_s"], rel=0.02)
    assert row["mean_power_w"] == pytest.approx(300.0, rel=0.02)
    stored = windows(tmp_path)
    assert stored["window"].tolist() == ["prefill"] and stored["attrs_json"].iloc[0] == '{"chunk": 4096}'


def test_step_power_integrated_without_counter(tmp_path):
    # pre-Volta: no energy counter, no field API; power steps from 100 W to 500 W at t = 0.4 s
    step = lambda t: 100.0 if t < 0.4 else 500.0
    source = NvmlSource(FakeNVML([FakeGpu(energy_counter=False, field_api=False, power_w=step)]))
    with Sampler(source, tmp_path, period_s=0.01, flush_s=0.1) as sampler:
        time.sleep(0.15)
        with sampler.window("mixed") as window:
            time.sleep(0.6)
    (row,) = window.rows
    assert row["energy_method"] == "integrated_power"
    start = row["start_wall_s"] - sampler.wall_offset - source.nvml.t0
    end = row["end_wall_s"] - sampler.wall_offset - source.nvml.t0
    exact = 100.0 * max(0.0, 0.4 - start) + 500.0 * (end - max(start, 0.4))
    assert row["energy_j"] == pytest.approx(exact, rel=0.06)
    assert row["peak_power_w"] == pytest.approx(500.0)
    frame = telemetry(tmp_path)
    assert frame["energy_j"].isna().all() and frame["power_instant_w"].isna().all()  # null, never 0
    summary = summarize_telemetry(frame)
    assert summary["energy_method"].tolist() == ["integrated_power"]


def test_gpu_lost_ends_that_stream_only(tmp_path):
    gpus = [FakeGpu(uuid="GPU-a"), FakeGpu(uuid="GPU-b", lost_after_reads=10)]
    source = NvmlSource(FakeNVML(gpus))
    with Sampler(source, tmp_path, period_s=0.01, flush_s=0.05) as sampler:
        with sampler.window("decode") as window:
            time.sleep(0.4)
    frame = telemetry(tmp_path)
    lost_rows = frame[frame["status"].notna()]
    assert lost_rows["gpu_index"].tolist() == [1]
    assert "GPU is lost" in lost_rows["status"].iloc[0]
    t_lost = lost_rows["t_mono_ns"].iloc[0]
    gpu1 = frame[frame["gpu_index"] == 1]
    assert gpu1["t_mono_ns"].max() == t_lost  # nothing after the loss
    gpu0 = frame[frame["gpu_index"] == 0]
    assert (gpu0["t_mono_ns"] > t_lost).sum() > 5  # the other GPU went on
    by_gpu = {r["gpu_index"]: r for r in window.rows}
    assert by_gpu[0]["energy_j"] is not None and by_gpu[1]["energy_j"] is None
    summary = summarize_telemetry(frame).set_index("gpu_index")
    assert summary.loc[1, "status"].startswith("lost") and summary.loc[0, "status"] == "ok"


def test_marker_file_windows_from_another_process(tmp_path):
    marker = tmp_path / "markers.jsonl"
    source = NvmlSource(FakeNVML([FakeGpu(power_w=lambda t: 200.0)]))
    with Sampler(source, tmp_path / "out", period_s=0.01, flush_s=0.05, marker_file=marker):
        time.sleep(0.1)
        t0 = time.time()
        write_marker(marker, "start", "prefill", t=t0, tokens=8192)
        time.sleep(0.3)
        write_marker(marker, "end", "prefill", t=t0 + 0.25)
        with open(marker, "a") as handle:
            handle.write("not json\n")
        time.sleep(0.1)
    stored = windows(tmp_path / "out")
    assert stored["window"].tolist() == ["prefill"]
    assert stored["duration_s"].iloc[0] == pytest.approx(0.25)
    assert stored["energy_j"].iloc[0] == pytest.approx(50.0, rel=0.05)
    assert stored["energy_method"].iloc[0] == "counter"


def test_sim_counter_and_integrated_power_agree(tmp_path):
    with Sampler(SimSource(gpus=1, seed=3), tmp_path, period_s=0.01, flush_s=0.1):
        time.sleep(1.5)
    frame = telemetry(tmp_path)
    assert (frame["backend"] == "sim").all()
    counter = summarize_telemetry(frame)["energy_j"].iloc[0]
    integrated = summarize_telemetry(frame.assign(energy_j=None))["energy_j"].iloc[0]
    assert integrated == pytest.approx(counter, rel=0.05)
    meta = pq.read_schema(next(tmp_path.glob("telemetry-*.parquet"))).metadata
    assert meta[b"wattlas.simulated"] == b"true"


def test_period_below_minimum_rejected(tmp_path):
    with pytest.raises(ValueError, match="minimum"):
        Sampler(SimSource(), tmp_path, period_s=0.001)
