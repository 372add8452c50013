"""Real GPUs through NVML (nvidia-ml-py, ``import pynvml``).

Each metric is probed once when the source opens: one the GPU or driver does not support (or
that needs permissions we lack) is recorded as null from then on, without calling NVML again.
A supported metric that fails now and then (NotSupported, Timeout, Unknown) is null for that
tick only.  ``GPU is lost`` / ``reset required`` raise :class:`GpuLost` (that GPU's stream
ends); a GPU that fails while being opened is reported lost at once and the others are opened
anyway.  Errors that concern the driver rather than a GPU (uninitialized, driver not loaded,
library/driver version mismatch) raise :class:`DriverUnavailable`: a tick of nulls is never
passed off as a healthy reading, and :meth:`NvmlSource.reopen` re-initializes when it is back.
A cumulative NVLink counter is the sum over every active link, or null when one link's read
failed (a partial sum would make the counter go backwards).

Power: ``power_instant_w`` is field NVML_FI_DEV_POWER_INSTANT at GPU scope (MODULE scope on
boards that only report that); ``power_avg_w`` is NVML_FI_DEV_POWER_AVERAGE, or
nvmlDeviceGetPowerUsage where fields are unavailable.  Energy is the
nvmlDeviceGetTotalEnergyConsumption counter (Volta and newer), mJ -> J.
PCIe throughput is read only on "slow" ticks because NVML samples it over ~20 ms per call.
"""

from __future__ import annotations

import importlib
from typing import Callable

from toolkit.errors import WattlasError

from .source import READING_COLUMNS, DriverUnavailable, GpuInfo, GpuLost

Getter = Callable[[object, object], dict]


class NvmlUnavailable(WattlasError):
    """NVML could not start: no driver, no library, no permission."""


def _metric_getters(nvml) -> dict[str, Getter]:
    clocks_reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or nvml.nvmlDeviceGetCurrentClocksThrottleReasons
    return {
        "energy": lambda h: {"energy_j": nvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0},
        "power_limit": lambda h: {"power_limit_w": nvml.nvmlDeviceGetPowerManagementLimit(h) / 1000.0},
        "enforced_limit": lambda h: {"enforced_power_limit_w": nvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0},
        "sm_clock": lambda h: {"sm_clock_mhz": float(nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM))},
        "mem_clock": lambda h: {"mem_clock_mhz": float(nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM))},
        "clocks_reasons": lambda h: {"clocks_event_reasons": int(clocks_reasons(h))},
        "pstate": lambda h: {"pstate": int(nvml.nvmlDeviceGetPerformanceState(h))},
        "utilization": lambda h: (lambda u: {"gpu_util_pct": float(u.gpu), "mem_util_pct": float(u.memory)})(
            nvml.nvmlDeviceGetUtilizationRates(h)),
        "memory": lambda h: (lambda m: {"mem_used_bytes": int(m.used), "mem_total_bytes": int(m.total)})(
            nvml.nvmlDeviceGetMemoryInfo(h)),
        "temperature": lambda h: {"temp_gpu_c": float(nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU))},
    }


def _slow_getters(nvml) -> dict[str, Getter]:
    return {
        "pcie": lambda h: {
            "pcie_tx_kbps": float(nvml.nvmlDeviceGetPcieThroughput(h, nvml.NVML_PCIE_UTIL_TX_BYTES)),
            "pcie_rx_kbps": float(nvml.nvmlDeviceGetPcieThroughput(h, nvml.NVML_PCIE_UTIL_RX_BYTES)),
        }
    }


def _value_members(nvml) -> dict[int, str]:
    """NVML value type -> the member of the c_nvmlValue_t union that holds it."""
    return {
        nvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
        nvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
        nvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
        nvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
        nvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
        nvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
        getattr(nvml, "NVML_VALUE_TYPE_UNSIGNED_SHORT", 6): "usVal",
    }


class _Gpu:
    """Per-GPU handle, probed getters and the field ids to request each tick."""

    def __init__(self, index: int, handle) -> None:
        self.index = index
        self.handle = handle
        self.getters: dict[str, Getter] = {}
        self.slow_getters: dict[str, Getter] = {}
        self.fields: list[tuple[int, int]] = []  # (field id, scope id)
        self.field_columns: list[str] = []
        self.power_usage_fallback = False
        self.module_scope = False  # power read at MODULE scope (Grace Hopper: includes the CPU and memory)
        self.mig = False  # split into MIG instances: NVML still meters the whole GPU

    @property
    def power_scope(self) -> str:
        """What this GPU's power readings cover, for every row (see TELEMETRY_SAMPLES.power_scope)."""
        return ("module" if self.module_scope else "gpu") + (", MIG-partitioned" if self.mig else "")


class NvmlSource:
    """Real GPUs through NVML (pynvml): metrics probed once per GPU, faults mapped to GpuLost and DriverUnavailable."""
    backend = "nvml"

    def __init__(self, nvml=None) -> None:
        self.nvml = nvml if nvml is not None else importlib.import_module("pynvml")
        self.gpus: dict[int, _Gpu] = {}
        self.unsupported: dict[int, list[str]] = {}
        self._members = _value_members(self.nvml)
        self._success = self.nvml.NVML_SUCCESS

    @property
    def simulated(self) -> bool:
        """False: readings come from real GPUs."""
        return False

    # ------------------------------------------------------------------ error classification
    def _code(self, exc) -> int | None:
        return getattr(exc, "value", None)

    def _is_lost(self, exc) -> bool:
        n = self.nvml
        return self._code(exc) in (n.NVML_ERROR_GPU_IS_LOST, getattr(n, "NVML_ERROR_RESET_REQUIRED", -1))

    def _is_driver_down(self, exc) -> bool:
        n = self.nvml
        return self._code(exc) in (n.NVML_ERROR_UNINITIALIZED, getattr(n, "NVML_ERROR_DRIVER_NOT_LOADED", -1),
                                   getattr(n, "NVML_ERROR_LIB_RM_VERSION_MISMATCH", -1),
                                   getattr(n, "NVML_ERROR_LIBRARY_NOT_FOUND", -1))

    def _raise_if_fatal(self, exc) -> None:
        """GPU lost -> GpuLost; driver gone -> DriverUnavailable; anything else is the caller's."""
        if self._is_lost(exc):
            raise GpuLost(str(exc)) from None
        if self._is_driver_down(exc):
            raise DriverUnavailable(str(exc)) from None

    def _is_permanent(self, exc) -> bool:
        n = self.nvml
        return self._code(exc) in (n.NVML_ERROR_NOT_SUPPORTED, n.NVML_ERROR_NO_PERMISSION,
                                   getattr(n, "NVML_ERROR_FUNCTION_NOT_FOUND", -1), n.NVML_ERROR_INVALID_ARGUMENT)

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> list[GpuInfo]:
        """Initialize NVML and open every GPU (one that fails is reported lost, the others open); NvmlUnavailable without a driver."""
        n = self.nvml
        try:
            n.nvmlInit()
        except n.NVMLError as exc:
            raise NvmlUnavailable(f"NVML unavailable ({exc}); no NVIDIA driver here? Use --backend sim for the simulated device") from None
        try:
            return self.open_gpus()
        except DriverUnavailable as exc:
            raise NvmlUnavailable(str(exc)) from None

    def _open_gpu(self, index: int) -> GpuInfo:
        """Handle, identity and probed metrics of one GPU; a failure here is this GPU's alone."""
        n = self.nvml
        try:
            handle = n.nvmlDeviceGetHandleByIndex(index)
            uuid = self._optional(lambda: _text(n.nvmlDeviceGetUUID(handle)))
            name = self._optional(lambda: _text(n.nvmlDeviceGetName(handle)))
            gpu = _Gpu(index, handle)
            self._probe(gpu)
            gpu.mig = self._mig_enabled(handle)
        except (n.NVMLError, GpuLost, DriverUnavailable) as exc:
            return GpuInfo(index, None, None, error=str(exc) or type(exc).__name__)
        self.gpus[index] = gpu
        return GpuInfo(index, uuid, name)

    def _mig_enabled(self, handle) -> bool:
        n = self.nvml
        try:
            current, _pending = n.nvmlDeviceGetMigMode(handle)
        except n.NVMLError as exc:
            self._raise_if_fatal(exc)
            return False  # not a MIG-capable GPU
        return current == getattr(n, "NVML_DEVICE_MIG_ENABLE", 1)

    def reopen(self) -> list[GpuInfo]:
        """Re-initialize NVML after the driver came back; GPUs are opened afresh (match them by UUID)."""
        try:
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError:
            pass
        try:
            self.nvml.nvmlInit()
        except self.nvml.NVMLError as exc:
            raise DriverUnavailable(f"NVML init failed ({exc})") from None
        return self.open_gpus()

    def open_gpus(self) -> list[GpuInfo]:
        """Every GPU NVML lists now (NVML must be initialized)."""
        try:
            count = self.nvml.nvmlDeviceGetCount()
        except self.nvml.NVMLError as exc:
            raise DriverUnavailable(f"NVML cannot count GPUs ({exc})") from None
        self.gpus = {}
        return [self._open_gpu(index) for index in range(count)]

    def close(self) -> None:
        """Shut NVML down (errors ignored: the driver may already be gone)."""
        try:
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError:
            pass

    def _optional(self, call):
        try:
            return call()
        except self.nvml.NVMLError as exc:
            self._raise_if_fatal(exc)
            return None

    def _probe(self, gpu: _Gpu) -> None:
        n = self.nvml
        skipped = []
        for group, getters in (("getters", _metric_getters(n)), ("slow_getters", _slow_getters(n))):
            for name, getter in getters.items():
                try:
                    getter(gpu.handle)
                except n.NVMLError as exc:
                    self._raise_if_fatal(exc)
                    if self._is_permanent(exc):
                        skipped.append(name)
                        continue
                getattr(gpu, group)[name] = getter
        self._probe_fields(gpu, skipped)
        self.unsupported[gpu.index] = skipped

    def _probe_fields(self, gpu: _Gpu, skipped: list[str]) -> None:
        n = self.nvml
        wanted: list[tuple[str, list[tuple[int, int]]]] = [
            ("power_instant_w", [(n.NVML_FI_DEV_POWER_INSTANT, n.NVML_POWER_SCOPE_GPU),
                                 (n.NVML_FI_DEV_POWER_INSTANT, n.NVML_POWER_SCOPE_MODULE)]),
            ("power_avg_w", [(n.NVML_FI_DEV_POWER_AVERAGE, n.NVML_POWER_SCOPE_GPU),
                             (n.NVML_FI_DEV_POWER_AVERAGE, n.NVML_POWER_SCOPE_MODULE)]),
            ("temp_mem_c", [(n.NVML_FI_DEV_MEMORY_TEMP, 0)]),
        ]
        links = self._active_nvlinks(gpu)
        for column, field_id in (("nvlink_tx_kib", n.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX),
                                 ("nvlink_rx_kib", n.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX)):
            for link in links:
                wanted.append((column, [(field_id, link)]))
        for column, candidates in wanted:
            for candidate in candidates:
                try:
                    (value,) = n.nvmlDeviceGetFieldValues(gpu.handle, [candidate])
                except n.NVMLError as exc:
                    self._raise_if_fatal(exc)
                    break  # the field API itself is unavailable (old driver)
                if value.nvmlReturn == n.NVML_SUCCESS:
                    gpu.fields.append(candidate)
                    gpu.field_columns.append(column)
                    if column.startswith("power") and candidate[1] == n.NVML_POWER_SCOPE_MODULE:
                        gpu.module_scope = True
                    break
            else:
                skipped.append(column)
        if "power_avg_w" not in gpu.field_columns:
            try:
                n.nvmlDeviceGetPowerUsage(gpu.handle)
                gpu.power_usage_fallback = True
            except n.NVMLError as exc:
                if not self._is_permanent(exc):
                    gpu.power_usage_fallback = True

    def _active_nvlinks(self, gpu: _Gpu) -> list[int]:
        n = self.nvml
        links = []
        for link in range(getattr(n, "NVML_NVLINK_MAX_LINKS", 18)):
            try:
                if n.nvmlDeviceGetNvLinkState(gpu.handle, link) == n.NVML_FEATURE_ENABLED:
                    links.append(link)
            except n.NVMLError as exc:
                self._raise_if_fatal(exc)
                break
        return links

    def settings_ranges(self, gpu_index: int) -> dict:
        """Power-limit range and default (W) and the highest SM clock (MHz); null where NVML has none."""
        n, handle = self.nvml, self.gpus[gpu_index].handle
        constraints = self._optional(lambda: n.nvmlDeviceGetPowerManagementLimitConstraints(handle))
        default = self._optional(lambda: n.nvmlDeviceGetPowerManagementDefaultLimit(handle))
        max_clock = self._optional(lambda: n.nvmlDeviceGetMaxClockInfo(handle, n.NVML_CLOCK_SM))
        return {
            "power_limit_min_w": constraints[0] / 1000.0 if constraints else None,
            "power_limit_max_w": constraints[1] / 1000.0 if constraints else None,
            "power_limit_default_w": default / 1000.0 if default is not None else None,
            "max_sm_clock_mhz": float(max_clock) if max_clock is not None else None,
        }

    # ------------------------------------------------------------------ reading
    def read(self, gpu_index: int, slow: bool = False) -> dict:
        """Every reading column for one GPU (null where unsupported or failing this tick); ``slow`` adds PCIe."""
        n = self.nvml
        gpu = self.gpus[gpu_index]
        reading = dict.fromkeys(READING_COLUMNS)
        reading["power_scope"] = gpu.power_scope
        getters = list(gpu.getters.values()) + (list(gpu.slow_getters.values()) if slow else [])
        for getter in getters:
            try:
                reading.update(getter(gpu.handle))
            except n.NVMLError as exc:
                self._raise_if_fatal(exc)
                # sporadic failure of a supported metric: null for this tick only
        if gpu.fields:
            self._read_fields(gpu, reading)
        if gpu.power_usage_fallback and reading["power_avg_w"] is None:
            reading["power_avg_w"] = self._optional(lambda: n.nvmlDeviceGetPowerUsage(gpu.handle) / 1000.0)
        return reading

    def _read_fields(self, gpu: _Gpu, reading: dict) -> None:
        n = self.nvml
        try:
            values = n.nvmlDeviceGetFieldValues(gpu.handle, gpu.fields)
        except n.NVMLError as exc:
            self._raise_if_fatal(exc)
            return
        failed_links = set()
        for column, value in zip(gpu.field_columns, values):
            if value.nvmlReturn != self._success:
                if value.nvmlReturn == n.NVML_ERROR_GPU_IS_LOST:
                    raise GpuLost("GPU is lost")
                if column.startswith("nvlink"):
                    failed_links.add(column)
                continue
            number = getattr(value.value, self._members.get(value.valueType, "ullVal"))
            if column in ("power_instant_w", "power_avg_w"):
                reading[column] = number / 1000.0  # mW
                if column == "power_instant_w":
                    reading["nvml_timestamp_us"] = int(value.timestamp)
            elif column.startswith("nvlink"):
                reading[column] = (reading[column] or 0) + int(number)  # sum over active links
            else:
                reading[column] = float(number)
        for column in failed_links:
            reading[column] = None

    def read_energy_power(self, gpu_index: int) -> tuple[float | None, float | None]:
        """(energy counter J, power W) read back to back, for precise window edges; None where unavailable."""
        gpu = self.gpus[gpu_index]
        energy = None
        if "energy" in gpu.getters:
            energy = self._optional(lambda: self.nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle) / 1000.0)
        power = None
        if gpu.fields and gpu.field_columns[0] == "power_instant_w":
            reading = dict.fromkeys(READING_COLUMNS)
            self._read_fields(gpu, reading)
            power = reading["power_instant_w"] if reading["power_instant_w"] is not None else reading["power_avg_w"]
        elif gpu.power_usage_fallback:
            power = self._optional(lambda: self.nvml.nvmlDeviceGetPowerUsage(gpu.handle) / 1000.0)
        return energy, power


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def nvml_index_for_uuid(cuda_uuid: str, infos) -> int | None:
    """The NVML index of the GPU whose UUID is ``cuda_uuid`` (as CUDA/PyTorch print it, with or without
    NVML's ``GPU-`` prefix).  CUDA and NVML may number GPUs differently (CUDA_VISIBLE_DEVICES,
    CUDA_DEVICE_ORDER), so the UUID is the only safe join."""
    def norm(text: str) -> str:
        text = str(text).strip().lower()
        return text[4:] if text.startswith("gpu-") else text

    matches = [info.index for info in infos if info.uuid and norm(info.uuid) == norm(cuda_uuid)]
    return matches[0] if len(matches) == 1 else None
