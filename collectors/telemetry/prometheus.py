"""Prometheus export with dcgm-exporter metric names: a scrape endpoint and a node-exporter textfile.

Both come from one :class:`TelemetryCollector` (a ``prometheus_client`` custom collector over the
latest sample of every GPU), so they always agree.  Units follow dcgm-exporter: power W, energy
mJ, clocks MHz, temperature C, utilization %, framebuffer MiB, with its labels (``gpu``, ``UUID``,
``modelName``, ``Hostname``) plus ``backend`` (``sim`` marks the simulated device).  A reading the
GPU does not report is left out, never exported as 0.

The energy counter appears twice: ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` in mJ under
dcgm-exporter's exact series name, so dashboards built on it work unchanged (``prometheus_client``
names a counter's series ``*_total``, so this one is exposed untyped), and
``wattlas_gpu_energy_joules_total``, a counter in Prometheus's base unit whose resets (a driver
reload) ``rate()`` handles.  Values are written in full precision: a 2.5e9 J counter moves by its
real millijoules, not in the 10 kJ steps of a 6-digit format.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, UnknownMetricFamily

# (metric, help, column, scale); the energy counter is handled apart (see the module docstring)
GAUGES = [
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", "power_avg_w", 1.0),
    ("DCGM_FI_DEV_POWER_USAGE_INSTANT", "Current power draw (in W).", "power_instant_w", 1.0),
    ("DCGM_FI_DEV_POWER_MGMT_LIMIT", "Power management limit (in W).", "power_limit_w", 1.0),
    ("DCGM_FI_DEV_ENFORCED_POWER_LIMIT", "Enforced power limit (in W).", "enforced_power_limit_w", 1.0),
    ("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).", "sm_clock_mhz", 1.0),
    ("DCGM_FI_DEV_MEM_CLOCK", "Memory clock frequency (in MHz).", "mem_clock_mhz", 1.0),
    ("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "Current clock event reasons (bitmask).", "clocks_event_reasons", 1.0),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", "temp_gpu_c", 1.0),
    ("DCGM_FI_DEV_MEMORY_TEMP", "Memory temperature (in C).", "temp_mem_c", 1.0),
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", "gpu_util_pct", 1.0),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).", "mem_util_pct", 1.0),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", "mem_used_bytes", 1 / 2**20),
    ("DCGM_FI_DEV_PCIE_TX_THROUGHPUT", "PCIe TX throughput (in KB/s).", "pcie_tx_kbps", 1.0),
    ("DCGM_FI_DEV_PCIE_RX_THROUGHPUT", "PCIe RX throughput (in KB/s).", "pcie_rx_kbps", 1.0),
]
ENERGY_DCGM = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
ENERGY_COUNTER = "wattlas_gpu_energy_joules"
LABELS = ["gpu", "UUID", "modelName", "Hostname", "backend"]


def _labels(row: dict) -> list[str]:
    return [str(row["gpu_index"]), row.get("gpu_uuid") or "", row.get("gpu_name") or "", row.get("host") or "",
            row.get("backend") or ""]


class TelemetryCollector:
    """A ``prometheus_client`` collector over the latest telemetry row of each GPU."""

    def __init__(self) -> None:
        self._rows: list[dict] = []
        self._lock = threading.Lock()

    def update(self, rows: Iterable[dict]) -> None:
        """Replace the rows a scrape reads (the sampler calls this at every flush)."""
        rows = [r for r in rows if r.get("status") is None]  # status rows carry no reading
        with self._lock:
            self._rows = rows

    def collect(self):
        """The metric families of the latest rows (prometheus_client calls this at each scrape)."""
        with self._lock:
            rows = list(self._rows)
        for metric, help_text, column, scale in GAUGES:
            samples = [r for r in rows if r.get(column) is not None]
            if samples:
                family = GaugeMetricFamily(metric, help_text, labels=LABELS)
                for r in samples:
                    family.add_metric(_labels(r), float(r[column]) * scale)
                yield family
        samples = [r for r in rows if r.get("energy_j") is not None]
        if samples:
            dcgm = UnknownMetricFamily(ENERGY_DCGM, "Total energy consumption since boot (in mJ).", labels=LABELS)
            counter = CounterMetricFamily(ENERGY_COUNTER, "Energy the GPU drew since its driver loaded (NVML "
                                          "counter), in joules.", labels=LABELS)
            for r in samples:
                dcgm.add_metric(_labels(r), float(round(r["energy_j"] * 1000.0)))  # whole mJ, as NVML counts
                counter.add_metric(_labels(r), float(r["energy_j"]))
            yield dcgm
            yield counter


def format_textfile(rows: list[dict]) -> str:
    """The exposition text of ``rows`` (what a scrape or the textfile holds)."""
    from prometheus_client import generate_latest

    registry = CollectorRegistry(auto_describe=False)
    collector = TelemetryCollector()
    collector.update(rows)
    registry.register(collector)
    return generate_latest(registry).decode()


class PrometheusExport:
    """Where the sampler's latest rows go at each flush: a textfile, a scrape endpoint, or both."""

    def __init__(self, textfile: str | Path | None = None, port: int | None = None, addr: str = "127.0.0.1") -> None:
        self.collector = TelemetryCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.textfile = Path(textfile) if textfile is not None else None
        self.server = None
        if port is not None:
            self.server, _ = start_http_server(port, addr=addr, registry=self.registry)

    @property
    def port(self) -> int | None:
        """The port the endpoint listens on (useful with port 0: any free port)."""
        return self.server.server_port if self.server is not None else None

    def __call__(self, rows: list[dict]) -> None:
        self.collector.update(rows)
        if self.textfile is not None:
            self.textfile.parent.mkdir(parents=True, exist_ok=True)
            write_to_textfile(str(self.textfile), self.registry)  # atomic: temp file, then rename

    def close(self) -> None:
        """Stop the scrape endpoint, if one was started."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def write_textfile(path: str | Path, rows: list[dict]) -> None:
    """Atomically replace ``path`` with the exposition of ``rows`` (node-exporter's textfile collector)."""
    PrometheusExport(textfile=path)(rows)
