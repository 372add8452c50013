"""Report sections from wattlas artifacts.  Each ``add_*`` adds to a :class:`Report`, so single
reports and the demo's combined report share one implementation.

Conventions every section keeps: power in W (figures and tables alike), cluster energy in kWh
and per-GPU energy in J, latency in s; paths shown relative to the report or by name
(:meth:`Report.display_path`); a value repeated on every row is said once in the caption; every
section and figure drawn from simulated data is marked [SIMULATED]."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from toolkit.errors import InputError

from . import figures
from .html import Markup, Report, mark


def _hoist_constant(frame: pd.DataFrame, columns: list[str]) -> tuple[pd.DataFrame, str]:
    """``frame`` without those of ``columns`` that hold one value on every row, and a caption
    fragment naming them ("energy_method: counter; backend: sim")."""
    said = []
    for column in columns:
        if column in frame and len(frame) and frame[column].astype(str).nunique() == 1:
            value = frame[column].iloc[0]
            if isinstance(value, (float, np.floating)) and np.isfinite(value):
                value = f"{value:,.0f}" if float(value).is_integer() else f"{value:,.4g}"
            said.append(f"{column}: {'-' if value is None or (isinstance(value, float) and np.isnan(value)) else value}")
            frame = frame.drop(columns=[column])
    return frame, "; ".join(said)


def _caption(*parts: str) -> str:
    return ". ".join(p for p in parts if p)


_TIME_UNITS = (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9), ("ps", 1e-12))


def _fixed_column(values, scale: float = 1.0, digits: int = 4) -> list[str | None]:
    """``values`` divided by ``scale``, as text in fixed notation with the decimals that give the
    column's largest magnitude ``digits`` significant digits (so a column lines up, and a value
    far below the rest reads 0, never 1e-24); None for unknowns."""
    numbers = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").astype(float) / scale
    finite = numbers[np.isfinite(numbers) & (numbers != 0)]
    top = float(finite.abs().max()) if len(finite) else 1.0
    decimals = int(min(12, max(0, digits - 1 - np.floor(np.log10(top)))))
    out = []
    for v in numbers:
        if not np.isfinite(v):
            out.append(None)
            continue
        text = f"{v:,.{decimals}f}"
        out.append("0" if float(text.replace(",", "")) == 0 else text)
    return out


def _time_unit(values) -> tuple[str, float]:
    """The unit (s, ms, µs, ns, ps) in which the largest of ``values`` (s) reads 1 to 1,000."""
    numbers = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").astype(float).abs()
    top = float(numbers[np.isfinite(numbers)].max()) if np.isfinite(numbers).any() else 0.0
    for unit, scale in _TIME_UNITS:
        if top >= scale:
            return unit, scale
    return _TIME_UNITS[-1] if top > 0 else _TIME_UNITS[0]


def _coefficient_table(rows: list[dict], coefficient_columns: list[str]) -> pd.DataFrame:
    """Latency coefficients (s per unit of their term) for people: each column in the time unit
    that keeps its values between 1 and 1,000 (named in its header), fixed notation."""
    frame = pd.DataFrame(rows).astype(object)
    renamed = {}
    for column in coefficient_columns:
        if column not in frame:
            continue
        unit, scale = _time_unit(frame[column])
        frame[column] = _fixed_column(frame[column], scale)
        renamed[column] = f"{column} ({unit})"
    return frame.rename(columns=renamed)


def add_collection(report: Report, directory: Path) -> None:
    """Add a telemetry collection's section: energy per GPU and how it was measured, power and SM
    clock traces, and energy per phase where the collection has windows.  Raises
    :class:`~toolkit.errors.InputError` when ``directory`` holds no telemetry segments."""
    from collectors.telemetry.summary import load_telemetry, load_windows, summarize_telemetry

    telemetry = load_telemetry(directory)
    if telemetry.empty:
        raise InputError(directory, "holds no telemetry segments")
    simulated = bool((telemetry["backend"] == "sim").any())
    report.section(f"GPU telemetry: {report.display_path(directory)}", simulated)
    if simulated:
        report.banner("SIMULATED device: these traces come from wattlas's simulated GPU, not hardware.")
    summary = summarize_telemetry(telemetry).drop(columns=["host"], errors="ignore")
    summary, said = _hoist_constant(summary, ["gpu_name", "backend", "energy_method", "power_scope", "status"])
    report.table(summary, _caption("Per GPU: energy (J) and power (W)", said), ",.1f")
    report.figure(figures.telemetry_traces(telemetry), "Power (W) and SM clock (MHz) per GPU")
    windows = load_windows(directory)
    if not windows.empty:
        per_phase = windows.groupby("window", as_index=False).agg(
            windows=("run_id", "size"), gpu_seconds=("duration_s", "sum"), energy_j=("energy_j", "sum"),
            energy_method=("energy_method", lambda m: ", ".join(sorted(set(m.dropna()))) or None))
        per_phase["mean_power_per_gpu_w"] = per_phase["energy_j"] / per_phase["gpu_seconds"].where(per_phase["gpu_seconds"] > 0)
        per_phase, said = _hoist_constant(per_phase, ["energy_method"])
        report.table(per_phase, _caption("Energy per phase, all GPUs (J)", said), ",.1f")
        report.figure(figures.phase_energy(windows), "Mean power per GPU in each phase (W)")


def add_characterization(report: Report, bundle_path: Path, data_paths: list[Path], tbt_slo_s: float = 0.030) -> None:
    """Add a model bundle's section: held-out errors per candidate, coefficients of the terms,
    roofline and power models, predicted against measured on the measurement files ``data_paths``
    (none: no such plots), and adaptive chunk sizes for the TBT SLO ``tbt_slo_s`` (s) where the
    bundle has prefill and decode latency models."""
    from characterize.chunking import adaptive_chunks
    from characterize.importers import load_measurements
    from characterize.model_io import ModelBundle

    bundle = ModelBundle.load(bundle_path)
    report.section(f"Latency and power models: {report.display_path(bundle_path)}", bundle.simulated)
    if bundle.simulated:
        report.banner("Fitted to SIMULATED profiles.")
    rows = []
    for name, result in bundle.validation.items():
        for candidate, scores in result.items():
            if candidate == "selected" or not isinstance(scores, dict):
                continue
            selected = "selected" if candidate == result.get("selected") else ("diagnostic" if scores.get("diagnostic") else "not selected")
            rows.append({"model": name, "candidate": candidate, "selected": selected,
                         "cv_mape_pct": scores.get("cv_mape"), "extrapolation_mape_pct": scores.get("extrapolation_mape"),
                         "tp_transfer_mape_pct": scores.get("tp_transfer_mape")})
    if rows:
        report.table(pd.DataFrame(rows).astype(object), "Held-out error (%): grouped 5-fold CV, 4x context extrapolation and "
                     "leave-one-TP-out (- : not evaluated; diagnostic: scored, never selected)", ".2f")
    power_formula_said = False
    for model in bundle.models:
        where = f"{model.target}/{model.phase}"
        if model.kind == "terms":
            coef = _coefficient_table([{**g["key"], **dict(zip(model.terms, g["coef"])), "n": g["n"], "R2": g.get("rsquared")}
                                       for g in model.groups], list(model.terms))
            report.table(coef, f"{where}: latency coefficients per group (latency = sum of coefficient x term; each "
                         "coefficient in the unit its column names)", ".4f")
        elif model.kind == "roofline":  # max(compute piece, memory piece); no memory piece: compute alone
            names = [f"compute {t}" for t in model.terms] + [f"memory {t}" for t in model.memory_terms]
            coef = _coefficient_table([{**g["key"], **{f"compute {t}": c for t, c in zip(model.terms, g["coef"])},
                                        **{f"memory {t}": c for t, c in zip(model.memory_terms, g["memory_coef"] or [None] * len(model.memory_terms))},
                                        "n": g["n"]} for g in model.groups], names)
            report.table(coef, f"{where}: roofline pieces per group (latency = max of the compute and memory sums; each "
                         "coefficient in the unit its column names; - : no memory piece)", ".4f")
        elif model.kind == "power_saturating":
            if not power_formula_said:  # the formula once, not in every caption
                report.paragraph("Power models (W): P = min(power limit, p_idle_w + dynamic_w * s(f) * (1 - exp(-load / "
                                 "(load0 * (f / f_ref)^load0_clock_exponent)))), s(f) = (f / f_ref) * (v0 + (1 - v0) * f / f_ref)^2; "
                                 "load in tokens of the iteration; idle_w: measured at zero load.", "note")
                power_formula_said = True
            params = list(dict.fromkeys(name for g in model.groups
                                        for name in (g.get("param_names") or ["p_idle_w", "dynamic_w", "load0", "v0"]))) + ["idle_w"]
            coef = pd.DataFrame([{**g["key"], **dict(zip(g.get("param_names") or ["p_idle_w", "dynamic_w", "load0", "v0"], g["params"])),
                                  "idle_w": g.get("idle_w"), "n": g.get("n")} for g in model.groups]).astype(object)
            for column in params:  # W, tokens and plain factors: fixed notation, never 1e-24
                if column in coef:
                    coef[column] = _fixed_column(coef[column])
            coef = coef.rename(columns={"load0": "load0 (tokens)"})
            f_ref = getattr(model, "f_ref", None)
            limit = getattr(model, "power_limit_w", None)
            limit = f"power limit {limit:,.0f} W" if limit else "no power limit"
            report.table(coef, f"{where}: power model per group (W; f_ref {f_ref:,.0f} MHz, load = "
                         f"{getattr(model, 'load_column', None) or '-'}, {limit})"
                         if f_ref else f"{where}: power model per group (W; {limit})", ".4g")
        else:
            trees = len(getattr(model, "trees", []) or [])
            report.paragraph(f"{where}: {model.kind}, {trees:,} trees on {', '.join(getattr(model, 'features', []) or [])} "
                             "(no coefficients to show)", "note")
    frames = [load_measurements(p) for p in data_paths]
    if frames:
        frame = pd.concat(frames, ignore_index=True)
        names = {"latency_s": "latency (s)", "mean_power_w": "mean power (W)"}
        for target in ("latency_s", "mean_power_w"):
            parts = []
            for model in bundle.models:
                if model.target != target:
                    continue
                rows_ = frame[(frame["phase"] == model.phase) & frame[target].notna()]
                if len(rows_):
                    parts.append(rows_.assign(_pred=model.predict(rows_, strict=False)))
            if parts:
                data = pd.concat(parts)
                report.figure(figures.fit_diagnostics(data, data["_pred"].to_numpy(), target),
                              f"Predicted vs measured {names[target]}, on {', '.join(report.display_path(p) for p in data_paths)}")
    if bundle.find("latency_s", "prefill") is not None and bundle.find("latency_s", "decode") is not None:
        prefixes = [0] + [int(x) for x in np.geomspace(1024, 1 << 20, 11)]
        try:
            table = adaptive_chunks(bundle, tbt_slo_s, prefixes, batch_size=32, kv_tokens=4096, tp=1)
        except KeyError:
            table = None
        if table is not None:
            report.heading(f"Mnemosyne adaptive chunking (TBT SLO {tbt_slo_s * 1000:.0f} ms, 32 decodes at KV 4096, TP1)", 3)
            table = table.drop(columns=["tbt_slo_s"]).astype(object)
            table.loc[table["chunk_tokens"] == 0, "chunk_tokens"] = None  # no chunk keeps the SLO: unknown, not 0
            table, said = _hoist_constant(table, ["method"])
            report.table(table, _caption("Largest chunk (tokens) within the SLO per KV prefix; latency in s; "
                                         "- : even the smallest chunk misses the SLO", said), ",.4g")
            report.figure(figures.chunk_curve(table), "Largest prefill chunk that keeps the TBT SLO, by KV prefix "
                          "(prefixes where no chunk fits are left out)")


# (key in summary.json, row label, scale, format) of the replay summary table
SUMMARY_ROWS = [
    ("policy_name", "policy", None, None), ("trace", "trace", None, None), ("rate_scale", "rate scale (x)", 1, ",.3g"),
    ("requests", "requests", None, None), ("finished", "finished", None, None), ("dropped", "dropped", None, None),
    ("instances", "instances", None, None), ("gpus", "GPUs", None, None), ("duration_s", "duration (s)", 1, ",.0f"),
    ("ttft_p50_s", "TTFT p50 (ms)", 1e3, ",.1f"), ("ttft_p99_s", "TTFT p99 (ms)", 1e3, ",.1f"),
    ("tbt_p50_s", "TBT p50 (ms)", 1e3, ",.2f"), ("tbt_p99_s", "TBT p99 (ms)", 1e3, ",.2f"),
    ("e2e_p50_s", "E2E p50 (s)", 1, ",.3f"), ("e2e_p99_s", "E2E p99 (s)", 1, ",.3f"),
    ("slo_attainment", "SLO attainment (%)", 100, ".2f"),
    ("energy_kwh", "IT energy (kWh)", 1, ",.4f"), ("energy_busy_kwh", "IT energy busy (kWh)", 1, ",.4f"),
    ("energy_idle_kwh", "IT energy idle (kWh)", 1, ",.4f"), ("facility_energy_kwh", "facility energy (kWh)", 1, ",.4f"),
    ("peak_row_power_w", "peak cluster power (W)", 1, ",.0f"), ("row_power_p99_w", "cluster power p99 (W)", 1, ",.0f"),
    ("energy_per_output_token_j", "energy per output token (J)", 1, ",.3f"),
    ("carbon_kg", "carbon (kg CO2e)", 1, ",.4f"), ("gpu_hours", "GPU hours", 1, ",.3f"), ("cost_usd", "cost (USD)", 1, ",.2f"),
]


def _summary_cell(report: Report, key: str, value: object, summary: dict, scale, fmt):
    if value is None:
        return None
    if key == "trace":
        return mark(report.display_path(str(value)), synthetic=bool(summary.get("synthetic_trace")))
    if isinstance(value, bool) or scale is None:
        return value
    try:
        number = float(value) * scale
    except (TypeError, ValueError):
        return value
    return None if not np.isfinite(number) else format(number, fmt)


def add_replays(report: Report, run_dirs: list[Path], labels: list[str] | None = None, heading: str = "Trace replays") -> None:
    """Add a section comparing replay output directories (``wattlas replay run -o``): summaries side
    by side (latency percentiles, energy busy/idle and facility, cost), cluster power over time and
    its distribution, latency CDFs, and DynamoLLM plans and savings.  ``labels`` name the runs
    (None: the directory names).  Raises :class:`~toolkit.errors.InputError` for a directory
    without ``summary.json``."""
    summaries, requests, timelines = {}, {}, {}
    for i, run in enumerate(run_dirs):
        label = labels[i] if labels else run.name
        path = run / "summary.json"
        if not path.exists():
            raise InputError(run, "is not a replay output directory (no summary.json)")
        summaries[label] = json.loads(path.read_text())
        requests[label] = pd.read_parquet(run / "requests.parquet")
        timelines[label] = pd.read_parquet(run / "power_timeline.parquet")
    simulated = any(s.get("simulated_models") for s in summaries.values())
    synthetic = any(s.get("synthetic_trace") for s in summaries.values())
    report.section(heading, simulated)
    if simulated:
        report.banner("Replays use models fitted to SIMULATED profiles.")
    if synthetic:
        report.paragraph(Markup(mark("Traces marked", synthetic=True) + mark(" were generated by wattlas trace synth, not recorded.")),
                         "note")
    rows = []
    for key, name, scale, fmt in SUMMARY_ROWS:
        if not any(key in s for s in summaries.values()):
            continue
        rows.append({"quantity": name, **{label: _summary_cell(report, key, s.get(key), s, scale, fmt) for label, s in summaries.items()}})
    columns = ["quantity", *summaries]
    for start in range(0, len(summaries), 4):  # four runs a table at most: a wide comparison is split, not scrolled
        part = columns[:1] + columns[1 + start:1 + start + 4]
        report.table(pd.DataFrame(rows, columns=columns)[part].astype(object), "Summary per run (- : not in this run's summary)")
    report.figure(figures.power_timelines(timelines), "Cluster power over time (W, smoothed)")
    report.figure(figures.power_cdf(timelines), "Distribution of cluster power over time (W)")
    report.figure(figures.latency_cdfs(requests), "Latency distributions (finished requests)")
    for label, s in summaries.items():
        policy = s.get("policy") or {}
        if policy.get("name") == "dynamollm":
            classes = pd.DataFrame(policy["classes"])
            for column in ("clocks_used", "tps_used"):
                if column in classes:
                    classes[column] = classes[column].map(_join_values)
            classes = classes.rename(columns={"clocks_used": "clocks_used_mhz"})
            report.table(classes.astype(object), f"{label}: DynamoLLM plan per request class", ",.3g")
        for name, saved in (s.get("savings") or {}).items():  # vs_peak_static, vs_best_static: fractions
            if isinstance(saved, dict) and any(k in saved for k in ("energy", "carbon", "cost")):
                report.key_values({k: _saving(100 * v if v is not None else None) for k, v in saved.items()
                                   if k in ("energy", "carbon", "cost")},
                                  f"{label}: DynamoLLM against {name.replace('vs_', '')}")
        run = run_dirs[list(summaries).index(label)]
        if policy.get("name") == "dynamollm":
            _dynamollm_timeline(report, run, label, s)
        elif policy.get("name") == "polca":
            _polca_run_timeline(report, run, label, s, timelines[label])


def _policy_events(run: Path) -> pd.DataFrame | None:
    """A replay's policy events: ``events.parquet`` (DynamoLLM's), with the columns only
    ``policy_events.csv`` keeps (``active``, ``sm_clock_mhz``) added where that file has the same
    rows; else ``policy_events.csv`` alone; None without either."""
    parquet, csv = run / "events.parquet", run / "policy_events.csv"
    events = pd.read_parquet(parquet) if parquet.exists() else None
    extra = pd.read_csv(csv) if csv.exists() else None
    if events is None:
        return extra
    if extra is not None and len(extra) == len(events) and np.allclose(extra["t_s"], events["t_s"]):
        for column in ("active", "sm_clock_mhz"):
            if column in extra and column not in events:
                events[column] = extra[column].to_numpy()
    return events


def _dynamollm_timeline(report: Report, run: Path, label: str, summary: dict) -> None:
    """The per-class timeline of a DynamoLLM run (clock lanes, stacked active instances), or a note
    saying why there is none."""
    from .timelines import HIGHEST, dynamollm_timeline, highest_profiled_clock

    events = _policy_events(run)
    if events is None:
        report.paragraph(f"{label}: no events.parquet in the run directory, so no timeline of clock and instances per class.",
                         "note")
        return
    frame = dynamollm_timeline(events, summary)
    if not len(frame):
        report.paragraph(f"{label}: no DynamoLLM classes in the run, so no timeline.", "note")
        return
    top = highest_profiled_clock(summary, report.base)
    if top is not None:  # "the highest profiled clock" as the number it is
        frame["clock"] = [top if c == HIGHEST else c for c in frame["clock"]]
    changes = events[events["kind"].isin(["clock", "scale", "reshard"])] if "kind" in events else events
    report.figure(figures.dynamollm_timeline(frame),
                  f"{label}: DynamoLLM per request class over time: SM clock of the layout serving the class (MHz; top) "
                  f"and instances taking requests, stacked (bottom); from events.parquet, "
                  f"{len(changes):,} changes")


def _polca_run_timeline(report: Report, run: Path, label: str, summary: dict, timeline: pd.DataFrame) -> None:
    """Row power against the budget over a ``replay run --policy polca`` run, with its events."""
    from replay.engine import cluster_power

    from .timelines import polca_event_counts, polca_events_from_clock_changes, polca_panel

    policy = summary.get("policy") or {}
    if policy.get("budget_w") is None:
        return
    events = polca_events_from_clock_changes(_policy_events(run))
    panel = polca_panel(cluster_power(timeline), events, policy, f"{label}: {summary.get('instances', '-')} servers")
    report.figure(figures.polca_timeline([panel]),
                  f"{label}: POLCA row power against the budget ({float(policy['budget_w']):,.0f} W) over time, with "
                  f"the thresholds; shaded: caps or the power brake in effect; marked on top: capping, uncapping, "
                  f"brake (from the clock changes in policy_events.csv)")
    found = polca_event_counts(events)
    unseen = {what: int(policy.get(key) or 0) - found[what] for key, what in (("brake_events", "brake"),)}
    if unseen["brake"] > 0:  # the brake's clock raised to the profiled floor the caps already hold: no clock changed
        report.paragraph(f"{label}: the controller engaged the power brake {int(policy['brake_events']):,} time(s) "
                         f"({float(policy.get('braked_s') or 0):,.0f} s braked); {unseen['brake']:,} of them changed no "
                         "server's clock (the brake clock is raised to the lowest profiled clock), so the figure does "
                         "not mark them.", "note")


def _join_values(value) -> str | None:
    """A list of plan values as text: "1, 2" or "1,410, 1,980" (integers shown without ".0")."""
    if value is None:
        return None
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
    return ", ".join(f"{float(v):,.0f}" if float(v).is_integer() else f"{float(v):,.4g}" for v in values) or None


def _percent(value: object, scale: float = 1.0) -> float | None:
    """``value`` x ``scale`` as a finite number (a percent), None when unknown."""
    try:
        pct = scale * float(value)
    except (TypeError, ValueError):
        return None
    return pct if np.isfinite(pct) else None


def _saving(value) -> str | None:
    """A saving in percent as words: "saves 30.2 %", "costs 4.1 % more", "no change"."""
    pct = _percent(value)
    if pct is None:
        return None
    if abs(pct) < 0.05:
        return "no change"
    return f"saves {pct:.1f} %" if pct > 0 else f"costs {-pct:.1f} % more"


def _latency_change(value: object) -> str | None:
    """A latency change (a fraction) as words: "3.2 % slower", "1.0 % faster", "no change" (None: unknown)."""
    pct = _percent(value, 100)
    if pct is None:
        return None
    if abs(pct) < 0.05:
        return "no change"
    return f"{abs(pct):,.1f} % {'slower' if pct > 0 else 'faster'}"


def _polca_shown_additions(table: pd.DataFrame, available: list[int]) -> list[int]:
    """The additions whose timeline the report draws (at most four): the original row, the largest
    addition within the bounds with every smaller one passing, the first one past it, and the largest."""
    passes = [bool(v) if not isinstance(v, str) else v.strip().lower() == "true"
              for v in table.sort_values("servers_added")["within_bounds"]] if "within_bounds" in table else []
    best = 0
    for n, ok in enumerate(passes):
        if not ok:
            break
        best = n
    wanted = [0, best, best + 1, max(available) if available else 0]
    return [n for n in dict.fromkeys(wanted) if n in available]


def add_polca(report: Report, table_csv: Path, simulated: bool = False, timeline: Path | None = None) -> None:
    """Add the section of a ``wattlas replay polca-search`` CSV: capping per servers added,
    latency impact per priority, and the impact and capping time plotted by servers added; and,
    from the search's timeline (``timeline``; None: ``<CSV name>_timeline.parquet`` beside the
    CSV, written by ``replay.policies.polca.write_search_timeline``), the row's power against
    the budget over time with the thresholds and the capping events.  ``simulated``: the replays
    used models fitted to simulated profiles (marks the section; a timeline written as simulated
    marks it too)."""
    from .timelines import polca_event_counts, polca_panel, read_search_timeline

    table = pd.read_csv(table_csv)
    timeline = timeline if timeline is not None else table_csv.with_name(f"{table_csv.stem}_timeline.parquet")
    rows = settings = None
    if timeline.exists():
        rows, settings, timeline_simulated = read_search_timeline(timeline)
        simulated = simulated or timeline_simulated
    report.section("POLCA power oversubscription", simulated)
    report.paragraph("Each row adds servers (and proportional load) to a row with a fixed power budget; impact compares "
                     "the capped replay to the same servers without a power limit.", "note")
    seeds = table["seeds"].iloc[0] if "seeds" in table and table["seeds"].nunique() == 1 else None
    shown, said = _hoist_constant(table, ["budget_w"])
    said = said.replace("budget_w: ", "row power budget (W): ")
    power_cols = [c for c in ("servers_added", "servers", "peak_row_power_uncapped_w", "peak_row_power_capped_w", "over_budget_s",
                              "capping_events", "capped_low_s", "capped_all_s", "brake_events", "braked_s", "budget_w")
                  if c in shown]
    means = f"means over {int(seeds)} seed{'s' if seeds != 1 else ''} (peaks: the highest)" if seeds else ""
    report.table(shown[power_cols].astype(object), _caption("Row power (W) and capping per servers added; times in s", means, said),
                 ",.1f")
    impact = table[["servers_added"]].copy()
    for column in table.columns:
        if "_impact_" in column:
            impact[column.replace("_impact_", " E2E ")] = table[column].map(_latency_change)
    for column in ("energy_kwh", "within_bounds"):
        if column in table:
            impact[column] = table[column].map(lambda v: v if not isinstance(v, (bool, np.bool_)) else ("yes" if v else "no"))
    impact = impact.rename(columns={"energy_kwh": "IT energy (kWh)", "within_bounds": "within bounds"})
    report.table(impact.astype(object), "Latency change against the uncapped replay per priority (slower: capping costs "
                 "latency), IT energy and whether within the latency bounds", ",.4f")
    report.figure(figures.polca_impact(pd.read_csv(table_csv)), "p99 end-to-end latency change and capping time by servers added")
    if rows is None or settings is None or "budget_w" not in settings:
        report.paragraph(f"No row power timeline beside this search ({report.display_path(timeline)}): "
                         "replay.policies.polca.write_search_timeline writes it from the search's result.", "note")
        return
    available = sorted(int(n) for n in rows["servers_added"].unique())
    panels, counts = [], []
    servers = settings.get("servers")
    for n in _polca_shown_additions(table, available):
        mine = rows[rows["servers_added"] == n]
        power = mine[mine["kind"] == "row_power"][["t_s", "duration_s", "power_w"]].sort_values("t_s")
        events = mine[mine["kind"].isin(["command", "apply", "brake", "release"])][["t_s", "kind", "level", "power_w"]]
        match = table[table["servers_added"] == n]
        verdict = ""
        if len(match) and "within_bounds" in match:
            verdict = "; within the bounds" if str(match["within_bounds"].iloc[0]).lower() == "true" else "; outside the bounds"
        total = f" ({servers + n} servers)" if servers is not None else ""
        panels.append(polca_panel(power, events, settings, f"+{n} servers{total}{verdict}"))
        counts.append({"servers_added": n, **polca_event_counts(events),
                       "over_budget_s": float(power.loc[power["power_w"] > settings["budget_w"] * (1 + 1e-9), "duration_s"].sum())})
    report.figure(figures.polca_timeline(panels),
                  f"Row power against the budget ({settings['budget_w']:,.0f} W) over time, first seed of each addition shown; "
                  f"horizontal lines: the budget and the thresholds t2 (cap all), t1 (cap low priority) and uncap (caps "
                  f"lifted below); shaded: caps or the power brake in effect; marked on top: capping, uncapping, brake and "
                  f"its release as they took effect (decisions act {settings.get('actuation_delay_s', '-')} s later on "
                  f"readings {settings.get('telemetry_delay_s', '-')} s old)")
    report.table(pd.DataFrame(counts).astype(object), "Controller events in the replays shown (first seed): decisions taken, "
                 "cappings and uncappings that took effect, brakes and releases; seconds the metered row power was over "
                 "the budget", ",.0f")


def add_longctx(report: Report, table_csv: Path, simulated: bool = False) -> None:
    """Add the section of a ``wattlas replay longctx`` CSV: the table with the reason of every
    dropped run, and TTFT and TBT against context length per configuration.  ``simulated``: the
    sweep used models fitted to simulated profiles (marks the section)."""
    table = pd.read_csv(table_csv)
    report.section("Mnemosyne: long-context TTFT and TBT", simulated)
    report.paragraph("One long request arrives amid a steady stream of short ones. decode_tbt_max_s is the worst gap a "
                     "short request alive during the long prefill saw; long_tbt_mean_s the long request's own time "
                     "between tokens. Dropped: the KV did not fit the instance (the reason is given; its times are -).", "note")
    table = table.astype(object)
    if "dropped" in table:
        table["dropped"] = table["dropped"].map(lambda v: "yes" if str(v).strip().lower() in ("true", "1") else "no")
    table, said = _hoist_constant(table, ["tbt_slo_s"])
    said = said.replace("tbt_slo_s: ", "TBT SLO (s): ")
    keys = [c for c in ("config", "context_tokens") if c in table]
    reasons = table.pop("drop_reason") if "drop_reason" in table else None
    timing = [c for c in ("gpus", "ttft_s", "long_tbt_mean_s", "decode_tbt_max_s", "short_ttft_p50_s", "short_ttft_p99_s", "dropped")
              if c in table]
    report.table(table[keys + timing], _caption("Per configuration and context length; times in s", said), ",.4g")
    rest = [c for c in table.columns if c not in keys + timing and c != "long_tbt_s"]  # long_tbt_s: long_tbt_mean_s again
    if rest:
        report.table(table[keys + rest], "Parallelism, KV capacity and short requests during the long prefill", ",.4g")
    if reasons is not None:
        dropped = table[keys].assign(reason=reasons)[reasons.map(lambda r: isinstance(r, str) and r.strip() != "")]
        if len(dropped):
            report.table(dropped, "Why runs were dropped")
    report.figure(figures.longctx(pd.read_csv(table_csv)), "TTFT and TBT against context length per configuration "
                  "(dashed: the TBT SLO; dropped runs have no point)")
