"""``wattlas demo``: the end-to-end pipeline on the embedded defaults, no GPU needed.

Stages run in order and each writes its artifacts under the output directory.  Stages of the
pipeline that are not built yet are listed as such rather than faked.
"""

from __future__ import annotations

from pathlib import Path

import click

SAMPLE_TRACES = Path(__file__).resolve().parent.parent / "sample_traces"


def _sample_trace(name: str, out: Path) -> Path:
    """The shipped sample trace, or a freshly synthesized one when running from a wheel."""
    shipped = SAMPLE_TRACES / f"{name}.parquet"
    if shipped.exists():
        return shipped
    from .traces.formats import write_trace
    from .traces.synth import spec_for, synthesize

    preset = name.split("_")[1]
    return write_trace(synthesize(spec_for(preset, duration_s=3600.0, seed=0), preset), out / f"{name}.parquet")


@click.command()
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("wattlas-demo"), show_default=True)
def demo(output: Path) -> None:
    """Run the pipeline end to end on the simulated device and the shipped sample traces."""
    from .jsonio import dump_json
    from .traces.formats import read_trace
    from .traces.stats import format_summary, summarize_trace

    from .console import closing_line

    output.mkdir(parents=True, exist_ok=True)
    summaries = {}
    for name in ("synth_conv_1h", "synth_code_1h"):
        path = _sample_trace(name, output)
        stats = summarize_trace(read_trace(path))
        summaries[name] = stats
        click.echo(format_summary(stats, str(path), "synthetic"))
    (output / "trace_stats.json").write_text(dump_json(summaries, indent=2))  # null, never NaN
    click.echo(f"wrote {output / 'trace_stats.json'}")
    _collect_simulated(output / "collection")
    bundle = _profile_and_characterize(output)
    _replay_samples(output, bundle)
    report = _write_report(output, bundle)
    closing_line(f"wrote the demo to {output}/: {', '.join(_written(output))}; open {report}")


def _written(out: Path) -> list[str]:
    """What the demo left under ``out``, as names (directories with a slash), in pipeline order."""
    order = ["trace_stats.json", "collection", "profile_sim_llama3-8b.parquet", "models_sim_llama3-8b.json",
             "replay_synth_conv_1h", "replay_synth_code_1h", "dynamollm_conv_x8", "dynamollm_conv_x8_peak_static",
             "dynamollm_conv_x8_best_static", "dynamollm_conv_x8_baseline", "polca_search.csv", "mnemosyne_longctx.csv",
             "report.html"]
    return [name + ("/" if (out / name).is_dir() else "") for name in order if (out / name).exists()]


def _write_report(out: Path, bundle: Path) -> Path:
    from reports.builders import add_characterization, add_collection, add_longctx, add_polca, add_replays
    from reports.html import Report

    click.echo("writing the HTML report ...")
    from characterize.model_io import ModelBundle

    simulated = ModelBundle.load(bundle).simulated
    report = Report("wattlas demo report", subtitle="simulated device, simulated llama3-8b profile, synthetic sample traces",
                    base=out)  # paths shown relative to the report's directory
    add_collection(report, out / "collection")
    import warnings

    with warnings.catch_warnings():  # the simulated GPU throttles at its power limit by design; fit already said so
        warnings.simplefilter("ignore", UserWarning)
        add_characterization(report, bundle, [out / "profile_sim_llama3-8b.parquet"])
    add_replays(report, [out / "replay_synth_conv_1h", out / "replay_synth_code_1h"])
    add_replays(report, [out / "dynamollm_conv_x8_peak_static", out / "dynamollm_conv_x8_best_static", out / "dynamollm_conv_x8"],
                heading="DynamoLLM vs peak_static (sized for the peak, highest clock) and best_static (fewest GPUs x clock "
                        "meeting the SLOs) on synth_conv_1h at 8x rate")
    add_polca(report, out / "polca_search.csv", simulated=simulated)
    add_longctx(report, out / "mnemosyne_longctx.csv", simulated=simulated)
    path = report.save(out / "report.html")
    click.echo(f"wrote {path} ({report.figures} figures, self-contained)")
    return path

def _profile_and_characterize(out: Path) -> Path:
    from characterize.fitting import IDLE_PHASE, bundle_metadata, fit_bundle
    from characterize.importers import from_profile
    from collectors.profiling.sim_profile import simulate_profile
    from toolkit.parquet_io import atomic_write_table

    from .console import progress_bar, step_progress

    click.echo("profiling llama3-8b on the SIMULATED device (roofline model, quick sweep) ...")
    table = simulate_profile("llama3-8b", "quick")
    atomic_write_table(table, out / "profile_sim_llama3-8b.parquet")
    click.echo("fitting latency and power models ...")
    frame = from_profile(table)
    with progress_bar(frame.loc[frame["phase"] != IDLE_PHASE, "phase"].nunique(), None, "phase", tick_s=0.5) as bar:
        bundle = fit_bundle(frame, bundle_metadata(frame, ["simulated profile llama3-8b quick"]),
                            tree_estimators=100, progress=step_progress(bar))
    path = bundle.save(out / "models_sim_llama3-8b.json")
    for name, report in bundle.validation.items():
        scores = report[report["selected"]]
        ex = scores.get("extrapolation_mape")
        click.echo(f"  [SIMULATED] {name:<22} {report['selected']:<9} CV MAPE {scores['cv_mape']:.1f}%"
                   + (f", 4x-context extrapolation {ex:.1f}%" if ex is not None else ""))
    return path


def _replay_samples(out: Path, bundle: Path) -> None:
    from replay.runner import format_summary, run_replay

    from .console import StageProgress

    for name in ("synth_conv_1h", "synth_code_1h"):
        click.echo(f"replaying {name} on 2 x llama3-8b TP1 (baseline) ...")
        with StageProgress(f"{name}: ") as progress:
            summary = run_replay(_sample_trace(name, out), bundle, None, out / f"replay_{name}", progress=progress)
        click.echo(format_summary(summary))
    click.echo("DynamoLLM on synth_conv_1h at 8x its rate (per-class pools; instance count, TP and clock on their own "
               "time scales; output lengths predicted), with the peak_static and best_static baselines replayed ...")
    with StageProgress("DynamoLLM: ") as progress:
        summary = run_replay(_sample_trace("synth_conv_1h", out), bundle, None, out / "dynamollm_conv_x8",
                             policy="dynamollm", rate_scale=8.0, progress=progress)
    click.echo(format_summary(summary))
    _polca(out, bundle)
    _longctx(out, bundle)


def _longctx(out: Path, bundle: Path) -> None:
    from characterize.model_io import ModelBundle
    from replay.policies.mnemosyne import CONFIGS, context_sweep

    from .console import progress_bar

    click.echo("Mnemosyne: one long request (128K to 4M tokens) amid short ones, fixed vs adaptive chunks, SPP, KVP ...")
    contexts = [131_072, 1_000_000, 4_000_000]  # 10 M: `replay longctx`
    with progress_bar(len(contexts) * len(CONFIGS), "Mnemosyne", "row", tick_s=0.5) as bar:
        table = context_sweep(ModelBundle.load(bundle), contexts, progress=bar.update)
    table.to_csv(out / "mnemosyne_longctx.csv", index=False)
    for row in table[table["context_tokens"] == 1_000_000].itertuples():
        if row.dropped:  # no times to show: say why instead of printing NaN
            click.echo(f"  [SIMULATED] 1M context, {row.config:<27} dropped: {row.drop_reason}")
            continue
        click.echo(f"  [SIMULATED] 1M context, {row.config:<27} TTFT {row.ttft_s:7.1f} s, decode TBT max "
                   f"{row.decode_tbt_max_s * 1000:6.1f} ms, long-request TBT {row.long_tbt_mean_s * 1000:5.1f} ms")


def _polca(out: Path, bundle: Path) -> None:
    from characterize.model_io import ModelBundle
    from replay.config import ClusterConfig, PoolConfig
    from replay.policies.polca import oversubscription_search, write_search_timeline
    from toolkit.traces.formats import read_trace

    from .console import count_progress, progress_bar

    click.echo("POLCA on synth_conv_1h at 4x: a 4-server row (2 high-, 2 low-priority), budget = the servers' provisioned "
               "peak, 3 seeds, telemetry and actuation delays on, adding up to 4 servers ...")
    trace = read_trace(_sample_trace("synth_conv_1h", out)).to_pandas()
    trace = trace.assign(arrival_s=trace["arrival_s"] / 4.0)
    row = ClusterConfig(pools=[PoolConfig(name="high", priority="high", instances=2),
                               PoolConfig(name="low", priority="low", instances=2)])
    with progress_bar(None, "POLCA", "replay", tick_s=0.5) as bar:
        result = oversubscription_search(trace, ModelBundle.load(bundle), row, None, max_extra=4, seeds=3,
                                         budget_source="provisioned_peak", progress=count_progress(bar))
    result["table"].to_csv(out / "polca_search.csv", index=False)
    # (the row's power against the budget and the controller's events, for the report's POLCA figure)
    write_search_timeline(result, out / "polca_search_timeline.parquet", simulated=ModelBundle.load(bundle).simulated)
    click.echo(f"  [SIMULATED] budget {result['budget_w']:,.0f} W; largest addition within bounds (p99 E2E +5 % high, "
               f"+50 % low) with every smaller one passing: {result['best_servers_added']} of 4 servers")


def _collect_simulated(out: Path) -> None:
    """Sample the simulated device through prefill, decode and idle phases (about 4 s)."""
    import time

    from collectors.telemetry.sampler import Sampler
    from collectors.telemetry.sim_source import SimSource
    from collectors.telemetry.summary import format_summary, format_windows, load_telemetry, load_windows, \
        summarize_telemetry, summarize_windows

    from .console import progress_bar

    click.echo("collecting telemetry from the SIMULATED device (2 GPUs, 20 Hz) ...")
    source = SimSource(gpus=2, seed=0)
    phases = [("prefill", 0.95, 0.6), ("decode", 0.5, 1.2), ("idle", 0.0, 0.6), ("prefill", 0.95, 0.6), ("decode", 0.5, 1.0)]
    with Sampler(source, out, period_s=0.05, flush_s=0.5) as sampler, \
            progress_bar(sum(p[2] for p in phases), "collecting", "s", tick_s=0.5,
                         bar_format="{desc}: {n:.1f}/{total:.1f} s") as bar:
        for name, activity, seconds in phases:
            for gpu in range(source.n):
                source.set_activity(gpu, activity)
            bar.set_description(f"collecting ({name})")
            with sampler.window(name, activity=activity):
                time.sleep(seconds)
            bar.update(seconds)
    click.echo(format_summary(summarize_telemetry(load_telemetry(out))))
    windows = load_windows(out)
    click.echo(format_windows(summarize_windows(windows), simulated=True))  # per phase, with the energy method
