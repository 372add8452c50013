"""``wattlas demo``: the end-to-end pipeline on the embedded defaults, no GPU needed.

Stages run in order and each writes its artifacts under the output directory.  Stages of the
pipeline that are not built yet are listed as such rather than faked.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

SAMPLE_TRACES = Path(__file__).resolve().parent.parent / "sample_traces"


def _sample_trace(name: str, out: Path) -> Path:
    """The shipped sample trace, or a freshly synthesized one when running from a wheel."""
    shipped = SAMPLE_TRACES / f"{name}.parquet"
    if shipped.exists():
        return shipped
    from .traces.formats import write_trace
    from .traces.synth import spec_for, synthesize

    preset = name.split("_")[1]
    return write_trace(synthesize(spec_for(preset, duration_s=3600.0, seed=0), preset), out / f"{name}.parquet")


@click.command()
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("wattlas-demo"), show_default=True)
def demo(output: Path) -> None:
    """Run the pipeline end to end on the simulated device and the shipped sample traces."""
    from .traces.formats import read_trace
    from .traces.stats import format_summary, summarize_trace

    output.mkdir(parents=True, exist_ok=True)
    summaries = {}
    for name in ("synth_conv_1h", "synth_code_1h"):
        path = _sample_trace(name, output)
        stats = summarize_trace(read_trace(path))
        summaries[name] = stats
        click.echo(format_summary(stats, str(path), "synthetic"))
    (output / "trace_stats.json").write_text(json.dumps(summaries, indent=2))
    click.echo(f"wrote {output / 'trace_stats.json'}")
