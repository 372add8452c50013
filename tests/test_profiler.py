"""The PyTorch workload and profiler on the CPU with tiny dims, and GPU settings on the fake NVML.

No assertion here depends on how fast the machine runs: where durations matter (window sizing,
energy per iteration, the counter's update period) the tests run on a ``FakeClock`` shared by the
fake NVML, the sampler and the workload's timer, and each workload iteration advances it by a fixed
amount; the sampler is driven by hand or, in the CLI test, its thread only adds samples.
"""

import functools
from contextlib import contextmanager

import pytest

from collectors.profiling.gpu_settings import GpuSettings, SettingUnavailable

from .fake_clock import FakeClock, finish
from .fake_pynvml import FakeGpu, FakeNVML


def _iterations_take(monkeypatch, clock: FakeClock, seconds: float) -> None:
    """Every workload iteration advances ``clock`` by ``seconds`` (and still runs for real), so that
    latencies timed on ``clock`` and the iteration counts sized from them are exact."""
    from collectors.profiling.workload import LlamaShard

    real_step = LlamaShard.step

    def step(self, *args):
        clock.advance(seconds)
        return real_step(self, *args)

    monkeypatch.setattr(LlamaShard, "step", step)


@contextmanager
def _hand_driven_sampler(source, out_dir, clock: FakeClock):
    """A sampler on ``clock`` without a background thread: it samples only at window edges and when
    told to (the profiler, as each window closes), so what falls inside each window does not depend
    on thread scheduling.  It closes a moment after the work, as a real run's would."""
    from collectors.telemetry.sampler import Sampler

    sampler = Sampler(source, out_dir, clock=clock).open()
    try:
        yield sampler
    finally:
        finish(sampler, clock)


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


def _step_flops(model, c: int, p: int, b: int, k: int) -> int:
    """FLOPs of one iteration as PyTorch's counter sees them.  Attention runs on the math kernel,
    whose matmuls the counter counts (it does not know every fused attention kernel)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    prefix = model.make_kv(1, p, c) if c and p else None
    decode = model.make_kv(b, k, 1) if b else None
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.step(c, prefix, b, decode)
    return counter.get_total_flops()


def test_workload_cost_grows_with_prefix_and_kv():
    """Counted, not timed: each prefix or cached token a query attends to costs 4 x heads x head_dim
    FLOPs per layer (QK^T and PV); the linear layers' cost does not depend on it."""
    pytest.importorskip("torch")
    from collectors.profiling.workload import LlamaShard

    model = LlamaShard("tiny", device="cpu", dtype="float32", layers=2)
    s = model.shape
    per_query_key = 4 * s.layers * s.heads * s.head_dim
    assert _step_flops(model, 64, 16384, 0, 0) - _step_flops(model, 64, 0, 0, 0) == per_query_key * 64 * 16384
    assert _step_flops(model, 0, 0, 4, 4096) - _step_flops(model, 0, 0, 4, 0) == per_query_key * 4 * 4096


def test_new_kv_is_written_in_place_after_the_prefix_which_stays_intact():
    torch = pytest.importorskip("torch")
    from collectors.profiling.workload import LlamaShard

    model = LlamaShard("tiny", device="cpu", dtype="float32", layers=2)
    prefix, decode = model.make_kv(1, 100, 16), model.make_kv(3, 50, 1)
    before = [(k.clone(), v.clone()) for k, v in prefix.layers]
    decode_before = [k.clone() for k, _ in decode.layers]
    logits = model.step(16, prefix, 3, decode)
    assert logits.shape == (1 + 3, model.shape.vocab)  # the chunk's last token and each decode sample
    for (k0, v0), (k1, v1), d0, (d1, _) in zip(before, prefix.layers, decode_before, decode.layers):
        assert torch.equal(k0[:, :, :100], k1[:, :, :100]) and torch.equal(v0[:, :, :100], v1[:, :, :100])
        assert not torch.equal(k0[:, :, 100:], k1[:, :, 100:])  # the chunk's K landed in the room
        assert torch.equal(d0[:, :, :50], d1[:, :, :50]) and not torch.equal(d0[:, :, 50], d1[:, :, 50])


def test_the_chunk_attends_to_exactly_the_prefix_followed_by_its_own_keys():
    torch = pytest.importorskip("torch")
    from collectors.profiling.workload import LlamaShard

    model = LlamaShard("tiny", device="cpu", dtype="float64", layers=1)
    s = model.shape
    prefix = model.make_kv(1, 40, 8)
    k_prefix = prefix.layers[0][0][:, :, :40].clone()
    seen = []
    real_attention = model._attention
    model._attention = lambda q, k, v: seen.append(k.clone()) or real_attention(q, k, v)
    torch.manual_seed(1)
    model.step(8, prefix, 0, None)
    torch.manual_seed(1)  # the step's input, drawn again
    x = torch.randn(8, s.hidden, dtype=torch.float64)
    q_out, kv_out = s.heads * s.head_dim, s.kv_heads * s.head_dim
    k_chunk = (model._rms(x, model.layers[0]["norm1"]) @ model.layers[0]["qkv"])[:, q_out:q_out + kv_out]
    expected = torch.cat([k_prefix, k_chunk.view(1, 8, s.kv_heads, s.head_dim).transpose(1, 2)], dim=2)
    assert len(seen) == 1 and torch.allclose(seen[0], expected)


@pytest.mark.parametrize("estimate, window, expected", [(0.01, 1.0, 100), (0.3, 1.0, 4), (2.0, 1.0, 1), (0.01, 0.0, 1)])
def test_iterations_fill_the_energy_window(estimate, window, expected):
    from collectors.profiling.workload import iterations_per_window

    assert iterations_per_window(estimate, window) == expected


class _StubModel:
    """What ``measure_point`` needs of a model; iteration i advances ``clock`` by ``costs[i]`` (the
    last cost repeating), and ``steps`` counts them."""

    collectives = None

    def __init__(self, clock: FakeClock, costs: list[float]) -> None:
        self.clock, self.costs, self.steps = clock, costs, 0

    def kv_fits(self, tokens: int) -> bool:
        return True

    def make_kv(self, batch: int, filled: int, room: int):
        return None

    def step(self, c, prefix, b, decode):
        self.clock.advance(self.costs[min(self.steps, len(self.costs) - 1)])
        self.steps += 1

    def synchronize(self) -> None:
        pass

    def release(self) -> None:
        pass


def test_repeats_are_sized_from_steady_state_iterations_not_the_first_call():
    """A 0.5 s first call (compilation, allocation) must not size the windows: a steady-state batch
    of >= 1/4 window does, and each repeat's window then holds exactly the iterations that fill it."""
    from collectors.profiling.workload import measure_point

    clock = FakeClock()
    model = _StubModel(clock, [0.5, 0.003])
    spans = []

    class Window:
        def __enter__(self):
            self.start, self.row = model.steps, {"energy_j": 1.0}
            return self

        def __exit__(self, *exc):
            spans.append(model.steps - self.start)

    measured = measure_point(model, 64, 0, 0, 0, warmup=1, repeats=2, min_window_s=1.0, window=Window, timer=clock)
    # warm-up 1, a probe of 1 (0.003 s: too short), a batch of ceil(0.25 / 0.003) = 84, then 2 x ceil(1 / 0.003)
    assert [m.iterations for m in measured] == [334, 334] and spans == [334, 334] and model.steps == 1 + 1 + 84 + 668
    assert [m.latency_s for m in measured] == pytest.approx([0.003, 0.003])
    assert [m.energy for m in measured] == [{"energy_j": 1.0}] * 2  # each repeat's window row, as recorded


def test_profile_energy_per_iteration_survives_a_coarse_energy_counter(tmp_path, monkeypatch):
    """NVML's counter moves in steps (here 50 ms); iterations of 18 ms need windows of many iterations."""
    pytest.importorskip("torch")
    from collectors.telemetry.nvml_source import NvmlSource
    from collectors.profiling.profiler import run_profile

    clock = FakeClock()
    _iterations_take(monkeypatch, clock, 0.018)
    source = NvmlSource(FakeNVML([FakeGpu(power_w=lambda t: 300.0, counter_step_s=0.05)], clock=clock))
    with _hand_driven_sampler(source, tmp_path, clock) as sampler:
        result = run_profile("tiny", "test", device="cpu", dtype="float32", repeats=1, warmup=1, sampler=sampler,
                             gpu_index=0, min_window_s=0.8, log=lambda m: None, timer=clock)
    frame = result.table.to_pandas()
    assert len(frame) == 6 and (frame["iterations_per_repeat"] == 45).all()  # ceil(0.8 s / 18 ms): 0.81 s windows
    assert frame["latency_s"].tolist() == pytest.approx([0.018] * 6)
    assert (frame["energy_method"] == "counter").all()
    # true energy is 300 W x 18 ms = 5.4 J an iteration, which one iteration's counter delta would read
    # as 0 or a whole 15 J step; over a 0.81 s window the counter is off by less than one step (6.2 %)
    error = (frame["energy_j"] / 5.4 - 1.0).abs()
    assert (error < 0.05 / 0.81).all(), error


def test_a_window_shorter_than_a_counter_step_uses_integrated_power(tmp_path):
    from collectors.telemetry.nvml_source import NvmlSource

    clock = FakeClock()
    source = NvmlSource(FakeNVML([FakeGpu(power_w=lambda t: 300.0, counter_step_s=10.0)], clock=clock))
    with _hand_driven_sampler(source, tmp_path, clock) as sampler:
        with sampler.window("short") as window:
            clock.advance(0.05)
    row = window.rows[0]
    assert row["energy_method"] == "integrated_power" and row["duration_s"] == pytest.approx(0.05)
    assert row["energy_j"] == pytest.approx(300.0 * 0.05)  # power read at both edges, integrated between


def test_interrupted_sweep_keeps_finished_points_and_resumes(run_cli, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import collectors.profiling.profiler as profiler
    from toolkit.parquet_io import read_artifact
    from toolkit.schemas import PROFILE_ITERATIONS

    out = tmp_path / "p.parquet"
    real_measure = profiler.measure_point
    calls = []

    def interrupted_after_three(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt  # what SIGTERM becomes under sigterm_as_interrupt
        calls.append(args[1:5])
        return real_measure(*args, **kwargs)

    monkeypatch.setattr(profiler, "measure_point", interrupted_after_three)
    args = ["collect", "profile", "--backend", "cpu", "--preset", "tiny", "--sweep", "test", "--repeats", "1",
            "--warmup", "1", "-o", out]
    first = run_cli(*args)
    assert first.exit_code == 130 and "--resume" in first.output
    assert not out.exists() and (tmp_path / "p.parquet.partial").is_dir()

    again = run_cli(*args)  # without --resume the kept points are not silently overwritten
    assert again.exit_code != 0 and "--resume" in again.output

    monkeypatch.setattr(profiler, "measure_point", real_measure)
    resumed = run_cli(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    frame = read_artifact(out, PROFILE_ITERATIONS).to_pandas()
    assert len(frame) == 6 and frame[["phase", "chunk_tokens", "prefix_tokens", "batch_size", "kv_tokens"]].duplicated().sum() == 0
    assert frame["run_id"].nunique() == 2  # three points from each run
    assert not (tmp_path / "p.parquet.partial").exists()


def test_cuda_devices_join_nvml_by_uuid_not_by_index():
    from collectors.telemetry.nvml_source import nvml_index_for_uuid
    from collectors.telemetry.source import GpuInfo

    infos = [GpuInfo(0, "GPU-aaaa-1111", "H100"), GpuInfo(1, "GPU-bbbb-2222", "H100")]
    assert nvml_index_for_uuid("bbbb-2222", infos) == 1  # as PyTorch prints it: no "GPU-" prefix
    assert nvml_index_for_uuid("GPU-AAAA-1111", infos) == 0
    assert nvml_index_for_uuid("cccc", infos) is None


def test_gpu_settings_without_nvml_access_are_skipped():
    pytest.importorskip("torch")
    from collectors.profiling.profiler import run_profile

    result = run_profile("tiny", "test", device="cpu", dtype="float32", clocks=[1410], repeats=1, warmup=0, log=lambda m: None)
    assert result.table.num_rows == 0 and "no NVML settings access" in result.skipped[0]


def test_each_repeat_is_joined_with_the_telemetry_of_its_window(tmp_path, monkeypatch):
    """The sampler takes no sample of its own here: each window's telemetry is the one the profiler
    takes as the window closes, which every repeat gets however busy the host is."""
    pytest.importorskip("torch")
    from collectors.telemetry.nvml_source import NvmlSource
    from collectors.profiling.profile_join import join_window_telemetry
    from collectors.profiling.profiler import run_profile
    from collectors.telemetry.summary import load_telemetry

    clock = FakeClock()
    _iterations_take(monkeypatch, clock, 0.007)
    nvml = FakeNVML([FakeGpu()], clock=clock)
    with _hand_driven_sampler(NvmlSource(nvml), tmp_path, clock) as sampler:
        result = run_profile("tiny", "test", device="cpu", dtype="float32", clocks=[1410], repeats=1, warmup=1,
                             sampler=sampler, settings=GpuSettings(0, nvml), gpu_index=0, min_window_s=0.1,
                             log=lambda m: None, timer=clock)
    joined = join_window_telemetry(result.table.to_pandas(), load_telemetry(tmp_path))
    assert len(joined) == 6 and (joined["requested_sm_clock_mhz"] == 1410).all()
    assert (joined["observed_sm_clock_mhz"] == 1410).all()  # the fake reports the locked clock while locked
    assert (joined["max_temp_gpu_c"] == 55).all() and (joined["power_capped_share"] == 0).all()


def test_window_telemetry_join_averages_inside_each_window_and_leaves_the_rest_null():
    import pandas as pd

    from collectors.profiling.profile_join import join_window_telemetry
    from collectors.telemetry.sim_source import REASON_SW_POWER_CAP

    profile = pd.DataFrame({"gpu_index": [0, 0, None], "window_start_wall_s": [10.0, 20.0, None],
                            "window_end_wall_s": [11.0, 21.0, None]})
    telemetry = pd.DataFrame({
        "gpu_index": [0, 0, 0, 0, 1],
        "t_wall_s": [10.2, 10.8, 15.0, 20.5, 10.5],
        "sm_clock_mhz": [1980.0, 1500.0, 100.0, None, 900.0],
        "temp_gpu_c": [60.0, 70.0, 99.0, 65.0, 99.0],
        "clocks_event_reasons": pd.array([0, REASON_SW_POWER_CAP, REASON_SW_POWER_CAP, None, 0], dtype="Int64"),
    })
    joined = join_window_telemetry(profile, telemetry)
    assert joined["observed_sm_clock_mhz"].iloc[0] == 1740.0 and joined["power_capped_share"].iloc[0] == 0.5
    assert joined["max_temp_gpu_c"].iloc[0] == 70.0  # the 99 C sample lies outside, the other on GPU 1
    assert pd.isna(joined["observed_sm_clock_mhz"].iloc[1]) and joined["max_temp_gpu_c"].iloc[1] == 65.0
    assert joined.iloc[2][["observed_sm_clock_mhz", "power_capped_share", "max_temp_gpu_c"]].isna().all()


def test_the_energy_counter_update_period_is_measured_and_sizes_the_windows():
    from collectors.telemetry.counter_probe import counter_update_period, window_for_counter
    from collectors.telemetry.nvml_source import NvmlSource

    clock = FakeClock()  # each 1 ms poll takes exactly 1 ms, so the period is measured to one poll
    source = NvmlSource(FakeNVML([FakeGpu(counter_step_s=0.03)], clock=clock))
    source.open()
    step = counter_update_period(lambda: source.read_energy_power(0)[0], duration_s=0.4, clock=clock,
                                 sleep=clock.advance)
    assert step == pytest.approx(0.03, abs=0.001)
    assert window_for_counter(step) == 1.0 and window_for_counter(0.1) == pytest.approx(2.0)

    no_counter = NvmlSource(FakeNVML([FakeGpu(energy_counter=False)], clock=clock))
    no_counter.open()
    assert counter_update_period(lambda: no_counter.read_energy_power(0)[0], duration_s=0.05, clock=clock,
                                 sleep=clock.advance) is None


def test_probe_reports_counter_period_missing_metrics_and_setting_ranges(monkeypatch):
    import collectors.telemetry.probe as probe
    from collectors.telemetry.counter_probe import counter_update_period
    from collectors.telemetry.nvml_source import NvmlSource

    clock = FakeClock()  # the counter is polled in virtual time: its period is measured to one 1 ms poll
    monkeypatch.setattr(probe, "counter_update_period",
                        functools.partial(counter_update_period, clock=clock, sleep=clock.advance))
    gpus = [FakeGpu(counter_step_s=0.02), FakeGpu(uuid="GPU-fake-0001", energy_counter=False, pcie=False)]
    rows = probe.probe_gpus(NvmlSource(FakeNVML(gpus, clock=clock)), counter_poll_s=0.3)
    assert rows[0]["energy_counter_step_s"] == pytest.approx(0.02, abs=0.001)
    assert rows[0]["power_limit_max_w"] == 700.0 and rows[0]["max_sm_clock_mhz"] == 1980.0
    assert rows[1]["energy_counter_step_s"] is None and "energy" in rows[1]["unsupported_metrics"]
    text = probe.format_probe(rows)
    import re

    assert float(re.search(r"moves every: ([0-9.]+) ms", text).group(1)) == pytest.approx(20.0, abs=1.0)
    assert "no counter" in text and "pcie" in text and "200-700 W" in text


def test_probe_cli_on_the_simulated_device_says_simulated(run_cli):
    result = run_cli("collect", "probe", "--backend", "sim", "--counter-poll", "0.2")
    assert result.exit_code == 0, result.output
    assert "[SIMULATED]" in result.output and "energy counter moves every" in result.output


def test_a_sweep_that_fails_before_any_point_leaves_nothing_to_resume(run_cli, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import collectors.profiling.profiler as profiler

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert")

    monkeypatch.setattr(profiler, "measure_point", broken)
    out = tmp_path / "p.parquet"
    result = run_cli("collect", "profile", "--backend", "cpu", "--preset", "tiny", "--sweep", "test", "-o", out)
    assert result.exit_code == 1 and "device-side assert" in result.output
    assert not out.exists() and not (tmp_path / "p.parquet.partial").exists()


def test_gpu_backend_end_to_end_on_a_fake_nvml(run_cli, tmp_path, monkeypatch):
    """The `--backend gpu` path (counter probe, sampler windows, clock locking, telemetry join,
    provenance) with pynvml replaced by the fake and the workload on the CPU.

    The fake GPU, the counter probe, the sampler and the workload's timer share one virtual clock
    that each iteration advances by 7 ms, so window sizes and energies are exact (to the 1 us each
    reading of the clock takes); the sampler's thread runs as in production and only adds samples."""
    pytest.importorskip("torch")
    import sys

    import collectors.cli as collect_cli
    import collectors.telemetry.counter_probe as counter_probe
    import collectors.profiling.profiler as profiler
    import collectors.telemetry.sampler as sampler_module
    from toolkit.parquet_io import read_artifact
    from toolkit.schemas import PROFILE_ITERATIONS

    # readings take 1 us, as real ones take time: samples the sampler thread and its stop take after
    # the clock lock is released then fall after the last window instead of at the instant it ends
    clock = FakeClock(read_s=1e-6)
    fake = FakeNVML([FakeGpu(counter_step_s=0.02)], clock=clock)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(collect_cli, "_nvml_index_of", lambda device, infos: 0)
    _iterations_take(monkeypatch, clock, 0.007)
    monkeypatch.setattr(profiler, "run_profile", functools.partial(profiler.run_profile, timer=clock))
    monkeypatch.setattr(counter_probe, "counter_update_period",
                        functools.partial(counter_probe.counter_update_period, clock=clock, sleep=clock.advance))
    monkeypatch.setattr(sampler_module, "Sampler", functools.partial(sampler_module.Sampler, clock=clock))
    out = tmp_path / "gpu.parquet"
    result = run_cli("collect", "profile", "--backend", "gpu", "--device", "cpu", "--dtype", "float32", "--preset", "tiny",
                     "--sweep", "test", "--repeats", "1", "--warmup", "1", "--clocks", "1410", "--min-window", "0.3",
                     "-o", out)
    assert result.exit_code == 0, result.output
    import re

    assert float(re.search(r"energy counter of GPU 0 moves every ([0-9.]+) ms", result.output).group(1)) == pytest.approx(20.0, abs=0.2)
    table = read_artifact(out, PROFILE_ITERATIONS)
    frame = table.to_pandas()
    assert len(frame) == 6 and (frame["sm_clock_mhz"] == 1410).all() and (frame["observed_sm_clock_mhz"] == 1410).all()
    assert (frame["iterations_per_repeat"] == 43).all()  # ceil(0.3 s / 7 ms): 0.301 s windows
    assert frame["latency_s"].tolist() == pytest.approx([0.007] * 6, rel=0.01)
    # 300 W x 7 ms = 2.1 J an iteration; the 20 ms counter steps are less than 6.7 % of a 0.301 s window
    assert (frame["energy_method"] == "counter").all() and ((frame["energy_j"] / 2.1 - 1).abs() < 0.02 / 0.301).all()
    assert (frame["gpu_index"] == 0).all() and frame["window_start_wall_s"].notna().all()
    meta = table.schema.metadata
    assert b"--backend gpu" in meta[b"wattlas.command"]
    assert float(meta[b"wattlas.energy_counter_step_s"]) == pytest.approx(0.02, abs=0.001)
    assert fake.gpus[0].locked is None  # the clock lock was released
    assert not (tmp_path / "gpu.parquet.partial").exists()


def test_gpu_sweep_interrupted_before_any_point_finalizes_telemetry_and_keeps_nothing(run_cli, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import sys

    import collectors.cli as collect_cli
    import collectors.profiling.profiler as profiler

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML([FakeGpu(counter_step_s=0.02)]))
    monkeypatch.setattr(collect_cli, "_nvml_index_of", lambda device, infos: 0)
    monkeypatch.setattr(profiler, "measure_point", interrupted)
    out = tmp_path / "gpu.parquet"
    result = run_cli("collect", "profile", "--backend", "gpu", "--device", "cpu", "--dtype", "float32", "--preset", "tiny",
                     "--sweep", "test", "-o", out)
    assert result.exit_code == 130 and "nothing to keep" in result.output, result.output
    assert not out.exists() and not (tmp_path / "gpu.parquet.partial").exists()


def _rank_shard_of(full, rank: int, tp: int, collectives):
    """A TP rank's shard whose weights are exact slices of ``full`` (Megatron layout)."""
    import torch

    from collectors.profiling.workload import LlamaShard

    shard = LlamaShard(full.preset, tp=tp, device="cpu", dtype="float64", layers=full.shape.layers, collectives=collectives)
    s, r = full.shape, rank
    h, kv, f = s.heads // tp * s.head_dim, s.kv_heads // tp * s.head_dim, s.ffn // tp
    q_all, kv_all = s.heads * s.head_dim, s.kv_heads * s.head_dim
    for whole, part in zip(full.layers, shard.layers):
        qkv = whole["qkv"]
        q, k, v = qkv[:, :q_all], qkv[:, q_all:q_all + kv_all], qkv[:, q_all + kv_all:]
        part["qkv"] = torch.cat([q[:, r * h:(r + 1) * h], k[:, r * kv:(r + 1) * kv], v[:, r * kv:(r + 1) * kv]], dim=1)
        part["o"] = whole["o"][r * h:(r + 1) * h]
        gate, up = whole["gate_up"][:, :s.ffn], whole["gate_up"][:, s.ffn:]
        part["gate_up"] = torch.cat([gate[:, r * f:(r + 1) * f], up[:, r * f:(r + 1) * f]], dim=1)
        part["down"] = whole["down"][r * f:(r + 1) * f]
        part["norm1"], part["norm2"] = whole["norm1"], whole["norm2"]
    vocab = shard.shape.vocab
    shard.lm_head = full.lm_head[:, r * vocab:(r + 1) * vocab]
    shard.final_norm = full.final_norm
    return shard


def _tp_equivalence_worker(rank: int, world: int, init_file: str) -> None:
    import torch
    import torch.distributed as dist

    from collectors.profiling.workload import Collectives, LlamaShard

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        full = LlamaShard("tiny", tp=1, device="cpu", dtype="float64", layers=2, seed=5)
        shard = _rank_shard_of(full, rank, world, Collectives())
        torch.manual_seed(3)  # the same "full" caches in every process, each rank slicing its heads
        prefix, decode = full.make_kv(1, 48, 16), full.make_kv(3, 40, 1)
        kv = full.shape.kv_heads // world
        cut = lambda cache: type(cache)([(k[:, rank * kv:(rank + 1) * kv].clone(), v[:, rank * kv:(rank + 1) * kv].clone())
                                         for k, v in cache.layers], cache.filled)
        shard_prefix, shard_decode = cut(prefix), cut(decode)
        torch.manual_seed(11)
        expected = full.step(16, prefix, 3, decode)
        torch.manual_seed(11)
        got = shard.step(16, shard_prefix, 3, shard_decode)
        vocab = shard.shape.vocab
        assert torch.allclose(got, expected[:, rank * vocab:(rank + 1) * vocab], atol=1e-10), (rank, (got - expected[:, rank * vocab:(rank + 1) * vocab]).abs().max())
        assert shard.kv_fits(10) and not shard.collectives.all_agree(rank == 0)  # one rank says no: all skip
    finally:
        dist.destroy_process_group()


def test_tensor_parallel_ranks_with_all_reduce_compute_the_unsharded_model(tmp_path):
    """Two gloo processes, each a TP=2 shard sliced from one model: their logits are the model's."""
    pytest.importorskip("torch")
    import torch.multiprocessing as mp

    mp.spawn(_tp_equivalence_worker, args=(2, str(tmp_path / "rendezvous")), nprocs=2, join=True)


def test_rank_rows_combine_into_the_instance_rows():
    from collectors.profiling.profiler import combine_ranks

    rank0 = [{"repeat": 0, "latency_s": 0.010, "energy_j": 3.0, "mean_power_w": 300.0, "peak_power_w": 350.0,
              "energy_method": "counter", "gpu_index": 0, "window_start_wall_s": 1.0, "window_end_wall_s": 2.0}]
    rank1 = [{**rank0[0], "latency_s": 0.012, "energy_j": 3.5, "mean_power_w": 290.0, "energy_method": "integrated_power",
              "gpu_index": 1}]
    (row,) = combine_ranks([rank0, rank1])
    assert row["latency_s"] == 0.012  # the slowest rank sets the iteration time
    assert row["energy_j"] == 6.5 and row["mean_power_w"] == 590.0 and row["peak_power_w"] == 700.0
    assert row["energy_method"] == "mixed" and row["gpu_index"] is None
    (no_meter,) = combine_ranks([rank0, [{**rank1[0], "energy_j": None}]])
    assert no_meter["energy_j"] is None  # one rank unmeasured: the instance's energy is unknown, not partial


def _torchrun(*args, cwd):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "toolkit.cli", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=240)


def test_torchrun_profiles_one_tp2_instance_over_two_ranks(tmp_path):
    """`torchrun -m toolkit.cli collect profile --tp 2` on the CPU (gloo): both ranks run every point,
    rank 0 writes one row per repeat for the instance."""
    pytest.importorskip("torch")
    from pathlib import Path

    from toolkit.parquet_io import read_artifact
    from toolkit.schemas import PROFILE_ITERATIONS

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "tp2.parquet"
    run = _torchrun("collect", "profile", "--backend", "cpu", "--tp", "2", "--preset", "tiny", "--sweep", "test",
                    "--repeats", "2", "--warmup", "1", "-o", out, cwd=repo)
    assert run.returncode == 0, run.stdout + run.stderr
    frame = read_artifact(out, PROFILE_ITERATIONS).to_pandas()
    assert len(frame) == 6 * 2 and (frame["tp"] == 2).all() and frame["run_id"].nunique() == 1
    assert (frame["latency_s"] > 0).all() and frame["energy_j"].isna().all()  # no meter on the CPU
    mismatch = _torchrun("collect", "profile", "--backend", "cpu", "--tp", "4", "--preset", "tiny", "--sweep", "test",
                         "-o", tmp_path / "x.parquet", cwd=repo)
    assert mismatch.returncode != 0 and "must equal the number of torchrun ranks (2)" in mismatch.stdout + mismatch.stderr
