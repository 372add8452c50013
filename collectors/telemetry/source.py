"""What every telemetry backend provides: GPU identities and one reading per GPU per call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# Columns of telemetry_samples a backend fills; host, backend, gpu identity and times are added
# by the sampler.  A value a GPU cannot report is None, never 0.
READING_COLUMNS = (
    "nvml_timestamp_us", "power_instant_w", "power_avg_w", "energy_j", "power_limit_w",
    "enforced_power_limit_w", "sm_clock_mhz", "mem_clock_mhz", "clocks_event_reasons", "pstate",
    "gpu_util_pct", "mem_util_pct", "mem_used_bytes", "mem_total_bytes", "temp_gpu_c", "temp_mem_c",
    "pcie_tx_kbps", "pcie_rx_kbps", "nvlink_tx_kib", "nvlink_rx_kib", "power_scope",
)


@dataclass(frozen=True)
class GpuInfo:
    """A GPU's identity as the source reports it; ``error`` set when it could not be opened."""
    index: int
    uuid: str | None
    name: str | None
    error: str | None = None  # set when the GPU could not be opened: it is reported lost at once


class GpuLost(Exception):
    """The GPU fell off the bus (or needs a reset); its stream ends, other GPUs go on."""


class DriverUnavailable(Exception):
    """The driver stopped answering for every GPU (unloaded, reloading, version mismatch).

    Not a fault of one GPU: the sampler records the outage, retries :meth:`TelemetrySource.reopen`
    with back-off, and starts a new energy-counter epoch when the driver is back.
    """


class TelemetrySource(Protocol):
    """What every telemetry backend provides: GPU identities and one reading per GPU per call."""
    backend: str  # "nvml" or "sim"

    @property
    def simulated(self) -> bool:
        """Whether the readings come from a simulated device (then labelled [SIMULATED])."""

    def open(self) -> list[GpuInfo]:
        """Open the device and return its GPUs."""

    def read(self, gpu: int, slow: bool) -> dict:
        """All READING_COLUMNS for one GPU; ``slow`` also reads the metrics that block (PCIe)."""

    def read_energy_power(self, gpu: int) -> tuple[float | None, float | None]:
        """(energy counter J, power W) read at once, for precise window boundaries."""

    def close(self) -> None:
        """Release the device."""

    # Optional: ``reopen() -> list[GpuInfo]`` re-initializes after DriverUnavailable (NVML has it).


def power_for_integration(reading: dict) -> float | None:
    """Instant power where the GPU reports it, else its averaged power."""
    power = reading.get("power_instant_w")
    return power if power is not None else reading.get("power_avg_w")
