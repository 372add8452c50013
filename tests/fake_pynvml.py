"""A fake NVML at the pynvml API level, for tests without a GPU.

It raises pynvml's real NVMLError subclasses (``pynvml.NVMLError(code)`` maps a code to
``NVMLError_NotSupported``, ``NVMLError_GpuIsLost``...) and returns pynvml's real ctypes
structures from nvmlDeviceGetFieldValues, so the code under test sees what a driver would give.
Constants and error classes come from the real module; device functions are the fake's own.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import pynvml


class FakeClock:
    """Virtual seconds for tests, to share between FakeNVML(clock=...), the sampler and the code under
    test: time moves only when ``advance`` is called (pass it where a ``sleep`` is taken), so every
    duration read from it is exact however busy the machine is.

    ``read_s`` > 0 makes each reading advance it by that much first, so that readings strictly
    increase as a real clock's do (a sample taken after a window closed is then after its end, not
    at the same instant); durations are then exact to ``read_s`` times the readings in between.
    """

    def __init__(self, start: float = 1000.0, read_s: float = 0.0) -> None:
        self.now = start
        self.read_s = read_s
        self._lock = threading.Lock()  # a sampler thread reads it while the test advances it

    def __call__(self) -> float:
        with self._lock:
            self.now += self.read_s
            return self.now

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass (a sleep that returns at once)."""
        with self._lock:
            self.now += seconds


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-fake-0000"
    power_w: Callable[[float], float] = lambda t: 300.0  # true power as a function of seconds since init
    energy_counter: bool = True  # Volta and newer
    field_api: bool = True
    instant_power_scopes: tuple[int, ...] = (pynvml.NVML_POWER_SCOPE_GPU,)
    average_power_field: bool = True
    memory_temp: bool = False
    pcie: bool = True
    nvlinks: int = 0
    lost_after_reads: int | None = None  # GPU falls off the bus after this many energy/power reads
    sporadic: dict[str, set[int]] = field(default_factory=dict)  # function -> call numbers that fail NotSupported
    calls: dict[str, int] = field(default_factory=dict)
    reads: int = 0
    integral: tuple[float, float] = (0.0, 5e8)  # (seconds since init, mJ)
    counter_step_s: float | None = None  # the energy counter only moves every this many seconds (20-100 ms on real GPUs)
    nvlink_fail_calls: set[int] = field(default_factory=set)  # "fields" call numbers on which link 0 fails
    mig: bool | None = None  # None: not MIG-capable (NotSupported); False/True: MIG mode off/on


def _err(code):
    return pynvml.NVMLError(code)


class FakeNVML:
    """Drop-in for the ``pynvml`` module."""

    def __init__(self, gpus: list[FakeGpu], clock: Callable[[], float] = time.monotonic) -> None:
        self.gpus = gpus
        self.clock = clock
        self.t0 = None
        self.initialized = False
        self.driver_loaded = True  # unload_driver() / load_driver() simulate a driver reload

    def __getattr__(self, name):
        value = getattr(pynvml, name)
        if callable(value) and name.startswith("nvml") and not isinstance(value, type):
            raise AttributeError(f"fake NVML does not implement {name}")
        return value

    # ------------------------------------------------------------------ helpers
    def _gpu(self, handle) -> FakeGpu:
        if not self.initialized:
            raise _err(pynvml.NVML_ERROR_UNINITIALIZED)
        return handle

    def _call(self, handle, name: str) -> FakeGpu:
        gpu = self._gpu(handle)
        gpu.calls[name] = gpu.calls.get(name, 0) + 1
        if gpu.lost_after_reads is not None and gpu.reads >= gpu.lost_after_reads:
            raise _err(pynvml.NVML_ERROR_GPU_IS_LOST)
        if gpu.calls[name] in gpu.sporadic.get(name, set()):
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu

    def _t(self) -> float:
        return self.clock() - self.t0

    def energy_mj(self, gpu: FakeGpu) -> float:
        """Integral of the power function (midpoint rule, <= 1 ms steps) in mJ, from a nonzero base."""
        t = self._t()
        if gpu.counter_step_s:
            t = math.floor(t / gpu.counter_step_s) * gpu.counter_step_s
        last_t, energy = gpu.integral
        if t <= last_t:
            return energy
        steps = max(1, int((t - last_t) / 0.001))
        dt = (t - last_t) / steps
        energy += sum(gpu.power_w(last_t + (i + 0.5) * dt) for i in range(steps)) * dt * 1000.0
        gpu.integral = (t, energy)
        return energy

    # ------------------------------------------------------------------ library
    def unload_driver(self) -> None:
        """Every call fails (Uninitialized) and nvmlInit fails (DriverNotLoaded) until load_driver()."""
        self.initialized = False
        self.driver_loaded = False

    def load_driver(self, reset_counters: bool = True) -> None:
        """The driver is back; a reloaded driver's energy counters restart from zero."""
        self.driver_loaded = True
        if reset_counters:
            for gpu in self.gpus:
                gpu.integral = (self._t(), 0.0)

    def nvmlInit(self):
        if not self.driver_loaded:
            raise _err(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
        self.initialized = True
        if self.t0 is None:  # the GPU's counters run on across init/shutdown, as a driver's do
            self.t0 = self.clock()

    def nvmlShutdown(self):
        self.initialized = False

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        if index >= len(self.gpus):
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self.gpus[index]

    def nvmlDeviceGetName(self, handle):
        return self._gpu(handle).name

    def nvmlDeviceGetUUID(self, handle):
        return self._gpu(handle).uuid

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        gpu = self._call(handle, "energy")
        if not gpu.energy_counter:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        gpu.reads += 1
        return int(self.energy_mj(gpu))

    def nvmlDeviceGetPowerUsage(self, handle):
        gpu = self._call(handle, "power_usage")
        gpu.reads += 1
        return int(gpu.power_w(self._t()) * 1000)

    def nvmlDeviceGetPowerManagementLimit(self, handle):
        gpu = self._call(handle, "limit")
        return getattr(gpu, "limit_mw", 700_000)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        self._call(handle, "enforced")
        return 700_000

    def nvmlDeviceGetClockInfo(self, handle, kind):
        gpu = self._call(handle, "clock")
        if kind == pynvml.NVML_CLOCK_SM:
            return getattr(gpu, "locked", None)[1] if getattr(gpu, "locked", None) else 1980
        return 2619

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        self._call(handle, "reasons")
        return 0

    def nvmlDeviceGetPerformanceState(self, handle):
        self._call(handle, "pstate")
        return 0

    def nvmlDeviceGetUtilizationRates(self, handle):
        self._call(handle, "util")
        return SimpleNamespace(gpu=87, memory=40)

    def nvmlDeviceGetMemoryInfo(self, handle):
        self._call(handle, "memory")
        return SimpleNamespace(used=60 * 2**30, total=80 * 2**30, free=20 * 2**30)

    def nvmlDeviceGetTemperature(self, handle, sensor):
        self._call(handle, "temperature")
        return 55

    def nvmlDeviceGetPcieThroughput(self, handle, counter):
        gpu = self._call(handle, "pcie")
        if not gpu.pcie:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return 1234

    def nvmlDeviceGetMigMode(self, handle):
        gpu = self._gpu(handle)
        if gpu.mig is None:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if gpu.mig else pynvml.NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    def nvmlDeviceGetNvLinkState(self, handle, link):
        gpu = self._gpu(handle)
        if gpu.nvlinks == 0:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if link >= gpu.nvlinks:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return pynvml.NVML_FEATURE_ENABLED

    # settings (need root on real GPUs): the fake honours `permitted`
    def _require_root(self, gpu):
        if not getattr(gpu, "permitted", True):
            raise _err(pynvml.NVML_ERROR_NO_PERMISSION)

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle):
        return 700_000

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle):
        self._gpu(handle)
        return [200_000, 700_000]

    def nvmlDeviceGetMaxClockInfo(self, handle, kind):
        self._gpu(handle)
        return 1980 if kind == pynvml.NVML_CLOCK_SM else 2619

    def nvmlDeviceSetPowerManagementLimit(self, handle, milliwatts):
        gpu = self._gpu(handle)
        self._require_root(gpu)
        gpu.limit_mw = int(milliwatts)

    def nvmlDeviceSetGpuLockedClocks(self, handle, lo, hi):
        gpu = self._gpu(handle)
        self._require_root(gpu)
        gpu.locked = (lo, hi)

    def nvmlDeviceResetGpuLockedClocks(self, handle):
        self._gpu(handle).locked = None

    def nvmlDeviceGetFieldValues(self, handle, field_ids):
        gpu = self._call(handle, "fields")
        if not gpu.field_api:
            raise _err(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        values = (pynvml.c_nvmlFieldValue_t * len(field_ids))()
        now_us = int(time.time() * 1e6)
        for i, fid in enumerate(field_ids):
            field_id, scope = fid if isinstance(fid, tuple) else (fid, 0)
            v = values[i]
            v.fieldId, v.scopeId, v.timestamp = field_id, scope, now_us
            v.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
            if field_id == pynvml.NVML_FI_DEV_POWER_INSTANT and scope in gpu.instant_power_scopes:
                gpu.reads += 1
                v.valueType, v.value.uiVal, v.nvmlReturn = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, int(gpu.power_w(self._t()) * 1000), 0
            elif field_id == pynvml.NVML_FI_DEV_POWER_AVERAGE and gpu.average_power_field and scope == pynvml.NVML_POWER_SCOPE_GPU:
                v.valueType, v.value.uiVal, v.nvmlReturn = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, int(gpu.power_w(self._t()) * 1000), 0
            elif field_id == pynvml.NVML_FI_DEV_MEMORY_TEMP and gpu.memory_temp:
                v.valueType, v.value.uiVal, v.nvmlReturn = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, 61, 0
            elif field_id in (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX) and scope < gpu.nvlinks:
                if scope == 0 and gpu.calls["fields"] in gpu.nvlink_fail_calls:
                    v.nvmlReturn = pynvml.NVML_ERROR_UNKNOWN
                    continue
                v.valueType, v.value.ullVal, v.nvmlReturn = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, 1000 * (scope + 1), 0
        return values
