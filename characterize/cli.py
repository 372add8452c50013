"""``wattlas characterize``: fit, inspect, apply and validate latency/power models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd

from toolkit.errors import InputError
from toolkit.validation import MAX_CLOCK_MHZ, MAX_TOKENS, check_number

FORMATS = click.Choice(["auto", "wattlas", "vidur-mlp", "vidur-attention", "splitwise", "mlenergy", "mlenergy-v2",
                        "mlenergy-v1", "vllm-bench", "power-vs-load"])


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
def fit(inputs: tuple[Path, ...], output: Path, fmt: str, where: tuple[str, ...], phases: tuple[str, ...],
        tree_estimators: int) -> None:
    """Fit latency and power models per phase, select by held-out MAPE, save JSON."""
    from .fitting import MIN_ROWS, fit_bundle

    frame = _load_all(inputs, fmt, where)
    simulated = bool(frame["backend"].astype(str).str.startswith("sim").any())
    metadata = {"sources": [str(p) for p in inputs], "where": list(where), "rows": int(len(frame)),
                "simulated": simulated, "gpu_name": sorted(frame["gpu_name"].dropna().astype(str).unique().tolist()),
                "model": sorted(frame["model"].dropna().astype(str).unique().tolist())}
    bundle = fit_bundle(frame, metadata, list(phases) or None, tree_estimators, progress=lambda m: click.echo(m, err=True))
    for reason in bundle.metadata.get("skipped", []):
        click.echo(f"warning: {reason}", err=True)
    if not bundle.models:  # an empty bundle would only fail later, in predict or replay
        raise InputError(inputs[0] if len(inputs) == 1 else ", ".join(map(str, inputs)),
                         f"no model could be fitted ({len(frame)} rows; each model needs {MIN_ROWS}): "
                         + "; ".join(bundle.metadata.get("skipped", [])))
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
    from .power_model import PARAM_RULES

    bundle = ModelBundle.load(bundle_path)
    click.echo(_format_validation(bundle))
    for model in bundle.models:
        if model.kind == "terms":
            for group in model.groups:
                coef = ", ".join(f"{t}={c:.4g}" for t, c in zip(model.terms, group["coef"]))
                r2 = f", R2={group['rsquared']:.4f}" if group.get("rsquared") is not None else ""
                click.echo(f"  {model.target}/{model.phase} {group['key']}: {coef} (n={group.get('n', '?')}{r2})")
        elif model.kind == "roofline":
            for group in model.groups:
                compute = ", ".join(f"{t}={c:.4g}" for t, c in zip(model.terms, group["coef"]))
                memory = ("none (compute-bound throughout)" if group["memory_coef"] is None else
                          ", ".join(f"{t}={c:.4g}" for t, c in zip(model.memory_terms, group["memory_coef"])))
                click.echo(f"  {model.target}/{model.phase} {group['key']}: max(compute: {compute}; memory: {memory}) "
                           f"(n={group.get('n', '?')})")
        elif model.kind == "power_saturating":
            for group in model.groups:
                params = ", ".join(f"{n}={v:.4g}" for n, v in zip(PARAM_RULES, group["params"]))
                click.echo(f"  {model.target}/{model.phase} {group['key']}: {params} (n={group.get('n', '?')})")
        else:
            click.echo(f"  {model.target}/{model.phase}: {model.kind}, {len(model.trees)} trees on {model.features}")


OPTIONS = {"tp": "--tp", "sm_clock_mhz": "--freq", "model": "--model"}


def _complete_point(model, frame: pd.DataFrame) -> None:
    """Give ``frame`` (one point) every column ``model`` needs that no option set: the one value
    its groups were fitted at, or a usage error naming the option to choose among several."""
    needed = getattr(model, "group_keys", None)
    if needed is None:  # a tree model: its features
        needed = [f for f in model.features if f in OPTIONS]
    for column in needed:
        if column in frame or (column == "sm_clock_mhz" and model.kind in ("terms", "roofline")):
            continue  # (terms models take the highest profiled clock)
        values = sorted({g["key"][column] for g in getattr(model, "groups", [])}, key=str)
        if len(values) == 1:
            frame[column] = values[0]
            continue
        fitted = f" ({', '.join(map(str, values))})" if values else ""
        raise click.UsageError(f"the {model.target}/{model.phase} model depends on {column}{fitted}: "
                               f"give {OPTIONS[column]}")


class Number(click.ParamType):
    """A command-line number checked as a settings value is (``check_number``): ``nan``, ``inf``
    and out-of-range values are usage errors, not predictions."""

    name = "number"

    def __init__(self, **rules: Any) -> None:
        self.rules = rules

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float | int:
        """``value`` as a number within this type's rules; anything else fails as a usage error."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        try:
            return check_number(number, None, param.name if param else "value", **self.rules)
        except InputError as exc:
            self.fail(exc.message, param, ctx)


TOKENS = click.IntRange(0, MAX_TOKENS)
CLOCK = Number(minimum=0, exclusive_minimum=True, maximum=MAX_CLOCK_MHZ)


@characterize.command()
@click.argument("bundle_path", type=click.Path(path_type=Path))
@click.option("--phase", required=True)
@click.option("-c", "--chunk", "chunk_tokens", type=TOKENS, default=0)
@click.option("-p", "--prefix", "prefix_tokens", type=TOKENS, default=0)
@click.option("-b", "--batch", "batch_size", type=TOKENS, default=0)
@click.option("-k", "--kv", "kv_tokens", type=TOKENS, default=0)
@click.option("--tp", type=click.IntRange(1), default=None)
@click.option("--freq", "sm_clock_mhz", type=CLOCK, default=None)
@click.option("--model", "model_name", default=None, help="Model name, for a bundle fitted on several.")
def predict(bundle_path: Path, phase: str, tp: int | None, sm_clock_mhz: float | None, model_name: str | None,
            **point: int) -> None:
    """Predict latency (with 95% CI where the model has one), power and energy of one iteration."""
    from .model_io import ModelBundle

    bundle = ModelBundle.load(bundle_path)
    frame = pd.DataFrame([point])
    frame["load_tokens"] = frame["chunk_tokens"] + frame["batch_size"]
    for column, value in (("tp", tp), ("sm_clock_mhz", sm_clock_mhz), ("model", model_name)):
        if value is not None:
            frame[column] = value
    for model in (bundle.find("latency_s", phase), bundle.find("mean_power_w", phase)):
        if model is not None:
            _complete_point(model, frame)

    def possible(model, value: float, what: str, unit: str) -> float:
        # a bundle can pass every load check and still extrapolate to nonsense here (a negative
        # coefficient outweighing the rest): refuse to print it
        if not np.isfinite(value) or value < 0:
            where = ", ".join(f"{k}={v:g}" for k, v in frame.iloc[0].items())
            raise InputError(bundle_path, f"the {model.target}/{model.phase} model predicts an impossible {what} "
                                          f"({value:g} {unit}) at {where}",
                             key=f"models[{next(i for i, m in enumerate(bundle.models) if m is model)}]")
        return value

    # an overflow or a nan is refused by possible(), not warned about on the way
    with np.errstate(over="ignore", invalid="ignore"):
        try:
            latency_model = bundle.find("latency_s", phase)
            if latency_model is None:
                raise KeyError(f"no latency model for phase {phase!r} (has: {bundle.phases('latency_s')})")
            latency = possible(latency_model, float(latency_model.predict(frame)[0]), "latency", "s")
            text = f"latency {latency * 1000:.3f} ms"
            if hasattr(latency_model, "predict_interval"):
                lo, hi = (float(x[0]) for x in latency_model.predict_interval(frame))
                if np.isfinite(lo) and np.isfinite(hi):  # (no interval rather than a nan one)
                    text += f" (95% CI {max(lo, 0.0) * 1000:.3f}-{hi * 1000:.3f} ms)"  # latency is >= 0
            power_model = bundle.find("mean_power_w", phase)
            if power_model is not None:
                power = possible(power_model, float(power_model.predict(frame)[0]), "power", "W")
                energy = possible(power_model, power * latency, "energy", "J")
                text += f", power {power:.1f} W, energy {energy:.4g} J"
        except KeyError as exc:
            raise click.ClickException(str(exc.args[0])) from None
    click.echo(text + (" [SIMULATED]" if bundle.simulated else ""))


@characterize.command()
@click.argument("bundle_path", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=FORMATS, default="auto", show_default=True)
@click.option("--where", multiple=True)
def validate(bundle_path: Path, inputs: tuple[Path, ...], fmt: str, where: tuple[str, ...]) -> None:
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
@click.option("--tbt-slo", type=Number(minimum=0, exclusive_minimum=True, maximum=3600), default=0.030, show_default=True,
              help="Time-between-tokens SLO, s.")
@click.option("--batch", "batch_size", type=TOKENS, default=32, show_default=True, help="Co-batched decodes.")
@click.option("--kv", "kv_tokens", type=TOKENS, default=4096, show_default=True, help="KV length of each decode.")
@click.option("--max-prefix", type=click.IntRange(1024, MAX_TOKENS), default=1 << 20, show_default=True)
@click.option("--tp", type=click.IntRange(1), default=None)
@click.option("--freq", "sm_clock_mhz", type=CLOCK, default=None)
@click.option("--json", "as_json", is_flag=True)
def chunks(bundle_path: Path, tbt_slo: float, batch_size: int, kv_tokens: int, max_prefix: int, tp: int | None,
           sm_clock_mhz: float | None, as_json: bool) -> None:
    """Mnemosyne adaptive chunk sizes: the largest chunk per KV prefix within the TBT SLO."""
    from .chunking import adaptive_chunks
    from .model_io import ModelBundle

    bundle = ModelBundle.load(bundle_path)
    prefixes = [0] + [int(x) for x in np.geomspace(1024, max_prefix, 11)]
    try:
        table = adaptive_chunks(bundle, tbt_slo, prefixes, batch_size, kv_tokens, tp, sm_clock_mhz)
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from None
    if as_json:  # strict JSON: a chunk with no latency has null, never NaN
        from toolkit.jsonio import dump_json

        click.echo(dump_json(table.to_dict(orient="records"), indent=1))
        return
    label = " [SIMULATED]" if bundle.simulated else ""
    click.echo(f"adaptive chunks for TBT <= {tbt_slo * 1000:.1f} ms with {batch_size} decodes at KV {kv_tokens}{label} "
               f"({table['method'].iloc[0]})")
    for row in table.itertuples():
        latency = "-" if np.isnan(row.predicted_latency_s) else f"{row.predicted_latency_s * 1000:.1f} ms"
        check = "" if np.isnan(row.mixed_model_latency_s) else f"; mixed model says {row.mixed_model_latency_s * 1000:.1f} ms"
        click.echo(f"  prefix {row.prefix_tokens:>9,}  chunk {row.chunk_tokens:>6,}  ({latency}{check})")
