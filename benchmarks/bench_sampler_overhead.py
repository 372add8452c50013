"""CPU overhead of the sampler thread at 10 Hz and 100 Hz (goal: < 1 % of a core at 10 Hz).

Run: python benchmarks/bench_sampler_overhead.py [--seconds 10] [--gpus 8]

Measures the whole process's CPU time in steady state (after a 1.5 s warm-up) while the main
thread sleeps and the sampler polls, buffers and appends a segment batch once a second.  Backends: the fake pynvml of the tests
(the cost of wattlas's own per-sample work over pynvml calls that return at once) and the
simulated device (which adds its physics model).  On a machine with GPUs pass --nvml to measure
the real driver path as well.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(make_source, period_s: float, seconds: float) -> tuple[float, int]:
    from collectors.telemetry.sampler import Sampler

    with tempfile.TemporaryDirectory() as out:
        sampler = Sampler(make_source(), out, period_s=period_s, flush_s=1.0)
        sampler.start()
        time.sleep(1.5)  # steady state: past probing and the first flush's one-time imports
        ticks0, cpu0, wall0 = sampler.ticks, time.process_time(), time.perf_counter()
        time.sleep(seconds)
        cpu, wall, ticks = time.process_time() - cpu0, time.perf_counter() - wall0, sampler.ticks - ticks0
        sampler.stop()
    return 100.0 * cpu / wall, ticks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--nvml", action="store_true", help="also measure real NVML (needs a GPU)")
    args = parser.parse_args()
    from collectors.telemetry.nvml_source import NvmlSource
    from collectors.telemetry.sim_source import SimSource
    from tests.fake_pynvml import FakeGpu, FakeNVML

    backends = {
        "fake-pynvml": lambda: NvmlSource(FakeNVML([FakeGpu(uuid=f"GPU-{i}") for i in range(args.gpus)])),
        "sim": lambda: SimSource(gpus=args.gpus),
    }
    if args.nvml:
        backends["nvml"] = lambda: NvmlSource()
    print(f"{'backend':<12} {'rate':>6} {'GPUs':>5} {'ticks':>6} {'CPU % of one core':>18}")
    for name, make in backends.items():
        for hz in (10, 100):
            pct, ticks = measure(make, 1.0 / hz, args.seconds)
            print(f"{name:<12} {hz:>4}Hz {args.gpus:>5} {ticks:>6} {pct:>17.2f}%")


if __name__ == "__main__":
    main()
