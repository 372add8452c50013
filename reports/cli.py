"""``wattlas report``: self-contained HTML reports."""

import click


@click.group()
def report() -> None:
    """Write self-contained HTML reports."""
