"""``wattlas characterize``: fit and validate latency/power models."""

import click


@click.group()
def characterize() -> None:
    """Fit, inspect and validate latency, power and energy models."""
