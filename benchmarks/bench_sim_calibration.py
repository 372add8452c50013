"""The simulated H100 against ML.ENERGY v3's measured H100 points: power and inter-token latency.

Run: python benchmarks/bench_sim_calibration.py [--data ../shared/data] [--refit] [--prompt-tokens 256]
         [--sensitivity]

For every ML.ENERGY v3 row of Llama-3.1-8B-Instruct on one H100 (TP1; today the 11 lm-arena-chat
rows, max_num_seqs 8 ... 768) it runs the simulated decode iteration of the row's mean batch at
``prompt + avg_output_len / 2`` KV tokens through the simulated telemetry device (power from its
energy counter over 2 s) and the simulated profile (its operating point: power and latency), and
prints the error of each against the measured average power per GPU and median ITL, and the MAPE.

``--refit`` reruns the least-squares calibration of the power law
(:func:`collectors.profiling.sim_profile.fit_power_constants`) and compares it with the constants
stored in :class:`collectors.telemetry.sim_source.SimGpuSpec`; it exits 1 when they disagree by
more than 0.5 %.  ``--sensitivity`` refits under other prompt-length assumptions.  Without the
data directory it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MLENERGY_V3 = "mlenergy/mlenergy_v3_llm_configs.csv"
MODEL_ID = "meta-llama/Llama-3.1-8B-Instruct"
TOLERANCE = 0.005  # stored vs refitted constants, relative


def load_points(data: Path = DEFAULT_DATA):
    """ML.ENERGY v3's rows of Llama-3.1-8B-Instruct on one H100, TP1, as a DataFrame with
    ``task``, ``max_num_seqs``, ``batch``, ``output_len``, ``power_w`` (per GPU) and ``itl_ms``
    (median); None when the file is absent."""
    path = Path(data) / MLENERGY_V3
    if not path.exists():
        return None
    import pandas as pd

    raw = pd.read_csv(path)
    rows = raw[(raw["model_id"] == MODEL_ID) & (raw["gpu_model"] == "H100") & (raw["num_gpus"] == 1)
               & (raw["tensor_parallel"] == 1)]
    return pd.DataFrame({
        "task": rows["task"], "max_num_seqs": rows["max_num_seqs"].astype(int), "batch": rows["avg_batch_size"],
        "output_len": rows["avg_output_len"], "power_w": rows["avg_power_watts"] / rows["num_gpus"],
        "itl_ms": rows["median_itl_ms"],
    }).sort_values(["task", "max_num_seqs"]).reset_index(drop=True)


def device_power(compute_util: float, memory_util: float, seconds: float = 2.0, spec=None) -> float:
    """Mean power (W) of the simulated telemetry device held at one load for ``seconds``, from
    its energy counter (a virtual clock: no waiting)."""
    from collectors.telemetry.sim_source import SimSource

    now = [0.0]
    source = SimSource(gpus=1, spec=spec, seed=0, clock=lambda: now[0])
    source.set_activity(0, (compute_util, memory_util))
    now[0] = 1.0  # let the 1-s average settle; the counter is exact either way
    e0, _ = source.read_energy_power(0)
    now[0] += seconds
    e1, _ = source.read_energy_power(0)
    return (e1 - e0) / seconds


def simulate(points, prompt_tokens: float | None = None, spec=None):
    """``points`` (see :func:`load_points`) with the simulated device's power (``device_w``), the
    simulated profile's power and ITL (``profile_w``, ``sim_itl_ms``), its clock and utilizations."""
    from collectors.profiling.sim_profile import MLENERGY_PROMPT_TOKENS, SimHardware, decode_point

    prompt = MLENERGY_PROMPT_TOKENS if prompt_tokens is None else prompt_tokens
    hw = SimHardware() if spec is None else SimHardware(gpu=spec)
    out = points.copy()
    rows = [decode_point(b, prompt + o / 2.0, hw=hw) for b, o in zip(points["batch"], points["output_len"])]
    out["kv_tokens"] = prompt + points["output_len"] / 2.0
    out["compute_util"] = [r["compute_util"] for r in rows]
    out["memory_util"] = [r["memory_util"] for r in rows]
    out["sm_clock_mhz"] = [r["sm_clock_mhz"] for r in rows]
    out["profile_w"] = [r["power_w"] for r in rows]
    out["sim_itl_ms"] = [r["latency_s"] * 1000 for r in rows]
    out["device_w"] = [device_power(r["compute_util"], r["memory_util"], spec=hw.gpu) for r in rows]
    return out


def refit(points, prompt_tokens: float | None = None) -> dict:
    """The power law's constants refitted on ``points`` (plus the idle anchor)."""
    from collectors.profiling.sim_profile import MLENERGY_PROMPT_TOKENS, fit_power_constants

    prompt = MLENERGY_PROMPT_TOKENS if prompt_tokens is None else prompt_tokens
    return fit_power_constants(zip(points["batch"], points["output_len"], points["power_w"]), prompt)


def stored_constants() -> dict:
    """The constants in :class:`SimGpuSpec` today."""
    from collectors.telemetry.sim_source import SimGpuSpec

    spec = SimGpuSpec()
    return {"idle_w": spec.idle_w, "compute_dynamic_w": spec.compute_dynamic_w, "memory_dynamic_w": spec.memory_dynamic_w}


def disagreement(fitted: dict, stored: dict | None = None) -> float:
    """The largest relative difference between refitted and stored constants."""
    stored = stored or stored_constants()
    return max(abs(fitted[k] - v) / v for k, v in stored.items())


def report(table) -> str:
    """The per-point table and the MAPEs, as text."""
    lines = [f"{'task':<15}{'seqs':>5}{'batch':>8}{'meas W':>8}{'device W':>9}{'err':>7}{'profile W':>10}{'err':>7}"
             f"{'clock':>7}{'u_c':>6}{'u_m':>6}{'ITL ms':>8}{'sim ms':>8}{'err':>7}"]
    for r in table.itertuples():
        lines.append(f"{r.task:<15}{r.max_num_seqs:>5}{r.batch:>8.1f}{r.power_w:>8.0f}{r.device_w:>9.0f}"
                     f"{(r.device_w / r.power_w - 1) * 100:>+6.1f}%{r.profile_w:>10.0f}{(r.profile_w / r.power_w - 1) * 100:>+6.1f}%"
                     f"{r.sm_clock_mhz:>7.0f}{r.compute_util:>6.2f}{r.memory_util:>6.2f}{r.itl_ms:>8.1f}{r.sim_itl_ms:>8.1f}"
                     f"{(r.sim_itl_ms / r.itl_ms - 1) * 100:>+6.1f}%")
    mape = lambda a, b: float(((table[a] - table[b]).abs() / table[b]).mean() * 100)  # noqa: E731
    lines.append(f"MAPE over {len(table)} points: power {mape('device_w', 'power_w'):.1f} % (device), "
                 f"{mape('profile_w', 'power_w'):.1f} % (profile); median ITL {mape('sim_itl_ms', 'itl_ms'):.1f} %")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--prompt-tokens", type=float, default=None, help="mean prompt length assumed (default: the calibration's)")
    parser.add_argument("--refit", action="store_true", help="refit the power law and compare with the stored constants")
    parser.add_argument("--sensitivity", action="store_true", help="refit under prompt lengths 128 ... 1024")
    args = parser.parse_args(argv)
    points = load_points(args.data)
    if points is None:
        print(f"{args.data / MLENERGY_V3}: absent, skipped")
        return 0
    from collectors.profiling.sim_profile import MLENERGY_PROMPT_TOKENS

    prompt = MLENERGY_PROMPT_TOKENS if args.prompt_tokens is None else args.prompt_tokens
    print(f"[SIMULATED] H100 vs ML.ENERGY v3 {MODEL_ID}, 1x H100 TP1 ({len(points)} rows; "
          f"decode at {prompt:.0f} + avg_output_len/2 KV tokens, 1980 MHz, 700 W limit)")
    print(report(simulate(points, args.prompt_tokens)))
    status = 0
    if args.refit:
        fitted = refit(points, args.prompt_tokens)
        stored = stored_constants()
        print("refit (least squares, relative error; idle anchor included): "
              + ", ".join(f"{k} {fitted[k]:.2f} W (stored {stored[k]:.1f})" for k in stored)
              + f"; fit MAPE {fitted['mape']:.2f} %")
        worst = disagreement(fitted, stored)
        agree = worst <= TOLERANCE or args.prompt_tokens not in (None, MLENERGY_PROMPT_TOKENS)
        print(f"stored constants {'agree' if worst <= TOLERANCE else 'DISAGREE'} with the refit "
              f"(largest difference {worst * 100:.2f} %, tolerance {TOLERANCE * 100:.1f} %)")
        status = 0 if agree else 1
    if args.sensitivity:
        for tokens in (128, 256, 512, 1024):
            fitted = refit(points, tokens)
            print(f"  prompt {tokens:>5} tokens: idle {fitted['idle_w']:.1f} W, compute {fitted['compute_dynamic_w']:.1f} W, "
                  f"memory {fitted['memory_dynamic_w']:.1f} W, fit MAPE {fitted['mape']:.2f} %")
    return status


if __name__ == "__main__":
    sys.exit(main())
