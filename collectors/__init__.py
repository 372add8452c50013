"""Collection: ``telemetry`` samples GPUs (NVML or the simulated device) into durable segments;
``profiling`` runs the Llama-shaped workload whose iterations the telemetry measures."""
