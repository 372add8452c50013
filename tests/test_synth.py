import numpy as np
import pytest

from toolkit.traces.stats import summarize_trace
from toolkit.traces.synth import SynthSpec, cumulative_intensity, spec_for, synthesize


def test_same_seed_same_trace_other_seed_differs():
    spec = spec_for("conv", duration_s=600)
    a, b = synthesize(spec), synthesize(spec)
    assert a.equals(b)
    assert not synthesize(spec_for("conv", duration_s=600, seed=1)).equals(a)


def test_rate_cv_and_length_medians_follow_the_spec():
    spec = SynthSpec(duration_s=20_000, mean_rate=5.0, cv=2.0, diurnal_amplitude=0.0,
                     input_median=1000, output_median=100, input_max=10**7, output_max=10**7, seed=7)
    stats = summarize_trace(synthesize(spec))
    assert stats["rate_per_s"] == pytest.approx(5.0, rel=0.05)
    assert stats["interarrival_cv"] == pytest.approx(2.0, rel=0.1)
    assert stats["input_tokens"]["p50"] == pytest.approx(1000, rel=0.05)
    assert stats["output_tokens"]["p50"] == pytest.approx(100, rel=0.05)


def test_diurnal_peak_and_trough():
    spec = SynthSpec(duration_s=86_400, mean_rate=2.0, cv=1.0, diurnal_amplitude=0.5,
                     start_time_of_day_s=0, peak_time_s=12 * 3600, seed=1)
    arrival = synthesize(spec).column("arrival_s").to_numpy()
    per_hour = np.bincount((arrival // 3600).astype(int), minlength=24)
    expected = np.diff(cumulative_intensity(np.arange(25) * 3600.0, spec))
    assert per_hour.argmax() in (11, 12)
    assert per_hour[0] < per_hour[12] / 2
    assert np.abs(per_hour - expected).max() < 5 * np.sqrt(expected.max())


def test_lengths_clipped_and_priorities_split():
    spec = spec_for("longctx", duration_s=20_000, high_priority_fraction=0.25)
    table = synthesize(spec, "longctx")
    inp = table.column("input_tokens").to_numpy()
    assert inp.min() >= spec.input_min and inp.max() <= spec.input_max
    high = np.mean(np.array(table.column("priority").to_pylist()) == "high")
    assert high == pytest.approx(0.25, abs=0.1)


def test_invalid_spec_rejected(run_cli, tmp_path):
    result = run_cli("trace", "synth", "--diurnal-amplitude", "1.5", "-o", tmp_path / "x.parquet")
    assert result.exit_code != 0 and "amplitude" in result.output


@pytest.mark.parametrize("name,preset,duration", [("synth_conv_1h", "conv", 3600), ("synth_code_1h", "code", 3600),
                                                   ("synth_longctx_1d", "longctx", 86400)])
def test_shipped_sample_traces_are_what_their_commands_make(name, preset, duration):
    from pathlib import Path

    import pyarrow.parquet as pq

    shipped = pq.read_table(Path(__file__).resolve().parents[1] / "sample_traces" / f"{name}.parquet")
    fresh = synthesize(spec_for(preset, duration_s=duration, seed=0), preset)
    assert shipped.select(["arrival_s", "input_tokens", "output_tokens", "priority"]).equals(
        fresh.select(["arrival_s", "input_tokens", "output_tokens", "priority"]))
    assert shipped.schema.metadata[b"wattlas.synthetic"] == b"true"


def test_burst_modulation_keeps_the_mean_rate_and_adds_bursts():
    calm = SynthSpec(duration_s=20_000, mean_rate=3.0, cv=1.0, diurnal_amplitude=0.0, seed=2)
    bursty = SynthSpec(duration_s=20_000, mean_rate=3.0, cv=1.0, diurnal_amplitude=0.0, seed=2,
                       burst_fraction=0.1, burst_multiplier=12, burst_mean_s=5)
    a, b = summarize_trace(synthesize(calm)), summarize_trace(synthesize(bursty))
    assert b["rate_per_s"] == pytest.approx(3.0, rel=0.1)
    assert b["interarrival_cv"] > 1.5 * a["interarrival_cv"]
    assert b["peak_per_s"] > a["peak_per_s"]


def test_idle_periods_keep_the_mean_rate_and_leave_long_gaps():
    spec = SynthSpec(duration_s=50_000, mean_rate=4.0, cv=1.0, diurnal_amplitude=0.0, idle_fraction=0.7,
                     idle_median_s=25.0, idle_sigma=1.2, seed=3)
    arrival = synthesize(spec).column("arrival_s").to_numpy()
    gaps = np.diff(arrival)
    assert arrival.size / spec.duration_s == pytest.approx(4.0, rel=0.1)  # active periods run at 4 / 0.3
    assert gaps[gaps > 10].sum() / arrival[-1] == pytest.approx(0.7, abs=0.07)
    assert gaps.std() / gaps.mean() > 5  # a Poisson stream with the same rate has CV 1


def test_code_preset_is_mostly_idle_between_bursts_like_the_azure_code_trace():
    stats = summarize_trace(synthesize(spec_for("code", duration_s=3600)))
    assert stats["interarrival_cv"] > 8  # Azure code 2023: 13.2 (conv: 1.1)
    assert stats["interarrival_median_s"] == pytest.approx(0.064, rel=0.3)
    assert stats["rate_per_s"] == pytest.approx(2.57, rel=0.15)
