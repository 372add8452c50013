"""Telemetry collection: NVML sampling of real GPUs and a simulated device backend."""
