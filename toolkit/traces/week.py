"""Week-long Azure LLM inference 2024 traces: synthetic stand-ins and subsets of the real files.

The Azure LLM inference dataset 2024 (Stojkovic et al., DynamoLLM, HPCA 2025; CC-BY-4.0,
github.com/Azure/AzurePublicDataset, ``AzureLLMInferenceDataset2024.md``) publishes two one-week
CSV files (``TIMESTAMP, ContextTokens, GeneratedTokens``) whose only statistics in the repository
are the row counts and first/last rows printed by its notebook
(``analysis/AzureLLMInferenceDataset2024.ipynb``).  The presets ``azure2024-conv-week`` and
``azure2024-code-week`` reproduce what is published and state every assumption beyond it:

================================  ===========================  ===========================  ==============================
parameter                         conv week                    code week                    source
================================  ===========================  ===========================  ==============================
requests over the 7 days          27,303,999                   16,803,695                   notebook row counts (exact)
first day (UTC), length           2024-05-12 (Sun), 7 days     2024-05-10 (Fri), 7 days     notebook first/last rows:
                                                                                            00:00:00 .. 23:59:59 of day 7
mean rate                         45.145 req/s                 27.784 req/s                 requests / 604,800 s
weekend factor (Sat, Sun, UTC)    0.75                         0.5                          ASSUMED (nothing published)
diurnal shape                     cosine, peak/trough 3        cosine, peak/trough 4        ASSUMED cosine (nothing
                                  (amplitude 0.5)              (amplitude 0.6)              published); see the check below
diurnal peak                      14:00 UTC                    14:00 UTC                    ASSUMED (service region not
                                                                                            stated; between European and
                                                                                            US-Eastern working hours)
inter-arrival CV (gamma renewal)  1.1                          1.2                          2023 conv hour CV 1.09 /
                                                                                            ``code`` preset (synth.py)
bursts (share, x rate, mean)      none                         10 %, x3, 5 s                ``code`` preset, fit to the
idle periods (share, median, s)   none                         70 %, 25 s, sigma 1.2        2023 code hour (synth.py)
input / output token lengths      2023 conv quantile table     2023 code quantile table     computed here, see below
priority ('high' share)           50 %                         50 %                         wattlas convention (POLCA
                                                                                            capping order), not Azure data
================================  ===========================  ===========================  ==============================

Rate model: ``rate(t) = c * W(day) * (1 + A cos(2 pi (t - peak) / 1 day)) * M(t)`` with ``W`` 1 on
Monday-Friday and the weekend factor on Saturday and Sunday (UTC calendar days), ``M`` the burst
and idle modulation of :mod:`toolkit.traces.synth` (drawn for the whole week from the seed), and
``c`` set so that the cumulative intensity over the 7 days equals the published row count for
the drawn modulation: every seed's expected total is the published one.  Arrivals are the
gamma-renewal time-rescaling construction of :func:`toolkit.traces.synth.arrival_times`, run as
one continuous stream over the week (no restart at midnight).

Rate check against the only published arrival data (the notebook's first and last five rows of
each file).  conv: the 8 gaps span 0.483 s at 00:00 UTC on the two weekend days, 16.6 req/s (90 %
Poisson interval 8.2-27.2); the preset's rate there is 45.145 * 0.808 * (1 - 0.5 * 0.866) = 20.7
req/s (peak/trough 2 would give 25.9, at the edge: hence 3).  code: its 8 gaps span 0.117 s at
00:00 UTC on weekdays (68 req/s, while a smooth rate model gives 16 req/s there): bursty, which the
2023 code hour's burst/idle structure reproduces (active periods at 52 req/s), so it is kept; its
idle periods (median 25 s) then dominate the week's inter-arrival CV (66 for seed 0, against 13
in the 2023 hour at a tenth of the rate).  These 20 rows are all the 2024 arrival data published;
the shape is otherwise an assumption.

Token lengths: no 2024 distribution is published, so each length is drawn from the empirical
quantile function of the 2023 one-hour trace of the same service (AzureLLMInferenceTrace_conv.csv,
19,366 rows; _code.csv, 8,819 rows; same repository), log-linear between the knots at
:data:`QUANTILE_PROBS`, rounded; ``numpy.quantile`` (linear) of each column, rounded to 0.1, gives
the tables below (:func:`token_quantiles` recomputes them; a test checks them against the files
where the shared data is present).  The KS distance of these draws from the 2023 columns is
0.02-0.03 (a lognormal fit: 0.10-0.25; the 2023 columns are multi-modal).  Input and output are
drawn independently (2023 corr: conv -0.11, code 0.00).  Caveats published with the 2024 files:
the 20 rows printed hold outputs of 1-5 tokens (10 of 20 are below the 2023 minima of 7 / 6) and a
code context of 7,670 (above the 2023 maximum 7,437), so the 2024 length distributions differ from
2023 in the tails; nothing more is known.

Thinning (``sample``): every request of the full trace gets its uniform draw and lengths whatever
``sample`` is, and is kept when the draw is below ``sample``, so a smaller sample is a subset of a
larger one with the same seed (same ``request_id``: its position in the full synthetic week), and
``days`` takes a prefix of the same week.  Generation runs in blocks of :data:`BLOCK` requests and
writes Parquet row groups of at most ``row_group_rows`` that never span a day, so memory is bounded
by the block size, not by the 27 M requests (the whole conv week at sample 1: ~390 MiB peak RSS,
``benchmarks/bench_week_synth.py --full-week``).

Real files: :func:`subset_selector` applies the same ``days`` (counted from the first request) and
``sample`` (one uniform draw per file row, in file order) to the week CSVs read in chunks by
:func:`toolkit.traces.formats.convert_trace_streaming`, which parses their UTC-offset timestamps
(fraction omitted on whole seconds, up to 7 digits) and names the file, row, line and column of a
bad cell.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..schemas import REQUEST_TRACE
from .stats import TracePartial
from .synth import SynthSpec, _product, idle_modulation, modulated_intensity, modulation

DAY_S = 86400.0
WEEK_DAYS = 7
BLOCK = 1 << 20  # requests drawn at a time (full-rate): bounds memory, fixes the random stream
ROW_GROUP_ROWS = 1_000_000

# Probabilities of the token-length quantile knots (denser in the tails, where the 2023 columns
# have their mass points: conv outputs 384-424, code contexts 7,435-7,437).
QUANTILE_PROBS = (0.0, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65,
                  0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.975, 0.99, 0.999, 1.0)


@dataclass(frozen=True)
class TokenQuantiles:
    """An empirical token-length distribution: its quantiles at :data:`QUANTILE_PROBS` (each >= 1),
    sampled by inverse transform, log-linear between the knots, rounded to whole tokens."""

    values: tuple[float, ...]

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` lengths (int64) from ``rng``: one uniform draw each."""
        logs = np.log(np.asarray(self.values, dtype="float64"))
        return np.rint(np.exp(np.interp(rng.random(n), QUANTILE_PROBS, logs))).astype("int64")


def token_quantiles(values: np.ndarray) -> tuple[float, ...]:
    """The knots of a :class:`TokenQuantiles` for a column of token counts: ``numpy.quantile``
    (linear) at :data:`QUANTILE_PROBS`, rounded to 0.1, floored at 1 (how the tables below were made)."""
    q = np.quantile(np.asarray(values, dtype="float64"), QUANTILE_PROBS)
    return tuple(float(v) for v in np.maximum(np.round(q, 1), 1.0))


# numpy.quantile of the 2023 one-hour traces' columns (see the module docstring).
CONV_2023_CONTEXT = TokenQuantiles((2, 29, 120, 181, 207, 372, 387, 396, 403, 414, 703, 984, 1020, 1045, 1071, 1097,
                                    1130, 1189, 1315, 1876.2, 2734.5, 4083, 4092, 4142, 6179.1, 14050))
CONV_2023_GENERATED = TokenQuantiles((7, 16, 28, 41, 54, 67, 77, 85, 91, 96, 103, 113, 129, 151, 177, 217, 384, 395, 400,
                                      411, 424, 451, 522, 601, 954, 1000))
CODE_2023_CONTEXT = TokenQuantiles((3, 17, 44, 75, 147, 232, 385.6, 578, 770, 938.6, 1075, 1261.1, 1469, 1690, 1909,
                                    2163.7, 2433, 2744.5, 3192.4, 3920.2, 5187.6, 7303.3, 7435, 7436, 7437, 7437))
CODE_2023_GENERATED = TokenQuantiles((6, 6, 6, 6, 7, 7, 8, 9, 9, 10, 11, 12, 13, 14, 16, 18, 20, 24, 29, 39, 55, 90, 145,
                                      251.5, 825.3, 1899))


@dataclass(frozen=True)
class WeekPreset:
    """A week-long trace: first UTC day, published request count over :data:`WEEK_DAYS` days, the
    arrival process (renewal CV, diurnal amplitude and UTC peak, burst and idle modulation; its
    rate, duration and start are set from the other fields), the weekend factor, token lengths and
    the share of high-priority requests."""

    name: str
    start: str
    requests: int
    arrival: SynthSpec
    weekend_factor: float
    input: TokenQuantiles
    output: TokenQuantiles
    high_priority_fraction: float = 0.5

    @property
    def start_timestamp(self) -> pd.Timestamp:
        """Midnight UTC of the first day."""
        return pd.Timestamp(self.start, tz="UTC")

    def spec(self, seed: int) -> SynthSpec:
        """The arrival spec of the whole week (the modulation is always drawn for all 7 days)."""
        return replace(self.arrival, duration_s=WEEK_DAYS * DAY_S, mean_rate=self.requests / (WEEK_DAYS * DAY_S),
                        diurnal_period_s=DAY_S, start_time_of_day_s=0.0, seed=seed)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first parameter out of range."""
        self.spec(0).validate()
        if not self.weekend_factor > 0:
            raise ValueError("weekend factor must be > 0")
        if not 0 <= self.high_priority_fraction <= 1:
            raise ValueError("high-priority fraction must be in [0, 1]")


WEEK_PRESETS: dict[str, WeekPreset] = {
    "azure2024-conv-week": WeekPreset(
        "azure2024-conv-week", "2024-05-12", 27_303_999,
        SynthSpec(cv=1.1, diurnal_amplitude=0.5, peak_time_s=14 * 3600.0),
        weekend_factor=0.75, input=CONV_2023_CONTEXT, output=CONV_2023_GENERATED),
    "azure2024-code-week": WeekPreset(
        "azure2024-code-week", "2024-05-10", 16_803_695,
        SynthSpec(cv=1.2, diurnal_amplitude=0.6, peak_time_s=14 * 3600.0, burst_fraction=0.1, burst_multiplier=3,
                  burst_mean_s=5, idle_fraction=0.7, idle_median_s=25.0, idle_sigma=1.2),
        weekend_factor=0.5, input=CODE_2023_CONTEXT, output=CODE_2023_GENERATED),
}


def week_preset(name: str, **overrides: float | None) -> WeekPreset:
    """Preset ``name`` with overrides: ``weekend_factor``, ``high_priority_fraction`` or any
    :class:`SynthSpec` arrival field (None: keep).  Raises ``ValueError`` for an unknown name or value."""
    if name not in WEEK_PRESETS:
        raise ValueError(f"unknown week preset {name!r} (known: {', '.join(WEEK_PRESETS)})")
    preset = WEEK_PRESETS[name]
    changes = {k: v for k, v in overrides.items() if v is not None}
    own = {k: changes.pop(k) for k in ("weekend_factor", "high_priority_fraction") if k in changes}
    preset = replace(preset, arrival=replace(preset.arrival, **changes), **own)
    preset.validate()
    return preset


# --------------------------------------------------------------------------- rate


def day_weights(preset: WeekPreset) -> np.ndarray:
    """Relative rate of each of the 7 UTC days (mean 1): 1 on weekdays, the weekend factor on
    Saturdays and Sundays, normalized."""
    days = pd.date_range(preset.start, periods=WEEK_DAYS, freq="D")
    weights = np.where(np.asarray(days.day_of_week) >= 5, preset.weekend_factor, 1.0)
    return weights * WEEK_DAYS / weights.sum()


def week_intensity(preset: WeekPreset, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(grid of seconds since the start, cumulative intensity on it) of the whole week, strictly
    increasing and ending at the published request count."""
    spec = preset.spec(seed)
    weekly = (np.arange(WEEK_DAYS) * DAY_S, day_weights(preset))
    switches, levels = _product(_product(modulation(spec), idle_modulation(spec)), weekly)
    grid = np.union1d(np.linspace(0.0, spec.duration_s, WEEK_DAYS * 8640 + 1), switches[switches < spec.duration_s])
    cumulative = modulated_intensity(grid, spec, switches, levels)
    return grid, cumulative * (preset.requests / cumulative[-1])


def expected_per_day(preset: WeekPreset, seed: int = 0) -> np.ndarray:
    """Expected requests of each of the 7 days in the full (unsampled) trace of ``seed``."""
    grid, cumulative = week_intensity(preset, seed)
    return np.diff(np.interp(np.arange(WEEK_DAYS + 1) * DAY_S, grid, cumulative))


# --------------------------------------------------------------------------- generation


def _check_subset(days: int, sample: float) -> None:
    if not (isinstance(days, (int, np.integer)) and 1 <= days <= WEEK_DAYS):
        raise ValueError(f"days must be a whole number from 1 to {WEEK_DAYS}")
    if not 0 < sample <= 1:
        raise ValueError("sample must be in (0, 1]")


def iter_week(preset: WeekPreset, days: int = WEEK_DAYS, sample: float = 1.0, seed: int = 0,
              block: int = BLOCK) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(day index, columns) pieces of the trace in arrival order, each inside one day.

    Columns: ``request_id`` (position in the full week), ``arrival_s``, ``input_tokens``,
    ``output_tokens`` and ``high`` (bool).  Every ``block`` requests of the full-rate stream draw,
    in this order, gamma gaps, keep-draws, input and output lengths and priority draws from one
    stream of ``seed``.
    """
    _check_subset(days, sample)
    preset.validate()
    grid, cumulative = week_intensity(preset, seed)
    horizon = float(np.interp(days * DAY_S, grid, cumulative))
    rng = np.random.default_rng([seed, 2024])
    shape = 1.0 / preset.arrival.cv**2
    reached, first_id = 0.0, 0
    while reached <= horizon:
        operational = reached + np.cumsum(rng.gamma(shape, 1.0 / shape, size=block))
        keep_draw = rng.random(block)
        inputs = preset.input.sample(rng, block)
        outputs = preset.output.sample(rng, block)
        high = rng.random(block) < preset.high_priority_fraction
        reached = float(operational[-1])
        kept = np.flatnonzero((operational <= horizon) & (keep_draw < sample))
        if kept.size:
            arrival = np.interp(operational[kept], cumulative, grid)
            day = np.minimum((arrival // DAY_S).astype("int64"), days - 1)
            cuts = np.flatnonzero(np.diff(day)) + 1
            for lo, hi in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [kept.size]])):
                idx = kept[lo:hi]
                yield int(day[lo]), {"request_id": first_id + idx, "arrival_s": arrival[lo:hi],
                                     "input_tokens": inputs[idx], "output_tokens": outputs[idx], "high": high[idx]}
        first_id += block


@dataclass
class WeekResult:
    """What :func:`write_week_trace` wrote: requests per day, row groups and the trace's summary partial."""

    path: Path
    per_day: list[int]
    row_groups: int
    partial: TracePartial = field(repr=False)

    @property
    def requests(self) -> int:
        return sum(self.per_day)


def week_metadata(preset: WeekPreset, days: int, sample: float, seed: int) -> dict[str, str]:
    """Parquet metadata of a synthetic week trace (marked synthetic as every wattlas synth trace)."""
    spec = {"preset": preset.name, "start": preset.start, "published_requests_7d": preset.requests, "days": days,
            "sample": sample, "seed": seed, "weekend_factor": preset.weekend_factor,
            "high_priority_fraction": preset.high_priority_fraction,
            "arrival": {k: v for k, v in asdict(preset.spec(seed)).items() if not k.startswith(("input", "output", "high"))},
            "input_quantiles": list(preset.input.values), "output_quantiles": list(preset.output.values),
            "quantile_probs": list(QUANTILE_PROBS)}
    return {
        "wattlas.trace_format": "wattlas",
        "wattlas.synthetic": "true",
        "wattlas.synth_preset": preset.name,
        "wattlas.synth_spec": json.dumps(spec),
        "wattlas.trace_start": preset.start_timestamp.isoformat(),
        "wattlas.sample_fraction": repr(float(sample)),
        "wattlas.days": str(days),
        "wattlas.source": f"wattlas trace synth --preset {preset.name} --days {days} --sample {sample:g} --seed {seed}",
    }


def write_week_trace(preset: WeekPreset | str, path: str | Path, days: int = WEEK_DAYS, sample: float = 1.0,
                     seed: int = 0, row_group_rows: int = ROW_GROUP_ROWS, block: int = BLOCK,
                     summarize: bool = True) -> WeekResult:
    """Generate a week trace into a Parquet file (atomically) in bounded memory.

    Row groups hold at most ``row_group_rows`` requests and never span two days.  ``summarize``:
    also merge the :class:`TracePartial` of the trace (its statistics) on the way.
    """
    from .formats import writing

    if isinstance(preset, str):
        preset = week_preset(preset)
    _check_subset(days, sample)
    if row_group_rows < 1:
        raise ValueError("row_group_rows must be >= 1")
    path = Path(path)
    names = ["request_id", "arrival_s", "input_tokens", "output_tokens", "priority"]
    schema = REQUEST_TRACE.arrow(names, week_metadata(preset, days, sample, seed))
    per_day = [0] * days
    partial = TracePartial()
    groups = 0
    pending: list[dict[str, np.ndarray]] = []
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
        os.close(fd)
    writer = None
    try:
        with writing(path):
            writer = pq.ParquetWriter(tmp, schema, compression="zstd")

        def flush() -> None:
            nonlocal groups, partial
            if not pending:
                return
            cols = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
            pending.clear()
            priority = pc.if_else(pa.array(cols.pop("high")), pa.scalar("high"), pa.scalar("low"))
            table = pa.Table.from_arrays([pa.array(cols[n]) for n in names[:-1]] + [priority], schema=schema)
            with writing(path):
                writer.write_table(table, row_group_size=table.num_rows)
            groups += 1
            if summarize:
                partial = partial.merge(TracePartial.of(cols["arrival_s"], cols["input_tokens"], cols["output_tokens"]))

        current, rows = 0, 0
        for day, piece in iter_week(preset, days, sample, seed, block):
            if day != current:
                flush()
                current, rows = day, 0
            n = piece["arrival_s"].size
            per_day[day] += n
            start = 0
            while start < n:  # split so that no row group exceeds row_group_rows
                take = min(n - start, row_group_rows - rows)
                pending.append({k: v[start:start + take] for k, v in piece.items()})
                start, rows = start + take, rows + take
                if rows >= row_group_rows:
                    flush()
                    rows = 0
        flush()
        with writing(path):
            writer.close()
            writer = None
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
    finally:
        if writer is not None:
            writer.close()
        Path(tmp).unlink(missing_ok=True)
    return WeekResult(path, per_day, groups, partial)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def day_labels(preset: WeekPreset, days: int = WEEK_DAYS) -> list[str]:
    """'2024-05-12 Sun' for each day."""
    return [d.strftime("%Y-%m-%d %a") for d in pd.date_range(preset.start, periods=days, freq="D")]


# --------------------------------------------------------------------------- real week files


def subset_selector(days: int | None = None, sample: float = 1.0,
                    seed: int = 0) -> Callable[[pa.Table], tuple[pa.Table, bool]]:
    """A filter for the validated pieces of a trace read in file order (see
    :func:`toolkit.traces.formats.convert_trace_streaming`): keeps requests before ``days`` days
    after the trace start (None: all) and each with probability ``sample`` (one uniform draw per
    file row, in order, so the result does not depend on how the file is split); returns (kept
    rows, whether every later row is past the cut).  Its metadata records the subset."""
    if days is not None and not (isinstance(days, (int, np.integer)) and days >= 1):
        raise ValueError("days must be a whole number >= 1")
    if not 0 < sample <= 1:
        raise ValueError("sample must be in (0, 1]")
    rng = np.random.default_rng([seed, 2025])
    cut = None if days is None else days * DAY_S
    extra = {b"wattlas.sample_fraction": repr(float(sample)).encode(), b"wattlas.sample_seed": str(seed).encode()}
    if days is not None:
        extra[b"wattlas.days"] = str(days).encode()

    def select(table: pa.Table) -> tuple[pa.Table, bool]:
        keep = rng.random(table.num_rows) < sample
        done = False
        if cut is not None:
            arrival = table.column("arrival_s").to_numpy()
            inside = arrival < cut
            keep &= inside
            done = bool(table.num_rows) and not inside[-1]  # sorted: the rest of the file is later
        table = table.filter(pa.array(keep))
        return table.replace_schema_metadata({**(table.schema.metadata or {}), **extra}), done

    return select


def convert_week_file(src: str | Path, dst: str | Path, days: int | None = None, sample: float = 1.0, seed: int = 0,
                      fmt: str = "auto", chunk_rows: int = 1_000_000) -> int:
    """A real week file (or any CSV trace) -> canonical Parquet of its first ``days`` days, thinned
    to ``sample``, read in chunks of ``chunk_rows`` rows; returns the rows written.  Reading stops at
    the first chunk past the cut (rows after it are not validated)."""
    from .formats import convert_trace_streaming

    return convert_trace_streaming(src, dst, fmt, chunk_rows, select=subset_selector(days, sample, seed))
