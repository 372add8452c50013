"""Week-preset generation rate relative to the 1-hour ``conv`` synth, and peak memory.

Run: python benchmarks/bench_week_synth.py [--preset azure2024-conv-week] [--sample 0.1] [--full-week]

In one process: the 1-hour ``conv`` preset (``synthesize``, in memory) and one day of a week
preset at ``--sample`` (written to Parquet row groups), each timed over ``--repeat`` runs (best
run).  Rates are requests per second of wall time; the figures to compare are the ratios to the
1-hour synth on the same machine, not the absolute times.  Peak RSS is the process's (it includes
the 1-hour run and the imports); ``--full-week`` also generates the whole week at sample 1 in a
child process and reports that child's peak RSS, the bounded-memory claim (27.3 M requests).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path


def _rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    kib = resource.getrusage(who).ru_maxrss  # KiB on Linux, bytes on macOS
    return kib / (2**20 if sys.platform == "darwin" else 2**10)


def _best(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _full_week(preset: str, path: str, queue) -> None:
    from toolkit.traces.week import write_week_trace

    t0 = time.perf_counter()
    result = write_week_trace(preset, path, days=7, sample=1.0, seed=0, summarize=False)
    queue.put((time.perf_counter() - t0, result.requests, result.row_groups, _rss_mib()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="azure2024-conv-week")
    parser.add_argument("--sample", type=float, default=0.1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--full-week", action="store_true", help="also the whole week at sample 1, in a child process")
    args = parser.parse_args()

    from toolkit.traces.synth import spec_for, synthesize
    from toolkit.traces.week import expected_per_day, week_preset, write_week_trace

    hour_s, hour = _best(lambda: synthesize(spec_for("conv", duration_s=3600, seed=0), "conv"), args.repeat)
    hour_rate = hour.num_rows / hour_s
    print(f"1-hour conv synth          {hour.num_rows:>10,} requests  {hour_rate / 1e6:6.3f} M req/s  (baseline 1.00)")

    preset = week_preset(args.preset)
    drawn = expected_per_day(preset, 0)[0]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "day.parquet"
        day_s, result = _best(lambda: write_week_trace(preset, out, days=1, sample=args.sample, seed=0), args.repeat)
        kept_rate = result.requests / day_s
        drawn_rate = drawn / day_s
        print(f"1 day {args.preset} --sample {args.sample:g}: {result.requests:>10,} requests written "
              f"({drawn:,.0f} drawn at full rate), {result.row_groups} row groups")
        for label, rate in (("written", kept_rate), ("full-rate", drawn_rate)):
            print(f"  {label + ' requests/s':<25} {rate / 1e6:6.3f} M req/s  ratio {rate / hour_rate:5.2f} x the 1-hour synth")
        print(f"  day time / 1-hour time    {day_s / hour_s:6.1f} for {result.requests / hour.num_rows:.1f}x the requests")
        print(f"peak RSS of this process    {_rss_mib():7.0f} MiB")

        if args.full_week:
            ctx = multiprocessing.get_context("spawn")
            queue = ctx.Queue()
            child = ctx.Process(target=_full_week, args=(args.preset, str(Path(tmp) / "week.parquet"), queue))
            child.start()
            seconds, requests, groups, rss = queue.get()
            child.join()
            rate = requests / seconds
            print(f"full week, sample 1         {requests:>10,} requests, {groups} row groups, "
                  f"{rate / 1e6:6.3f} M req/s (ratio {rate / hour_rate:5.2f}), child peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
