"""NvmlSource against the fake pynvml: Volta+ counter, pre-Volta fallback, NotSupported, GPU lost."""


import pynvml
import pytest

from collectors.telemetry.nvml_source import NvmlSource
from collectors.telemetry.source import READING_COLUMNS, GpuLost

from .fake_pynvml import FakeGpu, FakeNVML


def open_source(*gpus):
    source = NvmlSource(FakeNVML(list(gpus)))
    infos = source.open()
    return source, infos


def test_fake_raises_real_nvml_error_subclasses():
    nvml = FakeNVML([FakeGpu(energy_counter=False)])
    nvml.nvmlInit()
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetTotalEnergyConsumption(nvml.nvmlDeviceGetHandleByIndex(0))


def test_volta_plus_reads_counter_instant_power_and_units():
    source, infos = open_source(FakeGpu(power_w=lambda t: 412.5))
    assert infos[0].name == "NVIDIA H100 80GB HBM3" and infos[0].uuid == "GPU-fake-0000"
    r = source.read(0, slow=True)
    assert set(r) == set(READING_COLUMNS)
    assert r["power_instant_w"] == pytest.approx(412.5)
    assert r["power_avg_w"] == pytest.approx(412.5)
    assert r["energy_j"] > 5e5  # counter since "driver load", mJ -> J
    assert r["power_limit_w"] == 700.0 and r["sm_clock_mhz"] == 1980.0
    assert r["nvml_timestamp_us"] is not None
    assert r["pcie_tx_kbps"] == 1234.0
    assert source.read(0, slow=False)["pcie_tx_kbps"] is None  # blocking metric only on slow ticks


def test_unsupported_metrics_are_null_never_zero():
    source, _ = open_source(FakeGpu(pcie=False, memory_temp=False))
    r = source.read(0, slow=True)
    for column in ("temp_mem_c", "pcie_tx_kbps", "pcie_rx_kbps", "nvlink_tx_kib", "nvlink_rx_kib"):
        assert r[column] is None, column
    assert "pcie" in source.unsupported[0] and "temp_mem_c" in source.unsupported[0]


def test_pre_volta_has_no_counter_and_falls_back_to_power_usage():
    source, _ = open_source(FakeGpu(energy_counter=False, field_api=False, power_w=lambda t: 150.0))
    r = source.read(0)
    assert r["energy_j"] is None
    assert r["power_instant_w"] is None
    assert r["power_avg_w"] == pytest.approx(150.0)
    assert source.read_energy_power(0) == (None, pytest.approx(150.0))


def test_module_scope_fallback_for_instant_power():
    source, _ = open_source(FakeGpu(instant_power_scopes=(pynvml.NVML_POWER_SCOPE_MODULE,), power_w=lambda t: 250.0))
    assert (pynvml.NVML_FI_DEV_POWER_INSTANT, pynvml.NVML_POWER_SCOPE_MODULE) in source.gpus[0].fields
    assert source.read(0)["power_instant_w"] == pytest.approx(250.0)


def test_sporadic_not_supported_nulls_one_tick_only():
    gpu = FakeGpu(sporadic={"temperature": {3}})  # probe is call 1
    source, _ = open_source(gpu)
    temps = [source.read(0)["temp_gpu_c"] for _ in range(4)]
    assert temps == [55.0, None, 55.0, 55.0]


def test_nvlink_counters_sum_active_links():
    source, _ = open_source(FakeGpu(nvlinks=4))
    r = source.read(0)
    assert r["nvlink_tx_kib"] == 1000 * (1 + 2 + 3 + 4)


def test_gpu_lost_raises():
    source, _ = open_source(FakeGpu(lost_after_reads=3))
    with pytest.raises(GpuLost, match="lost"):
        for _ in range(10):
            source.read(0)


def test_no_driver_is_a_one_line_error(run_cli, tmp_path, monkeypatch):
    import collectors.telemetry.nvml_source as nvml_source

    class NoDriver(FakeNVML):
        def nvmlInit(self):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(nvml_source.importlib, "import_module", lambda name: NoDriver([]))
    result = run_cli("collect", "sample", "-o", tmp_path / "x", "--duration", "0.1")
    assert result.exit_code != 0
    assert "NVML unavailable" in result.output and "--backend sim" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("gpu, scope", [
    (FakeGpu(), "gpu"),
    (FakeGpu(instant_power_scopes=(pynvml.NVML_POWER_SCOPE_MODULE,), average_power_field=False), "module"),
    (FakeGpu(mig=True), "gpu, MIG-partitioned"),
    (FakeGpu(mig=False), "gpu"),
])
def test_power_scope_is_labelled_in_every_row_and_the_summary(tmp_path, gpu, scope):
    from collectors.telemetry.sampler import Sampler
    from collectors.telemetry.summary import format_summary, load_telemetry, summarize_telemetry

    from .fake_clock import WALL0, FakeClock, finish

    clock = FakeClock()
    sampler = Sampler(NvmlSource(FakeNVML([gpu], clock=clock)), tmp_path, period_s=0.1, clock=clock,
                      wall_clock=lambda: WALL0 + clock()).open()
    for _ in range(3):
        clock.advance(0.1)
        sampler.tick()
    finish(sampler, clock)
    frame = load_telemetry(tmp_path)
    assert set(frame["power_scope"]) == {scope}
    text = format_summary(summarize_telemetry(frame))
    assert ("power scope" in text) == (scope != "gpu") and ("Grace CPU" in text) == scope.startswith("module")
