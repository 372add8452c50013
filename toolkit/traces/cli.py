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
            result = finalize(summarize_csv_chunked(path, fmt, client=client))
        finally:
            if client is not None:
                client.close()
    else:
        from .formats import read_trace
        from ..parquet_io import artifact_metadata

        table = read_trace(path, fmt, allow_unsorted=allow_unsorted)
        result = summarize_trace(table)
        label = _label(artifact_metadata(table.schema))
    if as_json:
        click.echo(dump_json({"source": str(path), "label": label or None, **result}))
    else:
        click.echo(format_summary(result, str(path), label))


@trace.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=FORMAT_CHOICE, default="auto", show_default=True)
@click.option("--mode", type=click.Choice(["auto", "memory", "chunked"]), default="auto", show_default=True)
@click.option("--allow-unsorted", is_flag=True, help="Sort out-of-order arrivals instead of failing (memory mode).")
def convert(src: Path, dst: Path, fmt: str, mode: str, allow_unsorted: bool) -> None:
    """Convert a trace to canonical Parquet (or wattlas CSV when DST ends in .csv)."""
    from ..jsonio import ensure_writable_file
    from .formats import convert_trace_streaming, read_trace, write_trace

    ensure_writable_file(dst)  # a read-only or mistyped destination fails before the work
    if _is_large(src, mode, allow_unsorted):
        if dst.suffix == ".csv":
            raise InputError(dst, "chunked conversion writes Parquet; give a .parquet destination")
        rows = convert_trace_streaming(src, dst, fmt)
    else:
        table = read_trace(src, fmt, allow_unsorted=allow_unsorted)
        write_trace(table, dst)
        rows = table.num_rows
    click.echo(f"wrote {rows:,} requests to {dst}")


@trace.command()
@click.option("--preset", type=click.Choice(["conv", "code", "longctx"]), default="conv", show_default=True)
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
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
def synth(preset: str, start_hour: float | None, output: Path, **overrides: float | int | None) -> None:
    """Generate a production-like trace (diurnal, bursty, lognormal lengths), seedable."""
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
    click.echo(format_summary(summarize_trace(table), str(output), "synthetic"))
