"""``wattlas replay``: replay request traces through a simulated cluster."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


def run_replay(trace_path: Path, models_path: Path, cluster_path: Path | None, out_dir: Path | None,
               limit: int | None = None, show_progress: bool = False) -> dict:
    """Load inputs, replay, write requests/timeline Parquet and summary JSON; returns the summary."""
    import pyarrow as pa

    from characterize.model_io import ModelBundle
    from toolkit.parquet_io import artifact_metadata, atomic_write_table
    from toolkit.schemas import POWER_TIMELINE, REPLAY_REQUESTS
    from toolkit.traces.formats import read_trace

    from .config import ClusterConfig, load_cluster
    from .engine import replay

    table = read_trace(trace_path)
    trace_meta = artifact_metadata(table.schema)
    trace = table.to_pandas()
    if limit:
        trace = trace.iloc[:limit]
    bundle = ModelBundle.load(models_path)
    config = load_cluster(cluster_path) if cluster_path else ClusterConfig()
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
        result = replay(trace, bundle, config, priority=priority, progress=progress if bar else None)
    except KeyError as exc:
        raise click.ClickException(f"{models_path}: {exc.args[0]}") from None
    finally:
        if bar is not None:
            bar.close()
    summary = dict(result.summary)
    summary.update({"trace": str(trace_path), "models": str(models_path), "cluster": str(cluster_path) if cluster_path else "default",
                    "simulated_models": bundle.simulated, "synthetic_trace": trace_meta.get("wattlas.synthetic") == "true"})
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        meta = {"wattlas.simulated": str(bundle.simulated).lower()}
        atomic_write_table(pa.Table.from_pandas(result.requests, schema=REPLAY_REQUESTS.arrow(metadata=meta), preserve_index=False),
                           out_dir / "requests.parquet")
        atomic_write_table(pa.Table.from_pandas(result.timeline, schema=POWER_TIMELINE.arrow(metadata=meta), preserve_index=False),
                           out_dir / "power_timeline.parquet")
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def format_summary(s: dict) -> str:
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
    ])


@click.group()
def replay() -> None:
    """Replay request traces through a simulated cluster under a policy."""


@replay.command("run")
@click.option("--trace", "trace_path", type=click.Path(path_type=Path), required=True)
@click.option("--models", "models_path", type=click.Path(path_type=Path), required=True, help="Model bundle JSON.")
@click.option("--cluster", "cluster_path", type=click.Path(path_type=Path), default=None, help="Cluster TOML.")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=None)
@click.option("--limit", type=int, default=None, help="Only the first N requests.")
@click.option("--json", "as_json", is_flag=True)
def run_command(trace_path, models_path, cluster_path, out_dir, limit, as_json) -> None:
    """Replay a trace; writes requests.parquet, power_timeline.parquet and summary.json under --out."""
    summary = run_replay(trace_path, models_path, cluster_path, out_dir, limit, show_progress=not as_json and sys.stderr.isatty())
    click.echo(json.dumps(summary, indent=2, default=str) if as_json else format_summary(summary))


@replay.command("sweep")
@click.option("--trace", "trace_path", type=click.Path(path_type=Path), required=True)
@click.option("--models", "models_path", type=click.Path(path_type=Path), required=True)
@click.option("--cluster", "cluster_path", type=click.Path(path_type=Path), default=None)
@click.option("--vary", multiple=True, required=True, help="KEY=V1,V2,... e.g. pool.sm_clock_mhz=1980,1410; repeatable.")
@click.option("--scheduler", default=None, help="dask.distributed scheduler address (default: a LocalCluster).")
@click.option("--workers", type=int, default=None, help="LocalCluster worker processes (default: one per core).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="CSV of one summary row per point.")
def sweep_command(trace_path, models_path, cluster_path, vary, scheduler, workers, output) -> None:
    """Replay a grid of cluster settings in parallel on dask.distributed."""
    from .config import ClusterConfig, load_cluster
    from .sweep import parse_vary, run_sweep

    base = load_cluster(cluster_path) if cluster_path else ClusterConfig()
    table = run_sweep(trace_path, models_path, base, parse_vary(list(vary)), scheduler, workers)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(output, index=False)
    columns = [c for c in table.columns if c in {k.split("=")[0] for k in vary}] + [
        "finished", "dropped", "ttft_p99_s", "tbt_p99_s", "slo_attainment", "energy_kwh", "cost_usd"]
    click.echo(table[columns].to_string(index=False))
