"""Profiling on the simulated device: iteration latency and power from a roofline model.

Stands in for the GPU profiler where no GPU is available.  For a Llama-shaped model sharded
over ``tp`` GPUs, an iteration with a prefill chunk (c tokens after a KV prefix p) and b decodes
at KV length k takes

    max(FLOPs / (peak * f/f_max * efficiency), bytes / (HBM bandwidth * efficiency)) + TP all-reduces + launch

with FLOPs = 2 * params * tokens + 4 * layers * hidden * (c * (p + c/2) + b * k) and bytes = weights
+ KV read (2 * layers * kv_heads * head_dim * 2 B per cached token).  Its compute utilization is
the compute time over the latency, its memory utilization the HBM time over the latency; power is
the simulated GPU's one law of both (:func:`collectors.telemetry.sim_source.sim_power_of`, the
law the simulated telemetry device draws through).  Where that law exceeds the power limit at the
locked clock the GPU runs slower, as a real one does: the clock comes down until the power meets
the limit (:func:`operating_point`), the iteration takes longer, and the row records the clock it
ran at (``observed_sm_clock_mhz``) and ``power_capped_share`` 1.  Every row is ``backend="sim"``,
``energy_method="simulated_model"``: these are model outputs, not measurements.

:func:`fit_power_constants` is the calibration of the law's constants against measured
(batch, power) points (``benchmarks/bench_sim_calibration.py`` runs it on ML.ENERGY v3).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Iterable

import numpy as np

from toolkit.model_shapes import ModelShape, PRESETS  # noqa: F401  (moved to toolkit; re-exported here)

from ..telemetry.sim_source import SimGpuSpec, sim_power_of, slowdown

if TYPE_CHECKING:
    import pyarrow as pa

# ML.ENERGY v3 lm-arena-chat has no input length in its published configurations: the calibration
# assumes a mean prompt of this many tokens (short chat prompts), so a decode of a request holds
# MLENERGY_PROMPT_TOKENS + avg_output_len / 2 KV tokens on average.
MLENERGY_PROMPT_TOKENS = 256
# The decode points say little about idle power (every decode keeps HBM ~90 % busy, so idle and the
# memory part trade off): the fit adds one measured idle point, an H100 SXM with vLLM and its model
# loaded, no request in flight (grantwilkins/powertrace-sim @ 96361efb,
# data/runs/validate_qwen3-8b/h100_validate_tp1_r4p0_b1p0_s20260712_1784422665/power.csv: the 56
# nvidia-smi samples before the first request read 122.68-122.85 W at 0 % utilization).
H100_IDLE_W = 122.7


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
    """(latency_s, compute utilization, memory utilization) of iterations at SM clock ``f_mhz``,
    vectorized over numpy arrays: the compute and the HBM time, each over the latency (0..1)."""
    c, p, b, k = (np.asarray(x, dtype="float64") for x in (c, p, b, k))
    tokens = c + b
    attn_flops = 4.0 * shape.layers * shape.hidden * (c * (p + c / 2.0) + b * k)
    flops = (2.0 * shape.params * tokens + attn_flops) / tp
    kv_bytes_per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * 2
    bytes_moved = (2.0 * shape.params + kv_bytes_per_token * (p * (c > 0) + b * k)) / tp
    rate = hw.peak_flops * hw.compute_efficiency * (np.asarray(f_mhz, dtype="float64") / hw.gpu.f_max_mhz)
    compute_s = flops / rate
    memory_s = bytes_moved / (hw.hbm_bytes_per_s * hw.memory_efficiency)
    comm_s = np.where(np.asarray(tp) > 1, 2 * shape.layers * (hw.allreduce_latency_s + tokens * shape.hidden * 2 * (tp - 1) / tp / hw.nvlink_bytes_per_s), 0.0)
    latency = np.maximum(compute_s, memory_s) + comm_s + hw.launch_s
    return latency, np.clip(compute_s / latency, 0.0, 1.0), np.clip(memory_s / latency, 0.0, 1.0)


def operating_point(shape: ModelShape, hw: SimHardware, c, p, b, k, tp, f_mhz, power_limit_w: float | None = None):
    """Where iterations run at locked clock ``f_mhz`` under ``power_limit_w`` (None: the GPU's):
    (latency_s, compute util, memory util, SM clock MHz, power W), vectorized.  The clock is
    ``f_mhz`` unless the power law exceeds the limit there; then the highest clock (down to the
    GPU's minimum) whose power meets it, found by bisection (power grows with the clock); where
    even that clock draws too much, the iteration stretches until it fits (``sim_source.slowdown``)."""
    gpu = hw.gpu
    limit = gpu.power_limit_w if power_limit_w is None else power_limit_w
    f = np.broadcast_to(np.asarray(f_mhz, dtype="float64"), np.broadcast(c, p, b, k, tp, f_mhz).shape).copy()

    def at(freq):
        latency, uc, um = iteration_cost(shape, hw, c, p, b, k, tp, freq)
        return latency, uc, um, sim_power_of(uc, um, freq, gpu)

    latency, uc, um, power = at(f)
    over = power > limit
    if np.any(over):
        lo, hi = np.full_like(f, gpu.f_min_mhz), f.copy()
        for _ in range(40):
            mid = (lo + hi) / 2
            ok = at(mid)[3] <= limit
            lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
        f = np.where(over, lo, f)
        latency, uc, um, power = at(f)
        stretch = slowdown(uc, um, f, gpu, limit)  # > 1 where even the lowest clock draws too much
        latency, uc, um = latency * stretch, uc / stretch, um / stretch
        power = sim_power_of(uc, um, f, gpu)
    return latency, uc, um, f, power


def decode_point(batch: float, kv_tokens: float, preset: str = "llama3-8b", hw: SimHardware | None = None,
                 tp: int = 1, f_mhz: float | None = None) -> dict:
    """The simulated decode iteration of ``batch`` sequences at ``kv_tokens`` each (default: the
    maximum clock): latency (the inter-token latency), utilizations, clock and power per GPU."""
    hw = hw or SimHardware()
    f = hw.gpu.f_max_mhz if f_mhz is None else f_mhz
    latency, uc, um, clock, power = operating_point(PRESETS[preset], hw, 0, 0, batch, kv_tokens, tp, f)
    return {"latency_s": float(latency), "compute_util": float(uc), "memory_util": float(um),
            "sm_clock_mhz": float(clock), "power_w": float(power)}


def fit_power_constants(points: Iterable[tuple[float, float, float]], prompt_tokens: float = MLENERGY_PROMPT_TOKENS,
                        idle_w: Iterable[float] = (H100_IDLE_W,), preset: str = "llama3-8b",
                        hw: SimHardware | None = None) -> dict:
    """Least-squares fit of the power law's ``idle_w``, ``compute_dynamic_w`` and
    ``memory_dynamic_w`` (each >= 0; ``memory_clock_share``, clocks and limit as in ``hw``) to
    measured ``points`` of one GPU serving ``preset`` - (mean decode batch, mean output length,
    mean power W) - and measured idle powers ``idle_w`` (both utilizations 0).  Each point is the
    simulated decode iteration of that batch at ``prompt_tokens + output / 2`` KV tokens, at the
    maximum clock, its power capped at the limit (where the GPU would throttle); the residuals are
    relative.  Returns the constants, the per-point utilizations and predictions, and the MAPE
    (percent) over the serving points."""
    from scipy.optimize import least_squares  # calibration only

    hw = hw or SimHardware()
    gpu = hw.gpu
    batch, output, measured = (np.asarray(x, dtype="float64") for x in zip(*points))
    kv = prompt_tokens + output / 2.0
    _, uc, um = iteration_cost(PRESETS[preset], hw, 0, 0, batch, kv, 1, gpu.f_max_mhz)
    idle = np.asarray(list(idle_w), dtype="float64")
    all_uc, all_um = np.concatenate([uc, np.zeros(len(idle))]), np.concatenate([um, np.zeros(len(idle))])
    target = np.concatenate([measured, idle])

    def predict(q, compute=all_uc, memory=all_um):
        spec = replace(gpu, idle_w=q[0], compute_dynamic_w=q[1], memory_dynamic_w=q[2])
        return np.minimum(sim_power_of(compute, memory, gpu.f_max_mhz, spec), gpu.power_limit_w)

    fit = least_squares(lambda q: (predict(q) - target) / target, np.array([100.0, 300.0, 300.0]),
                        bounds=([0.0, 0.0, 0.0], [gpu.power_limit_w, np.inf, np.inf]), x_scale=100.0,
                        xtol=1e-12, ftol=1e-12, gtol=1e-12)
    predicted = predict(fit.x, uc, um)
    return {"idle_w": float(fit.x[0]), "compute_dynamic_w": float(fit.x[1]), "memory_dynamic_w": float(fit.x[2]),
            "prompt_tokens": float(prompt_tokens), "kv_tokens": kv.tolist(), "compute_util": uc.tolist(),
            "memory_util": um.tolist(), "predicted_w": predicted.tolist(),
            "mape": float(np.mean(np.abs(predicted - measured) / measured) * 100)}


SWEEPS = {
    "quick": {"chunks": [32, 128, 512, 2048, 8192], "prefixes": [0, 4096, 32768, 131072, 524288],
              "batches": [1, 8, 32, 128], "kvs": [512, 4096, 32768, 131072], "tps": [1, 2], "freqs": [1980, 1410]},
    "full": {"chunks": [32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384],
             "prefixes": [0, 2048, 8192, 32768, 131072, 524288, 1048576],
             "batches": [1, 2, 4, 8, 16, 32, 64, 128, 256], "kvs": [256, 1024, 4096, 16384, 65536, 262144, 1048576],
             "tps": [1, 2, 4, 8], "freqs": [1980, 1755, 1410, 1110, 810]},
}


def simulate_profile(preset: str = "llama3-8b", sweep: str = "quick", repeats: int = 3, seed: int = 0,
                     hw: SimHardware | None = None) -> "pa.Table":
    """A profile_iterations table from the simulated device (labelled simulated)."""
    import pandas as pd
    import pyarrow as pa

    from toolkit.schemas import PROFILE_ITERATIONS, SIMULATED_KEY

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
            rows.append(("idle", 0, 0, 0, 0, tp, f))  # the GPU idle between iterations: a 1-s window of its power
    frame = pd.DataFrame(rows, columns=["phase", "chunk_tokens", "prefix_tokens", "batch_size", "kv_tokens", "tp", "sm_clock_mhz"])
    frame = frame.loc[frame.index.repeat(repeats)].reset_index(drop=True)
    frame["repeat"] = frame.groupby(list(frame.columns)).cumcount()
    latency, _, _, clock, power = operating_point(shape, hw, frame.chunk_tokens.to_numpy(), frame.prefix_tokens.to_numpy(),
                                                  frame.batch_size.to_numpy(), frame.kv_tokens.to_numpy(), frame.tp.to_numpy(),
                                                  frame.sm_clock_mhz.to_numpy(dtype="float64"))
    capped = clock < frame.sm_clock_mhz.to_numpy(dtype="float64")
    idle = (frame.chunk_tokens.to_numpy() == 0) & (frame.batch_size.to_numpy() == 0)
    latency = np.where(idle, 1.0, latency)
    power = np.where(idle, hw.gpu.idle_w, power)
    latency = latency * rng.lognormal(0.0, 0.015, len(frame))
    power = power * rng.normal(1.0, 0.01, len(frame))
    frame = frame.assign(
        run_id=f"sim-{preset}-{sweep}-{seed}", backend="sim", gpu_name=hw.gpu.name, model=preset,
        sm_clock_mhz=frame.sm_clock_mhz.astype("float64"), power_limit_w=hw.gpu.power_limit_w,
        requested_sm_clock_mhz=frame.sm_clock_mhz.astype("float64"), requested_power_limit_w=None, iterations_per_repeat=1,
        latency_s=latency, mean_power_w=power, peak_power_w=power * 1.03, energy_j=power * latency * frame.tp,
        energy_method="simulated_model", observed_sm_clock_mhz=clock, power_capped_share=np.where(capped, 1.0, 0.0),
    )
    meta = {SIMULATED_KEY.decode(): "true", "wattlas.profile": f"simulated roofline, preset {preset}, sweep {sweep}"}
    names = [c.name for c in PROFILE_ITERATIONS.columns]
    return pa.Table.from_pandas(frame.reindex(columns=names), schema=PROFILE_ITERATIONS.arrow(names, meta), preserve_index=False)
