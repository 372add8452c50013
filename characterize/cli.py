"""``wattlas characterize``: fit, inspect, apply and validate latency/power models."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import pandas as pd

from toolkit.errors import InputError

FORMATS = click.Choice(["auto", "wattlas", "vidur-mlp", "vidur-attention", "splitwise", "mlenergy"])


def _load_all(paths, fmt: str, where: tuple[str, ...]) -> pd.DataFrame:
    from .importers import load_measurements

    import warnings

    frames = []
    for path in paths:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            frame = load_measurements(path, fmt)
        for warning in caught:
            if issubclass(warning.category, UserWarning) and str(path) in str(warning.message):
                click.echo(f"warning: {warning.message}", err=True)
        frame["source"] = str(path)
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    for clause in where:
        if "=" not in clause:
            raise click.BadParameter(f"expected COLUMN=VALUE, got {clause!r}", param_hint="--where")
        column, value = clause.split("=", 1)
        if column not in frame:
            raise click.BadParameter(f"no column {column!r} to filter on", param_hint="--where")
        frame = frame[frame[column].astype(str) == value]
    if frame.empty:
        raise InputError(", ".join(map(str, paths)), "no rows left to fit (check --where)")
    return frame


@click.group()
def characterize() -> None:
    """Fit, inspect and validate latency, power and energy models."""


@characterize.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Model bundle (JSON).")
@click.option("--format", "fmt", type=FORMATS, default="auto", show_default=True)
@click.option("--where", multiple=True, help="Keep rows with COLUMN=VALUE (e.g. gpu_name=H100); repeatable.")
@click.option("--phase", "phases", multiple=True, help="Only these phases.")
@click.option("--trees", "tree_estimators", type=int, default=300, show_default=True, help="Boosting rounds of the tree rival.")
def fit(inputs, output: Path, fmt: str, where, phases, tree_estimators: int) -> None:
    """Fit latency and power models per phase, select by held-out MAPE, save JSON."""
    from .fitting import fit_bundle

    frame = _load_all(inputs, fmt, where)
    simulated = bool(frame["backend"].astype(str).str.startswith("sim").any())
    metadata = {"sources": [str(p) for p in inputs], "where": list(where), "rows": int(len(frame)),
                "simulated": simulated, "gpu_name": sorted(frame["gpu_name"].dropna().astype(str).unique().tolist()),
                "model": sorted(frame["model"].dropna().astype(str).unique().tolist())}
    bundle = fit_bundle(frame, metadata, list(phases) or None, tree_estimators, progress=lambda m: click.echo(m, err=True))
    bundle.save(output)
    click.echo(_format_validation(bundle))
    click.echo(f"wrote {output}")


def _format_validation(bundle) -> str:
    label = " [SIMULATED data]" if bundle.simulated else ""
    lines = [f"model bundle{label}: {len(bundle.models)} models"]
    for name, report in bundle.validation.items():
        parts = []
        for candidate, scores in report.items():
            if candidate == "selected" or not isinstance(scores, dict):
                continue
            cv, ex = scores.get("cv_mape"), scores.get("extrapolation_mape")
            text = f"{candidate}: cv {cv:.2f}%" if cv is not None else f"{candidate}: cv n/a"
            if ex is not None:
                text += f", extrapolation {ex:.2f}%"
            if "error" in scores:
                text = f"{candidate}: {scores['error']}"
            parts.append(text)
        lines.append(f"  {name:<24} selected {report.get('selected')}  ({'; '.join(parts)})")
    return "\n".join(lines)


@characterize.command()
@click.argument("bundle_path", type=click.Path(path_type=Path))
def show(bundle_path: Path) -> None:
    """Summarize a model bundle: models, terms, coefficients, validation."""
    from .model_io import ModelBundle

    bundle = ModelBundle.load(bundle_path)
    click.echo(_format_validation(bundle))
    for model in bundle.models:
        if model.kind == "terms":
            for group in model.groups:
                coef = ", ".join(f"{t}={c:.4g}" for t, c in zip(model.terms, group["coef"]))
                click.echo(f"  {model.target}/{model.phase} {group['key']}: {coef} (n={group['n']}, R2={group['rsquared']:.4f})")
        elif model.kind == "roofline":
            for group in model.groups:
                compute = ", ".join(f"{t}={c:.4g}" for t, c in zip(model.terms, group["coef"]))
                memory = ("none (compute-bound throughout)" if group["memory_coef"] is None else
                          ", ".join(f"{t}={c:.4g}" for t, c in zip(model.memory_terms, group["memory_coef"])))
                click.echo(f"  {model.target}/{model.phase} {group['key']}: max(compute: {compute}; memory: {memory}) "
                           f"(n={group['n']})")
        elif model.kind == "power_saturating":
            for group in model.groups:
                params = ", ".join(f"{n}={v:.4g}" for n, v in zip(group["param_names"], group["params"]))
                click.echo(f"  {model.target}/{model.phase} {group['key']}: {params} (n={group['n']})")
        else:
            click.echo(f"  {model.target}/{model.phase}: {model.kind}, {len(model.trees)} trees on {model.features}")


@characterize.command()
@click.argument("bundle_path", type=click.Path(path_type=Path))
@click.option("--phase", required=True)
@click.option("-c", "--chunk", "chunk_tokens", type=int, default=0)
@click.option("-p", "--prefix", "prefix_tokens", type=int, default=0)
@click.option("-b", "--batch", "batch_size", type=int, default=0)
@click.option("-k", "--kv", "kv_tokens", type=int, default=0)
@click.option("--tp", type=int, default=None)
@click.option("--freq", "sm_clock_mhz", type=float, default=None)
def predict(bundle_path: Path, phase: str, tp, sm_clock_mhz, **point) -> None:
    """Predict latency (with 95% CI where the model has one), power and energy of one iteration."""
    from .model_io import ModelBundle

    bundle = ModelBundle.load(bundle_path)
    frame = pd.DataFrame([point])
    frame["load_tokens"] = frame["chunk_tokens"] + frame["batch_size"]
    if tp is not None:
        frame["tp"] = tp
    if sm_clock_mhz is not None:
        frame["sm_clock_mhz"] = sm_clock_mhz
    try:
        latency_model = bundle.find("latency_s", phase)
        if latency_model is None:
            raise KeyError(f"no latency model for phase {phase!r} (has: {bundle.phases('latency_s')})")
        latency = float(latency_model.predict(frame)[0])
        text = f"latency {latency * 1000:.3f} ms"
        if hasattr(latency_model, "predict_interval"):
            lo, hi = latency_model.predict_interval(frame)
            text += f" (95% CI {lo[0] * 1000:.3f}-{hi[0] * 1000:.3f} ms)"
        power_model = bundle.find("mean_power_w", phase)
        if power_model is not None:
            power = float(power_model.predict(frame)[0])
            text += f", power {power:.1f} W, energy {power * latency:.4g} J"
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from None
    click.echo(text + (" [SIMULATED]" if bundle.simulated else ""))


@characterize.command()
@click.argument("bundle_path", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=FORMATS, default="auto", show_default=True)
@click.option("--where", multiple=True)
def validate(bundle_path: Path, inputs, fmt: str, where) -> None:
    """MAPE of a saved bundle on other measurements, per phase and target."""
    from .metrics import mape
    from .model_io import ModelBundle

    bundle = ModelBundle.load(bundle_path)
    frame = _load_all(inputs, fmt, where)
    for model in bundle.models:
        rows = frame[(frame["phase"] == model.phase) & frame[model.target].notna()]
        if rows.empty:
            continue
        predicted = model.predict(rows, strict=False)
        covered = int(np.isfinite(predicted).sum())
        click.echo(f"{model.target}/{model.phase}: MAPE {mape(rows[model.target], predicted):.2f}% on {covered:,} of {len(rows):,} rows")


@characterize.command()
@click.argument("bundle_path", type=click.Path(path_type=Path))
@click.option("--tbt-slo", type=float, default=0.030, show_default=True, help="Time-between-tokens SLO, s.")
@click.option("--batch", "batch_size", type=int, default=32, show_default=True, help="Co-batched decodes.")
@click.option("--kv", "kv_tokens", type=int, default=4096, show_default=True, help="KV length of each decode.")
@click.option("--max-prefix", type=int, default=1 << 20, show_default=True)
@click.option("--tp", type=int, default=None)
@click.option("--freq", "sm_clock_mhz", type=float, default=None)
@click.option("--json", "as_json", is_flag=True)
def chunks(bundle_path: Path, tbt_slo: float, batch_size: int, kv_tokens: int, max_prefix: int, tp, sm_clock_mhz, as_json) -> None:
    """Mnemosyne adaptive chunk sizes: the largest chunk per KV prefix within the TBT SLO."""
    from .chunking import adaptive_chunks
    from .model_io import ModelBundle

    bundle = ModelBundle.load(bundle_path)
    prefixes = [0] + [int(x) for x in np.geomspace(1024, max_prefix, 11)]
    try:
        table = adaptive_chunks(bundle, tbt_slo, prefixes, batch_size, kv_tokens, tp, sm_clock_mhz)
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from None
    if as_json:
        click.echo(table.to_json(orient="records", indent=1))
        return
    label = " [SIMULATED]" if bundle.simulated else ""
    click.echo(f"adaptive chunks for TBT <= {tbt_slo * 1000:.1f} ms with {batch_size} decodes at KV {kv_tokens}{label} "
               f"({table['method'].iloc[0]})")
    for row in table.itertuples():
        latency = "-" if np.isnan(row.predicted_latency_s) else f"{row.predicted_latency_s * 1000:.1f} ms"
        check = "" if np.isnan(row.mixed_model_latency_s) else f"; mixed model says {row.mixed_model_latency_s * 1000:.1f} ms"
        click.echo(f"  prefix {row.prefix_tokens:>9,}  chunk {row.chunk_tokens:>6,}  ({latency}{check})")
