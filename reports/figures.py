"""Seaborn figures of wattlas artifacts.  Pure functions: DataFrames in, matplotlib figures out."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only, never a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from replay.engine import cluster_power  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.figure import Figure

sns.set_theme(style="whitegrid", context="notebook")
# Labels come from users (phase, window, pool, run names): a "$" must be a dollar sign, not the
# start of mathtext, which can fail to parse and abort the report.  Set for the process, not per
# figure: a text reads it when created, and tick labels may only be created when the figure is saved.
matplotlib.rcParams["text.parse_math"] = False


def _fig(width=9.0, height=3.6):
    return plt.subplots(figsize=(width, height), layout="constrained")


def plain_number(value: float) -> str:
    """A tick label for people: 0.01, 0.5, 20, 1,500, 20k, 1M (never "2x10^2" or mathtext)."""
    if value == 0 or not np.isfinite(value):
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:g}M"
    if magnitude >= 1e4:
        return f"{value / 1e3:g}k"
    if magnitude >= 1:
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.3g}"
    return f"{value:.3g}"


def plain_log(ax, x: bool = False, y: bool = False) -> None:
    """Log axes with plain-number labels at 1, 2 and 5 of each decade (no minor labels).  Call
    after the scale is set (setting a scale resets the formatters)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis, on, limits in ((ax.xaxis, x, ax.get_xlim), (ax.yaxis, y, ax.get_ylim)):
        if on:
            lo, hi = sorted(limits())
            decades = np.log10(hi / lo) if lo > 0 and hi > 0 else 0.0
            subs = (1.0, 2.0, 5.0) if decades <= 2.5 else (1.0,) if decades > 4 else (1.0, 3.0)  # labels that never touch
            axis.set_major_locator(LogLocator(base=10, subs=subs))
            axis.set_major_formatter(FuncFormatter(lambda v, _: plain_number(v)))
            axis.set_minor_formatter(NullFormatter())


def plain_linear(ax, x: bool = False, y: bool = False) -> None:
    """Linear axes labelled with thousands separators (1,500 W), never an offset or 1e3 factor."""
    from matplotlib.ticker import FuncFormatter

    for axis, on in ((ax.xaxis, x), (ax.yaxis, y)):
        if on:
            axis.set_major_formatter(FuncFormatter(lambda v, _: plain_number(v) if abs(v) >= 1e4 else f"{v:,.4g}"))


def _legend_outside(ax, title: str | None = None) -> None:
    """The axes' legend to the right of the plot, in columns when long, so it covers no data."""
    options = dict(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title_fontsize="small", frameon=False)
    legend = ax.get_legend()
    if legend is not None:  # seaborn's (its handles are proxies, not the axes' labelled artists)
        n = len(legend.get_texts())
        sns.move_legend(ax, title=title if title is not None else legend.get_title().get_text(),
                        ncol=1 if n <= 8 else 2, **options)
        return
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, title=title, ncol=1 if len(labels) <= 8 else 2, **options)


def telemetry_traces(frame: pd.DataFrame) -> Figure:
    """Power and SM clock of every GPU over time."""
    data = frame[frame["status"].isna()].copy()
    data["t_s"] = (data["t_mono_ns"] - data["t_mono_ns"].min()) / 1e9
    data["power_w"] = data["power_instant_w"].where(data["power_instant_w"].notna(), data["power_avg_w"])
    data["GPU"] = data["gpu_index"].astype(str)
    fig, axes = plt.subplots(2, 1, figsize=(9.5, 5.2), sharex=True, layout="constrained")
    sns.lineplot(data=data, x="t_s", y="power_w", hue="GPU", ax=axes[0], linewidth=1)
    sns.lineplot(data=data, x="t_s", y="sm_clock_mhz", hue="GPU", ax=axes[1], linewidth=1, legend=False)
    _legend_outside(axes[0], "GPU")  # beside the power plot: never over the clock plot, however many GPUs
    axes[0].set_ylabel("power (W)")
    axes[1].set_ylabel("SM clock (MHz)")
    axes[1].set_xlabel("time (s)")
    return fig


def phase_energy(windows: pd.DataFrame) -> Figure:
    """Mean power per GPU of each phase (window name)."""
    data = windows.groupby(["window", "gpu_index"], as_index=False).agg(energy_j=("energy_j", "sum"), seconds=("duration_s", "sum"))
    data["mean_power_w"] = data["energy_j"] / data["seconds"]
    data["GPU"] = data["gpu_index"].astype(str)
    fig, ax = _fig(7, 3.2)
    sns.barplot(data=data, x="window", y="mean_power_w", hue="GPU", ax=ax)
    _legend_outside(ax, "GPU")
    ax.set_ylabel("mean power per GPU (W)")
    ax.set_xlabel("phase")
    return fig


UNITS = {"latency_s": ("latency", "s"), "mean_power_w": ("mean power", "W")}


def fit_diagnostics(frame: pd.DataFrame, predicted: np.ndarray, target: str) -> Figure:
    """Predicted vs measured, per phase, with the y = x line: latency on log axes (it spans
    decades), power on linear axes in W (it spans less than one)."""
    data = frame.assign(predicted=predicted).dropna(subset=["predicted", target])
    name, unit = UNITS.get(target, (target, ""))
    fig, ax = _fig(7.5, 5.0)
    sns.scatterplot(data=data, x=target, y="predicted", hue="phase", s=14, alpha=0.6, ax=ax, linewidth=0)
    lo, hi = data[[target, "predicted"]].min().min(), data[[target, "predicted"]].max().max()
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8)
    if target == "latency_s":
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain_log(ax, x=True, y=True)
    else:
        plain_linear(ax, x=True, y=True)
    _legend_outside(ax, "phase")
    suffix = f" ({unit})" if unit else ""
    ax.set_xlabel(f"measured {name}{suffix}")
    ax.set_ylabel(f"predicted {name}{suffix}")
    return fig


def chunk_curve(table: pd.DataFrame) -> Figure:
    """Adaptive chunk size against KV prefix."""
    fig, ax = _fig(7.5, 3.4)
    data = table[(table["prefix_tokens"] > 0) & (pd.to_numeric(table["chunk_tokens"], errors="coerce") > 0)]
    sns.lineplot(data=data, x="prefix_tokens", y="chunk_tokens", marker="o", ax=ax)
    ax.set_xscale("log")
    plain_log(ax, x=True)
    plain_linear(ax, y=True)
    ax.set_xlabel("KV prefix (tokens)")
    ax.set_ylabel("largest chunk (tokens)")
    return fig


def power_timelines(timelines: dict[str, pd.DataFrame]) -> Figure:
    """Total cluster power over time, one line per run."""
    fig, ax = _fig()
    for label, timeline in timelines.items():
        t_s, power_w = _smoothed_cluster_power(cluster_power(timeline))
        ax.plot(t_s, power_w, label=label, linewidth=1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("cluster power (W)")  # W, as in every other figure and table
    plain_linear(ax, x=True, y=True)
    _legend_outside(ax, "run")
    return fig


def _smoothed_cluster_power(total: pd.DataFrame, points: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """The trailing mean of cluster power over ``bins // points`` bins at each bin (as
    ``rolling(width, min_periods=1).mean()`` of the per-bin series), from stretches of constant
    power (``cluster_power``) without expanding them to bins.

    The mean is linear in the bin index wherever no stretch starts inside its window, so the
    curve is drawn through the bins where that changes (a stretch starts, or leaves the window);
    the points left out lie on the straight lines between.  Busy stretches are one bin each, so
    a busy run is drawn bin by bin, exactly as before; an idle year is a few points."""
    w = float(total["duration_s"].min())  # the bin: a stretch is whole bins, and a busy one is a single bin
    n = np.maximum(1, np.rint(total["duration_s"].to_numpy() / w).astype(np.int64))
    starts = np.cumsum(n) - n
    n_bins = int(n.sum())
    width = max(1, n_bins // points)
    cumulative = np.r_[0.0, np.cumsum(total["power_w"].to_numpy() * n)]  # power summed over bins [0, k)
    ramp = np.arange(min(width, 4 * points))  # before a full window the mean is over k + 1 bins: not linear
    if width > len(ramp):
        ramp = np.r_[ramp, np.geomspace(len(ramp), width, points).astype(np.int64)]
    knots = np.concatenate([starts - 1, starts, starts + width - 1, starts + width, ramp, [n_bins - 1]])
    k = np.unique(np.clip(knots, 0, n_bins - 1))
    upper = np.interp(k + 1, np.r_[starts, n_bins], cumulative)
    lower = np.interp(np.maximum(0, k + 1 - width), np.r_[starts, n_bins], cumulative)
    return k * w, (upper - lower) / np.minimum(k + 1, width)


def latency_cdfs(requests: dict[str, pd.DataFrame]) -> Figure:
    """CDFs of TTFT and mean TBT per run."""
    frames = [df.assign(run=label) for label, df in requests.items()]
    data = pd.concat(frames, ignore_index=True)
    data = data[~data["dropped"]]
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.6), layout="constrained")
    sns.ecdfplot(data=data, x="ttft_s", hue="run", ax=axes[0], log_scale=True, legend=False)
    sns.ecdfplot(data=data.dropna(subset=["tbt_mean_s"]), x="tbt_mean_s", hue="run", ax=axes[1], log_scale=True)
    for ax in axes:
        plain_log(ax, x=True)
        ax.set_ylabel("fraction of requests")
    _legend_outside(axes[1], "run")
    axes[0].set_xlabel("TTFT (s)")
    axes[1].set_xlabel("mean TBT per request (s)")
    return fig


def power_cdf(timelines: dict[str, pd.DataFrame]) -> Figure:
    """CDF of total cluster power per time bin (what a row's power budget sees), idle time
    included: each stretch of constant power weighs its duration."""
    frames = [cluster_power(t).assign(run=label) for label, t in timelines.items()]
    data = pd.concat(frames, ignore_index=True)
    fig, ax = _fig(9, 3.4)
    sns.ecdfplot(data=data, x="power_w", hue="run", weights="duration_s", ax=ax)
    _legend_outside(ax, "run")
    plain_linear(ax, x=True)
    ax.set_xlabel("cluster power (W)")
    ax.set_ylabel("fraction of time")
    return fig


def polca_impact(table: pd.DataFrame) -> Figure:
    """p99 latency impact per priority and time under caps, against servers added."""
    impact = table.melt(id_vars="servers_added", value_vars=[c for c in table.columns if c.startswith("p99_impact_")],
                        var_name="priority", value_name="impact")
    impact["priority"] = impact["priority"].str.replace("p99_impact_", "")
    impact["impact_pct"] = impact["impact"] * 100
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.4), layout="constrained")
    sns.lineplot(data=impact, x="servers_added", y="impact_pct", hue="priority", marker="o", ax=axes[0])
    axes[0].set_ylabel("p99 E2E latency change (%)")
    axes[0].set_xlabel("servers added")
    axes[0].xaxis.get_major_locator().set_params(integer=True)
    _legend_outside(axes[0], "priority")
    caps = table.melt(id_vars="servers_added", value_vars=["capped_low_s", "capped_all_s"], var_name="cap", value_name="seconds")
    caps["cap"] = caps["cap"].map({"capped_low_s": "low priority capped", "capped_all_s": "all capped"})
    sns.barplot(data=caps, x="servers_added", y="seconds", hue="cap", ax=axes[1])
    axes[1].set_ylabel("time capped (s)")
    axes[1].set_xlabel("servers added")
    _legend_outside(axes[1], None)
    return fig


def longctx(table: pd.DataFrame) -> Figure:
    """TTFT, co-batched decode TBT and the long request's TBT against context, per configuration
    (dropped runs, whose KV did not fit, have no point; the table gives the reason)."""
    data = table[~table["dropped"].astype(bool)]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    for ax, column, label in zip(axes, ["ttft_s", "decode_tbt_max_s", "long_tbt_mean_s"],
                                 ["TTFT (s)", "worst decode gap (s)", "long request TBT (s)"]):
        sns.lineplot(data=data, x="context_tokens", y=column, hue="config", marker="o", ax=ax, legend=ax is axes[0])
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain_log(ax, x=True, y=True)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel(label)
    if len(data):
        axes[1].axhline(data["tbt_slo_s"].iloc[0], color="black", linewidth=0.8, linestyle="--", label="TBT SLO")
    handles, labels = axes[0].get_legend_handles_labels()
    if axes[0].get_legend() is not None:
        axes[0].get_legend().remove()
    if handles:  # one legend for the three plots, below them: it covers no data
        fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize="small", frameon=False)
    return fig


POLCA_STATE_COLORS = {"low capped": "#f6d8a8", "all capped": "#f0a868", "power brake": "#e07a7a"}
POLCA_MARKS = {"capping": ("v", "#c0560c"), "uncapping": ("^", "#2a8a4a"), "brake": ("X", "#a4302a"),
               "brake released": ("o", "#a4302a")}
THRESHOLD_STYLES = {"t2: cap all": ("#c0560c", "--"), "t1: cap low priority": ("#d9962b", "--"), "uncap below": ("#2a8a4a", ":")}


def _step_envelope(power: pd.DataFrame, points: int = 1500) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(x, y, peak) to draw stretches of constant power as steps: the stretches themselves while
    there are few; else the time-weighted mean of ``points`` equal buckets (``y``) and the highest
    stretch in each (``peak``), so no excursion over the budget is smoothed away."""
    t = power["t_s"].to_numpy(dtype=float)
    d = power["duration_s"].to_numpy(dtype=float)
    p = power["power_w"].to_numpy(dtype=float)
    if len(t) <= 2 * points:
        return np.r_[t, t[-1] + d[-1]] if len(t) else t, np.r_[p, p[-1]] if len(p) else p, None
    edges = np.linspace(t[0], t[-1] + d[-1], points + 1)
    bucket = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, points - 1)  # a stretch counts where it starts
    weight = np.bincount(bucket, weights=d, minlength=points)
    mean = np.bincount(bucket, weights=p * d, minlength=points) / np.where(weight > 0, weight, np.nan)
    peak = np.full(points, np.nan)
    np.fmax.at(peak, bucket, p)
    mean = pd.Series(mean).ffill().to_numpy()
    peak = pd.Series(peak).ffill().to_numpy()
    return edges, np.r_[mean, mean[-1]], np.r_[peak, peak[-1]]


def polca_timeline(panels: list[dict]) -> Figure:
    """Row power against the budget over time, one panel per replay (:func:`reports.timelines.polca_panel`):
    the metered row power (W), the budget and the thresholds as horizontal lines, the stretches
    with caps or the brake in effect shaded, and each capping, uncapping, brake and release
    marked along the top."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.transforms import blended_transform_factory

    n = max(1, len(panels))
    fig, axes = plt.subplots(n, 1, figsize=(10.5, 2.5 + 1.9 * n), sharey=True, layout="constrained", squeeze=False)
    states_seen, marks_seen, enveloped = set(), set(), False
    for ax, panel in zip(axes[:, 0], panels):
        for row in panel["states"].itertuples(index=False):
            ax.axvspan(row.start_s, row.end_s, color=POLCA_STATE_COLORS[row.state], alpha=0.55, linewidth=0, zorder=0)
            states_seen.add(row.state)
        if len(panel["power"]):
            x, y, peak = _step_envelope(panel["power"])
            if peak is not None:
                enveloped = True
                ax.plot(x, peak, drawstyle="steps-post", color="#7f9cc9", linewidth=0.7, zorder=2)
            ax.plot(x, y, drawstyle="steps-post", color="#1f4e99", linewidth=0.9, zorder=3)
        budget = panel["budget_w"]
        ax.axhline(budget, color="black", linewidth=1.3, zorder=4)
        for name, watts in panel["thresholds_w"].items():
            color, style = THRESHOLD_STYLES.get(name, ("grey", "--"))
            ax.axhline(watts, color=color, linestyle=style, linewidth=1.0, zorder=4)
        on_top = blended_transform_factory(ax.transData, ax.transAxes)
        for mark, group in panel["marks"].groupby("mark"):
            symbol, color = POLCA_MARKS[mark]
            ax.scatter(group["t_s"], np.full(len(group), 0.97), transform=on_top, marker=symbol, color=color, s=34,
                       zorder=5, clip_on=False)
            marks_seen.add(mark)
        ax.set_title(panel["title"], fontsize="medium", loc="left")
        ax.set_ylabel("row power (W)")
        plain_linear(ax, x=True, y=True)
    axes[-1, 0].set_xlabel("time (s)")
    lo = min([p["power"]["power_w"].min() for p in panels if len(p["power"])] or [0.0])
    hi = max([p["budget_w"] for p in panels] + [p["power"]["power_w"].max() for p in panels if len(p["power"])])
    axes[0, 0].set_ylim(max(0.0, lo - 0.05 * (hi - lo)), hi + 0.12 * (hi - max(0.0, lo)))  # room for the marks on top
    budget_w = panels[0]["budget_w"] if panels else None
    handles = [Line2D([], [], color="#1f4e99", linewidth=1.2, label="row power" + (" (mean per bucket)" if enveloped else ""))]
    if enveloped:
        handles.append(Line2D([], [], color="#7f9cc9", linewidth=1.0, label="row power (peak per bucket)"))
    if budget_w is not None:
        handles.append(Line2D([], [], color="black", linewidth=1.3, label=f"budget {budget_w:,.0f} W"))
        for name, watts in panels[0]["thresholds_w"].items():
            color, style = THRESHOLD_STYLES.get(name, ("grey", "--"))
            handles.append(Line2D([], [], color=color, linestyle=style, label=f"{name} ({watts:,.0f} W)"))
    handles += [Patch(color=POLCA_STATE_COLORS[s], alpha=0.55, label=s) for s in POLCA_STATE_COLORS if s in states_seen]
    handles += [Line2D([], [], linestyle="", marker=POLCA_MARKS[m][0], color=POLCA_MARKS[m][1], label=m)
                for m in POLCA_MARKS if m in marks_seen]
    axes[0, 0].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    return fig


def _clock_label(value: object) -> str:
    return "-" if value is None else value if isinstance(value, str) else f"{float(value):,.0f} MHz"


def dynamollm_timeline(frame: pd.DataFrame) -> Figure:
    """DynamoLLM per request class over time (:func:`reports.timelines.dynamollm_timeline`): the
    SM clock of the layout serving each class, one lane per class coloured by clock (top), and the
    instances taking requests, stacked by class (bottom: the top edge is all of them)."""
    from matplotlib.patches import Patch

    classes = list(dict.fromkeys(frame["class"]))
    numeric = sorted({float(c) for c in frame["clock"] if c is not None and not isinstance(c, str)})
    named = sorted({c for c in frame["clock"] if isinstance(c, str)})
    palette = sns.color_palette("viridis", max(1, len(numeric)))
    colors = {c: palette[i] for i, c in enumerate(numeric)}
    colors.update({c: "#fde725" if not numeric else "#b8de29" for c in named})
    fig, axes = plt.subplots(2, 1, figsize=(10.5, 1.6 + 0.45 * len(classes) + 2.8), sharex=True, layout="constrained",
                             height_ratios=[max(1.0, 0.45 * len(classes)), 2.8])
    lanes = axes[0]
    unknown = False
    for lane, cls in enumerate(classes):
        rows = frame[frame["class"] == cls]
        for row in rows.itertuples(index=False):
            key = None if row.clock is None else (row.clock if isinstance(row.clock, str) else float(row.clock))
            width = row.end_s - row.start_s
            if width <= 0:
                continue
            if key is None:
                unknown = True
                lanes.broken_barh([(row.start_s, width)], (lane - 0.35, 0.7), facecolor="white", edgecolor="#999999",
                                  hatch="//", linewidth=0.5)
            else:
                lanes.broken_barh([(row.start_s, width)], (lane - 0.35, 0.7), facecolor=colors[key], linewidth=0)
    lanes.set_yticks(range(len(classes)), classes)
    lanes.set_ylim(len(classes) - 0.5, -0.5)
    lanes.set_ylabel("class")
    lanes.grid(False, axis="y")
    lanes.set_title("SM clock (MHz) of the layout serving each class", fontsize="medium", loc="left")
    handles = [Patch(color=colors[c], label=_clock_label(c)) for c in [*numeric, *named]]
    if unknown:
        handles.append(Patch(facecolor="white", edgecolor="#999999", hatch="//", label="- (not recorded)"))
    lanes.legend(handles=handles, title="SM clock", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
                 title_fontsize="small", frameon=False)
    stack = axes[1]
    grid = np.unique(np.r_[frame["start_s"].to_numpy(dtype=float), frame["end_s"].to_numpy(dtype=float)])
    series = []
    for cls in classes:
        rows = frame[frame["class"] == cls].sort_values("start_s")
        at = np.clip(np.searchsorted(rows["start_s"].to_numpy(dtype=float), grid, side="right") - 1, 0, max(0, len(rows) - 1))
        values = pd.to_numeric(rows["active"], errors="coerce").to_numpy(dtype=float)[at] if len(rows) else np.zeros(len(grid))
        series.append(np.nan_to_num(values, nan=0.0))
    class_colors = sns.color_palette("tab10", max(1, len(classes)))
    if len(grid):
        stack.stackplot(grid, *series, step="post", labels=classes, colors=class_colors[:len(classes)], alpha=0.85, linewidth=0)
    stack.set_ylabel("active instances")
    stack.set_xlabel("time (s)")
    stack.yaxis.get_major_locator().set_params(integer=True)
    plain_linear(stack, x=True)
    stack.set_title("Instances taking requests per class (stacked)", fontsize="medium", loc="left")
    _legend_outside(stack, "class")
    if len(grid):
        stack.set_xlim(grid[0], grid[-1])
    return fig
