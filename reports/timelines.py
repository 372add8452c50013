"""Policy timelines rebuilt from what the replays write, for the report's figures.

* POLCA: the row's power and the controller's events, from ``polca-search``'s timeline
  (``replay.policies.polca.write_search_timeline``) or from a ``replay run --policy polca``
  directory (``power_timeline.parquet``, the clock changes in ``policy_events.csv``, the
  thresholds in ``summary.json``).
* DynamoLLM: each request class's SM clock and active instances over time, from the run's
  ``events.parquet`` (one row per change: ``t_s``, ``kind``, ``pool``, ``instance``,
  ``from_value``, ``to_value``, ``cost_s``, ``reason``) and ``summary.json``.

Pure functions: frames in, frames out; nothing here draws.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

# ---------------------------------------------------------------------------- POLCA
POLCA_EVENT_KINDS = ("command", "apply", "brake", "release")


def polca_settings(metadata: dict) -> dict:
    """The POLCA settings a search timeline carries (``wattlas.polca`` schema metadata, JSON)."""
    text = metadata.get("wattlas.polca")
    return json.loads(text) if text else {}


def read_search_timeline(path: Path) -> tuple[pd.DataFrame, dict, bool]:
    """(rows, settings, simulated) of a ``polca-search`` timeline Parquet file."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return table.to_pandas(), polca_settings(meta), meta.get("wattlas.simulated") == "true"


_LEVEL = re.compile(r"^polca level (\d+)$")
_RELEASE = re.compile(r"^polca brake released, level (\d+)$")


def polca_events_from_clock_changes(events: pd.DataFrame) -> pd.DataFrame:
    """The controller's effective events (``apply`` with ``level``, ``brake``, ``release`` with
    ``level``) from a POLCA replay's clock changes (``policy_events.csv``: one row per instance
    whose clock changed, ``reason`` "polca level N", "polca power brake" or "polca brake released,
    level N"), one per time and reason.  A level that changed no server's clock left no row."""
    rows = []
    if events is None or not len(events) or "reason" not in events:
        return pd.DataFrame({"t_s": [], "kind": [], "level": []})
    clocks = events[events["kind"].astype(str) == "clock"] if "kind" in events else events
    for (t, reason), _ in clocks.groupby(["t_s", "reason"], sort=False):
        reason = str(reason)
        if m := _LEVEL.match(reason):
            rows.append({"t_s": float(t), "kind": "apply", "level": float(m.group(1))})
        elif reason == "polca power brake":
            rows.append({"t_s": float(t), "kind": "brake", "level": math.nan})
        elif m := _RELEASE.match(reason):
            rows.append({"t_s": float(t), "kind": "release", "level": float(m.group(1))})
    return pd.DataFrame(rows, columns=["t_s", "kind", "level"]).sort_values("t_s", kind="stable").reset_index(drop=True)


def polca_states(events: pd.DataFrame, t_end: float) -> pd.DataFrame:
    """Stretches of what was in effect on the servers: rows ``start_s``, ``end_s``, ``state``
    (``low capped``, ``all capped``, ``power brake``; uncapped stretches left out), from the
    ``apply``/``brake``/``release`` events in time order."""
    level, braked, since = 0, False, 0.0
    out = []

    def state() -> str | None:
        return "power brake" if braked else {1: "low capped", 2: "all capped"}.get(level)

    for row in events.sort_values("t_s", kind="stable").itertuples(index=False):
        before = state()
        if row.kind == "apply":
            level = int(row.level)
        elif row.kind == "brake":
            braked = True
        elif row.kind == "release":
            braked = False
            if row.level == row.level:  # (not NaN)
                level = int(row.level)
        else:
            continue
        if state() != before:
            if before is not None and row.t_s > since:
                out.append({"start_s": since, "end_s": float(row.t_s), "state": before})
            since = float(row.t_s)
    if state() is not None and t_end > since:
        out.append({"start_s": since, "end_s": float(t_end), "state": state()})
    return pd.DataFrame(out, columns=["start_s", "end_s", "state"])


def polca_marks(events: pd.DataFrame) -> pd.DataFrame:
    """The events worth a marker: rows ``t_s``, ``mark`` - ``capping`` (a deeper level took effect),
    ``uncapping`` (a shallower one), ``brake``, ``brake released`` - in time order."""
    level = 0
    out = []
    for row in events.sort_values("t_s", kind="stable").itertuples(index=False):
        if row.kind == "apply":
            new = int(row.level)
            if new != level:
                out.append({"t_s": float(row.t_s), "mark": "capping" if new > level else "uncapping"})
            level = new
        elif row.kind == "brake":
            out.append({"t_s": float(row.t_s), "mark": "brake"})
        elif row.kind == "release":
            out.append({"t_s": float(row.t_s), "mark": "brake released"})
            if row.level == row.level:
                level = int(row.level)
    return pd.DataFrame(out, columns=["t_s", "mark"])


def polca_event_counts(events: pd.DataFrame) -> dict:
    """How many decisions (``command``), cappings, uncappings, brakes and releases ``events`` hold."""
    marks = polca_marks(events)["mark"].value_counts()
    counts = {"decisions": int((events["kind"] == "command").sum()) if len(events) else 0}
    for name in ("capping", "uncapping", "brake", "brake released"):
        counts[name] = int(marks.get(name, 0))
    return counts


def polca_panel(power: pd.DataFrame, events: pd.DataFrame, settings: dict, title: str) -> dict:
    """What one panel of :func:`reports.figures.polca_timeline` draws: the row power stretches
    (``t_s``, ``duration_s``, ``power_w``), the states in effect and the event marks, the budget
    and the thresholds in W."""
    budget = float(settings["budget_w"])
    t_end = float((power["t_s"] + power["duration_s"]).max()) if len(power) else float(events["t_s"].max() if len(events) else 0.0)
    thresholds = {name: float(settings[key]) * budget for key, name in (("t2", "t2: cap all"), ("t1", "t1: cap low priority"),
                                                                        ("uncap", "uncap below")) if settings.get(key) is not None}
    return {"title": title, "power": power.reset_index(drop=True), "states": polca_states(events, t_end),
            "marks": polca_marks(events), "budget_w": budget, "thresholds_w": thresholds}


# ---------------------------------------------------------------------------- DynamoLLM
HIGHEST = "highest profiled"


def class_of(pool: str) -> str:
    """The request class a DynamoLLM layout pool serves ("in-M/out-M@tp2" -> "in-M/out-M")."""
    return str(pool).split("@tp")[0]


def _next_value(events: pd.DataFrame, after: int, pool: str, kind: str) -> float | None:
    """``from_value`` of the first ``kind`` event of ``pool`` after row position ``after``: what
    the pool held until then (None: no such event)."""
    later = events.iloc[after + 1:]
    hit = later[(later["kind"] == kind) & (later["pool"] == pool)]
    return None if not len(hit) else hit["from_value"].iloc[0]


def _clock_value(value) -> object:
    """A clock of the events: MHz, or :data:`HIGHEST` for null (the highest profiled clock)."""
    return HIGHEST if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def dynamollm_timeline(events: pd.DataFrame, summary: dict) -> pd.DataFrame:
    """Each request class's SM clock and active instances over time: rows ``class``, ``start_s``,
    ``end_s``, ``pool`` (the layout serving it), ``tp``, ``clock`` (MHz, or :data:`HIGHEST`; None:
    unknown) and ``active`` (instances taking requests; NaN: unknown), one per stretch in which
    none of them changed, from the replay's ``events.parquet`` rows and ``summary.json``.

    A class starts on its own pool (named after it) with every instance active (the plan's
    ``instances``) until the first scale event says otherwise; a pool's clock before its first
    clock change is that change's ``from_value``, and a pool with no clock change kept the one
    clock the class used (``clocks_used``; none listed: the highest profiled).  A re-shard moves the
    class to the event's pool, whose count and clock are the event's ``active``/``sm_clock_mhz``
    where recorded, else what that pool's next scale or clock event started from."""
    policy = summary.get("policy") or {}
    plans = {c["class"]: c for c in policy.get("classes") or []}
    t_end = float(summary.get("duration_s") or 0.0)
    events = events.sort_values("t_s", kind="stable").reset_index(drop=True) if len(events) else events
    if len(events):
        t_end = max(t_end, float(events["t_s"].max()))
    pools = list(dict.fromkeys([*plans, *(events["pool"].dropna().astype(str) if len(events) else [])]))
    classes = list(dict.fromkeys(class_of(p) for p in pools))
    active: dict[str, float] = {}
    clock: dict[str, object] = {}
    tp: dict[str, float] = {}
    for pool in pools:
        mine = events[events["pool"] == pool] if len(events) else events
        scales = mine[mine["kind"] == "scale"] if len(mine) else mine
        clocks = mine[mine["kind"] == "clock"] if len(mine) else mine
        plan = plans.get(pool) if pool == class_of(pool) else None
        if len(scales):
            active[pool] = float(scales["from_value"].iloc[0])
        elif plan is not None and plan.get("instances") is not None:
            active[pool] = float(plan["instances"])
        if len(clocks):
            clock[pool] = _clock_value(clocks["from_value"].iloc[0])
        elif plan is not None:
            used = plan.get("clocks_used") or []
            clock[pool] = float(used[0]) if len(used) == 1 else (HIGHEST if not used else None)
        if plan is not None and plan.get("tp") is not None:
            tp[pool] = float(plan["tp"])
    layout = {c: c for c in classes}
    records: dict[str, list[dict]] = {c: [] for c in classes}

    def snapshot(cls: str, t: float) -> None:
        pool = layout[cls]
        records[cls].append({"t_s": t, "pool": pool, "tp": tp.get(pool, math.nan), "clock": clock.get(pool),
                             "active": active.get(pool, math.nan)})

    for cls in classes:
        snapshot(cls, 0.0)
    for i, ev in enumerate(events.itertuples(index=False)):
        pool, cls = str(ev.pool), class_of(ev.pool)
        if cls not in layout:
            continue
        if ev.kind == "scale":
            active[pool] = float(ev.to_value)
        elif ev.kind == "clock":
            clock[pool] = _clock_value(ev.to_value)
        elif ev.kind == "reshard":
            layout[cls] = pool
            tp[pool] = float(ev.to_value)
            recorded = getattr(ev, "active", None)
            if recorded is not None and recorded == recorded:
                active[pool] = float(recorded)
            else:
                following = _next_value(events, i, pool, "scale")
                active[pool] = float(following) if following is not None else math.nan
            if "sm_clock_mhz" in events.columns:
                clock[pool] = _clock_value(getattr(ev, "sm_clock_mhz"))
            else:
                following = _next_value(events, i, pool, "clock")
                clock[pool] = _clock_value(following) if following is not None else None
        else:
            continue
        if layout[cls] == pool:
            snapshot(cls, float(ev.t_s))
    out = []
    for cls in classes:
        frame = pd.DataFrame(records[cls]).drop_duplicates("t_s", keep="last")  # several instances change at once
        keys = frame[["pool", "tp", "clock", "active"]].apply(lambda values: values.map(repr)).agg("|".join, axis=1)
        frame = frame[keys.ne(keys.shift())]  # a change that changed nothing is no new stretch
        starts = frame["t_s"].to_numpy(dtype=float)
        ends = np.r_[starts[1:], max(t_end, starts[-1])]
        out.append(frame.assign(**{"class": cls, "start_s": starts, "end_s": ends}))
    columns = ["class", "start_s", "end_s", "pool", "tp", "clock", "active"]
    return pd.concat(out, ignore_index=True)[columns] if out else pd.DataFrame(columns=columns)


def highest_profiled_clock(summary: dict, base: Path | None = None) -> float | None:
    """The highest SM clock (MHz) the run's bundle (``summary["models"]``) was profiled at, where
    the bundle can still be read (as written, or relative to ``base``); None otherwise."""
    models = summary.get("models")
    if not models:
        return None
    for path in (Path(models), *(() if base is None else (Path(base) / models,))):
        try:
            if not path.is_file():
                continue
            from characterize.model_io import ModelBundle

            bundle = ModelBundle.load(path)
        except Exception:  # noqa: BLE001 - a bundle that cannot be read leaves the clock named, not numbered
            continue
        tops = []
        for phase in ("prefill", "decode", "mixed"):
            model = bundle.find("latency_s", phase)
            clocks = (getattr(model, "support", None) or {}).get("sm_clock_mhz") if model is not None else None
            if clocks:
                tops.append(float(max(clocks)))
        return min(tops) if tops else None
    return None
