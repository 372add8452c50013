"""Running replays and saying what they found: the core behind ``wattlas replay run``, ``replay
sweep`` and the demo.

:func:`run_replay` loads a trace, a model bundle and a cluster, replays (DynamoLLM with its static
baselines, POLCA with its budget), writes the artifacts and returns the summary; :func:`sweep`
replays a grid of settings on dask.distributed.  :func:`format_summary` and :func:`outputs_line`
are pure formatters of what they return, for people.  Nothing here parses options or prints:
progress goes to the callback the caller passes (``progress(stage, fraction)``, fraction 0..1 or
None while a stage's length is unknown).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from toolkit.errors import WattlasError

Progress = Callable[[str, "float | None"], None]

ARTIFACTS = ("requests.parquet", "power_timeline.parquet", "summary.json")


# ------------------------------------------------------------------------------------ running


def write_outputs(result, summary: dict, out_dir: Path, simulated: bool) -> None:
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
    atomic_write_table(pa.Table.from_pandas(result.timeline, schema=timeline_schema(meta), preserve_index=False),
                       out_dir / "power_timeline.parquet")
    if result.events is not None and len(result.events):
        write_text_atomic(events_path, result.events.to_csv(index=False))
    else:
        events_path.unlink(missing_ok=True)  # an earlier run's events would pass for this one's
    write_text_atomic(summary_path, dump_json(summary))


def timeline_schema(meta: dict):
    """Arrow schema of power_timeline.parquet: one row per run of equal bins (``duration_s`` long)."""
    from toolkit.schemas import POWER_TIMELINE

    return POWER_TIMELINE.arrow(metadata=meta)


def baseline_dir(out_dir: Path, name: str = "baseline") -> Path:
    """Where one of dynamollm's static baseline runs goes, beside ``out_dir``: ``OUT_baseline`` (the
    same GPUs as DynamoLLM, all at the highest clock), ``OUT_peak_static``, ``OUT_best_static``."""
    return out_dir.parent / f"{out_dir.name}_{name}"


def load_bundle(models_path: Path, gpu_name: str | None, model_name: str | None, allow_extrapolation: bool):
    """The model bundle at ``models_path`` narrowed to one GPU and model (an InputError naming the
    choices when it still holds several), extrapolation allowed or not."""
    from characterize.model_io import ModelBundle
    from toolkit.errors import InputError

    bundle = ModelBundle.load(models_path).select(gpu_name=gpu_name, model=model_name)
    bundle.allow_extrapolation = allow_extrapolation
    held = bundle.identities()
    if held:
        raise InputError(models_path, "the bundle holds models for several " + "; ".join(
            f"{name} ({', '.join(values)})" for name, values in held.items()) + ": choose one with --gpu/--model")
    return bundle


def run_replay(trace_path: Path, models_path: Path, cluster_path: Path | None, out_dir: Path | None,
               limit: int | None = None, policy: str = "baseline", rate_scale: float = 1.0,
               gpu_name: str | None = None, model_name: str | None = None, allow_extrapolation: bool = False,
               progress: Progress | None = None) -> dict:
    """Load inputs, replay, write requests/timeline Parquet and summary JSON under ``out_dir``
    (None: nothing written); returns the summary.

    ``gpu_name``/``model_name`` pick one GPU and model of a bundle fitted on several;
    ``allow_extrapolation`` lets pools run at a TP or clock beyond the models' support (the
    summary's ``extrapolated`` lists where).  ``progress(stage, fraction)``: see the module."""
    from toolkit.errors import InputError
    from toolkit.jsonio import ensure_writable_dir
    from toolkit.parquet_io import artifact_metadata
    from toolkit.traces.formats import read_trace

    from .config import load_cluster_or_default, policy_configs
    from .cost_model import NotReplayable
    from .engine import replay
    from .memory_planner import resolve_cluster

    report = progress or (lambda stage, fraction=None: None)
    report("reading the trace and models")
    table = read_trace(trace_path)
    trace_meta = artifact_metadata(table.schema)
    trace = table.to_pandas()
    if limit:
        trace = trace.iloc[:limit]
    if rate_scale != 1.0:  # compress time: the same requests at rate_scale times the rate
        trace = trace.assign(arrival_s=trace["arrival_s"] / rate_scale)
    bundle = load_bundle(models_path, gpu_name, model_name, allow_extrapolation)
    config = load_cluster_or_default(cluster_path, bundle)
    config = resolve_cluster(config, bundle, cluster_path)  # KV capacity: as set, or from the model shape
    if out_dir is not None:  # with the inputs read, fail now rather than after the replay
        ensure_writable_dir(out_dir)
        if policy == "dynamollm":
            for where in (baseline_dir(out_dir), baseline_dir(out_dir, "peak_static"), baseline_dir(out_dir, "best_static")):
                ensure_writable_dir(where)
    controller = None
    if policy == "dynamollm":
        from .policies.dynamollm import plan

        report("planning DynamoLLM's pools")
        base_config, dyn_cfg = config, policy_configs(config)[0]
        try:
            dyn_plan = plan(trace, bundle, config, dyn_cfg)
        except ValueError as exc:
            raise WattlasError(str(exc)) from None
        config, controller = dyn_plan.config, dyn_plan.controller()
    elif policy == "polca":
        from .policies.polca import PolcaConfig, PolcaController, provisioned_peak_w

        polca = policy_configs(config)[1]
        source = config.polca.get("budget_source")
        if polca is None and source == "provisioned_peak":  # the row's servers at full load
            polca = PolcaConfig(**{**config.polca, "budget_w": provisioned_peak_w(config, bundle)})
        if polca is None:
            raise WattlasError("--policy polca needs a [polca] table with budget_w (or budget_source = "
                               "\"provisioned_peak\") in the cluster TOML (or use `wattlas replay polca-search`"
                               + (", which measures the original row's peak)" if source == "measured_peak" else ")"))
        controller = PolcaController(polca)
    priority = trace["priority"].to_numpy(dtype=object) if "priority" in trace else None
    trace_priority = priority
    if policy == "dynamollm":  # routed by the plan's labels (each request's predicted class), not by length
        priority = dyn_plan.labels
    report("replay", 0.0)
    try:
        result = replay(trace, bundle, config, priority=priority, progress=lambda f: report("replay", f),
                        controller=controller, source=trace_path)
    except NotReplayable as exc:
        raise InputError(models_path, str(exc)) from None
    summary = dict(result.summary)
    summary.update({"trace": str(trace_path), "models": str(models_path), "cluster": str(cluster_path) if cluster_path else "default",
                    "simulated_models": bundle.simulated, "synthetic_trace": trace_meta.get("wattlas.synthetic") == "true",
                    "policy_name": policy, "rate_scale": rate_scale, "extrapolated": list(bundle.extrapolated) or None})
    if policy == "dynamollm":
        report("replaying the static baselines")
        dynamollm_baselines(trace, bundle, base_config, dyn_cfg, dyn_plan, result, summary, trace_priority, out_dir)
    if out_dir is not None:
        report("writing")
        write_outputs(result, summary, out_dir, bundle.simulated)
    return summary


def dynamollm_baselines(trace, bundle, base_config, dyn_cfg, dyn_plan, result, summary: dict, trace_priority,
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
        write_outputs(run, {**run.summary, **shared, "policy_name": label}, baseline_dir(out_dir, name), bundle.simulated)
    atomic_write_table(events_table(result.events, bundle.simulated), out_dir / "events.parquet")


def sweep(trace_path: Path, models_path: Path, base, grid: dict[str, list], address: str | None = None,
          workers: int | None = None, progress: Callable[[int, int], None] | None = None):
    """:func:`replay.sweep.run_sweep`: one row per point of ``grid``, ``progress(done, total)`` as points finish."""
    from .sweep import run_sweep

    return run_sweep(trace_path, models_path, base, grid, address, workers, progress)


def run_streamed(trace_path: Path, models_path: Path, cluster_path: Path | None, out_dir: Path,
                 partitions: str | None = None, address: str | None = None, workers: int | None = None,
                 batch_rows: int | None = None, gpu_name: str | None = None, model_name: str | None = None,
                 allow_extrapolation: bool = False, progress: Progress | None = None) -> dict:
    """Replay a trace of any length streaming (:mod:`replay.stream`), in this process or, with
    ``partitions`` ("pools" or a number of cells), partitioned on dask.distributed
    (:mod:`replay.partition`, the scheduler at ``address`` or a LocalCluster of ``workers``);
    writes requests.parquet, power_timeline.parquet and summary.json under ``out_dir`` and returns
    the summary.  ``progress(stage, fraction)``: rows read over the rows to read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from toolkit.errors import InputError
    from toolkit.jsonio import dump_json, ensure_writable_dir, write_text_atomic

    from .config import load_cluster_or_default
    from .cost_model import NotReplayable
    from .stream import BATCH_ROWS, replay_stream

    report = progress or (lambda stage, fraction=None: None)
    bundle = load_bundle(models_path, gpu_name, model_name, allow_extrapolation)
    config = load_cluster_or_default(cluster_path, bundle)
    ensure_writable_dir(out_dir)
    (out_dir / "summary.json").unlink(missing_ok=True)  # (a stale one would pass for this run's)
    rows = None
    meta: dict[str, str] = {}
    if Path(trace_path).suffix == ".parquet" and Path(trace_path).is_file():
        try:
            info = pq.read_metadata(trace_path)
            rows = info.num_rows
            meta = {k.decode(): v.decode() for k, v in (info.metadata or {}).items()}
        except (OSError, pa.ArrowException, UnicodeDecodeError):  # (unreadable: the streaming reader names the problem)
            pass
    parts = 1 if partitions is None else (sum(1 for p in config.pools if not p.standby) if partitions == "pools"
                                          else int(partitions))
    total = rows * parts if rows else None
    report("replay (streaming)", 0.0 if total else None)
    tick = (lambda read: report("replay (streaming)", min(1.0, read / total))) if total else None
    batch_rows = batch_rows or BATCH_ROWS
    try:
        if partitions is None:
            summary = replay_stream(trace_path, bundle, config, out_dir, bundle.simulated, batch_rows, tick)
        else:
            from .partition import replay_partitioned

            try:
                split = partitions if partitions == "pools" else int(partitions)
                summary = replay_partitioned(trace_path, models_path, config, out_dir, bundle.simulated, split, address,
                                             workers, batch_rows, tick, gpu_name, model_name, allow_extrapolation)
            except ValueError as exc:
                raise WattlasError(str(exc)) from None
    except NotReplayable as exc:
        raise InputError(models_path, str(exc)) from None
    summary.update({"trace": str(trace_path), "models": str(models_path), "cluster": str(cluster_path) if cluster_path else "default",
                    "simulated_models": bundle.simulated, "synthetic_trace": meta.get("wattlas.synthetic") == "true",
                    "policy_name": "baseline", "rate_scale": 1.0,
                    "extrapolated": summary.get("extrapolated") or list(bundle.extrapolated) or None})
    report("writing")
    write_text_atomic(out_dir / "summary.json", dump_json(summary))
    return summary


def written(out_dir: Path, policy: str = "baseline") -> list[Path]:
    """The directories and files :func:`run_replay` leaves for ``out_dir`` and ``policy``, those
    that exist: ``out_dir``'s artifacts, then DynamoLLM's baseline directories beside it."""
    names = [*ARTIFACTS, "policy_events.csv", "events.parquet"]
    paths = [out_dir / n for n in names if (out_dir / n).exists()]
    if policy == "dynamollm":
        paths += [d for d in (baseline_dir(out_dir, n) for n in ("peak_static", "best_static", "baseline"))
                  if (d / "summary.json").exists()]
    return paths


def outputs_line(out_dir: Path | None, policy: str = "baseline") -> str:
    """The closing line of a replay: what it wrote where, or that it wrote nothing and how to keep it."""
    if out_dir is None:
        return ("nothing written (no -o/--out given): the summary above is the whole result; "
                "-o DIR keeps requests.parquet, power_timeline.parquet and summary.json")
    paths = written(out_dir, policy)
    files = [p.name for p in paths if p.parent == out_dir]
    dirs = [f"{p}/" for p in paths if p.parent != out_dir]
    return f"wrote {out_dir}/ ({', '.join(files)})" + (f"; the static baselines in {', '.join(dirs)}" if dirs else "")


# ---------------------------------------------------------------------------------- formatting


def known(value) -> bool:
    """Whether ``value`` is a number one can print (not None, not NaN or infinite)."""
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def num(value, spec: str = ",.1f", scale: float = 1.0, unit: str = "") -> str:
    """``value * scale`` in ``spec`` (fixed notation) followed by ``unit``, or "-" when unknown."""
    if not known(value):
        return "-"
    text = format(float(value) * scale, spec)
    if text.lstrip("-").strip("0.,") == "":  # -0.0 and the like
        text = text.lstrip("-")
    return f"{text}{unit}"


def fixed(value: float | None, decimals: int = 3) -> str:
    """A number in fixed notation (never scientific), trailing zeros dropped: 0.005 -> "0.005"; "-"
    when unknown."""
    if not known(value):
        return "-"
    text = f"{float(value):,.{decimals}f}"
    text = text.rstrip("0").rstrip(".") if "." in text else text
    return "0" if text == "-0" else text


def saving(fraction: float | None, what: str) -> str:
    """A saving fraction as words: "saves 30.2 % energy", "costs 4.1 % more energy"."""
    if not known(fraction):
        return f"{what} n/a"
    pct = 100 * fraction
    if round(pct, 1) == 0:
        return f"the same {what}"
    return f"saves {pct:,.1f} % {what}" if pct > 0 else f"costs {-pct:,.1f} % more {what}"


def labels(s: dict) -> str:
    """" [SIMULATED models] [synthetic trace]" as they apply to a replay summary."""
    return (" [SIMULATED models]" if s.get("simulated_models") else "") + (" [synthetic trace]" if s.get("synthetic_trace") else "")


def format_summary(s: dict) -> str:
    """A replay summary (as :func:`run_replay` returns it) as a few lines for the terminal; unknown
    figures as "-"."""
    g = s.get
    energy = "energy n/a (no power model)" if g("energy_kwh") is None else (
        f"energy {num(g('energy_kwh'), '.3f')} kWh IT ({num(g('energy_busy_kwh'), '.3f')} busy + "
        f"{num(g('energy_idle_kwh'), '.3f')} idle), {num(g('facility_energy_kwh'), '.3f')} kWh facility, "
        f"{num(g('carbon_kg'), '.2f')} kg CO2e, {num(g('energy_per_output_token_j'), '.3f')} J/output token")
    peak = f"; peak row power {num(g('peak_row_power_w'), ',.0f')} W" if known(g("peak_row_power_w")) else ""
    return "\n".join([
        f"replay{labels(s)}: {num(g('requests'), ',.0f')} requests ({num(g('finished'), ',.0f')} finished, "
        f"{num(g('dropped'), ',.0f')} dropped) on {num(g('instances'), ',.0f')} instances / {num(g('gpus'), ',.0f')} GPUs over "
        f"{num(g('duration_s'), ',.0f')} s, {num(g('iterations'), ',.0f')} iterations",
        f"  TTFT p50 {num(g('ttft_p50_s'), ',.0f', 1000)} ms, p99 {num(g('ttft_p99_s'), ',.0f', 1000)} ms; "
        f"TBT p50 {num(g('tbt_p50_s'), ',.1f', 1000)} ms, p99 {num(g('tbt_p99_s'), ',.1f', 1000)} ms; "
        f"E2E p50 {num(g('e2e_p50_s'), ',.2f')} s, p99 {num(g('e2e_p99_s'), ',.2f')} s; "
        f"SLO attainment {num(g('slo_attainment'), '.1f', 100)} %",
        f"  {energy}{peak}; {num(g('gpu_hours'), ',.2f')} GPU-h, ${num(g('cost_usd'), ',.2f')}",
        f"  replayed in {num(g('replay_wall_s'), ',.2f')} s",
    ] + _streamed_lines(s) + _policy_lines(s))


def _streamed_lines(s: dict) -> list[str]:
    streamed = s.get("streamed")
    if not streamed:
        return []
    how = "in one process" if streamed.get("parts", 1) == 1 and not streamed.get("kind") else (
        f"in {streamed['parts']} parts ({'one per pool' if streamed.get('kind') == 'pool' else 'cells of a random split'})")
    return [f"  streamed {how}; at most {num(streamed.get('peak_requests_held'), ',.0f')} requests held at once; "
            f"TTFT/E2E quantiles from log histograms (within 0.6 %)"]


def _policy_lines(s: dict) -> list[str]:
    lines = []
    policy = s.get("policy") or {}
    tag = "[SIMULATED] " if s.get("simulated_models") else ""
    if policy.get("name") == "dynamollm":
        lines += _dynamollm_lines(s, policy)
    if policy.get("name") == "polca":
        p = policy.get
        lines.append(f"  {tag}POLCA: budget {num(p('budget_w'), ',.0f')} W, peak row power {num(p('peak_row_power_w'), ',.0f')} W, "
                     f"{num(p('capping_events'), ',.0f')} capping events, low capped {num(p('capped_low_s'), ',.0f')} s, "
                     f"all capped {num(p('capped_all_s'), ',.0f')} s, over budget {num(p('over_budget_s'), ',.0f')} s")
        if "brake_events" in policy:
            lines.append(f"  {tag}POLCA: {num(p('brake_events'), ',.0f')} power-brake events ({num(p('braked_s'), ',.0f')} s "
                         f"braked); telemetry delay {fixed(p('telemetry_delay_s'))} s, actuation delay "
                         f"{fixed(p('actuation_delay_s'))} s")
    return lines


def _dynamollm_lines(s: dict, policy: dict) -> list[str]:
    """DynamoLLM's plan, control, output prediction and comparison with the static baselines;
    every line tagged [SIMULATED] when the models were fitted to a simulated profile."""
    tag = "[SIMULATED] " if s.get("simulated_models") else ""
    lines = []
    p = policy.get
    for c in policy.get("classes", []):
        tps = "/".join(f"TP{tp}" for tp in c.get("tps_used", []))
        clocks = ", ".join(num(f, ",.0f") for f in c.get("clocks_used", [])) or "highest profiled"
        lines.append(f"  {tag}class {c['class']:<12} {num(c.get('gpus'), ',.0f')} GPUs as {tps} (mean active "
                     f"{num(c.get('mean_active'), '.1f')}), {num(c.get('requests', 0), ',.0f')} requests, clocks {clocks} MHz")
    lines.append(f"  {tag}control: instances every {fixed(p('scale_period_s'))} s, TP every {fixed(p('period_s'))} s"
                 f"{'' if p('reshard') else ' (re-shard off)'}, clock every {fixed(p('clock_period_s'))} s; "
                 f"{num(p('reconfigurations'), ',.0f')} changes: {num(p('clock_changes'), ',.0f')} clock changes stalling "
                 f"{num(p('clock_stalls'), ',.0f')} instances {fixed(p('clock_stall_s') * 1000 if known(p('clock_stall_s')) else None, 1)} "
                 f"ms in all ({fixed(p('clock_switch_s') * 1000 if known(p('clock_switch_s')) else None)} ms per GPU, assumed), "
                 f"scale-outs {num(p('scale_outs'), ',.0f')} planned / {num(p('reactive_scale_outs'), ',.0f')} reactive, "
                 f"scale-ins {num(p('scale_ins'), ',.0f')}, re-shards {num(p('reshards'), ',.0f')}")
    if "predictor_accuracy" in policy:
        outgrown = p("outgrown_slo_attainment")
        lines.append(f"  {tag}output length {p('output_length')}: {num(p('predictor_accuracy'), '.1f', 100)} % of requests in "
                     f"their true class; {num(p('outgrown'), ',.0f')} outgrew their predicted class (served late in place"
                     + (f", SLO attainment {num(outgrown, '.1f', 100)} %" if known(outgrown) else "")
                     + f"), {num(p('overpredicted'), ',.0f')} put in a longer class, {num(p('migrated'), ',.0f')} migrated")
    baselines, saved, acct = s.get("baselines") or {}, s.get("savings") or {}, s.get("accounting") or {}
    if (acct.get("dynamollm") or {}).get("energy_kwh") is not None:
        mine = acct["dynamollm"]
        lines.append(f"  {tag}compared with [dynamollm] accounting: DynamoLLM {num(mine.get('energy_kwh'), '.3f')} kWh IT, "
                     f"{num(mine.get('carbon_kg'), '.3f')} kg CO2e, ${num(mine.get('cost_usd'), ',.2f')} "
                     f"({num(mine.get('gpu_hours'), '.2f')} GPU-h at ${fixed(acct.get('gpu_hour_usd'))}/GPU-h, "
                     f"${fixed(acct.get('energy_usd_per_kwh'), 4)}/kWh, {fixed(acct.get('carbon_g_per_kwh'), 1)} g CO2/kWh, "
                     f"PUE {fixed(acct.get('pue'), 2)})")
    if saved and not saved.get("dynamollm_meets_slo", True):
        lines.append(f"  {tag}DynamoLLM misses the SLO target ({num(saved.get('dynamollm_slo_attainment'), '.1f', 100)} % of "
                     f"requests within the SLOs < {num(saved.get('slo_target'), '.1f', 100)} %) that the baselines meet: the "
                     f"comparison below is not like for like")
    for name in ("peak_static", "best_static"):
        b, sv = baselines.get(name), saved.get(f"vs_{name}")
        if b is None:
            continue
        if b.get("energy_kwh") is None or sv is None:
            lines.append(f"  {tag}{name}: {b.get('sized_by', 'not replayed')}")
            continue
        gpus = b.get("gpus")
        lines.append(f"  {tag}{saving(sv.get('energy'), 'energy')} vs {name} ({num(gpus, ',.0f')} GPU{'' if gpus == 1 else 's'} "
                     f"as TP{b.get('tp')} at {fixed(b.get('clock') or 0, 0)} MHz, {num(b.get('energy_kwh'), '.3f')} kWh, "
                     f"SLO attainment {num(b.get('slo_attainment'), '.1f', 100)} %"
                     f"{'' if b.get('meets_slo') else ' - misses the target'}); {saving(sv.get('carbon'), 'carbon')}, "
                     f"{saving(sv.get('cost'), 'money')}")
    return lines
