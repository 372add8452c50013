"""Replay speed: the Azure conv trace on 2 instances (goal < 1.5 s) and 1 M requests (goal < 60 s,
< 1 GB), each compared with the plain reference run (decode iterations stepped one at a time).

Run: python benchmarks/bench_replay.py [--million-rate 60] [--skip-reference]
Models: a simulated llama3-8b profile fitted on the spot (labelled simulated).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(label, fn):
    t0 = time.perf_counter()
    result = fn()
    dt = time.perf_counter() - t0
    print(f"{label:<46} {dt:7.2f} s   {result.summary['requests'] / dt:>10,.0f} req/s   "
          f"iterations {result.summary['iterations']:,}")
    return result, dt


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--million-rate", type=float, default=60.0, help="req/s of the 1 M synthetic trace")
    parser.add_argument("--million-instances", type=int, default=16)
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from characterize.fitting import fit_bundle
    from characterize.importers import from_profile
    from collectors.profiling.sim_profile import simulate_profile
    from replay.config import ClusterConfig, PoolConfig
    from replay.engine import replay
    from toolkit.traces.formats import read_trace
    from toolkit.traces.synth import spec_for, synthesize

    bundle = fit_bundle(from_profile(simulate_profile("llama3-8b", "quick")), {"simulated": True}, tree_estimators=20)
    conv = args.data / "azure_llm" / "AzureLLMInferenceTrace_conv.csv"
    if conv.exists():
        trace = read_trace(conv).to_pandas()
        config = ClusterConfig(pools=[PoolConfig(instances=2)])
        timed("Azure conv 19,366 req, 2 instances", lambda: replay(trace, bundle, config))
        if not args.skip_reference:
            timed("  plain reference (no fast-forward)", lambda: replay(trace, bundle, config, fast_forward=False))
    else:
        print(f"{conv} absent: conv benchmark skipped")
    n_target = 1_000_000
    spec = spec_for("conv", mean_rate=args.million_rate, duration_s=n_target / args.million_rate, diurnal_amplitude=0.0)
    big = synthesize(spec).to_pandas()
    config = ClusterConfig(pools=[PoolConfig(instances=args.million_instances)])
    result, dt = timed(f"synthetic {len(big):,} req, {args.million_instances} instances", lambda: replay(big, bundle, config))
    print(f"  peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB, "
          f"finished {result.summary['finished']:,}, SLO attainment {result.summary['slo_attainment']:.3f}")


if __name__ == "__main__":
    main()
