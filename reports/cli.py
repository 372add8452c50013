"""``wattlas report``: self-contained HTML reports."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def report() -> None:
    """Write self-contained HTML reports."""


def _write(rep, output: Path) -> None:
    rep.save(output)
    label = " [contains SIMULATED figures]" if rep.simulated else ""
    click.echo(f"wrote {output} ({rep.figures} figures){label}")


@report.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
def collection(directory: Path, output: Path) -> None:
    """Telemetry collection: per-GPU energy and method, traces, phase energy."""
    from toolkit.jsonio import ensure_writable_file

    from .builders import add_collection
    from .html import Report

    ensure_writable_file(output)  # fail before building the report
    rep = Report("wattlas collection report", base=output.parent)
    rep.subtitle = rep.display_path(directory)
    add_collection(rep, directory)
    _write(rep, output)


@report.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--data", "data_paths", multiple=True, type=click.Path(path_type=Path), help="Measurements for fit diagnostics.")
@click.option("--tbt-slo", type=float, default=0.030, show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
def characterization(bundle: Path, data_paths: tuple[Path, ...], tbt_slo: float, output: Path) -> None:
    """Model bundle: validation errors, coefficients, fit diagnostics, adaptive chunks."""
    from toolkit.jsonio import ensure_writable_file

    from .builders import add_characterization
    from .html import Report

    ensure_writable_file(output)  # fail before building the report
    rep = Report("wattlas characterization report", base=output.parent)
    rep.subtitle = rep.display_path(bundle)
    add_characterization(rep, bundle, list(data_paths), tbt_slo)
    _write(rep, output)


@report.command("replay")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
def replay_report(runs: tuple[Path, ...], output: Path) -> None:
    """One or more replay output directories: summaries, power timelines and CDFs, latency CDFs."""
    from toolkit.jsonio import ensure_writable_file

    from .builders import add_replays
    from .html import Report

    ensure_writable_file(output)  # fail before building the report
    rep = Report("wattlas replay report", base=output.parent)
    rep.subtitle = ", ".join(rep.display_path(r) for r in runs)
    add_replays(rep, list(runs))
    _write(rep, output)


@report.command("polca")
@click.argument("search_csv", type=click.Path(path_type=Path))
@click.option("--timeline", type=click.Path(path_type=Path), default=None,
              help="The search's row power timeline (Parquet; default: SEARCH_CSV's name + _timeline.parquet beside it).")
@click.option("--simulated", is_flag=True, help="Mark the section [SIMULATED] (a timeline written from simulated models "
                                                "marks it anyway).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
def polca_report(search_csv: Path, timeline: Path | None, simulated: bool, output: Path) -> None:
    """POLCA search: capping and latency impact per servers added, row power against the budget over time."""
    from toolkit.errors import InputError
    from toolkit.jsonio import ensure_writable_file

    from .builders import add_polca
    from .html import Report

    ensure_writable_file(output)  # fail before building the report
    if not search_csv.is_file():
        raise InputError(search_csv, "does not exist (a CSV written by `wattlas replay polca-search -o`)")
    if timeline is not None and not timeline.is_file():
        raise InputError(timeline, "does not exist")
    rep = Report("wattlas POLCA report", base=output.parent)
    rep.subtitle = rep.display_path(search_csv)
    add_polca(rep, search_csv, simulated, timeline)
    _write(rep, output)
