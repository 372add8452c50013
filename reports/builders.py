"""Report sections from wattlas artifacts.  Each ``add_*`` adds to a :class:`Report`, so single
reports and the demo's combined report share one implementation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from toolkit.errors import InputError

from . import figures
from .html import Report


def add_collection(report: Report, directory: Path) -> None:
    """Add a telemetry collection's section: energy per GPU and how it was measured, power and SM
    clock traces, and energy per phase where the collection has windows.  Raises
    :class:`~toolkit.errors.InputError` when ``directory`` holds no telemetry segments."""
    from collectors.telemetry.summary import load_telemetry, load_windows, summarize_telemetry

    telemetry = load_telemetry(directory)
    if telemetry.empty:
        raise InputError(directory, "holds no telemetry segments")
    simulated = (telemetry["backend"] == "sim").any()
    report.simulated |= bool(simulated)
    report.heading(f"GPU telemetry: {directory}")
    if simulated:
        report.banner("SIMULATED device: these traces come from wattlas's simulated GPU, not hardware.")
    summary = summarize_telemetry(telemetry)
    report.table(summary.drop(columns=["host"]), "Per GPU: energy and how it was measured (energy_method)", ",.1f")
    report.figure(figures.telemetry_traces(telemetry), "Power and SM clock per GPU")
    windows = load_windows(directory)
    if not windows.empty:
        per_phase = windows.groupby("window", as_index=False).agg(
            windows=("run_id", "size"), gpu_seconds=("duration_s", "sum"), energy_j=("energy_j", "sum"),
            methods=("energy_method", lambda m: ", ".join(sorted(set(m.dropna())))))
        report.table(per_phase, "Energy per phase (all GPUs)", ",.1f")
        report.figure(figures.phase_energy(windows), "Mean power per GPU in each phase")


def add_characterization(report: Report, bundle_path: Path, data_paths: list[Path], tbt_slo_s: float = 0.030) -> None:
    """Add a model bundle's section: held-out errors per candidate, coefficients of the terms and
    roofline models, predicted against measured on the measurement files ``data_paths`` (none: no
    such plots), and adaptive chunk sizes for the TBT SLO ``tbt_slo_s`` (s) where the bundle has
    prefill and decode latency models."""
    from characterize.chunking import adaptive_chunks
    from characterize.importers import load_measurements
    from characterize.model_io import ModelBundle

    bundle = ModelBundle.load(bundle_path)
    report.simulated |= bundle.simulated
    report.heading(f"Latency and power models: {bundle_path.name}")
    if bundle.simulated:
        report.banner("Fitted to SIMULATED profiles.")
    rows = []
    for name, result in bundle.validation.items():
        for candidate, scores in result.items():
            if candidate == "selected" or not isinstance(scores, dict):
                continue
            rows.append({"model": name, "candidate": candidate, "selected": candidate == result.get("selected"),
                         "cv_mape_pct": scores.get("cv_mape"), "extrapolation_mape_pct": scores.get("extrapolation_mape")})
    if rows:
        report.table(pd.DataFrame(rows).astype(object), "Held-out error: grouped 5-fold CV and 4x context extrapolation", ".2f")
    for model in bundle.models:
        if model.kind == "terms":
            coef = pd.DataFrame([{**g["key"], **dict(zip(model.terms, g["coef"])), "n": g["n"], "R2": g["rsquared"]}
                                 for g in model.groups]).astype(object)
            report.table(coef, f"{model.target}/{model.phase}: coefficients per group", ".4g")
        elif model.kind == "roofline":  # max(compute piece, memory piece); no memory piece: compute alone
            coef = pd.DataFrame([{**g["key"], **{f"compute {t}": c for t, c in zip(model.terms, g["coef"])},
                                  **{f"memory {t}": c for t, c in zip(model.memory_terms, g["memory_coef"] or [None] * len(model.memory_terms))},
                                  "n": g["n"]} for g in model.groups]).astype(object)
            report.table(coef, f"{model.target}/{model.phase}: roofline pieces per group (latency = max of the two)", ".4g")
    frames = [load_measurements(p) for p in data_paths]
    if frames:
        frame = pd.concat(frames, ignore_index=True)
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
                report.figure(figures.fit_diagnostics(data, data["_pred"].to_numpy(), target), f"Predicted vs measured {target}")
    if bundle.find("latency_s", "prefill") is not None and bundle.find("latency_s", "decode") is not None:
        prefixes = [0] + [int(x) for x in np.geomspace(1024, 1 << 20, 11)]
        try:
            table = adaptive_chunks(bundle, tbt_slo_s, prefixes, batch_size=32, kv_tokens=4096, tp=1)
        except KeyError:
            table = None
        if table is not None:
            report.heading(f"Mnemosyne adaptive chunking (TBT SLO {tbt_slo_s * 1000:.0f} ms, 32 decodes at KV 4096, TP1)", 3)
            report.table(table.drop(columns=["tbt_slo_s"]), None, ",.4g")
            report.figure(figures.chunk_curve(table), "Largest prefill chunk that keeps the TBT SLO, by KV prefix")


def add_replays(report: Report, run_dirs: list[Path], labels: list[str] | None = None, heading: str = "Trace replays") -> None:
    """Add a section comparing replay output directories (``wattlas replay run -o``): summaries side
    by side, cluster power over time and its distribution, latency CDFs, and DynamoLLM plans and
    savings.  ``labels`` name the runs (None: the directory names).  Raises
    :class:`~toolkit.errors.InputError` for a directory without ``summary.json``."""
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
    report.simulated |= simulated
    report.heading(heading)
    if simulated:
        report.banner("Replays use models fitted to SIMULATED profiles.")
    if any(s.get("synthetic_trace") for s in summaries.values()):
        report.paragraph("Traces marked synthetic were generated by wattlas trace synth.", "note")
    keys = ["policy_name", "trace", "rate_scale", "requests", "finished", "dropped", "instances", "gpus", "ttft_p50_s", "ttft_p99_s", "tbt_p50_s",
            "tbt_p99_s", "e2e_p50_s", "slo_attainment", "energy_kwh", "carbon_kg", "gpu_hours", "cost_usd",
            "energy_per_output_token_j"]
    table = pd.DataFrame({label: {k: s.get(k) for k in keys} for label, s in summaries.items()})
    report.table(table.reset_index(names="quantity").astype(object), "Summary per run (columns)", ",.4g")
    report.figure(figures.power_timelines(timelines), "Cluster power over time")
    report.figure(figures.power_cdf(timelines), "Distribution of cluster power")
    report.figure(figures.latency_cdfs(requests), "Latency distributions")
    for label, s in summaries.items():
        policy = s.get("policy") or {}
        if policy.get("name") == "dynamollm":
            classes = pd.DataFrame(policy["classes"])
            for column in ("clocks_used", "tps_used"):
                classes[column] = classes[column].astype(str)
            report.table(classes.astype(object), f"{label}: DynamoLLM plan per request class", ",.3g")
        if "savings_vs_baseline" in s:
            report.key_values({f"{k.replace('_pct', '')} saved (%)": v for k, v in s["savings_vs_baseline"].items()},
                              f"{label}: savings against the static baseline")


def add_polca(report: Report, table_csv: Path) -> None:
    """Add the section of a ``wattlas replay polca-search`` CSV: the table, and latency impact and
    capping time by servers added."""
    table = pd.read_csv(table_csv)
    report.heading("POLCA power oversubscription")
    report.paragraph("Each row adds servers (and proportional load) to a row with a fixed power budget; impact compares "
                     "the capped replay to the same servers without a power limit.", "note")
    report.table(table.astype(object), "Servers added, capping and latency impact per priority", ",.4g")
    report.figure(figures.polca_impact(table), "p99 end-to-end latency impact and capping time by servers added")


def add_longctx(report: Report, table_csv: Path) -> None:
    """Add the section of a ``wattlas replay longctx`` CSV: the table, and TTFT and TBT against
    context length per configuration."""
    table = pd.read_csv(table_csv)
    report.heading("Mnemosyne: long-context TTFT and TBT")
    report.paragraph("One long request arrives amid a steady stream of short ones. decode_tbt_max_s is the worst gap a "
                     "short request alive during the long prefill saw; long_tbt_mean_s the long request's own time "
                     "between tokens. Dropped: the KV did not fit the instance.", "note")
    report.table(table.drop(columns=["drop_reason"]).astype(object), None, ",.4g")
    report.figure(figures.longctx(table), "TTFT and TBT against context length per configuration")
