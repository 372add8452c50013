"""Trace statistics as a mergeable summary, so one definition serves in-memory and chunked reads.

A :class:`TracePartial` summarizes a contiguous run of requests; partials of consecutive chunks
merge exactly (the inter-arrival gap across a chunk boundary included).  Quantiles come from
value counts, so they equal ``numpy.quantile`` (linear interpolation) on the whole column;
inter-arrival times are counted at microsecond resolution, the finest any public trace uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

US = 1e-6


@dataclass
class Moments:
    """Count, mean and sum of squared deviations; merges with Chan et al.'s pairwise update."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @classmethod
    def of(cls, values: np.ndarray) -> "Moments":
        """The moments of ``values`` (empty: n = 0)."""
        if values.size == 0:
            return cls()
        mean = float(values.mean())
        return cls(int(values.size), mean, float(((values - mean) ** 2).sum()))

    def merge(self, other: "Moments") -> "Moments":
        """The moments of both samples together (order does not matter)."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        return Moments(n, self.mean + delta * other.n / n, self.m2 + other.m2 + delta**2 * self.n * other.n / n)

    @property
    def std(self) -> float:
        """Sample standard deviation (n - 1 denominator); NaN below two values."""
        return float(np.sqrt(self.m2 / (self.n - 1))) if self.n > 1 else float("nan")


def _counts(values: np.ndarray) -> pd.Series:
    uniq, cnt = np.unique(values, return_counts=True)
    return pd.Series(cnt, index=uniq, dtype="int64")


def _add_counts(a: pd.Series, b: pd.Series) -> pd.Series:
    return a.add(b, fill_value=0).astype("int64") if len(a) else b


def quantile_from_counts(counts: pd.Series, q: float) -> float:
    """Linear-interpolated quantile of the multiset described by value -> count."""
    counts = counts.sort_index()
    total = int(counts.sum())
    if total == 0:
        return float("nan")
    cum = counts.to_numpy().cumsum()
    values = counts.index.to_numpy(dtype="float64")
    h = (total - 1) * q
    lo, hi = int(np.floor(h)), int(np.ceil(h))
    v_lo = values[np.searchsorted(cum, lo + 1)]
    v_hi = values[np.searchsorted(cum, hi + 1)]
    return float(v_lo + (h - lo) * (v_hi - v_lo))


@dataclass
class TracePartial:
    """Mergeable summary of a contiguous run of requests: count, first and last arrival (s),
    inter-arrival moments and counts (microseconds), requests per second and token counts."""

    n: int = 0
    first_s: float = float("nan")
    last_s: float = float("nan")
    gaps: Moments = field(default_factory=Moments)
    gap_counts_us: pd.Series = field(default_factory=lambda: pd.Series(dtype="int64"))
    per_second: pd.Series = field(default_factory=lambda: pd.Series(dtype="int64"))  # floor(second) -> requests
    input_counts: pd.Series = field(default_factory=lambda: pd.Series(dtype="int64"))
    output_counts: pd.Series = field(default_factory=lambda: pd.Series(dtype="int64"))
    # co-moment terms for the input/output correlation
    xy: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)  # sum x, y, xx, yy, xy

    @classmethod
    def of(cls, arrival_s: np.ndarray, input_tokens: np.ndarray, output_tokens: np.ndarray) -> "TracePartial":
        """The partial of one block of requests, arrivals in seconds and in order."""
        arrival_s = np.asarray(arrival_s, dtype="float64")
        if arrival_s.size == 0:
            return cls()
        gaps = np.diff(arrival_s)
        x = np.asarray(input_tokens, dtype="float64")
        y = np.asarray(output_tokens, dtype="float64")
        return cls(
            n=int(arrival_s.size),
            first_s=float(arrival_s[0]),
            last_s=float(arrival_s[-1]),
            gaps=Moments.of(gaps),
            gap_counts_us=_counts(np.round(gaps / US).astype("int64")),
            # float keys: a block's arrivals are only bounded once the blocks merge, and an int64
            # cast would wrap a huge one silently before its error is raised
            per_second=_counts(np.floor(arrival_s)),
            input_counts=_counts(np.asarray(input_tokens, dtype="int64")),
            output_counts=_counts(np.asarray(output_tokens, dtype="int64")),
            xy=(x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum()),
        )

    def merge(self, later: "TracePartial") -> "TracePartial":
        """Combine with the partial of the chunk that directly follows this one."""
        if later.n == 0:
            return self
        if self.n == 0:
            return later
        gap = later.first_s - self.last_s
        boundary = Moments(1, gap, 0.0)
        return TracePartial(
            n=self.n + later.n,
            first_s=self.first_s,
            last_s=later.last_s,
            gaps=self.gaps.merge(boundary).merge(later.gaps),
            gap_counts_us=_add_counts(_add_counts(self.gap_counts_us, pd.Series({int(round(gap / US)): 1})), later.gap_counts_us),
            per_second=_add_counts(self.per_second, later.per_second),
            input_counts=_add_counts(self.input_counts, later.input_counts),
            output_counts=_add_counts(self.output_counts, later.output_counts),
            xy=tuple(a + b for a, b in zip(self.xy, later.xy)),
        )


def _token_stats(counts: pd.Series) -> dict[str, float]:
    total = int(counts.sum())
    return {
        "mean": float((counts.index.to_numpy(dtype="float64") * counts.to_numpy()).sum() / total) if total else float("nan"),
        "p50": quantile_from_counts(counts, 0.50),
        "p90": quantile_from_counts(counts, 0.90),
        "p99": quantile_from_counts(counts, 0.99),
        "min": float(counts.index.min()) if total else float("nan"),
        "max": float(counts.index.max()) if total else float("nan"),
    }


def finalize(partial: TracePartial) -> dict:
    """Headline statistics of a whole trace from its merged partial."""
    n = partial.n
    duration = partial.last_s - partial.first_s if n else float("nan")
    sx, sy, sxx, syy, sxy = partial.xy
    cov = sxy - sx * sy / n if n else float("nan")
    var_x = sxx - sx * sx / n if n else float("nan")
    var_y = syy - sy * sy / n if n else float("nan")
    corr = cov / np.sqrt(var_x * var_y) if n and var_x > 0 and var_y > 0 else float("nan")
    per_minute = partial.per_second.groupby(partial.per_second.index // 60).sum() if n else partial.per_second
    gap_mean = partial.gaps.mean if partial.gaps.n else float("nan")
    return {
        "requests": n,
        "duration_s": duration,
        "rate_per_s": n / duration if n > 1 and duration > 0 else float("nan"),
        "peak_per_s": int(partial.per_second.max()) if n else 0,
        "peak_per_min": int(per_minute.max()) if n else 0,
        "interarrival_mean_s": gap_mean,
        "interarrival_median_s": quantile_from_counts(partial.gap_counts_us, 0.5) * US,
        "interarrival_p99_s": quantile_from_counts(partial.gap_counts_us, 0.99) * US,
        "interarrival_cv": partial.gaps.std / gap_mean if gap_mean and gap_mean > 0 else float("nan"),
        "input_tokens": _token_stats(partial.input_counts),
        "output_tokens": _token_stats(partial.output_counts),
        "input_output_corr": float(corr),
        "total_input_tokens": int(sx),
        "total_output_tokens": int(sy),
    }


def partial_of_table(table: pa.Table) -> TracePartial:
    """The :class:`TracePartial` of a canonical trace table (``arrival_s``, ``input_tokens``,
    ``output_tokens``)."""
    return TracePartial.of(
        table.column("arrival_s").to_numpy(),
        table.column("input_tokens").to_numpy(),
        table.column("output_tokens").to_numpy(),
    )


def summarize_trace(table: pa.Table) -> dict:
    """Statistics of an in-memory canonical trace."""
    return finalize(partial_of_table(table))


def format_summary(stats: dict, source: str = "", label: str = "") -> str:
    """Human-readable block for the terminal."""
    lines = [f"trace {source}{(' [' + label + ']') if label else ''}".rstrip()]
    lines.append(f"  requests            {stats['requests']:,}")
    lines.append(f"  duration            {stats['duration_s']:,.1f} s")
    lines.append(f"  mean rate           {stats['rate_per_s']:.3f} req/s  (peak {stats['peak_per_s']}/s, {stats['peak_per_min']}/min)")
    lines.append(
        f"  inter-arrival       mean {stats['interarrival_mean_s']:.4f} s, median {stats['interarrival_median_s']:.4f} s, "
        f"p99 {stats['interarrival_p99_s']:.3f} s, CV {stats['interarrival_cv']:.2f}"
    )
    for key in ("input_tokens", "output_tokens"):
        t = stats[key]
        lines.append(
            f"  {key.replace('_', ' '):<19} mean {t['mean']:,.1f}, p50 {t['p50']:,.0f}, p90 {t['p90']:,.0f}, "
            f"p99 {t['p99']:,.0f}, max {t['max']:,.0f}"
        )
    lines.append(f"  corr(input,output)  {stats['input_output_corr']:.3f}")
    return "\n".join(lines)
