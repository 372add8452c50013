"""``wattlas replay``: replay request traces through a simulated cluster."""

from __future__ import annotations

from pathlib import Path

import click

from .runner import fixed, format_summary, num, outputs_line


def _check_output(path: Path | None) -> None:
    """Fail before the work when the (optional) output file cannot be written."""
    from toolkit.jsonio import ensure_writable_file

    if path is not None:
        ensure_writable_file(path)


def _write_csv(table, path: Path) -> None:
    from toolkit.jsonio import write_text_atomic

    write_text_atomic(path, table.to_csv(index=False))


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
@click.option("--stream", is_flag=True, help="Stream: read arrivals and write results in batches; memory follows the "
              "requests in flight, not the trace (week-long traces). Needs -o; no --policy/--limit/--rate-scale.")
@click.option("--partitions", default=None, metavar="N|pools", help="Replay partitioned on dask.distributed (implies "
              "--stream): 'pools' (one part per pool, the same result as one process) or N cells of a random split "
              "of the requests, each with 1/N of every pool's instances.")
@click.option("--scheduler", "address", default=None, metavar="ADDRESS",
              help="dask.distributed scheduler of an existing cluster for --partitions (default: a LocalCluster).")
@click.option("--workers", type=int, default=None, help="LocalCluster worker processes for --partitions (default: one per core).")
@click.option("--batch-rows", type=int, default=None, help="Arrivals read at a time when streaming (default 65,536).")
def run_command(trace_path: Path, models_path: Path, cluster_path: Path | None, out_dir: Path | None, limit: int | None,
                policy: str, rate_scale: float, as_json: bool, gpu_name: str | None, model_name: str | None,
                allow_extrapolation: bool, stream: bool, partitions: str | None, address: str | None,
                workers: int | None, batch_rows: int | None) -> None:
    """Replay a trace; writes requests.parquet, power_timeline.parquet and summary.json under --out.

    dynamollm also replays peak_static (sized for the trace's peak, highest clock: OUT_peak_static/) and
    best_static (the cheapest static deployment meeting the SLOs, searched: OUT_best_static/), reports the
    savings against each with their sign, and writes events.parquet; OUT_baseline/ is DynamoLLM's own GPUs
    all at the highest clock (not a comparison).

    --stream / --partitions replay week-long traces in bounded memory (TTFT/E2E quantiles then come
    from log histograms, within 0.6 %)."""
    from toolkit.console import StageProgress, closing_line
    from toolkit.jsonio import dump_json

    from . import runner

    streamed = stream or partitions is not None or address is not None or workers is not None or batch_rows is not None
    if streamed:
        unsupported = [name for name, used in (("--policy", policy != "baseline"), ("--limit", limit is not None),
                                               ("--rate-scale", rate_scale != 1.0), ("-o/--out missing", out_dir is None))
                       if used]
        if unsupported:
            raise click.UsageError(f"a streamed replay (--stream/--partitions) takes no {', '.join(unsupported)}: "
                                   "policies, --limit and --rate-scale replay in memory; streaming writes under -o")
        if partitions is not None and partitions != "pools" and not partitions.isdigit():
            raise click.BadParameter(f"expected a number of cells or 'pools', got {partitions!r}", param_hint="--partitions")
        if (address is not None or workers is not None) and partitions is None:
            raise click.UsageError("--scheduler/--workers run partitions: add --partitions N or --partitions pools")
    with StageProgress() as progress:  # (stderr, and only on a terminal)
        if streamed:
            summary = runner.run_streamed(trace_path, models_path, cluster_path, out_dir, partitions, address, workers,
                                          batch_rows, gpu_name, model_name, allow_extrapolation, progress=progress)
        else:
            summary = runner.run_replay(trace_path, models_path, cluster_path, out_dir, limit, policy, rate_scale,
                                        gpu_name, model_name, allow_extrapolation, progress=progress)
    click.echo(dump_json(summary) if as_json else format_summary(summary))
    # (on stderr with --json, so stdout stays one JSON document)
    if summary.get("extrapolated"):
        click.echo(f"[EXTRAPOLATED] beyond the models' support: {'; '.join(summary['extrapolated'])}", err=as_json)
    if as_json:
        click.echo(outputs_line(out_dir, policy), err=True)
    else:
        closing_line(outputs_line(out_dir, policy))


@replay.command("sweep")
@click.option("--trace", "trace_path", type=click.Path(path_type=Path), required=True)
@click.option("--models", "models_path", type=click.Path(path_type=Path), required=True)
@click.option("--cluster", "cluster_path", type=click.Path(path_type=Path), default=None)
@click.option("--vary", multiple=True, required=True, help="KEY=V1,V2,... e.g. pool.sm_clock_mhz=1980,1410; repeatable.")
@click.option("--scheduler", default=None, help="dask.distributed scheduler address (default: a LocalCluster).")
@click.option("--workers", type=int, default=None, help="LocalCluster worker processes (default: one per core).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="CSV of one summary row per point.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per point, as a list (the CSV's columns; null, never NaN).")
def sweep_command(trace_path: Path, models_path: Path, cluster_path: Path | None, vary: tuple[str, ...],
                  scheduler: str | None, workers: int | None, output: Path | None, as_json: bool) -> None:
    """Replay a grid of cluster settings in parallel on dask.distributed."""
    from characterize.model_io import ModelBundle
    from toolkit.console import closing_line, count_progress, human_table, progress_bar
    from toolkit.jsonio import dump_json

    from . import runner
    from .config import load_cluster_or_default
    from .sweep import parse_vary

    bundle = ModelBundle.load(models_path)  # (a bad bundle fails here, before the workers start)
    base = load_cluster_or_default(cluster_path, bundle)
    _check_output(output)
    simulated = bundle.simulated
    with progress_bar(None, "sweep", "point", tick_s=0.5) as bar:
        table = runner.sweep(trace_path, models_path, base, parse_vary(list(vary)), scheduler, workers,
                             progress=count_progress(bar))
    if output:
        _write_csv(table, output)
    varied = [c for c in table.columns if c in {k.split("=")[0] for k in vary}]
    if as_json:
        click.echo(dump_json(_json_rows(table)))
    else:
        label = (" [SIMULATED models]" if simulated else "") + (" [synthetic trace]" if _synthetic(trace_path) else "")
        click.echo(f"sweep{label}: {len(table)} point(s) of {trace_path}, varying {', '.join(varied) or '-'}")
        columns = varied + ["finished", "dropped", "ttft_p99_s", "tbt_p99_s", "slo_attainment", "energy_kwh", "cost_usd"]
        click.echo(human_table(table[[c for c in columns if c in table.columns]]))
    closing_line(f"wrote the sweep ({len(table)} rows) to {output}" if output else
                 "nothing written (no -o given): -o FILE.csv keeps every point's summary", as_json)


def _synthetic(trace_path: Path) -> bool:
    """Whether a Parquet trace is marked synthetic (its metadata alone is read; other formats: no)."""
    try:
        import pyarrow.parquet as pq

        from toolkit.parquet_io import artifact_metadata

        return artifact_metadata(pq.read_schema(trace_path)).get("wattlas.synthetic") == "true"
    except Exception:  # a CSV, a directory, an unreadable file: the replay itself says what is wrong
        return False


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
    from toolkit.console import count_progress, progress_bar
    from toolkit.jsonio import dump_json
    from toolkit.traces.formats import read_trace

    from .config import load_cluster_or_default, policy_configs
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
    config = load_cluster_or_default(cluster_path, bundle)
    config = resolve_cluster(config, bundle, cluster_path)  # KV capacity: as set, or from the model shape
    overrides = {k: v for k, v in (("telemetry_delay_s", telemetry_delay), ("actuation_delay_s", actuation_delay),
                                   ("brake", brake), ("budget_w", budget_w)) if v is not None}
    if budget_w is not None:
        if budget_source not in (None, "fixed"):
            raise click.BadParameter(f"is a fixed budget; --budget {budget_source} derives one", param_hint="--budget-w")
        budget_source = "fixed"
    config = replace(config, polca={**config.polca, **overrides})
    with progress_bar(None, "polca-search", "replay", tick_s=0.5) as bar:
        try:
            result = oversubscription_search(trace, bundle, config, policy_configs(config)[1], max_extra, bound_high,
                                             bound_low, max_over_budget_fraction=max_over_budget, seeds=seeds,
                                             budget_source=budget_source, high_priority_fraction=high_priority_fraction,
                                             progress=count_progress(bar))
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    table = result["table"]
    timeline_path = None
    if output:
        from .policies.polca import write_search_timeline

        _write_csv(table, output)
        # (the row's power and the controller's events, which `wattlas report polca` draws beside the CSV)
        timeline_path = write_search_timeline(result, output.with_name(f"{output.stem}_timeline.parquet"), bundle.simulated)
    extrapolated = list(getattr(bundle, "extrapolated", None) or [])
    if as_json:
        click.echo(dump_json({**search_json(result, bundle.simulated), "extrapolated": extrapolated or None}))
    else:
        click.echo(format_search(result, bundle.simulated))
        if extrapolated:
            click.echo(f"  [EXTRAPOLATED] beyond the profiled range: {'; '.join(extrapolated)}")
    replays = len(result["runs"]) * 2
    wrote = [f"the frontier CSV to {output}", f"its power timeline to {timeline_path}"] if output else []
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
    from toolkit.console import closing_line, human_table, progress_bar
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
    with progress_bar(len(lengths) * len(configs), "longctx", "row", tick_s=0.5) as bar:
        table = context_sweep(bundle, lengths, configs=configs, base=base, progress=bar.update)
    if output:
        _write_csv(table, output)
    wrote = (f"wrote the sweep ({len(table)} rows) to {output}" if output else
             "nothing written (no -o given): -o FILE.csv keeps the sweep")
    if as_json:
        keys = ["context_tokens", "tp", "pp", "kvp", "gpus", "ttft_s", "long_tbt_s", "long_tbt_max_s", "decode_tbt_max_s",
                "short_ttft_p50_s", "short_ttft_p99_s", "shorts_during_prefill", "short_unfinished", "gpu_seconds",
                "scheduler", "max_tokens_per_kvp_group", "dropped", "drop_reason", "config"]
        click.echo(dump_json(_json_rows(table[keys])))
        closing_line(wrote, as_json=True)
        return
    click.echo(f"one long request amid a stream of short ones (5/s){label}; {base.model_shape} on {fixed(gpu_memory_gib)} GiB "
               f"GPUs; TBT SLO {fixed(tbt_slo * 1000, 1)} ms; scheduler {scheduler}; decode_tbt_max_s: worst gap a short "
               f"request saw during the long prefill; short_ttft: every short request that arrived during it "
               f"(short_unfinished: without a first token at the end, counted until then); times in s, \"-\": none "
               f"(dropped)")
    hidden = ("drop_reason", "tbt_slo_s", "scheduler", "max_tokens_per_kvp_group", "long_tbt_mean_s")
    shown = table[[c for c in COLUMNS if c not in hidden]]
    click.echo(human_table(shown))
    for row in table[table["dropped"]].itertuples():
        click.echo(f"  dropped {row.config} at {row.context_tokens:,} tokens: {row.drop_reason}")
    closing_line(wrote)


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

    from toolkit.console import closing_line, human_number, human_table, progress_bar
    from toolkit.jsonio import dump_json

    from .policies.mnemosyne import PLAN_KVPS, PLAN_PPS, PLAN_TPS, plan_configuration

    tps, pps, kvps = (g or default for g, default in zip(grid, (PLAN_TPS, PLAN_PPS, PLAN_KVPS)))
    plans = []
    for n in lengths:
        with progress_bar(None, f"plan {n:,} tokens", "replay", tick_s=0.5) as bar:
            plans.append(plan_configuration(bundle, n, ttft_target, tbt_slo, short_ttft_target, tps, pps, kvps, base=base,
                                            objective=minimize, progress=bar.update))
    if output:
        _write_csv(pd.concat([p["candidates"].assign(context_tokens=p["context_tokens"]) for p in plans]), output)
    wrote = (f"wrote the candidates of {len(plans)} context(s) to {output}" if output else
             "nothing written (no -o given): -o FILE.csv keeps every candidate")
    if as_json:
        click.echo(dump_json([{"context_tokens": p["context_tokens"],
                               "chosen": _json_rows(pd.DataFrame([p["chosen"]]))[0] if p["chosen"] else None,
                               "candidates": _json_rows(p["candidates"])} for p in plans]))
        closing_line(wrote, as_json=True)
        return
    click.echo(f"plan{label}: cheapest ({minimize}) TP x SPP x KVP with TTFT <= {fixed(ttft_target)} s, long-request and "
               f"co-batched TBT <= {fixed(tbt_slo * 1000)} ms, short p99 TTFT <= {fixed(short_ttft_target)} s during the "
               f"prefill (scheduler {base.scheduler}; {base.model_shape} on {fixed(base.gpu_memory_gib)} GiB GPUs)")
    for p in plans:
        chosen = p["chosen"]
        if chosen is None:
            click.echo(f"\n{p['context_tokens']:,} tokens: no candidate meets the targets")
        else:
            click.echo(f"\n{p['context_tokens']:,} tokens: {chosen['config']} ({chosen['gpus']} GPUs): TTFT "
                       f"{human_number(chosen['ttft_s'])} s, long TBT max {num(chosen['long_tbt_max_s'], ',.1f', 1000)} ms, "
                       f"co-batched TBT max {num(chosen['decode_tbt_max_s'], ',.1f', 1000)} ms, short p99 TTFT "
                       f"{human_number(chosen['short_ttft_p99_s'], 3)} s, {num(chosen['gpu_seconds'], ',.0f')} GPU-s")
        table = p["candidates"].drop(columns=["tp", "pp", "kvp"])
        table["reason"] = table["reason"].map(lambda r: "-" if not isinstance(r, str) else r if len(r) <= 90 else r[:87] + "...")
        click.echo(human_table(table))
    closing_line(wrote)
