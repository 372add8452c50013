"""--gpus and CUDA_VISIBLE_DEVICES, and the Zeus-style measurement window."""

import pytest

from collectors.telemetry.gpu_selection import select_gpus
from collectors.telemetry.nvml_source import NvmlSource
from collectors.telemetry.sampler import Sampler
from collectors.telemetry.source import GpuInfo
from collectors.telemetry.summary import load_telemetry
from toolkit.errors import InputError

from .fake_clock import WALL0, FakeClock, finish
from .fake_pynvml import FakeGpu, FakeNVML

INFOS = [GpuInfo(i, f"GPU-{i}{i}aa-0000", "H100") for i in range(4)]


@pytest.mark.parametrize("wanted, env, expected", [
    (None, {}, [0, 1, 2, 3]),
    ("1,3", {}, [1, 3]),
    ("GPU-22aa", {}, [2]),
    ("33aa", {}, [3]),
    (None, {"CUDA_VISIBLE_DEVICES": "2,0"}, [2, 0]),
    ("1", {"CUDA_VISIBLE_DEVICES": "2,0"}, [0]),  # indices count the visible GPUs, as the framework does
    (None, {"CUDA_VISIBLE_DEVICES": "GPU-11aa-0000"}, [1]),
    (None, {"CUDA_VISIBLE_DEVICES": ""}, []),
    (None, {"CUDA_VISIBLE_DEVICES": "-1"}, []),
])
def test_selection(wanted, env, expected):
    assert [g.index for g in select_gpus(INFOS, wanted, env)] == expected


@pytest.mark.parametrize("wanted, env, message", [
    ("4", {}, "GPU 4 does not exist"),
    ("1,1", {}, "same GPU twice"),
    ("GPU-99", {}, "matches no GPU"),
    ("GPU-", {}, "matches several GPUs"),
    ("MIG-abc", {}, "MIG instance"),
    (",", {}, "names no GPU"),
    ("3", {"CUDA_VISIBLE_DEVICES": "0,1"}, "GPU 3 does not exist"),
])
def test_bad_selection_is_one_line(wanted, env, message):
    with pytest.raises(InputError, match=message) as info:
        select_gpus(INFOS, wanted, env)
    assert "\n" not in str(info.value)


def test_collect_sample_keeps_exactly_the_selected_gpus(run_cli, tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    result = run_cli("collect", "sample", "--backend", "sim", "--sim-gpus", "4", "--gpus", "1,3", "--period", "0.05",
                     "--duration", "0.3", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    assert sorted(load_telemetry(tmp_path)["gpu_index"].unique()) == [1, 3]


def test_collect_sample_with_an_unknown_gpu_is_one_line(run_cli, tmp_path):
    result = run_cli("collect", "sample", "--backend", "sim", "--sim-gpus", "2", "--gpus", "5", "--duration", "0.1",
                     "-o", tmp_path)
    assert result.exit_code != 0 and result.output.strip().splitlines() == [
        "Error: --gpus: GPU 5 does not exist (visible: 0-1)"]


def test_begin_and_end_window_return_a_measurement(tmp_path):
    clock = FakeClock()
    nvml = FakeNVML([FakeGpu(uuid="GPU-a", power_w=lambda t: 300.0), FakeGpu(uuid="GPU-b", power_w=lambda t: 100.0)],
                    clock=clock)
    sampler = Sampler(NvmlSource(nvml), tmp_path, period_s=0.1, clock=clock, wall_clock=lambda: WALL0 + clock()).open()
    sampler.begin_window("prefill", tokens=8192)
    for _ in range(20):
        clock.advance(0.1)
        sampler.tick()
    measurement = sampler.end_window("prefill")
    finish(sampler, clock)
    assert measurement.name == "prefill" and measurement.time_s == pytest.approx(2.0)
    assert measurement.energy_j[0] == pytest.approx(600.0, rel=1e-3) and measurement.method == {0: "counter", 1: "counter"}
    assert measurement.total_energy_j == pytest.approx(800.0, rel=1e-3)
    with pytest.raises(ValueError, match="no open window"):
        sampler.end_window("prefill")


def test_collect_probe_keeps_exactly_the_selected_gpus(run_cli, monkeypatch):
    import json

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr("collectors.telemetry.probe.counter_update_period", lambda read, seconds: 0.001)
    result = run_cli("collect", "probe", "--backend", "sim", "--sim-gpus", "3", "--gpus", "0,2", "--json")
    assert result.exit_code == 0, result.output
    assert [row["gpu_index"] for row in json.loads(result.output)] == [0, 2]
