"""``wattlas collect``: GPU telemetry collection."""

from __future__ import annotations

import functools
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import click

from toolkit.errors import InputError


def make_source(backend: str, sim_gpus: int = 1, seed: int = 0):
    """The telemetry source a command samples: real GPUs through NVML, or the simulated device."""
    if backend == "sim":
        from .telemetry.sim_source import SimSource

        return SimSource(gpus=sim_gpus, seed=seed)
    from .telemetry.nvml_source import NvmlSource

    return NvmlSource()


def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '12h', '7d' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
    if not match:
        raise click.BadParameter(f"not a duration: {text!r} (e.g. 30s, 15m, 12h, 7d)")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM unwinds like Ctrl-C, so the sampler's finally-blocks flush and finalize."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def sampler_options(func):
    """The options every sampling command shares (backend, period, flush, output, --gpus)."""
    @click.option("--backend", type=click.Choice(["nvml", "sim"]), default="nvml", show_default=True,
                  help="nvml: real GPUs; sim: the simulated device (output labelled simulated).")
    @click.option("--sim-gpus", type=click.IntRange(1, 1024), default=1, show_default=True, help="GPUs of the simulated device.")
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of the simulated device.")
    @click.option("--period", "period_s", type=float, default=0.1, show_default=True, help="Sampling period, s (>= 0.01).")
    @click.option("--flush", "flush_s", type=click.FloatRange(0, 3600, min_open=True), default=1.0, show_default=True, help="Flush interval, s: the most a crash can lose.")
    @click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Output directory.")
    @click.option("--gpus", default=None, help="Only these GPUs: indices or UUIDs, comma-separated (indices count the "
                  "GPUs CUDA_VISIBLE_DEVICES leaves visible; default: all of those).")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)
    return wrapper


def _build_sampler(backend, sim_gpus, seed, period_s, flush_s, out_dir, gpus, **extra):
    from .telemetry.sampler import Sampler

    if not period_s >= 0.01:
        raise click.BadParameter("the sampling period must be at least 0.01 s", param_hint="--period")
    if not flush_s > 0:
        raise click.BadParameter("the flush interval must be > 0 s", param_hint="--flush")
    return Sampler(make_source(backend, sim_gpus, seed), out_dir, period_s=period_s, flush_s=flush_s, gpus=gpus, **extra)


def _print_summary(out_dir: Path, as_json: bool = False) -> None:
    """Per GPU and per phase, what the directory now holds (``as_json``: as ``collect summary
    --json`` prints it), and a closing line on stderr saying where it is."""
    from .telemetry.summary import format_summary, load_telemetry, load_windows, summarize_telemetry

    telemetry = load_telemetry(out_dir)
    windows = load_windows(out_dir)
    if as_json:
        click.echo(_summary_json(telemetry, windows))
    else:
        if len(telemetry):
            click.echo(format_summary(summarize_telemetry(telemetry)))
        if len(windows):
            click.echo(_format_phases(windows))
    gpus = telemetry["gpu_index"].nunique() if len(telemetry) else 0
    click.echo(f"wrote {len(telemetry):,} telemetry rows of {gpus} GPU(s) and {len(windows):,} window rows to {out_dir}",
               err=True)


def _summary_json(telemetry, windows) -> str:
    """``{"gpus": [...], "phases": [...], "phase_gpus": [...]}`` of a collection: per GPU, per phase
    over every GPU, and per phase and GPU; energy null where unknown (never 0), with its method."""
    from toolkit.jsonio import dump_json

    from .telemetry.summary import summarize_telemetry, summarize_windows

    gpus = summarize_telemetry(telemetry).to_dict(orient="records") if len(telemetry) else []
    phases = summarize_windows(windows).to_dict(orient="records") if len(windows) else []
    return dump_json({"gpus": gpus, "phases": phases, "phase_gpus": _phase_gpus(windows)})


def _phase_gpus(windows) -> list[dict]:
    """One record per phase and GPU: windows, time, energy (null when any of its windows' is
    unknown), mean power, the energy method and its words."""
    rows = []
    if not len(windows):
        return rows
    for (name, gpu), g in windows.groupby(["window", "gpu_index"], sort=False):
        energy = g["energy_j"]
        methods = sorted(g["energy_method"].dropna().unique())
        duration = float(g["duration_s"].sum())
        total = float(energy.sum()) if energy.notna().all() else None
        rows.append({"window": name, "gpu_index": int(gpu), "backend": str(g["backend"].iloc[0]), "windows": int(len(g)),
                     "duration_s": duration, "energy_j": total,
                     "mean_power_w": total / duration if total is not None and duration > 0 else None,
                     "energy_method": "+".join(methods) if methods else None,
                     "energy_method_words": _method_words(methods, str(g["backend"].iloc[0])),
                     "unknown_windows": int(energy.isna().sum())})
    return rows


def _method_words(methods, backend: str) -> str | None:
    """How an energy figure was measured, in words: "NVML energy counter" (or the simulated
    device's), "integrated power", both joined with "+"; None when not measured."""
    counter = {"nvml": "NVML energy counter", "sim": "simulated energy counter"}.get(backend, f"{backend} energy counter")
    words = {"counter": counter, "integrated_power": "integrated power"}
    return " + ".join(words.get(m, m) for m in methods) or None


def _format_phases(windows) -> str:
    """Per phase: windows, time, energy over every GPU with how it was measured, mean power; and
    where there are several GPUs, each GPU's figure with its own method.  Unknown: "-"."""
    from .telemetry.summary import summarize_windows

    simulated = bool((windows["backend"] == "sim").any())
    label = " [SIMULATED]" if simulated else ""
    backend = str(windows["backend"].iloc[0])
    per_gpu = _phase_gpus(windows)
    lines = []
    for row in summarize_windows(windows).itertuples():
        methods = row.energy_method.split("+") if isinstance(row.energy_method, str) else []
        if row.energy_j is None or row.energy_j != row.energy_j:
            energy = f"energy - ({row.unknown_gpu_windows} GPU-window(s) unmeasured)"
        else:
            mean = f", mean {row.energy_j / row.duration_s:,.1f} W" if row.duration_s > 0 else ", mean -"
            energy = f"{row.energy_j:,.1f} J ({_method_words(methods, backend)}){mean}"
        lines.append(f"phase {row.window}{label}: {row.windows} window(s), {row.duration_s:,.2f} s on {row.gpus} GPU(s), "
                     f"{energy}")
        gpus = [r for r in per_gpu if r["window"] == row.window]
        if len(gpus) > 1:
            for r in gpus:
                if r["energy_j"] is None:
                    figure = f"- ({r['unknown_windows']} of {r['windows']} window(s) unmeasured)"
                else:
                    mean = "-" if r["mean_power_w"] is None else f"{r['mean_power_w']:,.1f}"
                    figure = f"{r['energy_j']:,.1f} J ({r['energy_method_words']}), mean {mean} W"
                lines.append(f"  GPU {r['gpu_index']}: {figure}")
    return "\n".join(lines)


def _wait_with_progress(seconds: float, desc: str) -> None:
    """Sleep ``seconds``, with a progress bar on a terminal (silent in pipes and logs)."""
    from toolkit.console import progress_bar

    with progress_bar(round(seconds, 1), desc, "s", bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]") as bar:
        if bar.disable or seconds < 2:
            time.sleep(seconds)
            return
        step = max(0.1, min(1.0, seconds / 200))
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(step, left))
            bar.update(round(seconds - max(0.0, end - time.monotonic()), 1) - bar.n)


@click.group()
def collect() -> None:
    """Sample GPU telemetry (NVML or the simulated device) and profile workloads."""


@collect.command()
@sampler_options
@click.option("--duration", type=str, default="10s", show_default=True, help="How long to sample (e.g. 30s, 5m).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as `collect summary --json` does.")
def sample(duration: str, as_json: bool, **opts) -> None:
    """Sample telemetry for a fixed time."""
    seconds = parse_duration(duration)
    sampler = _build_sampler(**opts)
    with sigterm_as_interrupt():
        sampler.start()
        try:
            _wait_with_progress(seconds, f"sampling {opts['out_dir']}")
        except KeyboardInterrupt:
            click.echo("interrupted: flushing what was collected", err=True)
        finally:
            sampler.stop()
    _print_summary(opts["out_dir"], as_json)


@collect.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@sampler_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as `collect summary --json` does (before --).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def run(command: tuple[str, ...], as_json: bool, **opts) -> None:
    """Sample while COMMAND runs (after --). COMMAND may mark phases in $WATTLAS_MARKER_FILE."""
    out_dir: Path = opts["out_dir"]
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:12]
    marker = out_dir / f"markers-{run_id}.jsonl"
    marker.touch()
    sampler = _build_sampler(**opts, marker_file=marker, run_id=run_id)
    env = dict(os.environ, WATTLAS_MARKER_FILE=str(marker), WATTLAS_RUN_ID=run_id)
    returncode = 1
    with sigterm_as_interrupt():
        sampler.start()
        try:
            with sampler.window("command", argv=list(command)):
                try:
                    proc = subprocess.Popen(list(command), env=env)
                except OSError as exc:
                    raise click.ClickException(f"cannot run {command[0]!r}: {exc}") from None
                try:
                    returncode = proc.wait()
                except KeyboardInterrupt:
                    proc.send_signal(signal.SIGTERM)
                    returncode = proc.wait()
                    click.echo("interrupted: command stopped, flushing what was collected", err=True)
        finally:
            sampler.stop()
    for problem in sampler.markers.errors[:10]:
        click.echo(f"warning: {problem}", err=True)
    if sampler.markers.error_count > 10:
        click.echo(f"warning: {sampler.markers.error_count - 10} more bad marker lines skipped", err=True)
    _print_summary(out_dir, as_json)
    sys.exit(128 - returncode if returncode < 0 else returncode)  # killed by signal N: exit 128+N, as a shell does


@collect.command()
@sampler_options
@click.option("--rotate", default="1h", show_default=True, help="Start a new segment file this often.")
@click.option("--retention", default="7d", show_default=True, help="Delete finished segments older than this.")
@click.option("--prom-textfile", type=click.Path(path_type=Path), default=None,
              help="Write a Prometheus textfile (dcgm-exporter metric names) at every flush.")
@click.option("--prom-port", type=click.IntRange(0, 65535), default=None,
              help="Serve the same metrics for Prometheus to scrape on this port (dcgm-exporter uses 9400).")
@click.option("--prom-addr", default="127.0.0.1", show_default=True,
              help="Address the scrape endpoint binds; 0.0.0.0 to let other hosts scrape it.")
@click.option("--max-runtime", default=None, help="Stop after this long (default: until SIGTERM).")
def daemon(rotate: str, retention: str, prom_textfile: Path | None, prom_port: int | None, prom_addr: str,
           max_runtime: str | None, **opts) -> None:
    """Collect continuously for scheduled jobs: rotation, retention, Prometheus export."""
    from .telemetry.prometheus import PrometheusExport
    from .telemetry.segments import apply_retention

    keep_s = parse_duration(retention)
    export = None
    if prom_textfile is not None or prom_port is not None:
        try:
            export = PrometheusExport(prom_textfile, prom_port, prom_addr)
        except OSError as exc:  # port taken, address not local
            raise InputError("--prom-port", f"cannot listen on {prom_addr}:{prom_port} ({exc.strerror or exc})") from None
    sampler = _build_sampler(**opts, rotate_s=parse_duration(rotate), on_flush=export)
    deadline = time.monotonic() + parse_duration(max_runtime) if max_runtime else None
    with sigterm_as_interrupt():
        sampler.start()
        where = f"; metrics on http://{prom_addr}:{export.port}/metrics" if export is not None and export.port else ""
        click.echo(f"collecting to {opts['out_dir']} (run {sampler.run_id}){where}; SIGTERM to stop", err=True)
        try:
            while deadline is None or time.monotonic() < deadline:
                for prefix in ("telemetry", "windows"):
                    try:
                        apply_retention(opts["out_dir"], prefix, keep_s)
                    except OSError as exc:  # retention failing is no reason to stop collecting
                        click.echo(f"warning: retention in {opts['out_dir']}: {exc}", err=True)
                time.sleep(min(60.0, max(0.05, (deadline - time.monotonic()) if deadline else 60.0)))
        except KeyboardInterrupt:
            click.echo("stopping: flushing what was collected", err=True)
        finally:
            try:
                sampler.stop()
            finally:
                if export is not None:
                    export.close()


@collect.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["nvidia-smi", "dcgm", "vllm-metrics"]), default="nvidia-smi",
              show_default=True, help="What wrote the files: nvidia-smi --query-gpu=... --format=csv; dcgm-exporter or "
              "vLLM /metrics scrapes (each after a '# TIMESTAMP <unix s>' line, or with sample timestamps).")
@click.option("--host", default=None, help="Host name for the rows (default: each file's name; dcgm: its Hostname label).")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Output directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as `collect summary --json` does.")
def import_(files: tuple[Path, ...], fmt: str, host: str | None, out_dir: Path, as_json: bool) -> None:
    """Turn telemetry (or engine load) logged by other tools into segments that summary and reports read.

    Where a directory holds both GPU telemetry and vLLM engine load, it also gets power_vs_load.csv
    (mean running requests vs mean power per GPU, per scrape interval) for characterize fit.
    """
    from .telemetry.importers import IMPORTERS, power_vs_load
    from .telemetry.segments import SegmentWriter, read_segments
    from .telemetry.summary import load_telemetry
    from toolkit.schemas import ENGINE_LOAD

    prefix = "engine" if fmt == "vllm-metrics" else "telemetry"
    tables = [IMPORTERS[fmt](path, host) for path in files]  # every file checked before anything is written
    for path, table in zip(files, tables):
        writer = SegmentWriter(out_dir, prefix, table.schema)
        writer.append(table)
        writer.close()
        what = (f"{len(set(table.column('engine').to_pylist()))} engine(s)" if prefix == "engine"
                else f"{len(set(table.column('gpu_index').to_pylist()))} GPU(s)")
        click.echo(f"{path}: {table.num_rows} samples of {what} -> {out_dir}", err=True)
    engine = read_segments(out_dir, "engine", ENGINE_LOAD.arrow()).to_pandas()
    telemetry = load_telemetry(out_dir)
    if len(engine) and len(telemetry):
        table = power_vs_load(telemetry, engine)
        target = out_dir / "power_vs_load.csv"
        table.to_csv(target, index=False)
        click.echo(f"{target}: {len(table)} intervals of engine load with GPU power", err=True)
    if len(telemetry) or as_json:
        _print_summary(out_dir, as_json)


@collect.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def summary(directory: Path, as_json: bool) -> None:
    """Per-GPU energy (with method), power and capping of a collection directory, and per-phase window energy."""
    from .telemetry.summary import format_summary, load_telemetry, load_windows, summarize_telemetry

    if not directory.is_dir():
        raise InputError(directory, "no such collection directory")
    telemetry = load_telemetry(directory)
    if telemetry.empty:
        raise InputError(directory, "holds no telemetry segments")
    windows = load_windows(directory)
    if as_json:  # strict JSON: null, never NaN
        click.echo(_summary_json(telemetry, windows))
        return
    click.echo(format_summary(summarize_telemetry(telemetry)))
    if len(windows):
        click.echo(_format_phases(windows))


@collect.command()
@click.option("--backend", type=click.Choice(["nvml", "sim"]), default="nvml", show_default=True,
              help="nvml: real GPUs; sim: the simulated device (labelled simulated).")
@click.option("--counter-poll", "counter_poll_s", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds to watch each GPU's energy counter.")
@click.option("--gpus", default=None, help="Only these GPUs: indices or UUIDs, comma-separated (as for sample).")
@click.option("--sim-gpus", type=click.IntRange(1, 1024), default=1, show_default=True, help="GPUs of the simulated device.")
@click.option("--json", "as_json", is_flag=True)
def probe(backend, counter_poll_s, gpus, sim_gpus, as_json) -> None:
    """What each GPU supports: missing metrics, energy-counter update period, power-limit and clock ranges."""
    from toolkit.jsonio import dump_json

    from .telemetry.probe import format_probe, probe_gpus

    try:
        rows = probe_gpus(make_source(backend, sim_gpus), counter_poll_s, gpus)
    except RuntimeError as exc:  # NVML unavailable: say so in one line
        raise click.ClickException(str(exc)) from None
    click.echo(dump_json(rows) if as_json else format_probe(rows))


@collect.command()
@click.option("--backend", type=click.Choice(["sim", "gpu", "cpu"]), default="sim", show_default=True,
              help="sim: roofline model of a simulated H100 (labelled simulated); gpu: the PyTorch workload on a "
                   "CUDA GPU with NVML energy; cpu: the same workload on the CPU (development; no energy).")
@click.option("--preset", type=click.Choice(["llama3-8b", "llama2-70b", "tiny"]), default="llama3-8b", show_default=True)
@click.option("--sweep", type=click.Choice(["test", "quick", "full"]), default="quick", show_default=True)
@click.option("--tp", type=int, default=1, show_default=True,
              help="TP degree: alone, profile one rank's shard (no all-reduces); under torchrun with this many "
                   "ranks, the whole instance.")
@click.option("--layers", type=click.IntRange(min=1), default=None,
              help="Run this many of the preset's layers (fits longer KV prefixes); rows name the model "
                   "e.g. 'llama3-8b[8/32 layers]' so they are never mistaken for the whole model.")
@click.option("--device", default="cuda:0", show_default=True)
@click.option("--dtype", default="bfloat16", show_default=True)
@click.option("--clocks", default="", help="SM clocks to lock, MHz, comma-separated (needs root).")
@click.option("--power-limits", default="", help="Power limits, W, comma-separated (needs root).")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--warmup", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--min-window", "min_window_s", type=click.FloatRange(min=0), default=None,
              help="Shortest energy window, s: each repeat runs back-to-back iterations to fill it, since NVML's "
                   "energy counter moves in 20-100 ms steps [default on a GPU: 20 counter steps as measured at "
                   "the start, at least 1 s; 0 on the CPU].")
@click.option("--resume", is_flag=True, help="Continue an interrupted sweep from OUTPUT.partial/, skipping its points.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--telemetry", type=click.Path(path_type=Path), default=None, help="Also keep the sampler's telemetry here.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="profile_iterations Parquet.")
def profile(backend, preset, sweep, tp, layers, device, dtype, clocks, power_limits, repeats, warmup, min_window_s,
            resume, seed, telemetry, output) -> None:
    """Profile chunked prefill, decode and mixed iterations over a (c, p, b, k, clock, power limit) sweep.

    Each finished point is stored durably in OUTPUT.partial/ at once; an interrupted sweep
    (Ctrl-C, SIGTERM, crash) keeps them there and --resume continues it.
    """
    from toolkit.parquet_io import atomic_write_table

    if backend == "sim":
        from .profiling.sim_profile import simulate_profile

        table = simulate_profile(preset, "full" if sweep == "full" else "quick", repeats, seed)
        atomic_write_table(table, output)
        click.echo(f"wrote {table.num_rows:,} SIMULATED iterations ({preset}, sweep {sweep}) to {output}")
        return
    from .telemetry.counter_probe import counter_update_period, window_for_counter
    from .profiling.profile_store import PartialProfile
    from toolkit.console import progress_bar

    from .profiling.profiler import points, profile_table, provenance_of, run_profile
    from .profiling.tp_ranks import start_ranks
    from .profiling.workload import shard_label

    def numbers(text, name):
        try:
            return [float(x) for x in text.split(",") if x.strip()] or None
        except ValueError:
            raise click.BadParameter(f"not a list of numbers: {text!r}", param_hint=name) from None

    clock_list, limit_list = numbers(clocks, "--clocks"), numbers(power_limits, "--power-limits")
    if backend == "cpu":
        device, dtype = "cpu", "float32" if dtype == "bfloat16" else dtype
    if min_window_s is None and backend == "cpu":
        min_window_s = 0.0
    ranks = start_ranks(tp, backend)  # under torchrun: one process per TP rank
    if ranks is not None:
        device = ranks.device(backend)
    # rank 0 (or the only process) keeps the output; other ranks only measure
    store = PartialProfile(output, resume, shard_label(preset, layers), tp) if ranks is None or ranks.is_writer else None
    done = store.done() if store is not None else set()
    on_point = store.append if store is not None else None
    if ranks is not None:
        done = ranks.collectives.broadcast(done)
        on_point = ranks.gathering(store.append if store is not None else None)
    sampler = settings = gpu_index = counter_step = None
    # progress of the points still to measure, on the writing rank only (other ranks share its terminal)
    todo = max(0, len(list(points(sweep))) * len(clock_list or [None]) * len(limit_list or [None]) - len(done))
    bar = progress_bar(todo, "profiling", "point", tick_s=1.0) if store is not None else None
    if bar is not None and store is not None:
        append = store.append

        def counted(table) -> None:
            append(table)
            bar.update(1)

        on_point = counted if ranks is None else ranks.gathering(counted)

    def log(message: str) -> None:  # the profiler's lines, kept above the bar
        if bar is not None:
            bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    try:
        with sigterm_as_interrupt():
            if backend == "gpu":
                from .profiling.gpu_settings import GpuSettings
                from .telemetry.nvml_source import NvmlSource
                from .telemetry.sampler import Sampler

                if store is not None:
                    telemetry = telemetry or store.directory / "telemetry"  # kept for the join, then dropped with it
                probe_source = NvmlSource()
                gpu_index = _nvml_index_of(device, probe_source.open())
                counter_step = counter_update_period(lambda: probe_source.read_energy_power(gpu_index)[0])
                probe_source.close()
                click.echo(f"NVML energy counter of GPU {gpu_index} moves every "
                           f"{f'{counter_step * 1000:.1f} ms' if counter_step else '? (not measured)'}", err=True)
                if min_window_s is None:
                    min_window_s = window_for_counter(counter_step)
                sampler = Sampler(NvmlSource(), telemetry, period_s=0.02, flush_s=1.0).start()
                if clock_list or limit_list:
                    settings = GpuSettings(gpu_index)
            result = run_profile(preset, sweep, device, dtype, tp, clock_list, limit_list, repeats, warmup, sampler,
                                 settings, layers=layers, gpu_index=gpu_index, min_window_s=min_window_s,
                                 done=done, on_point=on_point, collectives=ranks.collectives if ranks else None, log=log,
                                 provenance={"wattlas.command": _invocation(click.get_current_context()),
                                             "wattlas.energy_counter_step_s": str(counter_step),
                                             "wattlas.driver_version": _driver_version() if backend == "gpu" else "none"})
    except KeyboardInterrupt:
        _stop(sampler)  # (finalizes its telemetry before the partial directory may be removed)
        if store is not None:
            kept = store.suspend()
            click.echo(f"interrupted: {store.appended} new point(s) measured; " + (
                f"kept in {kept}, run the same command with --resume to continue" if kept else "nothing to keep"), err=True)
        sys.exit(130)
    except (RuntimeError, click.ClickException) as exc:
        _stop(sampler)
        if store is not None:
            store.suspend()
        raise click.ClickException(exc.message if isinstance(exc, click.ClickException) else str(exc)) from None
    finally:
        _stop(sampler)
        if bar is not None:
            bar.close()
        if ranks is not None:
            ranks.close()
    if store is None:
        return  # another rank writes
    new_rows = result.table
    if ranks is not None:  # the instance's rows, combined over the ranks
        new_rows = profile_table(ranks.combined, provenance_of(result.table))
    table = store.finish(new_rows, functools.partial(_with_telemetry, telemetry) if sampler is not None and ranks is None else None)
    for reason in result.skipped:
        click.echo(f"skipped: {reason}", err=True)
    click.echo(f"wrote {table.num_rows:,} measured iterations ({new_rows.num_rows:,} new; {preset}, {backend}, "
               f"sweep {sweep}) to {output}")


def _stop(sampler) -> None:
    if sampler is not None:
        sampler.stop()  # idempotent


def _nvml_index_of(device: str, infos) -> int:
    """NVML index of the CUDA device the workload runs on, joined by UUID."""
    from .telemetry.nvml_source import nvml_index_for_uuid
    from .profiling.workload import _torch

    torch = _torch()
    if not torch.cuda.is_available():
        raise click.ClickException(f"CUDA is not available to PyTorch {torch.__version__}: use --backend cpu or sim")
    infos = list(infos)
    index = nvml_index_for_uuid(str(torch.cuda.get_device_properties(torch.device(device)).uuid), infos)
    if index is None and len(infos) == 1:
        index = infos[0].index
    if index is None:
        raise click.ClickException(f"cannot match CUDA device {device} to an NVML GPU by UUID")
    return index


def _with_telemetry(telemetry_dir: Path, rows):
    from .profiling.profile_join import join_window_telemetry
    from .telemetry.summary import load_telemetry

    return join_window_telemetry(rows, load_telemetry(telemetry_dir))


def _invocation(ctx: click.Context) -> str:
    """The command with every option it ran with (defaults included), for provenance."""
    parts = [ctx.command_path]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value is False or value == "":
            continue
        option = max(param.opts, key=len)
        parts.append(option if value is True else f"{option} {shlex.quote(str(value))}")
    return " ".join(parts)


def _driver_version() -> str:
    try:
        import pynvml

        version = pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # provenance only: never fail a sweep over it
        return "unknown"
    return version.decode() if isinstance(version, bytes) else str(version)
