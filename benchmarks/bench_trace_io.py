"""Trace IO speed: parse + validate + summarize a large Azure-format CSV, in memory and chunked.

Run: python benchmarks/bench_trace_io.py [--rows 5000000]
Writes a synthetic Azure-2024-style CSV (UTC offsets, microseconds) to a temporary directory.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def make_csv(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    chunk = 1_000_000
    start = pd.Timestamp("2024-05-10", tz="UTC")
    elapsed = 0.0
    with open(path, "w") as handle:
        handle.write("TIMESTAMP,ContextTokens,GeneratedTokens\n")
        for lo in range(0, rows, chunk):
            n = min(chunk, rows - lo)
            t = elapsed + np.cumsum(rng.exponential(0.02, n))
            elapsed = float(t[-1])
            stamps = (start + pd.to_timedelta(t, unit="s")).strftime("%Y-%m-%d %H:%M:%S.%f+00:00")
            frame = pd.DataFrame({"TIMESTAMP": stamps, "ContextTokens": rng.integers(1, 8000, n),
                                  "GeneratedTokens": rng.integers(1, 600, n)})
            frame.to_csv(handle, header=False, index=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2_000_000)
    args = parser.parse_args()
    from toolkit.traces.formats import convert_trace_streaming, read_trace
    from toolkit.traces.large import summarize_csv_chunked
    from toolkit.traces.stats import finalize, summarize_trace

    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "trace.csv"
        t0 = time.perf_counter()
        make_csv(csv, args.rows)
        print(f"generated {args.rows:,} rows ({csv.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s")
        for label, fn in [
            ("in-memory read+stats", lambda: summarize_trace(read_trace(csv))),
            ("chunked dask stats", lambda: finalize(summarize_csv_chunked(csv))),
            ("streaming convert", lambda: convert_trace_streaming(csv, Path(tmp) / "t.parquet")),
        ]:
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            print(f"{label:<22} {dt:7.2f} s  {args.rows / dt / 1e6:5.2f} M rows/s")


if __name__ == "__main__":
    main()
