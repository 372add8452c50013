"""The profiling workload: a Llama-shaped PyTorch shard swept over chunked prefill, decode and mixed
iterations, with each point's energy measured through the telemetry sampler."""
