"""Held-out MAPE of the characterization models on ../shared/data (goal: latency <= 5 %, power <= 8 %).

Run: python benchmarks/bench_characterize_holdout.py [--data ../shared/data] [--trees 150]
Skips files that are absent. Prints grouped-CV and 4x context-extrapolation MAPE per phase and
candidate (physical terms vs gradient-boosted trees), and the selection.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

FILES = [
    ("vidur/compute_h100_Llama-2-7b-hf_mlp.csv", None),
    ("vidur/compute_h100_Llama-2-70b-hf_mlp.csv", None),
    ("vidur/compute_a100_Llama-2-7b-hf_mlp.csv", None),
    ("vidur/compute_a100_Llama-2-70b-hf_mlp.csv", None),
    ("vidur/compute_a100_Meta-Llama-3-8B_mlp.csv", None),
    ("vidur/legacy_acb95f6_a100_attention.csv", None),
    ("mlenergy/mlenergy_v3_llm_configs.csv", "H100"),
    ("mlenergy/mlenergy_v3_llm_configs.csv", "B200"),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--trees", type=int, default=150)
    args = parser.parse_args()
    from characterize.fitting import fit_bundle
    from characterize.importers import load_measurements

    warnings.simplefilter("ignore")
    for name, gpu in FILES:
        path = args.data / name
        if not path.exists():
            print(f"{name}: absent, skipped")
            continue
        frame = load_measurements(path)
        if gpu:
            frame = frame[frame["gpu_name"] == gpu]
        t0 = time.perf_counter()
        bundle = fit_bundle(frame, tree_estimators=args.trees)
        print(f"{name}{' [' + gpu + ']' if gpu else ''}  ({len(frame):,} rows, {time.perf_counter() - t0:.1f} s)")
        for key, report in bundle.validation.items():
            for candidate, scores in report.items():
                if candidate == "selected" or "cv_mape" not in scores:
                    continue
                ex = scores.get("extrapolation_mape")
                mark = "*" if candidate == report["selected"] else " "
                print(f"  {mark} {key:<24} {candidate:<9} cv {scores['cv_mape']:6.2f}%"
                      + (f"   extrapolation {ex:6.2f}%" if ex is not None else ""))


if __name__ == "__main__":
    main()
