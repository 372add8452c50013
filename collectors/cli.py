"""``wattlas collect``: GPU telemetry collection."""

import click


@click.group()
def collect() -> None:
    """Sample GPU telemetry (NVML or the simulated device) and profile workloads."""
