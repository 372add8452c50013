"""Start-up time of the CLI (goals: --version and --help < 0.3 s, characterize predict < 1 s).

Run: python benchmarks/bench_startup.py [--repeats 5]
Each command runs in a fresh interpreter; the bare interpreter (``python -c pass``) is timed in the
same run, so the figures come with their ratio to it rather than as bare absolute times alone.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(argv: list[str], repeats: int) -> float:
    """Median wall time of ``argv`` over ``repeats`` runs (s)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.test_replay import linear_bundle

    bundle = linear_bundle().save(Path(tempfile.mkdtemp()) / "m.json")
    wattlas = [sys.executable, "-m", "toolkit.cli"]
    bare = timed([sys.executable, "-c", "pass"], args.repeats)
    print(f"bare interpreter: {bare:.3f} s")
    for label, argv, goal in (
        ("wattlas --version", [*wattlas, "--version"], 0.3),
        ("wattlas --help", [*wattlas, "--help"], 0.3),
        ("characterize predict", [*wattlas, "characterize", "predict", str(bundle), "--phase", "decode", "-b", "8",
                                  "-k", "1024"], 1.0),
    ):
        t = timed(argv, args.repeats)
        print(f"{label:24s} {t:.3f} s = {t / bare:.1f}x the bare interpreter (goal {goal} s: "
              f"{'met' if t < goal else 'missed'})")


if __name__ == "__main__":
    main()
