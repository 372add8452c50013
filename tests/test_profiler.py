"""The PyTorch workload and profiler on the CPU with tiny dims, and GPU settings on the fake NVML."""

import pytest

from collectors.gpu_settings import GpuSettings, SettingUnavailable

from .fake_pynvml import FakeGpu, FakeNVML


def test_power_limit_is_read_back_and_restored():
    gpu = FakeGpu()
    settings = GpuSettings(0, FakeNVML([gpu]))
    with settings.applied(1410, 450) as (clock, limit):
        assert clock == 1410.0 and limit == 450.0
        assert gpu.locked == (1410, 1410)
    assert gpu.locked is None and gpu.limit_mw == 700_000


def test_without_root_settings_are_skipped_with_a_reason():
    gpu = FakeGpu()
    gpu.permitted = False
    settings = GpuSettings(0, FakeNVML([gpu]))
    with pytest.raises(SettingUnavailable, match="needs root"):
        settings.lock_clocks(1410)


def test_cpu_profile_sweep_writes_valid_iterations(run_cli, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "p.parquet"
    result = run_cli("collect", "profile", "--backend", "cpu", "--preset", "tiny", "--sweep", "test",
                     "--repeats", "2", "--warmup", "1", "-o", out)
    assert result.exit_code == 0, result.output
    from toolkit.parquet_io import read_artifact
    from toolkit.schemas import PROFILE_ITERATIONS

    frame = read_artifact(out, PROFILE_ITERATIONS).to_pandas()
    assert set(frame["phase"]) == {"prefill", "decode", "mixed"}
    assert (frame["latency_s"] > 0).all()
    assert frame["energy_j"].isna().all() and frame["energy_method"].isna().all()  # no meter on CPU: null, not 0
    assert (frame["backend"] == "cpu").all()


def test_workload_cost_grows_with_prefix_and_kv():
    torch = pytest.importorskip("torch")
    from collectors.workload import LlamaShard, time_iteration

    torch.manual_seed(0)
    model = LlamaShard("tiny", device="cpu", dtype="float32", layers=2)
    short = min(time_iteration(model, 64, 0, 0, 0, 1, 5))
    long = min(time_iteration(model, 64, 16384, 0, 0, 1, 5))
    assert long > short  # attending to a 16 K prefix costs more than none


def test_gpu_settings_without_nvml_access_are_skipped():
    pytest.importorskip("torch")
    from collectors.profiler import run_profile

    result = run_profile("tiny", "test", device="cpu", dtype="float32", clocks=[1410], repeats=1, warmup=0, log=lambda m: None)
    assert result.table.num_rows == 0 and "no NVML settings access" in result.skipped[0]
