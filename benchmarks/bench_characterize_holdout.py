"""Held-out error of ``characterize fit`` on measured tables (issue goals: prefill <= 8 % with
configurations held out, <= 10 % extrapolating context 4x, <= 12 % TP2+TP4 -> TP8; decode <= 5 %).

Run: python benchmarks/bench_characterize_holdout.py [--data ../shared/data] [--table FILE ...] [--seeds 8]

Each table is split as ``characterize.holdout`` describes (configurations held out over seeds,
context extrapolation, largest TP from the others), fitted with the same selection ``fit`` uses,
and scored on the held-out rows.  ``--table`` adds whole-model tables of any format ``fit`` reads
(e.g. splitwise-sim's ``perf_model.csv``); the Vidur and ML.ENERGY files of ``--data`` are scored
when present.  Prints MAPE, the worst seed, p90 and coverage per (GPU, model), phase and split.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

SHARED = [
    "vidur/compute_h100_Llama-2-70b-hf_mlp.csv",
    "vidur/compute_a100_Llama-2-70b-hf_mlp.csv",
    "vidur/compute_h100_Llama-2-7b-hf_mlp.csv",
]


def report(name: str, frame, seeds: int, trees: int) -> None:
    from characterize.holdout import holdout_splits

    t0 = time.perf_counter()
    results = holdout_splits(frame, seeds=seeds, trees=trees)
    print(f"{name} ({len(frame):,} rows, {time.perf_counter() - t0:.1f} s)")
    for key, phases in results.items():
        for phase, splits in phases.items():
            for split, s in splits.items():
                print(f"  {key:<32} {phase:<8} {split:<8} MAPE {100 * s['mape']:6.2f}%  worst seed "
                      f"{100 * s['mape_worst_seed']:6.2f}%  p90 {100 * s['p90_ape']:6.2f}%  covered "
                      f"{s['covered']:,}/{s['rows']:,}  selected {','.join(s['selected'])}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--table", type=Path, action="append", default=[], help="A whole-model table to score too.")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--trees", type=int, default=40, help="Boosting rounds of the (diagnostic) tree rival.")
    args = parser.parse_args()
    from characterize.importers import load_measurements

    warnings.simplefilter("ignore")
    for path in args.table:
        report(str(path.name), load_measurements(path), args.seeds, args.trees)
    for name in SHARED:
        path = args.data / name
        if not path.exists():
            print(f"{name}: absent, skipped")
            continue
        frame = load_measurements(path)
        # Vidur's linear operators are one "linear" phase of c tokens: score them as a prefill table
        frame = frame.assign(phase="prefill")
        report(name, frame, args.seeds, args.trees)


if __name__ == "__main__":
    main()
