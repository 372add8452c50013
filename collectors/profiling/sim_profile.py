"""Profiling on the simulated device: iteration latency and power from a roofline model.

Stands in for the GPU profiler where no GPU is available.  For a Llama-shaped model sharded
over ``tp`` GPUs, an iteration with a prefill chunk (c tokens after a KV prefix p) and b decodes
at KV length k takes

    max(FLOPs / (peak * f/f_max * efficiency), bytes / (HBM bandwidth * efficiency)) + TP all-reduces + launch

with FLOPs = 2 * params * tokens + 4 * layers * hidden * (c * (p + c/2) + b * k) and bytes = weights
+ KV read (2 * layers * kv_heads * head_dim * 2 B per cached token).  Power is the simulated
GPU's f*V^2 model at the iteration's compute utilization.  Every row is ``backend="sim"``,
``energy_method="simulated_model"``: these are model outputs, not measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from toolkit.model_shapes import ModelShape, PRESETS  # noqa: F401  (moved to toolkit; re-exported here)
from toolkit.schemas import PROFILE_ITERATIONS, SIMULATED_KEY

from ..telemetry.sim_source import SimGpuSpec, sim_power


@dataclass(frozen=True)
class SimHardware:
    """The simulated H100's roofline: peak FLOP/s and memory bandwidth at the maximum clock, and launch overheads."""
    peak_flops: float = 989e12  # H100 SXM dense bf16
    hbm_bytes_per_s: float = 3.35e12
    compute_efficiency: float = 0.65
    memory_efficiency: float = 0.8
    nvlink_bytes_per_s: float = 450e9
    allreduce_latency_s: float = 12e-6
    launch_s: float = 0.6e-3
    gpu: SimGpuSpec = SimGpuSpec()


def iteration_cost(shape: ModelShape, hw: SimHardware, c, p, b, k, tp, f_mhz):
    """(latency_s, compute utilization) of iterations, vectorized over numpy arrays."""
    c, p, b, k = (np.asarray(x, dtype="float64") for x in (c, p, b, k))
    tokens = c + b
    attn_flops = 4.0 * shape.layers * shape.hidden * (c * (p + c / 2.0) + b * k)
    flops = (2.0 * shape.params * tokens + attn_flops) / tp
    kv_bytes_per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * 2
    bytes_moved = (2.0 * shape.params + kv_bytes_per_token * (p * (c > 0) + b * k)) / tp
    rate = hw.peak_flops * hw.compute_efficiency * (np.asarray(f_mhz, dtype="float64") / hw.gpu.f_max_mhz)
    compute_s = flops / rate
    memory_s = bytes_moved / (hw.hbm_bytes_per_s * hw.memory_efficiency)
    comm_s = np.where(tp > 1, 2 * shape.layers * (hw.allreduce_latency_s + tokens * shape.hidden * 2 * (tp - 1) / tp / hw.nvlink_bytes_per_s), 0.0)
    latency = np.maximum(compute_s, memory_s) + comm_s + hw.launch_s
    utilization = np.clip(compute_s / latency, 0.02, 1.0)
    return latency, utilization


SWEEPS = {
    "quick": {"chunks": [32, 128, 512, 2048, 8192], "prefixes": [0, 4096, 32768, 131072, 524288],
              "batches": [1, 8, 32, 128], "kvs": [512, 4096, 32768, 131072], "tps": [1, 2], "freqs": [1980, 1410]},
    "full": {"chunks": [32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384],
             "prefixes": [0, 2048, 8192, 32768, 131072, 524288, 1048576],
             "batches": [1, 2, 4, 8, 16, 32, 64, 128, 256], "kvs": [256, 1024, 4096, 16384, 65536, 262144, 1048576],
             "tps": [1, 2, 4, 8], "freqs": [1980, 1755, 1410, 1110, 810]},
}


def simulate_profile(preset: str = "llama3-8b", sweep: str = "quick", repeats: int = 3, seed: int = 0,
                     hw: SimHardware | None = None) -> pa.Table:
    """A profile_iterations table from the simulated device (labelled simulated)."""
    shape, hw, grid = PRESETS[preset], hw or SimHardware(), SWEEPS[sweep]
    rng = np.random.default_rng(seed)
    rows = []
    for tp in grid["tps"]:
        for f in grid["freqs"]:
            for c in grid["chunks"]:
                for p in grid["prefixes"]:
                    rows.append(("prefill", c, p, 0, 0, tp, f))
                    rows.append(("mixed", c, p, 16, 4096, tp, f))
            for b in grid["batches"]:
                for k in grid["kvs"]:
                    rows.append(("decode", 0, 0, b, k, tp, f))
    frame = pd.DataFrame(rows, columns=["phase", "chunk_tokens", "prefix_tokens", "batch_size", "kv_tokens", "tp", "sm_clock_mhz"])
    frame = frame.loc[frame.index.repeat(repeats)].reset_index(drop=True)
    frame["repeat"] = frame.groupby(list(frame.columns)).cumcount()
    latency, util = iteration_cost(shape, hw, frame.chunk_tokens, frame.prefix_tokens, frame.batch_size,
                                   frame.kv_tokens, frame.tp.to_numpy(), frame.sm_clock_mhz)
    latency = latency * rng.lognormal(0.0, 0.015, len(frame))
    power = np.array([sim_power(a, f, hw.gpu) for a, f in zip(util, frame.sm_clock_mhz)])
    power = np.minimum(power, hw.gpu.power_limit_w) * rng.normal(1.0, 0.01, len(frame))
    frame = frame.assign(
        run_id=f"sim-{preset}-{sweep}-{seed}", backend="sim", gpu_name=hw.gpu.name, model=preset,
        sm_clock_mhz=frame.sm_clock_mhz.astype("float64"), power_limit_w=hw.gpu.power_limit_w,
        requested_sm_clock_mhz=frame.sm_clock_mhz.astype("float64"), requested_power_limit_w=None, iterations_per_repeat=1,
        latency_s=latency, mean_power_w=power, peak_power_w=power * 1.03, energy_j=power * latency * frame.tp,
        energy_method="simulated_model",
    )
    meta = {SIMULATED_KEY.decode(): "true", "wattlas.profile": f"simulated roofline, preset {preset}, sweep {sweep}"}
    names = [c.name for c in PROFILE_ITERATIONS.columns]
    return pa.Table.from_pandas(frame.reindex(columns=names), schema=PROFILE_ITERATIONS.arrow(names, meta), preserve_index=False)
