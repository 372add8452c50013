"""Week-scale replay: streaming and partitioned replay against the in-memory reference run.

Run: python benchmarks/bench_replay_stream.py [--sizes 1000000,2000000] [--instances 16] [--rate 60]
     python benchmarks/bench_replay_stream.py --week PATH.parquet [--instances 24] [--partitions 2]

Each replay runs in a fresh child process (its own peak RSS); the figures to compare are the
ratios to the in-memory reference (:func:`replay.engine.replay` of the same trace, the path before
streaming) measured in the same run, plus requests per second of replay and peak RSS.  Models: a
simulated llama3-8b profile fitted on the spot (labelled [SIMULATED]); traces: the synthetic
``conv`` preset at ``--rate`` req/s (no diurnal swing), or a week preset written by
``wattlas trace synth azure2024-conv-week`` (``--week``), replayed partitioned over a LocalCluster
of ``--partitions`` workers (cells of a random split: replay/partition.py).

Goals (issue 16): >= 50,000 requests/s on one core for 1-2 M requests, peak RSS < 1 GB whatever the
length; the 27.3 M-request conv week end to end on 2 cores in < 10 min, < 1.5 GB per worker.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _bundle(path: Path) -> Path:
    from characterize.fitting import fit_bundle
    from characterize.importers import from_profile
    from collectors.profiling.sim_profile import simulate_profile

    if not path.exists():
        fit_bundle(from_profile(simulate_profile("llama3-8b", "quick")), {"simulated": True}, tree_estimators=20).save(path)
    return path


def child(mode: str, trace: str, models: str, instances: int, out: str, partitions: int) -> None:
    """One replay in this process; prints one JSON line: wall time, requests, peak RSS (MiB)."""
    warnings.simplefilter("ignore")
    from characterize.model_io import ModelBundle
    from replay.config import ClusterConfig, PoolConfig

    config = ClusterConfig(pools=[PoolConfig(instances=instances)])
    start = time.perf_counter()
    if mode == "memory":
        from replay.engine import replay
        from toolkit.traces.formats import read_trace

        result = replay(read_trace(trace).to_pandas(), ModelBundle.load(models), config)
        summary = result.summary
    elif mode == "stream":
        from replay.stream import replay_stream

        summary = replay_stream(trace, ModelBundle.load(models), config, out, True)
    else:
        from replay.partition import replay_partitioned

        summary = replay_partitioned(trace, models, config, out, True, partitions, workers=partitions)
    wall = time.perf_counter() - start
    from replay.stream import peak_rss_mib

    rss = peak_rss_mib() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # (maxrss counts the parent's)
    workers = max((r or 0.0 for r in (summary.get("streamed") or {}).get("part_peak_rss_mib", [])), default=0.0)
    print(json.dumps({"wall_s": wall, "requests": summary["requests"], "finished": summary["finished"],
                      "rss_mib": rss, "worker_rss_mib": workers, "slo": summary["slo_attainment"],
                      "held": (summary.get("streamed") or {}).get("peak_requests_held")}))


def run(mode: str, trace: Path, models: Path, instances: int, out: Path, partitions: int = 1) -> dict:
    line = subprocess.run([sys.executable, __file__, "--child", mode, str(trace), str(models), str(instances), str(out),
                           str(partitions)], capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return json.loads(line)


def show(label: str, r: dict, reference: dict | None) -> None:
    ratio = f"  {reference['wall_s'] / r['wall_s']:.2f}x the in-memory rate" if reference else ""
    worker = f", worker peak RSS {r['worker_rss_mib']:,.0f} MiB" if r.get("worker_rss_mib") and "partition" in label else ""
    print(f"[SIMULATED] {label:<34} {r['requests']:>11,} req  {r['wall_s']:8.1f} s  {r['requests'] / r['wall_s']:>9,.0f} req/s  "
          f"peak RSS {r['rss_mib']:,.0f} MiB{worker}{ratio}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, trace, models, instances, out, partitions = sys.argv[2:8]
        child(mode, trace, models, int(instances), out, int(partitions))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000000,2000000", help="synthetic trace sizes (requests)")
    parser.add_argument("--rate", type=float, default=60.0)
    parser.add_argument("--instances", type=int, default=16)
    parser.add_argument("--week", type=Path, help="a week preset trace (Parquet) to replay partitioned")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--skip-memory", action="store_true", help="no in-memory reference (it needs ~3 GB per 5 M)")
    parser.add_argument("--skip-partitioned", action="store_true", help="one core only: no LocalCluster run")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wattlas-bench-"))
    models = _bundle(tmp / "models.json")
    if args.week:
        r = run("partitioned", args.week, models, args.instances, tmp / "week", args.partitions)
        show(f"{args.week.name}, {args.partitions} partitions", r, None)
        print(f"  finished {r['finished']:,}, SLO attainment {r['slo']:.3f}; goal < 600 s end to end, < 1,536 MiB per worker")
        return
    from toolkit.traces.formats import write_trace
    from toolkit.traces.synth import spec_for, synthesize

    for n in (int(s) for s in args.sizes.split(",")):
        trace = tmp / f"synth-{n}.parquet"
        write_trace(synthesize(spec_for("conv", mean_rate=args.rate, duration_s=n / args.rate, diurnal_amplitude=0.0)), trace)
        reference = None if args.skip_memory else run("memory", trace, models, args.instances, tmp / "m")
        if reference:
            show(f"in-memory reference, {args.instances} inst", reference, None)
        show(f"streaming, {args.instances} inst", run("stream", trace, models, args.instances, tmp / f"s{n}"), reference)
        if args.skip_partitioned:
            continue
        show(f"partitioned x{args.partitions} cells", run("partitioned", trace, models, args.instances, tmp / f"p{n}",
                                                          args.partitions), reference)


if __name__ == "__main__":
    main()
