"""``wattlas replay``: replay request traces through a simulated cluster."""

import click


@click.group()
def replay() -> None:
    """Replay request traces through a simulated cluster under a policy."""
