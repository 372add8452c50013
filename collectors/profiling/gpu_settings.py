"""GPU clock locking and power limits through NVML, verified by reading them back.

Both need root (or the admin's permission); without it NVML answers NoPermission and the
caller is told to skip those settings rather than profile at settings that were never applied.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager


class SettingUnavailable(RuntimeError):
    """The setting cannot be applied here (no permission, not supported); skip it."""


class GpuSettings:
    """Clock locking and power limits of one GPU through NVML, each setting read back; root is needed on real GPUs."""
    def __init__(self, index: int = 0, nvml=None) -> None:
        self.nvml = nvml if nvml is not None else importlib.import_module("pynvml")
        self.nvml.nvmlInit()
        self.handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
        self.default_limit_mw = self.nvml.nvmlDeviceGetPowerManagementDefaultLimit(self.handle)

    def _explain(self, exc, what: str) -> SettingUnavailable:
        n = self.nvml
        reason = {n.NVML_ERROR_NO_PERMISSION: "needs root", n.NVML_ERROR_NOT_SUPPORTED: "not supported on this GPU"}.get(
            getattr(exc, "value", None), str(exc))
        return SettingUnavailable(f"{what}: {reason}")

    def lock_clocks(self, mhz: float) -> float:
        """Lock the SM clock; returns the clock NVML reports afterwards."""
        n = self.nvml
        try:
            n.nvmlDeviceSetGpuLockedClocks(self.handle, int(mhz), int(mhz))
        except n.NVMLError as exc:
            raise self._explain(exc, f"locking SM clock at {mhz:.0f} MHz") from None
        return float(n.nvmlDeviceGetClockInfo(self.handle, n.NVML_CLOCK_SM))

    def reset_clocks(self) -> None:
        """Release a clock lock (back to the driver's own clock management)."""
        try:
            self.nvml.nvmlDeviceResetGpuLockedClocks(self.handle)
        except self.nvml.NVMLError:
            pass

    def set_power_limit(self, watts: float) -> float:
        """Set the power limit and return what NVML reads back (W); a mismatch is an error."""
        n = self.nvml
        try:
            n.nvmlDeviceSetPowerManagementLimit(self.handle, int(watts * 1000))
        except n.NVMLError as exc:
            raise self._explain(exc, f"setting power limit {watts:.0f} W") from None
        read_back = n.nvmlDeviceGetPowerManagementLimit(self.handle) / 1000.0
        if abs(read_back - watts) > 1.0:
            raise SettingUnavailable(f"power limit {watts:.0f} W read back as {read_back:.0f} W")
        return read_back

    def reset_power_limit(self) -> None:
        """Restore the GPU's default power limit."""
        try:
            self.nvml.nvmlDeviceSetPowerManagementLimit(self.handle, self.default_limit_mw)
        except self.nvml.NVMLError:
            pass

    @contextmanager
    def applied(self, clock_mhz: float | None, power_limit_w: float | None):
        """Apply, yield what was read back, and always restore the defaults."""
        try:
            clock = self.lock_clocks(clock_mhz) if clock_mhz else None
            limit = self.set_power_limit(power_limit_w) if power_limit_w else None
            yield clock, limit
        finally:
            if clock_mhz:
                self.reset_clocks()
            if power_limit_w:
                self.reset_power_limit()
