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
               rate_scale: float = 1.0) -> dict:
    """Load inputs, replay, write requests/timeline Parquet and summary JSON; returns the summary."""
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
    bundle = ModelBundle.load(models_path)
    config = load_cluster(cluster_path) if cluster_path else ClusterConfig()
    config = resolve_cluster(config, bundle, cluster_path)  # KV capacity: as set, or from the model shape
    if out_dir is not None:  # with the inputs read, fail now rather than after the replay
        ensure_writable_dir(out_dir)
        if policy == "dynamollm":
            ensure_writable_dir(_baseline_dir(out_dir))
    controller = None
    if policy == "dynamollm":
        from .policies.dynamollm import plan

        try:
            dyn_plan = plan(trace, bundle, config, policy_configs(config)[0])
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        config, controller = dyn_plan.config, dyn_plan.controller()
    elif policy == "polca":
        from .policies.polca import PolcaController

        polca = policy_configs(config)[1]
        if polca is None:
            raise click.ClickException("--policy polca needs a [polca] table with budget_w in the cluster TOML "
                                       "(or use `wattlas replay polca-search`)")
        controller = PolcaController(polca)
    priority = trace["priority"].to_numpy(dtype=object) if "priority" in trace else None
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
                    "policy_name": policy, "rate_scale": rate_scale})
    if policy == "dynamollm":  # the static deployment with the same GPUs, for the savings
        from .policies.dynamollm import baseline_for

        base = replay(trace, bundle, baseline_for(dyn_plan, bundle), priority=priority)
        base_summary = {**base.summary, **{k: summary[k] for k in ("trace", "models", "simulated_models", "synthetic_trace", "rate_scale")},
                        "policy_name": "baseline (static, same GPUs)"}
        if out_dir is not None:
            _write_outputs(base, base_summary, _baseline_dir(out_dir), bundle.simulated)
        summary["baseline"] = {k: base_summary.get(k) for k in ("energy_kwh", "carbon_kg", "cost_usd", "slo_attainment",
                                                                 "ttft_p99_s", "tbt_p99_s", "gpus")}
        if summary.get("energy_kwh") and base_summary.get("energy_kwh"):
            summary["savings_vs_baseline"] = {
                "energy_pct": 100 * (1 - summary["energy_kwh"] / base_summary["energy_kwh"]),
                "carbon_pct": 100 * (1 - summary["carbon_kg"] / base_summary["carbon_kg"]),
                "cost_pct": 100 * (1 - summary["cost_usd"] / base_summary["cost_usd"]),
            }
    if out_dir is not None:
        _write_outputs(result, summary, out_dir, bundle.simulated)
    return summary


def _baseline_dir(out_dir: Path) -> Path:
    """Where dynamollm's static baseline run goes, beside ``out_dir``."""
    return out_dir.parent / f"{out_dir.name}_baseline"


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
        for c in policy["classes"]:
            tps = "/".join(f"TP{tp}" for tp in c["tps_used"])
            lines.append(f"  class {c['class']:<12} {c['gpus']} GPUs as {tps} (mean active {c['mean_active']:.1f}), clocks {c['clocks_used']}")
        lines.append(f"  reconfigurations {policy['reconfigurations']} (clock changes {policy['clock_changes']}, "
                     f"planned scale-outs {policy['scale_outs']}, reactive scale-outs {policy['reactive_scale_outs']}, "
                     f"re-shards {policy['reshards']})")
    if policy.get("name") == "polca":
        lines.append(f"  POLCA: budget {policy['budget_w']:.0f} W, peak row power {policy['peak_row_power_w']:.0f} W, "
                     f"{policy['capping_events']} capping events, low capped {policy['capped_low_s']:.0f} s, "
                     f"all capped {policy['capped_all_s']:.0f} s, over budget {policy['over_budget_s']:.0f} s")
    if "savings_vs_baseline" in s:
        b, sv = s["baseline"], s["savings_vs_baseline"]
        lines.append(f"  vs static baseline ({b['gpus']} GPUs, max clock): energy {sv['energy_pct']:+.1f} % saved "
                     f"({b['energy_kwh']:.3f} kWh), carbon {sv['carbon_pct']:+.1f} %, cost {sv['cost_pct']:+.1f} %, "
                     f"baseline SLO attainment {b['slo_attainment'] * 100:.1f} %")
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
def run_command(trace_path: Path, models_path: Path, cluster_path: Path | None, out_dir: Path | None, limit: int | None,
                policy: str, rate_scale: float, as_json: bool) -> None:
    """Replay a trace; writes requests.parquet, power_timeline.parquet and summary.json under --out.

    dynamollm also replays the static baseline with the same GPUs (OUT_baseline/) and reports savings."""
    from toolkit.jsonio import dump_json

    summary = run_replay(trace_path, models_path, cluster_path, out_dir, limit, show_progress=not as_json and sys.stderr.isatty(),
                         policy=policy, rate_scale=rate_scale)
    click.echo(dump_json(summary) if as_json else format_summary(summary))


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
              help="Row servers as pools with priority = 'high' / 'low'; [polca] thresholds and budget_w.")
@click.option("--max-extra", type=int, default=4, show_default=True, help="Most servers to try adding.")
@click.option("--bound-high", type=float, default=0.05, show_default=True, help="Allowed p99 E2E increase, high priority.")
@click.option("--bound-low", type=float, default=0.50, show_default=True, help="Allowed p99 E2E increase, low priority.")
@click.option("--max-over-budget", type=float, default=0.005, show_default=True,
              help="Largest share of 1-s intervals allowed over the budget (capping only trims dynamic power).")
@click.option("--rate-scale", type=float, default=1.0, show_default=True, help="Load of the original row, x the trace's rate.")
@click.option("--high-priority-fraction", type=float, default=0.5, show_default=True,
              help="For traces without a priority column (Azure): seeded random labels, this share high.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="CSV, one row per servers-added.")
def polca_search(trace_path: Path, models_path: Path, cluster_path: Path | None, max_extra: int, bound_high: float,
                 bound_low: float, max_over_budget: float, rate_scale: float, high_priority_fraction: float,
                 output: Path | None) -> None:
    """POLCA: the most servers a row's power budget can take with capping, within latency bounds."""
    from characterize.model_io import ModelBundle
    from toolkit.traces.formats import read_trace

    from .config import ClusterConfig, load_cluster, policy_configs
    from .memory_planner import resolve_cluster
    from .policies.polca import oversubscription_search

    _check_output(output)
    trace = read_trace(trace_path).to_pandas()
    trace = trace.assign(arrival_s=trace["arrival_s"] / rate_scale)
    if "priority" not in trace:
        import numpy as np

        rng = np.random.default_rng(0)
        trace["priority"] = np.where(rng.random(len(trace)) < high_priority_fraction, "high", "low")
        click.echo(f"the trace has no priorities: labelled {high_priority_fraction:.0%} high at random (seed 0)", err=True)
    bundle = ModelBundle.load(models_path)
    config = load_cluster(cluster_path) if cluster_path else ClusterConfig()
    config = resolve_cluster(config, bundle, cluster_path)  # KV capacity: as set, or from the model shape
    result = oversubscription_search(trace, bundle, config, policy_configs(config)[1], max_extra, bound_high, bound_low,
                                     max_over_budget_fraction=max_over_budget)
    table = result["table"]
    if output:
        _write_csv(table, output)
    label = " [SIMULATED models]" if bundle.simulated else ""
    click.echo(f"POLCA{label}: row of {result['servers']} servers, budget {result['budget_w']:.0f} W; "
               f"largest addition within bounds: {result['best_servers_added']} servers "
               f"(+{100 * result['best_servers_added'] / result['servers']:.0f} %)")
    click.echo(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


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
@click.option("--json", "as_json", is_flag=True, help="One JSON object per row, as a list.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="CSV of the sweep.")
def longctx(models_path: Path, contexts: str, tps: str | None, pps: str | None, kvps: str | None, gpu_memory_gib: float,
            preset: str | None, tbt_slo: float, kv_capacity: int | None, as_json: bool, output: Path | None) -> None:
    """Mnemosyne: TTFT and TBT vs context under chunking, SPP and KVP, KV capacity from the model.

    Without --tp/--pp/--kvp: the four TP1 configurations of the first study (fixed 8192-token
    chunks, adaptive, adaptive + SPP x4, adaptive + SPP x4 + KVP x4)."""
    from characterize.model_io import ModelBundle
    from toolkit.jsonio import dump_json
    from toolkit.model_shapes import PRESETS

    from .config import PoolConfig
    from .memory_planner import bundle_preset
    from .policies.mnemosyne import COLUMNS, CONFIGS, context_sweep, grid_configs

    lengths = _int_list(contexts, "--contexts")
    grid = [_int_list(v, o) for v, o in ((tps, "--tp"), (pps, "--pp"), (kvps, "--kvp"))]
    if not gpu_memory_gib > 0:
        raise click.BadParameter("must be > 0", param_hint="--gpu-memory-gib")
    if not tbt_slo > 0:
        raise click.BadParameter("must be > 0", param_hint="--tbt-slo")
    if kv_capacity is not None and kv_capacity < 1:
        raise click.BadParameter("must be >= 1", param_hint="--kv-capacity")
    if preset is not None and preset not in PRESETS:
        raise click.BadParameter(f"{preset!r} is not one of {', '.join(PRESETS)}", param_hint="--preset")
    _check_output(output)
    bundle = ModelBundle.load(models_path)
    shape = preset or bundle_preset(bundle)
    if shape is None and kv_capacity is None:
        raise click.BadParameter(f"the bundle names no model preset (its model: {bundle.metadata.get('model')!r}); "
                                 f"give one of {', '.join(PRESETS)} (or --kv-capacity)", param_hint="--preset")
    configs = CONFIGS if all(g is None for g in grid) else grid_configs(*(g or [1] for g in grid))
    base = PoolConfig(instances=1, max_batch_tokens=16384, kv_capacity_tokens=kv_capacity, tbt_slo_s=tbt_slo,
                      model_shape=shape or "llama3-8b", gpu_memory_gib=gpu_memory_gib)
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
        keys = ["context_tokens", "tp", "pp", "kvp", "gpus", "ttft_s", "long_tbt_s", "decode_tbt_max_s",
                "short_ttft_p50_s", "short_ttft_p99_s", "dropped", "drop_reason", "config"]
        rows = [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
                for row in table[keys].to_dict("records")]
        click.echo(dump_json(rows))
        return
    label = " [SIMULATED models]" if bundle.simulated else ""
    click.echo(f"one long request amid a stream of short ones (5/s){label}; {base.model_shape} on {gpu_memory_gib:g} GiB "
               f"GPUs; TBT SLO {tbt_slo * 1000:.0f} ms; decode_tbt_max_s: worst gap a short request saw during the long "
               f"prefill; short_ttft: every short request that arrived during it")
    shown = table[[c for c in COLUMNS if c not in ("drop_reason", "tbt_slo_s")]]
    click.echo(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for row in table[table["dropped"]].itertuples():
        click.echo(f"  dropped {row.config} at {row.context_tokens:,} tokens: {row.drop_reason}")
