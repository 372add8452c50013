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
@click.option("--json", "as_json", is_flag=True,
              help="Print the bundle's summary as JSON (output, models, validation, skipped, warnings).")
def fit(inputs: tuple[Path, ...], output: Path, fmt: str, where: tuple[str, ...], phases: tuple[str, ...],
        tree_estimators: int, as_json: bool) -> None:
    """Fit latency and power models per phase, select by held-out MAPE, save JSON."""
    from toolkit.console import closing_line, progress_bar, step_progress

    from .fitting import IDLE_PHASE, MIN_ROWS, bundle_metadata, fit_bundle

    frame = _load_all(inputs, fmt, where)
    metadata = bundle_metadata(frame, [str(p) for p in inputs], list(where))
    to_fit = [p for p in (list(phases) or sorted(frame["phase"].dropna().unique())) if p != IDLE_PHASE]
    with progress_bar(len(to_fit), None, "phase", tick_s=0.5) as bar:
        bundle = fit_bundle(frame, metadata, list(phases) or None, tree_estimators, progress=step_progress(bar))
    for reason in bundle.metadata.get("skipped", []) + bundle.metadata.get("warnings", []):
        click.echo(f"warning: {reason}", err=True)
    if not bundle.models:  # an empty bundle would only fail later, in predict or replay
        raise InputError(inputs[0] if len(inputs) == 1 else ", ".join(map(str, inputs)),
                         f"no model could be fitted ({len(frame)} rows; each model needs {MIN_ROWS}): "
                         + "; ".join(bundle.metadata.get("skipped", [])))
    bundle.save(output)
    if as_json:
        from toolkit.jsonio import dump_json

        click.echo(dump_json(_bundle_json(bundle, output)))
    else:
        click.echo(_format_validation(bundle))
    closing_line(f"wrote {output}", as_json)


def _bundle_json(bundle, path: Path) -> dict:
    """A bundle's summary for --json: what it holds and how each model was selected."""
    models = []
    for model in bundle.models:
        entry = {"target": model.target, "phase": model.phase, "kind": model.kind,
                 "selected": (bundle.validation.get(f"{model.target}/{model.phase}") or {}).get("selected"),
                 "support": getattr(model, "support", None) or None, "tp_variable": bool(getattr(model, "tp_variable", False))}
        if model.kind == "trees":
            entry.update(features=list(model.features), trees=len(model.trees))
        else:
            data = model.to_json()
            entry.update({k: v for k, v in data.items() if k not in entry})
        models.append(entry)
    return {"bundle": str(path), "label": "[SIMULATED]" if bundle.simulated else None, "simulated": bundle.simulated,
            "holds": bundle.identities() or None, "models": models, "validation": bundle.validation,
            "skipped": bundle.metadata.get("skipped") or None, "warnings": bundle.metadata.get("warnings") or None,
            "metadata": bundle.metadata}


SCORE_NAMES = (("cv_mape", "cv"), ("extrapolation_mape", "context extrapolation"), ("tp_transfer_mape", "TP transfer"))


def _format_validation(bundle) -> str:
    """The bundle's validation report for people: per model the selected candidate and every
    candidate's held-out scores (diagnostics marked: scored, never selected)."""
    label = " [SIMULATED data]" if bundle.simulated else ""
    lines = [f"model bundle{label}: {len(bundle.models)} models"]
    held = bundle.identities()
    if held:
        lines.append("  holds " + "; ".join(f"{name}: {', '.join(values)}" for name, values in held.items())
                     + " (predict and replay need --gpu/--model, or `characterize select`)")
    for name, report in bundle.validation.items():
        parts = []
        for candidate, scores in report.items():
            if candidate == "selected" or not isinstance(scores, dict):
                continue
            if "error" in scores:
                parts.append(f"{candidate}: {scores['error']}")
                continue
            shown = [f"{label} {scores[key]:.2f}%" for key, label in SCORE_NAMES if scores.get(key) is not None]
            tag = " (diagnostic)" if scores.get("diagnostic") else ""
            parts.append(f"{candidate}{tag}: " + (", ".join(shown) or "no held-out score"))
        lines.append(f"  {name:<24} selected {report.get('selected')}  ({'; '.join(parts)})")
    for note in bundle.metadata.get("warnings", []):
        lines.append(f"  warning: {note}")
    return "\n".join(lines)


@characterize.command()
@click.argument("bundle_path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="The summary as JSON: models (coefficients; trees counted), validation.")
def show(bundle_path: Path, as_json: bool) -> None:
    """Summarize a model bundle: models, terms, coefficients, validation."""
    from .model_io import ModelBundle
    from .power_model import PARAM_RULES

    bundle = ModelBundle.load(bundle_path)
    if as_json:
        from toolkit.jsonio import dump_json

        click.echo(dump_json(_bundle_json(bundle, bundle_path)))
        return
    click.echo(_format_validation(bundle))
    for model in bundle.models:
        support = getattr(model, "support", None)
        if support:
            clocks = support.get("sm_clock_mhz")
            click.echo(f"  {model.target}/{model.phase} fitted on TP {', '.join(map(str, support.get('tp') or ['-']))}"
                       + (f", {clocks[0]:g}-{clocks[1]:g} MHz" if clocks else "")
                       + ("; TP is a variable" if model.tp_variable else ""))
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


@characterize.command("select")
@click.argument("bundle_path", type=click.Path(path_type=Path))
@click.option("--gpu", "gpu_name", default=None, help="Keep this GPU's models.")
@click.option("--model", "model_name", default=None, help="Keep this model's models.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="The narrowed bundle (JSON).")
def select(bundle_path: Path, gpu_name: str | None, model_name: str | None, output: Path) -> None:
    """Narrow a bundle fitted on several GPUs or models to one, for commands without --gpu/--model."""
    from .model_io import ModelBundle

    bundle = ModelBundle.load(bundle_path).select(gpu_name=gpu_name, model=model_name)
    left = bundle.identities()
    bundle.save(output)
    click.echo(f"wrote {output}" + (f"; it still holds several: {left}" if left else ""))


OPTIONS = {"tp": "--tp", "sm_clock_mhz": "--freq", "model": "--model", "gpu_name": "--gpu", "dtype": "--dtype"}


def _complete_point(model, frame: pd.DataFrame) -> None:
    """Give ``frame`` (one point) every column ``model`` needs that no option set: the one value
    its groups were fitted at, or a usage error naming the option to choose among several."""
    needed = getattr(model, "group_keys", None)
    if needed is None:  # a tree model: its features
        needed = [f for f in model.features if f in OPTIONS]
    if getattr(model, "tp_variable", False) and "tp" not in frame:
        tps = (model.support or {}).get("tp") or []
        if len(tps) == 1:
            frame["tp"] = tps[0]
        else:
            raise click.UsageError(f"the {model.target}/{model.phase} model depends on tp (fitted on "
                                   f"{', '.join(map(str, tps)) or 'several'}; TP is a variable): give --tp")
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
@click.option("--gpu", "gpu_name", default=None, help="GPU name, for a bundle fitted on several.")
@click.option("--allow-extrapolation", is_flag=True,
              help="Predict beyond the profiled clocks (or at another TP where one was profiled); marked.")
@click.option("--json", "as_json", is_flag=True,
              help="The prediction as JSON: latency_s, latency_ci_s, power_w, energy_j (null where the bundle has none).")
def predict(bundle_path: Path, phase: str, tp: int | None, sm_clock_mhz: float | None, model_name: str | None,
            gpu_name: str | None, allow_extrapolation: bool, as_json: bool, **point: int) -> None:
    """Predict latency (with 95% CI where the model has one), power and energy of one iteration."""
    from .model_io import ModelBundle

    bundle = ModelBundle.load(bundle_path).select(gpu_name=gpu_name, model=model_name)
    frame = pd.DataFrame([point])
    frame["load_tokens"] = frame["chunk_tokens"] + frame["batch_size"]
    if point["chunk_tokens"]:
        frame["prefill_sequences"] = 1
    for column, value in (("tp", tp), ("sm_clock_mhz", sm_clock_mhz)):
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
            predicted = latency_model.predict(frame, allow_extrapolation=allow_extrapolation)
            latency = possible(latency_model, float(predicted[0]), "latency", "s")
            extrapolated = bool(latency_model.outside_support(frame).any())
            interval = None
            if hasattr(latency_model, "predict_interval"):
                lo, hi = (float(x[0]) for x in latency_model.predict_interval(frame))
                if np.isfinite(lo) and np.isfinite(hi):  # (no interval rather than a nan one)
                    interval = (max(lo, 0.0), hi)  # latency is >= 0
            power = energy = None
            power_model = bundle.find("mean_power_w", phase)
            if power_model is not None:
                power = possible(power_model, float(power_model.predict(frame)[0]), "power", "W")
                energy = possible(power_model, power * latency, "energy", "J")
        except KeyError as exc:
            raise click.ClickException(str(exc.args[0])) from None
    if as_json:
        from toolkit.jsonio import dump_json

        click.echo(dump_json({"phase": phase, "point": frame.iloc[0].to_dict(), "latency_s": latency,
                              "latency_ci_s": list(interval) if interval else None, "power_w": power, "energy_j": energy,
                              "extrapolated": extrapolated, "simulated": bundle.simulated,
                              "label": "[SIMULATED]" if bundle.simulated else None}))
        return
    text = f"latency {latency * 1000:.3f} ms"
    if extrapolated:
        text += " [EXTRAPOLATED beyond the profiled TP/clock]"
    if interval:
        text += f" (95% CI {interval[0] * 1000:.3f}-{interval[1] * 1000:.3f} ms)"
    if power is not None:
        text += f", power {power:.1f} W, energy {_energy(energy)}"
    click.echo(text + (" [SIMULATED]" if bundle.simulated else ""))


def _energy(joules: float) -> str:
    """An energy for people: fixed notation at about 4 significant digits, never 1.2e+04 ("12000 J",
    "0.0123 J"; no thousands separator, so the figure still reads as one number)."""
    from toolkit.console import human_number

    return f"{human_number(joules, 4).replace(',', '')} J"


@characterize.command()
@click.argument("bundle_path", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=FORMATS, default="auto", show_default=True)
@click.option("--where", multiple=True)
@click.option("--gpu", "gpu_name", default=None, help="GPU name, for a bundle fitted on several.")
@click.option("--model", "model_name", default=None, help="Model name, for a bundle fitted on several.")
@click.option("--allow-extrapolation", is_flag=True, help="Score rows beyond the profiled clocks/TP too (counted).")
@click.option("--json", "as_json", is_flag=True, help='{"phases": {PHASE: {"mape", "p90_ape", "covered", "rows"}}} (fractions).')
def validate(bundle_path: Path, inputs: tuple[Path, ...], fmt: str, where: tuple[str, ...], gpu_name: str | None,
             model_name: str | None, allow_extrapolation: bool, as_json: bool) -> None:
    """Error of a saved bundle on other measurements, per phase and target; rows it cannot predict
    are counted and explained, never scored as NaN."""
    from toolkit.jsonio import dump_json

    from .model_io import ModelBundle
    from .validation_report import score_bundle

    bundle = ModelBundle.load(bundle_path).select(gpu_name=gpu_name, model=model_name)
    frame = _load_all(inputs, fmt, where)
    result = score_bundle(bundle, frame, allow_extrapolation)
    if as_json:
        click.echo(dump_json(result))
        return
    label = " [SIMULATED models]" if bundle.simulated else ""
    if not result["phases"]:
        click.echo(f"no rows of {', '.join(map(str, inputs))} match a phase the bundle models{label}")
    for name, scores in [(f"latency_s/{p}", v) for p, v in result["phases"].items()] + \
            [(f"mean_power_w/{p}", v) for p, v in result["power"].items()]:
        error = ("-" if scores["mape"] is None else
                 f"MAPE {100 * scores['mape']:.2f}% (p90 {100 * scores['p90_ape']:.2f}%)")
        extrapolated = f", {scores['extrapolated']:,} extrapolated" if scores["extrapolated"] else ""
        click.echo(f"{name}: {error} on {scores['covered']:,} of {scores['rows']:,} rows{extrapolated}{label}")
        for reason in scores.get("uncovered", []):
            click.echo(f"  not covered: {reason}")
    for warning in result.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)


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


@characterize.command("compose")
@click.option("--mlp", "mlp_path", type=click.Path(path_type=Path), required=True,
              help="Vidur operator profile (mlp.csv: linear ops vs tokens per TP).")
@click.option("--attention", "attention_path", type=click.Path(path_type=Path), default=None,
              help="Vidur attention.csv; without it, a roofline of the GPU's peaks.")
@click.option("--all-reduce", "all_reduce_path", type=click.Path(path_type=Path), default=None,
              help="Vidur all_reduce.csv (needed for TP > 1).")
@click.option("--send-recv", "send_recv_path", type=click.Path(path_type=Path), default=None,
              help="Vidur send_recv.csv (needed for PP > 1).")
@click.option("--preset", default=None, help="Model shape preset (llama3-8b, llama2-70b, tiny); the options below override it.")
@click.option("--name", default=None, help="Name of an explicit shape (default: the preset's, else 'custom').")
@click.option("--layers", type=click.IntRange(1), default=None)
@click.option("--hidden", type=click.IntRange(1), default=None, help="Default: the profile's n_embd.")
@click.option("--heads", type=click.IntRange(1), default=None, help="Default: the profile's n_head.")
@click.option("--kv-heads", type=click.IntRange(1), default=None, help="Default: the profile's n_kv_head.")
@click.option("--vocab", type=click.IntRange(1), default=None, help="Default: the profile's vocab_size.")
@click.option("--intermediate", type=click.IntRange(1), default=None, help="MLP width; default: the profile's n_expanded_embd.")
@click.option("--gated-mlp/--no-gated-mlp", "gated", default=None, help="Default: gated for a preset, else the profile's.")
@click.option("--tp", "tps", default=None, help="TP degrees, comma-separated (default: every TP the profile has that can be composed).")
@click.option("--pp", type=click.IntRange(1, 1024), default=1, show_default=True, help="Pipeline stages (send/recv per boundary).")
@click.option("--gpu", type=click.Choice(["a100", "h100"]), default=None, help="Default: from the mlp profile's file name.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Model bundle (JSON).")
@click.option("--json", "as_json", is_flag=True, help="Print a summary as JSON.")
def compose(mlp_path: Path, attention_path: Path | None, all_reduce_path: Path | None, send_recv_path: Path | None,
            preset: str | None, name: str | None, layers: int | None, hidden: int | None, heads: int | None,
            kv_heads: int | None, vocab: int | None, intermediate: int | None, gated: bool | None, tps: str | None,
            pp: int, gpu: str | None, output: Path, as_json: bool) -> None:
    """Compose a replayable whole-iteration model bundle from operator profiles (as Vidur does)."""
    from toolkit.model_shapes import PRESETS

    from .compose import ComposeShape, build_composer, compose_bundle, gpu_of_name, read_mlp_profile

    if preset is not None and preset not in PRESETS:
        raise click.BadParameter(f"{preset!r} is not one of {', '.join(PRESETS)}", param_hint="--preset")
    if preset is None and layers is None:
        raise click.UsageError("give --preset or --layers (with --hidden, --heads, ... where they differ from the profile's)")
    gpu = gpu or gpu_of_name(mlp_path)
    if gpu is None:
        raise click.UsageError(f"the file name {mlp_path.name!r} names no GPU: give --gpu")
    profile = read_mlp_profile(mlp_path)
    explicit = {"layers": layers, "hidden": hidden, "heads": heads, "kv_heads": kv_heads, "vocab": vocab,
                "intermediate": intermediate, "gated": gated}
    try:
        if preset is not None:
            shape = ComposeShape.from_preset(preset, **explicit, name=name)
        else:
            p = profile.shape
            defaults = {"hidden": p["n_embd"], "heads": p["n_head"], "kv_heads": p["n_kv_head"], "vocab": p["vocab_size"],
                        "intermediate": p["n_expanded_embd"], "gated": p["gated"]}
            fields = {k: (v if v is not None else defaults.get(k)) for k, v in explicit.items()}
            shape = ComposeShape(name=name or "custom", **fields).checked()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    composer = build_composer(shape, gpu, profile, attention_path, all_reduce_path, send_recv_path)
    if tps is None:
        chosen = []
        for tp in sorted(profile.curves):
            try:
                composer.check_tp(tp, pp)
                chosen.append(tp)
            except ValueError as exc:
                click.echo(f"warning: TP {tp} left out: {exc}", err=True)
        if not chosen:
            raise click.UsageError("no TP degree of the profile can be composed (see the warnings)")
    else:
        try:
            chosen = sorted({int(v) for v in tps.split(",") if v.strip()})
        except ValueError:
            raise click.BadParameter(f"expected comma-separated integers, got {tps!r}", param_hint="--tp") from None
        if not chosen or min(chosen) < 1:
            raise click.BadParameter(f"expected TP degrees >= 1, got {tps!r}", param_hint="--tp")
    sources = [p for p in (mlp_path, attention_path, all_reduce_path, send_recv_path) if p is not None]
    try:
        bundle, frame = compose_bundle(composer, chosen, pp, sources)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    bundle.save(output)
    fits = {phase: {k: bundle.validation[f"latency_s/{phase}"]["physical"].get(k) for k in ("cv_mape", "grid_mape", "grid_max_ape")}
            for phase in ("prefill", "decode")}
    examples, chunk = {}, min(2048, profile.max_tokens)
    for tp in chosen:
        decode = composer.iteration("decode", 32, 1024, tp, pp)
        prefill = composer.iteration("prefill", chunk, 0, tp, pp)
        examples[str(tp)] = {"decode_b32_k1024_ms": round(float(decode["total"]) * 1e3, 3),
                             f"prefill_c{chunk}_p0_ms": round(float(prefill["total"]) * 1e3, 3)}
    summary = f"wrote {output}: {shape.name} on {gpu.upper()} at TP {','.join(map(str, chosen))} (PP {pp}), composed from " \
              f"{', '.join(p.name for p in sources)}; fit vs composed grid MAPE prefill {fits['prefill']['grid_mape']:.1f}%, " \
              f"decode {fits['decode']['grid_mape']:.1f}%"
    if as_json:
        from toolkit.jsonio import dump_json

        click.echo(dump_json({"output": str(output), "model": bundle.metadata["model"], "model_shape": shape.to_json(),
                              "gpu": gpu, "tp": chosen, "pp": pp, "sources": bundle.metadata["sources"],
                              "fit": fits, "composed_ms": examples, "assumptions": bundle.metadata["assumptions"],
                              **({"pp_transfer_s": bundle.metadata["pp_transfer_s"]} if "pp_transfer_s" in bundle.metadata else {})},
                             indent=1))
        click.echo(summary, err=True)
        return
    for line in bundle.metadata["assumptions"]:
        click.echo(f"  assumed: {line}")
    for tp, values in examples.items():
        click.echo(f"  tp={tp}: decode 32 x 1024 KV {values['decode_b32_k1024_ms']:.2f} ms, "
                   f"prefill {chunk} tokens {values[f'prefill_c{chunk}_p0_ms']:.2f} ms (composed, with PP send/recv)")
    click.echo(summary)
