"""``wattlas replay``: replay request traces through a simulated cluster."""

from __future__ import annotations

import sys
from pathlib import Path

import click


def _write_outputs(result, summary: dict, out_dir: Path, simulated: bool) -> None:
    """Write a run's artifacts; ``summary.json`` goes last and atomically, so a directory that has
    one holds the whole run (a stale one from an earlier run is removed before anything else)."""
    import pyarrow as pa

    from toolkit.jsonio import dump_json, ensure_writable_dir, write_text_atomic
    from toolkit.parquet_io import atomic_write_table
    from toolkit.schemas import REPLAY_REQUESTS

    ensure_writable_dir(out_dir)
    summary_path, events_path = out_dir / "summary.json", out_dir / "policy_events.csv"
    summary_path.unlink(missing_ok=True)
    meta = {"wattlas.simulated": str(simulated).lower()}
    atomic_write_table(pa.Table.from_pandas(result.requests, schema=REPLAY_REQUESTS.arrow(metadata=meta), preserve_index=False),
                       out_dir / "requests.parquet")
    atomic_write_table(pa.Table.from_pandas(result.timeline, schema=_timeline_schema(meta), preserve_index=False),
                       out_dir / "power_timeline.parquet")
    if result.events is not None and len(result.events):
        write_text_atomic(events_path, result.events.to_csv(index=False))
    else:
        events_path.unlink(missing_ok=True)  # an earlier run's events would pass for this one's
    write_text_atomic(summary_path, dump_json(summary))


def _timeline_schema(meta: dict):
    """Arrow schema of power_timeline.parquet: one row per run of equal bins (``duration_s`` long)."""
    from toolkit.schemas import POWER_TIMELINE

    return POWER_TIMELINE.arrow(metadata=meta)


def _check_output(path: Path | None) -> None:
    """Fail before the work when the (optional) output file cannot be written."""
    from toolkit.jsonio import ensure_writable_file

    if path is not None:
        ensure_writable_file(path)


def _write_csv(table, path: Path) -> None:
    from toolkit.jsonio import write_text_atomic

    write_text_atomic(path, table.to_csv(index=False))


def run_replay(trace_path: Path, models_path: Path, cluster_path: Path | None, out_dir: Path | None,
               limit: int | None = None, show_progress: bool = False, policy: str = "baseline",
               rate_scale: float = 1.0, gpu_name: str | None = None, model_name: str | None = None,
               allow_extrapolation: bool = False) -> dict:
    """Load inputs, replay, write requests/timeline Parquet and summary JSON; returns the summary.

    ``gpu_name``/``model_name`` pick one GPU and model of a bundle fitted on several;
    ``allow_extrapolation`` lets pools run at a TP or clock beyond the models' support (the
    summary's ``extrapolated`` lists where)."""
    from characterize.model_io import ModelBundle
    from toolkit.errors import InputError
    from toolkit.jsonio import ensure_writable_dir
    from toolkit.parquet_io import artifact_metadata
    from toolkit.traces.formats import read_trace

    from .config import ClusterConfig, load_cluster, policy_configs
    from .cost_model import NotReplayable
    from .engine import replay
    from .memory_planner import resolve_cluster

    table = read_trace(trace_path)
    trace_meta = artifact_metadata(table.schema)
    trace = table.to_pandas()
    if limit:
        trace = trace.iloc[:limit]
    if rate_scale != 1.0:  # compress time: the same requests at rate_scale times the rate
        trace = trace.assign(arrival_s=trace["arrival_s"] / rate_scale)
    bundle = ModelBundle.load(models_path).select(gpu_name=gpu_name, model=model_name)
    bundle.allow_extrapolation = allow_extrapolation
    held = bundle.identities()
    if held:
        raise InputError(models_path, "the bundle holds models for several " + "; ".join(
            f"{name} ({', '.join(values)})" for name, values in held.items()) + ": choose one with --gpu/--model")
    config = load_cluster(cluster_path) if cluster_path else ClusterConfig()
    config = resolve_cluster(config, bundle, cluster_path)  # KV capacity: as set, or from the model shape
    if out_dir is not None:  # with the inputs read, fail now rather than after the replay
        ensure_writable_dir(out_dir)
        if policy == "dynamollm":
            for where in (_baseline_dir(out_dir), _baseline_dir(out_dir, "peak_static"), _baseline_dir(out_dir, "best_static")):
                ensure_writable_dir(where)
    controller = None
    if policy == "dynamollm":
        from .policies.dynamollm import plan

        base_config, dyn_cfg = config, policy_configs(config)[0]
        try:
            dyn_plan = plan(trace, bundle, config, dyn_cfg)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        config, controller = dyn_plan.config, dyn_plan.controller()
    elif policy == "polca":
        from .policies.polca import PolcaConfig, PolcaController, provisioned_peak_w

        polca = policy_configs(config)[1]
        source = config.polca.get("budget_source")
        if polca is None and source == "provisioned_peak":  # the row's servers at full load
            polca = PolcaConfig(**{**config.polca, "budget_w": provisioned_peak_w(config, bundle)})
        if polca is None:
            raise click.ClickException("--policy polca needs a [polca] table with budget_w (or budget_source = "
                                       "\"provisioned_peak\") in the cluster TOML (or use `wattlas replay polca-search`"
                                       + (", which measures the original row's peak)" if source == "measured_peak" else ")"))
        controller = PolcaController(polca)
    priority = trace["priority"].to_numpy(dtype=object) if "priority" in trace else None
    trace_priority = priority
    if policy == "dynamollm":  # routed by the plan's labels (each request's predicted class), not by length
        priority = dyn_plan.labels
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=100, desc="replay", unit="%", leave=False)
        last = [0]

        def progress(fraction):
            step = int(fraction * 100) - last[0]
            if step > 0:
                bar.update(step)
                last[0] += step
    try:
        result = replay(trace, bundle, config, priority=priority, progress=progress if bar else None, controller=controller,
                        source=trace_path)
    except NotReplayable as exc:
        raise InputError(models_path, str(exc)) from None
    finally:
        if bar is not None:
            bar.close()
    summary = dict(result.summary)
    summary.update({"trace": str(trace_path), "models": str(models_path), "cluster": str(cluster_path) if cluster_path else "default",
                    "simulated_models": bundle.simulated, "synthetic_trace": trace_meta.get("wattlas.synthetic") == "true",
                    "policy_name": policy, "rate_scale": rate_scale, "extrapolated": list(bundle.extrapolated) or None})
    if policy == "dynamollm":
        _dynamollm_baselines(trace, bundle, base_config, dyn_cfg, dyn_plan, result, summary, trace_priority, out_dir)
    if out_dir is not None:
        _write_outputs(result, summary, out_dir, bundle.simulated)
    return summary


def _baseline_dir(out_dir: Path, name: str = "baseline") -> Path:
    """Where one of dynamollm's static baseline runs goes, beside ``out_dir``: ``OUT_baseline`` (the
    same GPUs as DynamoLLM, all at the highest clock), ``OUT_peak_static``, ``OUT_best_static``."""
    return out_dir.parent / f"{out_dir.name}_{name}"


def _dynamollm_baselines(trace, bundle, base_config, dyn_cfg, dyn_plan, result, summary: dict, trace_priority,
                         out_dir: Path | None) -> None:
    """Judge a DynamoLLM replay: replay peak_static and best_static (and the old same-GPUs static run)
    on the same trace and bundle, put ``baselines``, ``savings`` and ``accounting`` in ``summary``
    with the mispredicted requests' outcomes, and write the runs and ``events.parquet`` under
    ``out_dir``'s siblings and ``out_dir``."""
    from .engine import replay
    from .policies.baselines import accounting, judge
    from .policies.dynamollm import baseline_for, events_table, outgrown_outcomes

    result.requests["priority"] = trace_priority  # (the routing labels were the predicted classes)
    summary["policy"].update(outgrown_outcomes(result.requests, dyn_plan))
    shared = {k: summary[k] for k in ("trace", "models", "simulated_models", "synthetic_trace", "rate_scale")}
    same = replay(trace, bundle, baseline_for(dyn_plan, bundle))
    runs = {"baseline": (same, "static, the same GPUs as DynamoLLM at the highest clock (not the comparison)")}
    baselines = {"same_gpus_static": {**{k: same.summary.get(k) for k in ("gpus", "slo_attainment", "ttft_p99_s", "tbt_p99_s")},
                                      **accounting(same.summary, dyn_cfg, base_config.pue)}}
    if dyn_cfg.baselines:
        entries, saved, mine, judged = judge(trace, bundle, base_config, dyn_cfg, summary)
        baselines = {**entries, **baselines}
        summary["savings"] = saved
        summary["accounting"] = {"dynamollm": mine, "carbon_g_per_kwh": dyn_cfg.carbon_g_per_kwh,
                                 "embodied_g_per_gpu_hour": dyn_cfg.embodied_g_per_gpu_hour,
                                 "gpu_hour_usd": dyn_cfg.gpu_hour_usd, "energy_usd_per_kwh": dyn_cfg.energy_usd_per_kwh,
                                 "pue": base_config.pue}
        runs.update({name: (b.result, f"{name}: {b.sized_by}") for name, b in judged.items()})
    summary["baselines"] = baselines
    if out_dir is None:
        return
    from toolkit.parquet_io import atomic_write_table

    for name, (run, label) in runs.items():
        _write_outputs(run, {**run.summary, **shared, "policy_name": label}, _baseline_dir(out_dir, name), bundle.simulated)
    atomic_write_table(events_table(result.events, bundle.simulated), out_dir / "events.parquet")


def format_summary(s: dict) -> str:
    """A replay summary (as :func:`run_replay` returns it) as a few lines for the terminal."""
    label = (" [SIMULATED models]" if s.get("simulated_models") else "") + (" [synthetic trace]" if s.get("synthetic_trace") else "")
    energy = "energy n/a (no power model)" if s.get("energy_kwh") is None else (
        f"energy {s['energy_kwh']:.3f} kWh IT ({s['energy_busy_kwh']:.3f} busy + {s['energy_idle_kwh']:.3f} idle), "
        f"{s['facility_energy_kwh']:.3f} kWh facility, {s['carbon_kg']:.2f} kg CO2e, "
        f"{s['energy_per_output_token_j']:.3f} J/output token")
    return "\n".join([
        f"replay{label}: {s['requests']:,} requests ({s['finished']:,} finished, {s['dropped']:,} dropped) on "
        f"{s['instances']} instances / {s['gpus']} GPUs over {s['duration_s']:,.0f} s, {s['iterations']:,} iterations",
        f"  TTFT p50 {s['ttft_p50_s'] * 1000:.0f} ms, p99 {s['ttft_p99_s'] * 1000:.0f} ms; TBT p50 {s['tbt_p50_s'] * 1000:.1f} ms, "
        f"p99 {s['tbt_p99_s'] * 1000:.1f} ms; E2E p50 {s['e2e_p50_s']:.2f} s; SLO attainment {s['slo_attainment'] * 100:.1f} %",
        f"  {energy}; {s['gpu_hours']:.2f} GPU-h, ${s['cost_usd']:.2f}",
        f"  replayed in {s['replay_wall_s']:.2f} s",
    ] + _policy_lines(s))


def _policy_lines(s: dict) -> list[str]:
    lines = []
    policy = s.get("policy") or {}
    if policy.get("name") == "dynamollm":
        lines += _dynamollm_lines(s, policy)
    if policy.get("name") == "polca":
        lines.append(f"  POLCA: budget {policy['budget_w']:.0f} W, peak row power {policy['peak_row_power_w']:.0f} W, "
                     f"{policy['capping_events']} capping events, low capped {policy['capped_low_s']:.0f} s, "
                     f"all capped {policy['capped_all_s']:.0f} s, over budget {policy['over_budget_s']:.0f} s")
        if "brake_events" in policy:
            lines.append(f"  POLCA: {policy['brake_events']} power-brake events ({policy['braked_s']:.0f} s braked); "
                         f"telemetry delay {policy['telemetry_delay_s']:g} s, actuation delay {policy['actuation_delay_s']:g} s")
    return lines


def _fixed(value: float, decimals: int = 3) -> str:
    """A number in fixed notation (never scientific), trailing zeros dropped: 0.005 -> "0.005"."""
    text = f"{value:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _saving(fraction: float | None, what: str) -> str:
    """A saving fraction as words: "saves 30.2 % energy", "costs 4.1 % more energy"."""
    if fraction is None:
        return f"{what} n/a"
    pct = 100 * fraction
    if round(pct, 1) == 0:
        return f"the same {what}"
    return f"saves {pct:,.1f} % {what}" if pct > 0 else f"costs {-pct:,.1f} % more {what}"


def _dynamollm_lines(s: dict, policy: dict) -> list[str]:
    """DynamoLLM's plan, control, output prediction and comparison with the static baselines;
    every line tagged [SIMULATED] when the models were fitted to a simulated profile."""
    tag = "[SIMULATED] " if s.get("simulated_models") else ""
    lines = []
    for c in policy["classes"]:
        tps = "/".join(f"TP{tp}" for tp in c["tps_used"])
        clocks = ", ".join(f"{f:,.0f}" for f in c["clocks_used"]) or "highest profiled"
        lines.append(f"  {tag}class {c['class']:<12} {c['gpus']} GPUs as {tps} (mean active {c['mean_active']:.1f}), "
                     f"{c.get('requests', 0):,} requests, clocks {clocks} MHz")
    lines.append(f"  {tag}control: instances every {_fixed(policy['scale_period_s'])} s, TP every {_fixed(policy['period_s'])} s"
                 f"{'' if policy.get('reshard') else ' (re-shard off)'}, clock every {_fixed(policy['clock_period_s'])} s; "
                 f"{policy['reconfigurations']:,} changes: {policy['clock_changes']:,} clock changes stalling "
                 f"{policy['clock_stalls']:,} instances {_fixed(policy['clock_stall_s'] * 1000, 1)} ms in all "
                 f"({_fixed(policy['clock_switch_s'] * 1000)} ms per GPU, assumed), scale-outs {policy['scale_outs']:,} planned / "
                 f"{policy['reactive_scale_outs']:,} reactive, scale-ins {policy['scale_ins']:,}, re-shards {policy['reshards']:,}")
    if "predictor_accuracy" in policy:
        outgrown = policy.get("outgrown_slo_attainment")
        lines.append(f"  {tag}output length {policy['output_length']}: {policy['predictor_accuracy'] * 100:.1f} % of requests in "
                     f"their true class; {policy['outgrown']:,} outgrew their predicted class (served late in place"
                     + (f", SLO attainment {outgrown * 100:.1f} %" if outgrown is not None else "")
                     + f"), {policy['overpredicted']:,} put in a longer class, {policy['migrated']:,} migrated")
    baselines, saved, acct = s.get("baselines") or {}, s.get("savings") or {}, s.get("accounting") or {}
    if acct.get("dynamollm", {}).get("energy_kwh") is not None:
        mine = acct["dynamollm"]
        lines.append(f"  {tag}compared with [dynamollm] accounting: DynamoLLM {mine['energy_kwh']:.3f} kWh IT, {mine['carbon_kg']:.3f} kg CO2e, ${mine['cost_usd']:,.2f} "
                     f"({mine['gpu_hours']:.2f} GPU-h at ${_fixed(acct['gpu_hour_usd'])}/GPU-h, ${_fixed(acct['energy_usd_per_kwh'], 4)}/kWh, "
                     f"{_fixed(acct['carbon_g_per_kwh'], 1)} g CO2/kWh, PUE {_fixed(acct['pue'], 2)})")
    if saved and not saved.get("dynamollm_meets_slo", True):
        lines.append(f"  {tag}DynamoLLM misses the SLO target ({saved['dynamollm_slo_attainment'] * 100:.1f} % of requests within "
                     f"the SLOs < {saved['slo_target'] * 100:.1f} %) that the baselines meet: the comparison below is not like "
                     f"for like")
    for name in ("peak_static", "best_static"):
        b, sv = baselines.get(name), saved.get(f"vs_{name}")
        if b is None:
            continue
        if b.get("energy_kwh") is None or sv is None:
            lines.append(f"  {tag}{name}: {b.get('sized_by', 'not replayed')}")
            continue
        lines.append(f"  {tag}{_saving(sv['energy'], 'energy')} vs {name} ({b['gpus']} GPU{'s' if b['gpus'] != 1 else ''} as TP{b['tp']} at "
                     f"{_fixed(b['clock'] or 0, 0)} MHz, {b['energy_kwh']:.3f} kWh, SLO attainment {b['slo_attainment'] * 100:.1f} %"
                     f"{'' if b.get('meets_slo') else ' - misses the target'}); {_saving(sv['carbon'], 'carbon')}, "
                     f"{_saving(sv['cost'], 'money')}")
    return lines


@click.group()
def replay() -> None:
    """Replay request traces through a simulated cluster under a policy."""


@replay.command("run")
@click.option("--trace", "trace_path", type=click.Path(path_type=Path), required=True)
@click.option("--models", "models_path", type=click.Path(path_type=Path), required=True, help="Model bundle JSON.")
@click.option("--cluster", "cluster_path", type=click.Path(path_type=Path), default=None, help="Cluster TOML.")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=None)
@click.option("--limit", type=int, default=None, help="Only the first N requests.")
@click.option("--policy", type=click.Choice(["baseline", "dynamollm", "polca"]), default="baseline", show_default=True)
@click.option("--rate-scale", type=float, default=1.0, show_default=True, help="Replay the trace at this many times its rate.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--gpu", "gpu_name", default=None, help="GPU of a bundle fitted on several.")
@click.option("--model", "model_name", default=None, help="Model of a bundle fitted on several.")
@click.option("--allow-extrapolation", is_flag=True, help="Run pools beyond the models' profiled TP/clocks (marked in the summary).")
def run_command(trace_path: Path, models_path: Path, cluster_path: Path | None, out_dir: Path | None, limit: int | None,
                policy: str, rate_scale: float, as_json: bool, gpu_name: str | None, model_name: str | None,
                allow_extrapolation: bool) -> None:
    """Replay a trace; writes requests.parquet, power_timeline.parquet and summary.json under --out.

    dynamollm also replays peak_static (sized for the trace's peak, highest clock: OUT_peak_static/) and
    best_static (the cheapest static deployment meeting the SLOs, searched: OUT_best_static/), reports the
    savings against each with their sign, and writes events.parquet; OUT_baseline/ is DynamoLLM's own GPUs
    all at the highest clock (not a comparison)."""
    from toolkit.jsonio import dump_json

    summary = run_replay(trace_path, models_path, cluster_path, out_dir, limit, show_progress=not as_json and sys.stderr.isatty(),
                         policy=policy, rate_scale=rate_scale, gpu_name=gpu_name, model_name=model_name,
                         allow_extrapolation=allow_extrapolation)
    click.echo(dump_json(summary) if as_json else format_summary(summary))
    # (on stderr with --json, so stdout stays one JSON document)
    if summary.get("extrapolated"):
        click.echo(f"[EXTRAPOLATED] beyond the models' support: {'; '.join(summary['extrapolated'])}", err=as_json)
    if out_dir is None:
        click.echo("nothing written (no -o/--out given)", err=as_json)
    else:
        click.echo(f"wrote {out_dir}/ (requests.parquet, power_timeline.parquet, summary.json)", err=as_json)


@replay.command("sweep")
@click.option("--trace", "trace_path", type=click.Path(path_type=Path), required=True)
@click.option("--models", "models_path", type=click.Path(path_type=Path), required=True)
@click.option("--cluster", "cluster_path", type=click.Path(path_type=Path), default=None)
@click.option("--vary", multiple=True, required=True, help="KEY=V1,V2,... e.g. pool.sm_clock_mhz=1980,1410; repeatable.")
@click.option("--scheduler", default=None, help="dask.distributed scheduler address (default: a LocalCluster).")
@click.option("--workers", type=int, default=None, help="LocalCluster worker processes (default: one per core).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="CSV of one summary row per point.")
def sweep_command(trace_path: Path, models_path: Path, cluster_path: Path | None, vary: tuple[str, ...],
                  scheduler: str | None, workers: int | None, output: Path | None) -> None:
    """Replay a grid of cluster settings in parallel on dask.distributed."""
    from .config import ClusterConfig, load_cluster
    from .sweep import parse_vary, run_sweep

    base = load_cluster(cluster_path) if cluster_path else ClusterConfig()
    _check_output(output)
    table = run_sweep(trace_path, models_path, base, parse_vary(list(vary)), scheduler, workers)
    if output:
        _write_csv(table, output)
    columns = [c for c in table.columns if c in {k.split("=")[0] for k in vary}] + [
        "finished", "dropped", "ttft_p99_s", "tbt_p99_s", "slo_attainment", "energy_kwh", "cost_usd"]
    click.echo(table[columns].to_string(index=False))


@replay.command("polca-search")
@click.option("--trace", "trace_path", type=click.Path(path_type=Path), required=True)
@click.option("--models", "models_path", type=click.Path(path_type=Path), required=True)
@click.option("--cluster", "cluster_path", type=click.Path(path_type=Path), default=None,
              help="Row servers as pools with priority = 'high' / 'low'; [polca] thresholds, delays, budget.")
@click.option("--max-extra", type=click.IntRange(min=0), default=4, show_default=True, help="Most servers to try adding.")
@click.option("--seeds", type=click.IntRange(min=1, max=1000), default=3, show_default=True,
              help="Replications of every addition (priority labels, router seed, trace rotated in time); impacts are "
                   "means over them, with a confidence interval.")
@click.option("--bound-high", type=click.FloatRange(min=0), default=0.05, show_default=True,
              help="Allowed mean p99 E2E increase, high priority (0.05: 5 %).")
@click.option("--bound-low", type=click.FloatRange(min=0), default=0.50, show_default=True,
              help="Allowed mean p99 E2E increase, low priority.")
@click.option("--max-over-budget", type=click.FloatRange(min=0, max=1), default=0.005, show_default=True,
              help="Largest share of the time the metered row power may be over the budget, in any replication.")
@click.option("--budget", "budget_source", type=click.Choice(["provisioned_peak", "measured_peak", "fixed"]), default=None,
              help="Row budget: the original servers' full-load power (provisioned_peak), the original row's peak "
                   "metered power replaying the trace uncapped (measured_peak), or budget_w (fixed).  Default: "
                   "[polca] budget_source, else fixed when budget_w is set, else provisioned_peak.")
@click.option("--budget-w", type=click.FloatRange(min=0, min_open=True, max=1e9), default=None,
              help="The fixed budget (W); implies --budget fixed.")
@click.option("--telemetry-delay", type=click.FloatRange(min=0, max=3600), default=None,
              help="Seconds between the row meter's reading and the controller seeing it (default: [polca], 2 s assumed).")
@click.option("--actuation-delay", type=click.FloatRange(min=0, max=3600), default=None,
              help="Seconds between a capping decision and the servers' clocks changing (default: [polca], 1 s assumed).")
@click.option("--brake/--no-brake", default=None, help="The power brake as last resort (default: [polca], on).")
@click.option("--rate-scale", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Load of the original row, x the trace's rate.")
@click.option("--high-priority-fraction", type=click.FloatRange(min=0, max=1), default=0.5, show_default=True,
              help="For traces without a priority column (Azure): seeded random labels, this share high.")
@click.option("--allow-extrapolation", is_flag=True,
              help="Cap and brake clocks below the profiled range as given (latency models extrapolated, by the 1/f "
                   "law); without it they are raised to the lowest profiled clock.")
@click.option("--json", "as_json", is_flag=True, help="The answer and the frontier as JSON on stdout.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="CSV, one row per servers-added.")
def polca_search(trace_path: Path, models_path: Path, cluster_path: Path | None, max_extra: int, seeds: int,
                 bound_high: float, bound_low: float, max_over_budget: float, budget_source: str | None,
                 budget_w: float | None, telemetry_delay: float | None, actuation_delay: float | None, brake: bool | None,
                 rate_scale: float, high_priority_fraction: float, allow_extrapolation: bool, as_json: bool,
                 output: Path | None) -> None:
    """POLCA: the most servers a row's power budget can take with capping, within latency bounds.

    The answer is the largest N whose every addition N' <= N passes (mean p99 impact over the
    seeds within the bounds); whether the raw frontier was monotone is reported beside it."""
    import time
    from dataclasses import replace

    from characterize.model_io import ModelBundle
    from toolkit.jsonio import dump_json
    from toolkit.traces.formats import read_trace

    from .config import ClusterConfig, load_cluster, policy_configs
    from .memory_planner import resolve_cluster
    from .policies.polca import format_search, oversubscription_search, search_json

    started = time.perf_counter()
    _check_output(output)
    trace = read_trace(trace_path).to_pandas()
    trace = trace.assign(arrival_s=trace["arrival_s"] / rate_scale)
    if "priority" not in trace or trace["priority"].isna().all():
        click.echo(f"the trace has no priorities: labelled {high_priority_fraction:.0%} high at random "
                   f"(seeded by the replication, 0 to {seeds - 1})", err=True)
    bundle = ModelBundle.load(models_path)
    bundle.allow_extrapolation = allow_extrapolation  # (the replay marks what it extrapolated)
    config = load_cluster(cluster_path) if cluster_path else ClusterConfig()
    config = resolve_cluster(config, bundle, cluster_path)  # KV capacity: as set, or from the model shape
    overrides = {k: v for k, v in (("telemetry_delay_s", telemetry_delay), ("actuation_delay_s", actuation_delay),
                                   ("brake", brake), ("budget_w", budget_w)) if v is not None}
    if budget_w is not None:
        if budget_source not in (None, "fixed"):
            raise click.BadParameter(f"is a fixed budget; --budget {budget_source} derives one", param_hint="--budget-w")
        budget_source = "fixed"
    config = replace(config, polca={**config.polca, **overrides})
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=1, desc="polca-search", unit="replay", leave=False, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        result = oversubscription_search(trace, bundle, config, policy_configs(config)[1], max_extra, bound_high, bound_low,
                                         max_over_budget_fraction=max_over_budget, seeds=seeds, budget_source=budget_source,
                                         high_priority_fraction=high_priority_fraction, progress=progress if bar else None)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if bar is not None:
            bar.close()
    table = result["table"]
    if output:
        _write_csv(table, output)
    extrapolated = list(getattr(bundle, "extrapolated", None) or [])
    if as_json:
        click.echo(dump_json({**search_json(result, bundle.simulated), "extrapolated": extrapolated or None}))
    else:
        click.echo(format_search(result, bundle.simulated))
        if extrapolated:
            click.echo(f"  [EXTRAPOLATED] beyond the profiled range: {'; '.join(extrapolated)}")
    replays = len(result["runs"]) * 2
    wrote = [f"the frontier CSV to {output}"] if output else []
    wrote += ["the JSON to stdout"] if as_json else []
    click.echo(f"polca-search: {len(table)} additions x {seeds} seed(s), {replays} replays in "
               f"{time.perf_counter() - started:,.0f} s; wrote {' and '.join(wrote) or 'nothing to disk (-o saves the frontier CSV)'}",
               err=True)


def _int_list(text: str | None, option: str) -> list[int] | None:
    """A comma-separated list of positive integers (None: not given)."""
    if text is None:
        return None
    try:
        values = [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"not a list of numbers: {text!r}", param_hint=option) from None
    if not values or any(v < 1 for v in values):
        raise click.BadParameter(f"needs positive integers: {text!r}", param_hint=option)
    return values


@replay.command("longctx")
@click.option("--models", "models_path", type=click.Path(path_type=Path), required=True)
@click.option("--contexts", default="131072,1000000,4000000,10000000", show_default=True, help="Context lengths, comma-separated.")
@click.option("--tp", "tps", default=None, help="TP degrees, comma-separated (with --pp/--kvp: every combination, adaptive chunks).")
@click.option("--pp", "pps", default=None, help="SPP stages, comma-separated.")
@click.option("--kvp", "kvps", default=None, help="KVP groups, comma-separated.")
@click.option("--gpu-memory-gib", type=float, default=80.0, show_default=True, help="Memory of one GPU (KV capacity).")
@click.option("--preset", "--model-shape", "preset", default=None,
              help="Model shape (llama3-8b, llama2-70b, tiny); default: the bundle's model when it names one.")
@click.option("--tbt-slo", type=float, default=0.05, show_default=True)
@click.option("--kv-capacity", type=int, default=None, help="KV tokens of one TP x PP group (default: derived from the shape).")
@click.option("--scheduler", "scheduler", type=click.Choice(["fcfs", "lars"]), default=None,
              help="Replica batch scheduler: fcfs (short prompts wait behind the long prefill) or lars (they prefill "
                   "beside it, least slack first).  [default: fcfs; lars with --plan]")
@click.option("--max-tokens-per-kvp-group", "kvp_group_tokens", type=int, default=None,
              help="KVP groups join as a sequence outgrows this many tokens a group (default: every sequence over all groups).")
@click.option("--kvp-network", "kvp_network", type=click.Path(path_type=Path), default=None,
              help="KVP combine from this network profile (Vidur all_reduce.csv; default: the fitted alpha + beta model).")
@click.option("--plan", "plan", is_flag=True,
              help="Pick the cheapest TP x SPP x KVP meeting --ttft-target, --tbt-slo and --short-ttft-target per context "
                   "(--tp/--pp/--kvp: the candidates; default 1,2,4,8 x 1,2,4,8 x 1,2,3,4,6,8).")
@click.option("--ttft-target", type=float, default=3600.0, show_default=True, help="--plan: the long request's TTFT target, s.")
@click.option("--short-ttft-target", type=float, default=10.0, show_default=True,
              help="--plan: p99 TTFT target of the short requests arriving during the long prefill, s.")
@click.option("--minimize", type=click.Choice(["gpu-seconds", "gpus"]), default="gpu-seconds", show_default=True,
              help="--plan: the cost to minimize (GPUs x the long request's end-to-end time, or GPUs).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per row, as a list (--plan: one per context).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="CSV of the sweep (--plan: of the candidates).")
def longctx(models_path: Path, contexts: str, tps: str | None, pps: str | None, kvps: str | None, gpu_memory_gib: float,
            preset: str | None, tbt_slo: float, kv_capacity: int | None, scheduler: str | None, kvp_group_tokens: int | None,
            kvp_network: Path | None, plan: bool, ttft_target: float, short_ttft_target: float, minimize: str,
            as_json: bool, output: Path | None) -> None:
    """Mnemosyne: TTFT and TBT vs context under chunking, SPP and KVP, KV capacity from the model.

    One long request amid a stream of short ones (5/s).  Without --tp/--pp/--kvp: the four TP1
    configurations of the first study (fixed 8192-token chunks, adaptive, adaptive + SPP x4,
    adaptive + SPP x4 + KVP x4).  short_ttft_p50/p99 cover every short request that arrived during
    the long prefill (short_unfinished of them had no first token by the end and count until then).
    With --plan: the cheapest configuration per context and every candidate considered."""
    from characterize.model_io import ModelBundle
    from toolkit.jsonio import dump_json
    from toolkit.model_shapes import PRESETS

    from .config import PoolConfig
    from .memory_planner import bundle_preset
    from .policies.mnemosyne import COLUMNS, CONFIGS, context_sweep, grid_configs

    lengths = _int_list(contexts, "--contexts")
    grid = [_int_list(v, o) for v, o in ((tps, "--tp"), (pps, "--pp"), (kvps, "--kvp"))]
    for value, option in ((gpu_memory_gib, "--gpu-memory-gib"), (tbt_slo, "--tbt-slo"), (ttft_target, "--ttft-target"),
                          (short_ttft_target, "--short-ttft-target")):
        if not value > 0 or value == float("inf"):
            raise click.BadParameter(f"must be a finite number > 0 (got {value})", param_hint=option)
    for value, option in ((kv_capacity, "--kv-capacity"), (kvp_group_tokens, "--max-tokens-per-kvp-group")):
        if value is not None and value < 1:
            raise click.BadParameter("must be >= 1", param_hint=option)
    if preset is not None and preset not in PRESETS:
        raise click.BadParameter(f"{preset!r} is not one of {', '.join(PRESETS)}", param_hint="--preset")
    _check_output(output)
    network = None
    if kvp_network is not None:
        from .kvp_combine import load_network_profile

        network = str(kvp_network)
        load_network_profile(network)  # (an InputError naming the file, before any replay)
    bundle = ModelBundle.load(models_path)
    shape = preset or bundle_preset(bundle)
    if shape is None and kv_capacity is None:
        raise click.BadParameter(f"the bundle names no model preset (its model: {bundle.metadata.get('model')!r}); "
                                 f"give one of {', '.join(PRESETS)} (or --kv-capacity)", param_hint="--preset")
    scheduler = scheduler or ("lars" if plan else "fcfs")
    base = PoolConfig(instances=1, max_batch_tokens=16384, kv_capacity_tokens=kv_capacity, tbt_slo_s=tbt_slo,
                      model_shape=shape or "llama3-8b", gpu_memory_gib=gpu_memory_gib, scheduler=scheduler,
                      max_tokens_per_kvp_group=kvp_group_tokens, kvp_network_csv=network)
    label = " [SIMULATED models]" if bundle.simulated else ""
    if plan:
        _longctx_plan(bundle, lengths, grid, base, ttft_target, tbt_slo, short_ttft_target, minimize, as_json, output, label)
        return
    configs = CONFIGS if all(g is None for g in grid) else grid_configs(*(g or [1] for g in grid))
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(lengths) * len(configs), desc="longctx", unit="row", leave=False)
    try:
        table = context_sweep(bundle, lengths, configs=configs, base=base, progress=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
    if output:
        _write_csv(table, output)
    if as_json:
        keys = ["context_tokens", "tp", "pp", "kvp", "gpus", "ttft_s", "long_tbt_s", "long_tbt_max_s", "decode_tbt_max_s",
                "short_ttft_p50_s", "short_ttft_p99_s", "shorts_during_prefill", "short_unfinished", "gpu_seconds",
                "scheduler", "max_tokens_per_kvp_group", "dropped", "drop_reason", "config"]
        click.echo(dump_json(_json_rows(table[keys])))
        return
    click.echo(f"one long request amid a stream of short ones (5/s){label}; {base.model_shape} on {gpu_memory_gib:g} GiB "
               f"GPUs; TBT SLO {tbt_slo * 1000:.0f} ms; scheduler {scheduler}; decode_tbt_max_s: worst gap a short request "
               f"saw during the long prefill; short_ttft: every short request that arrived during it (short_unfinished: "
               f"without a first token at the end, counted until then)")
    hidden = ("drop_reason", "tbt_slo_s", "scheduler", "max_tokens_per_kvp_group", "long_tbt_mean_s")
    shown = table[[c for c in COLUMNS if c not in hidden]]
    click.echo(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for row in table[table["dropped"]].itertuples():
        click.echo(f"  dropped {row.config} at {row.context_tokens:,} tokens: {row.drop_reason}")


def _json_rows(table) -> list[dict]:
    """Records of ``table`` with NaN as None (JSON has no NaN)."""
    import numpy as np

    def plain(v):
        if isinstance(v, (np.floating, float)):
            return None if v != v else float(v)
        if isinstance(v, np.integer):
            return int(v)
        return v

    return [{k: plain(v) for k, v in row.items()} for row in table.to_dict("records")]


def _longctx_plan(bundle, lengths, grid, base, ttft_target, tbt_slo, short_ttft_target, minimize, as_json, output, label) -> None:
    """``longctx --plan``: the cheapest configuration per context, with every candidate."""
    import pandas as pd

    from toolkit.jsonio import dump_json

    from .policies.mnemosyne import PLAN_KVPS, PLAN_PPS, PLAN_TPS, plan_configuration

    tps, pps, kvps = (g or default for g, default in zip(grid, (PLAN_TPS, PLAN_PPS, PLAN_KVPS)))
    plans = [plan_configuration(bundle, n, ttft_target, tbt_slo, short_ttft_target, tps, pps, kvps, base=base,
                                objective=minimize) for n in lengths]
    if output:
        _write_csv(pd.concat([p["candidates"].assign(context_tokens=p["context_tokens"]) for p in plans]), output)
    if as_json:
        click.echo(dump_json([{"context_tokens": p["context_tokens"],
                               "chosen": _json_rows(pd.DataFrame([p["chosen"]]))[0] if p["chosen"] else None,
                               "candidates": _json_rows(p["candidates"])} for p in plans]))
        return
    click.echo(f"plan{label}: cheapest ({minimize}) TP x SPP x KVP with TTFT <= {ttft_target:g} s, long-request and "
               f"co-batched TBT <= {tbt_slo * 1000:g} ms, short p99 TTFT <= {short_ttft_target:g} s during the prefill "
               f"(scheduler {base.scheduler}; {base.model_shape} on {base.gpu_memory_gib:g} GiB GPUs)")
    for p in plans:
        chosen = p["chosen"]
        if chosen is None:
            click.echo(f"\n{p['context_tokens']:,} tokens: no candidate meets the targets")
        else:
            click.echo(f"\n{p['context_tokens']:,} tokens: {chosen['config']} ({chosen['gpus']} GPUs): TTFT "
                       f"{chosen['ttft_s']:.4g} s, long TBT max {chosen['long_tbt_max_s'] * 1000:.1f} ms, co-batched TBT max "
                       f"{chosen['decode_tbt_max_s'] * 1000:.1f} ms, short p99 TTFT {chosen['short_ttft_p99_s']:.3g} s, "
                       f"{chosen['gpu_seconds']:,.0f} GPU-s")
        table = p["candidates"].drop(columns=["tp", "pp", "kvp"])
        table["reason"] = table["reason"].map(lambda r: "-" if not isinstance(r, str) else r if len(r) <= 90 else r[:87] + "...")
        click.echo(table.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-"))
