"""``wattlas trace``: inspect, convert and synthesize request traces."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError, WattlasError

FORMAT_CHOICE = click.Choice(["auto", "azure", "splitwise", "vidur", "wattlas"])
# Above this size a CSV is processed in blocks (dask for stats, streaming for convert).
CHUNKED_BYTES = 256 * 1024 * 1024


def _is_large(path: Path, mode: str, allow_unsorted: bool = False) -> bool:
    """Whether ``path`` is read in blocks: CSV only (Parquet is columnar and read whole)."""
    if path.suffix == ".parquet" or path.is_dir():
        return False
    chunked = mode == "chunked" or (mode == "auto" and path.is_file() and path.stat().st_size > CHUNKED_BYTES)
    if chunked and allow_unsorted:
        # sorting needs the whole trace in memory: fail rather than ignore the flag
        raise WattlasError(f"{path}: --allow-unsorted sorts in memory and cannot be combined with chunked reading "
                           "(add --mode memory)")
    return chunked


def _label(meta: dict[str, str]) -> str:
    return "synthetic" if meta.get("wattlas.synthetic") == "true" else ""


@click.group()
def trace() -> None:
    """Inspect, convert and synthesize request traces (Azure, Splitwise, Vidur, Parquet)."""


@trace.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=FORMAT_CHOICE, default="auto", show_default=True, help="Input trace format.")
@click.option("--mode", type=click.Choice(["auto", "memory", "chunked"]), default="auto", show_default=True,
              help="chunked: read in blocks with dask (automatic above 256 MiB).")
@click.option("--scheduler", default=None, help="dask.distributed scheduler address for chunked mode.")
@click.option("--allow-unsorted", is_flag=True, help="Sort out-of-order arrivals instead of failing (memory mode).")
@click.option("--json", "as_json", is_flag=True, help="Print statistics as JSON.")
def stats(path: Path, fmt: str, mode: str, scheduler: str | None, allow_unsorted: bool, as_json: bool) -> None:
    """Arrival rate, inter-arrival CV and token-length percentiles of a trace."""
    from ..console import progress_bar
    from ..jsonio import dump_json
    from .stats import finalize, format_summary, summarize_trace

    label = ""
    if _is_large(path, mode, allow_unsorted):
        from .large import summarize_csv_chunked

        client = None
        if scheduler:
            from distributed import Client

            client = Client(scheduler)
        try:
            with progress_bar(None, f"reading {path.name} in blocks", "block", tick_s=0.5) as bar, _dask_progress(bar):
                result = finalize(summarize_csv_chunked(path, fmt, client=client))
        finally:
            if client is not None:
                client.close()
    else:
        from .formats import read_trace
        from ..parquet_io import artifact_metadata

        with progress_bar(None, f"reading {path.name}", tick_s=0.5, bar_format="{desc}: {elapsed}"):
            table = read_trace(path, fmt, allow_unsorted=allow_unsorted)
            result = summarize_trace(table)
        label = _label(artifact_metadata(table.schema))
    if as_json:
        click.echo(dump_json({"source": str(path), "label": label or None, **result}))
    else:
        click.echo(format_summary(result, str(path), label))


def _dask_progress(bar):
    """A context in which dask's local scheduler counts finished blocks on ``bar`` (nothing when the
    bar is off, or for a distributed client, which runs its own scheduler)."""
    import contextlib

    if bar.disable:
        return contextlib.nullcontext()
    from dask.callbacks import Callback

    class Blocks(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):  # noqa: D401 - dask's hook
            bar.update(1)

    return Blocks()


def _counting(bar):
    """A streaming-conversion ``select`` that keeps every row and counts each validated chunk's
    rows on ``bar``."""
    def count(table):
        bar.update(table.num_rows)
        return table, False
    return count


@trace.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=FORMAT_CHOICE, default="auto", show_default=True)
@click.option("--mode", type=click.Choice(["auto", "memory", "chunked"]), default="auto", show_default=True)
@click.option("--allow-unsorted", is_flag=True, help="Sort out-of-order arrivals instead of failing (memory mode).")
@click.option("--days", type=click.IntRange(min=1), help="Keep the first N days after the first request (CSV, streamed).")
@click.option("--sample", type=float, help="Keep each request with probability F (seeded thinning; CSV, streamed).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --sample.")
def convert(src: Path, dst: Path, fmt: str, mode: str, allow_unsorted: bool, days: int | None, sample: float | None,
            seed: int) -> None:
    """Convert a trace to canonical Parquet (or wattlas CSV when DST ends in .csv).

    --days/--sample take a subset while streaming, e.g. of the Azure 2024 week files
    (AzureLLMInferenceTrace_conv_1week.csv): the same subset the azure2024-*-week synth presets make.
    """
    from ..console import progress_bar
    from ..jsonio import ensure_writable_file
    from .formats import convert_trace_streaming, read_trace, write_trace

    ensure_writable_file(dst)  # a read-only or mistyped destination fails before the work
    if days is not None or sample is not None:
        from .week import convert_week_file

        if allow_unsorted or dst.suffix == ".csv" or src.suffix == ".parquet" or src.is_dir():
            raise InputError(src, "--days/--sample stream a CSV trace in file order into Parquet "
                             "(no --allow-unsorted, no Parquet source, no .csv destination)")
        try:
            with progress_bar(None, f"converting {src.name}", tick_s=0.5, bar_format="{desc}: {elapsed}"):
                rows = convert_week_file(src, dst, days=days, sample=1.0 if sample is None else sample, seed=seed, fmt=fmt)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
        click.echo(f"wrote {rows:,} requests to {dst}")
        return
    if _is_large(src, mode, allow_unsorted):
        if dst.suffix == ".csv":
            raise InputError(dst, "chunked conversion writes Parquet; give a .parquet destination")
        with progress_bar(None, f"converting {src.name}", "request", tick_s=0.5, unit_scale=True) as bar:
            rows = convert_trace_streaming(src, dst, fmt, select=_counting(bar))
    else:
        with progress_bar(None, f"converting {src.name}", tick_s=0.5, bar_format="{desc}: {elapsed}"):
            table = read_trace(src, fmt, allow_unsorted=allow_unsorted)
            write_trace(table, dst)
        rows = table.num_rows
    click.echo(f"wrote {rows:,} requests to {dst}")


WEEK_PRESET_NAMES = ("azure2024-conv-week", "azure2024-code-week")  # = toolkit.traces.week.WEEK_PRESETS
# SynthSpec options that make no sense for a week preset (its length, count, dates and lengths are published)
_NOT_FOR_WEEK = {"duration_s": "--duration (use --days)",
                 "mean_rate": "--rate (the count is the published one; use --sample)",
                 "input_median": "--input-median (lengths follow the 2023 quantile tables)",
                 "output_median": "--output-median (lengths follow the 2023 quantile tables)"}


@trace.command()
@click.option("--preset", type=click.Choice(["conv", "code", "longctx", *WEEK_PRESET_NAMES]), default="conv",
              show_default=True,
              help="azure2024-*-week: the Azure LLM inference 2024 week traces (27.3 M / 16.8 M requests).")
@click.option("--duration", "duration_s", type=float, help="Trace length in seconds.")
@click.option("--rate", "mean_rate", type=float, help="Mean arrival rate, requests/s.")
@click.option("--cv", type=float, help="Inter-arrival coefficient of variation (1 = Poisson).")
@click.option("--diurnal-amplitude", type=float, help="Relative diurnal swing of the rate, 0..1.")
@click.option("--start-hour", type=float, help="Time of day the trace starts, hours.")
@click.option("--input-median", type=float)
@click.option("--output-median", type=float)
@click.option("--high-priority-fraction", type=float)
@click.option("--burst-fraction", type=float, help="Share of time in bursts (two-state Markov modulation).")
@click.option("--burst-multiplier", type=float, help="Rate in a burst relative to calm.")
@click.option("--burst-mean", "burst_mean_s", type=float, help="Mean burst length, s.")
@click.option("--days", type=click.IntRange(1, 7), help="Week presets: the first N days (default 7).")
@click.option("--sample", type=float, help="Week presets: keep each request with probability F (seeded thinning).")
@click.option("--weekend-factor", type=float, help="Week presets: Saturday/Sunday rate relative to weekdays (assumed).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the trace's statistics as JSON (as `trace stats --json`).")
def synth(preset: str, start_hour: float | None, output: Path, days: int | None, sample: float | None,
          weekend_factor: float | None, as_json: bool, **overrides: float | int | None) -> None:
    """Generate a production-like trace (diurnal, bursty, lognormal lengths), seedable.

    The week presets write Parquet row groups day by day in bounded memory; see
    toolkit/traces/week.py for every parameter and its source.
    """
    if preset in WEEK_PRESET_NAMES:
        _synth_week(preset, output, days, sample, weekend_factor, start_hour, overrides, as_json)
        return
    for name, value in (("--days", days), ("--sample", sample), ("--weekend-factor", weekend_factor)):
        if value is not None:
            raise click.BadParameter(f"{name} applies to the week presets ({', '.join(WEEK_PRESET_NAMES)})")
    from ..console import closing_line
    from .formats import write_trace
    from .stats import format_summary, summarize_trace
    from .synth import spec_for, synthesize

    if start_hour is not None:
        overrides["start_time_of_day_s"] = start_hour * 3600.0
    try:
        spec = spec_for(preset, **overrides)
        table = synthesize(spec, preset)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    write_trace(table, output)
    result = summarize_trace(table)
    if as_json:
        from ..jsonio import dump_json

        click.echo(dump_json({"source": str(output), "label": "synthetic", **result}))
    else:
        click.echo(format_summary(result, str(output), "synthetic"))
    closing_line(f"wrote {table.num_rows:,} requests to {output}", as_json)


def _synth_week(preset: str, output: Path, days: int | None, sample: float | None, weekend_factor: float | None,
                start_hour: float | None, overrides: dict, as_json: bool = False) -> None:
    from ..console import closing_line, progress_bar
    from ..jsonio import dump_json, ensure_writable_file
    from .stats import finalize, format_summary
    from .week import WEEK_DAYS, day_labels, expected_per_day, week_preset, write_week_trace

    refused = [flag for key, flag in _NOT_FOR_WEEK.items() if overrides.get(key) is not None]
    if start_hour is not None:
        refused.append("--start-hour (the dates are the published ones)")
    if refused:
        raise click.BadParameter(f"{refused[0]} does not apply to {preset}")
    if output.suffix == ".csv":
        raise click.BadParameter("week presets write Parquet (row groups per day); give a .parquet output")
    seed = overrides.pop("seed")
    days = WEEK_DAYS if days is None else days
    sample = 1.0 if sample is None else sample
    try:
        spec = week_preset(preset, weekend_factor=weekend_factor,
                           **{k: v for k, v in overrides.items() if k not in _NOT_FOR_WEEK})
        ensure_writable_file(output)
        with progress_bar(None, f"synthesizing {preset} ({days} day(s))", tick_s=0.5, bar_format="{desc}: {elapsed}"):
            result = write_week_trace(spec, output, days=days, sample=sample, seed=seed)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    expected = expected_per_day(spec, seed)[:days] * sample
    per_day = [{"day": label, "requests": int(got), "expected": float(want)}
               for label, got, want in zip(day_labels(spec, days), result.per_day, expected)]
    wrote = f"wrote {result.requests:,} requests to {output}"
    if as_json:
        stats = finalize(result.partial) if result.requests > 1 else {"requests": result.requests}
        click.echo(dump_json({"source": str(output), "label": "synthetic", **stats, "per_day": per_day,
                              "row_groups": result.row_groups, "published_requests": spec.requests, "days": days,
                              "sample": sample}))
        closing_line(wrote, as_json=True)
        return
    if result.requests > 1:
        click.echo(format_summary(finalize(result.partial), str(output), "synthetic"))
    click.echo(f"  per day (UTC)       requests (expected), {result.row_groups} row groups")
    for day in per_day:
        click.echo(f"    {day['day']}      {day['requests']:>12,}  ({day['expected']:,.0f})")
    click.echo(f"  total               {result.requests:,} of the published {spec.requests:,} over 7 days "
               f"x {days}/7 days x sample {sample:g}")
    closing_line(wrote)
