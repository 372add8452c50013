"""Telemetry sampling: NVML and the simulated device, durable segments, phase windows, summaries and exports."""
