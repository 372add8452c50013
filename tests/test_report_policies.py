"""Report sections of the policies and models: POLCA row power against the budget over time,
DynamoLLM clock and active instances per class over time, model coefficients, Mnemosyne drops,
the replay summary's rows, and numbers for people (no scientific notation, words for signs)."""

import html
import json
import math
import re
import warnings

import numpy as np
import pandas as pd
import pytest

from reports.html import Report, human_float

from .conftest import one_error_line
from .test_reports import sideways_scrolling

SCIENTIFIC = re.compile(r"\d[eE][-+]?\d")


def _text(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment)).strip()


def tables(page: str) -> list[dict]:
    """Every table of a report: caption, headers and rows (cell text, unescaped)."""
    out = []
    for m in re.finditer(r"<table>(?:<caption>(.*?)</caption>)?<thead><tr>(.*?)</tr></thead><tbody>(.*?)</tbody></table>",
                         page, re.S):
        headers = [_text(h) for h in re.findall(r"<th>(.*?)</th>", m.group(2), re.S)]
        rows = [[_text(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
                for row in re.findall(r"<tr>(.*?)</tr>", m.group(3), re.S)]
        out.append({"caption": _text(m.group(1) or ""), "headers": headers, "rows": rows})
    return out


def table(page: str, caption_start: str) -> dict:
    found = [t for t in tables(page) if t["caption"].startswith(caption_start)]
    assert found, (caption_start, [t["caption"] for t in tables(page)])
    return found[0]


def column(t: dict, name: str) -> list[str]:
    return [row[t["headers"].index(name)] for row in t["rows"]]


def number(text: str) -> float:
    return float(text.replace(",", ""))


def sections(page: str) -> list[tuple[str, str]]:
    return [(_text(m.group(1)), m.group(0)) for m in re.finditer(r"<section[^>]*><h2>(.*?)</h2>.*?</section>", page, re.S)]


def without_images(page: str) -> str:
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)


# ---------------------------------------------------------------------------- numbers for people
def test_table_numbers_are_never_scientific():
    assert human_float(5.944e-07) == "0.0000005944" and human_float(17_589.4) == "17,589"
    assert human_float(1.3e-24) == "0" and human_float(123456789.0) == "123,456,789" and human_float(0.5) == "0.5"
    report = Report("t")
    report.table(pd.DataFrame({"x": [5.944e-07, 1.759e4, 1.3e-24, -2e-5, 0.25]}), float_format=",.4g")
    cells = [c for row in tables(report.render())[0]["rows"] for c in row]
    assert cells == ["0.0000005944", "17,590", "0", "-0.00002", "0.25"]


def test_demo_report_reads_for_people(demo_output):
    """No scientific notation and no raw sign in any cell, power in W only, no 'not shown yet' gaps."""
    page = (demo_output[0] / "report.html").read_text()
    cells = [c for t in tables(page) for row in t["rows"] for c in row]
    assert cells and not [c for c in cells if SCIENTIFIC.search(c) and len(c) < 40], [c for c in cells if SCIENTIFIC.search(c)]
    assert not [c for c in cells if re.search(r"\((more|less)\)", c)]
    text = _text(without_images(page))
    assert not re.search(r"\bkW\b", text)  # power in W everywhere (energy in kWh)
    assert "Not shown yet" not in text


# ---------------------------------------------------------------------------- characterization
def _unit_scale(header: str) -> float:
    unit = re.search(r"\((s|ms|µs|ns|ps)\)$", header)
    assert unit, header
    return {"s": 1.0, "ms": 1e-3, "µs": 1e-6, "ns": 1e-9, "ps": 1e-12}[unit.group(1)]


def test_model_coefficients_are_shown_in_the_characterization_section(demo_output):
    """Every power model's parameters (W, tokens, factors) and every latency model's coefficients
    (in the time unit each column names) are in the report, equal to the bundle's to the digits shown."""
    out = demo_output[0]
    page = (out / "report.html").read_text()
    bundle = json.loads((out / "models_sim_llama3-8b.json").read_text())
    checked = 0
    for model in bundle["models"]:
        where = f"{model['target']}/{model['phase']}"
        groups = model["groups"] if isinstance(model["groups"], list) else json.loads(model["groups"])
        if model["kind"] == "power_saturating":
            t = table(page, f"{where}: power model per group (W;")
            assert "power limit 700 W" in t["caption"]
            for g, row in zip(groups, t["rows"]):
                values = dict(zip(t["headers"], row))
                assert number(values["tp"]) == g["key"]["tp"]
                for name, value in zip(g["param_names"], g["params"]):
                    shown = values["load0 (tokens)" if name == "load0" else name]
                    decimals = len(shown.split(".")[1]) if "." in shown else 0
                    assert abs(number(shown) - value) <= 0.51 * 10 ** -decimals + 1e-12, (where, name, shown, value)
                    checked += 1
        elif model["kind"] == "terms":
            t = table(page, f"{where}: latency coefficients per group")
            row = dict(zip(t["headers"], t["rows"][0]))
            for term, coef in zip(model["terms"], groups[0]["coef"]):
                header = next(h for h in t["headers"] if h.startswith(f"{term} ("))
                scale = _unit_scale(header)
                assert number(row[header]) * scale == pytest.approx(coef, rel=1e-3, abs=1e-3 * scale), (term, row[header], coef)
                checked += 1
    assert checked >= 15


def test_model_candidates_are_words(demo_output):
    page = (demo_output[0] / "report.html").read_text()
    t = table(page, "Held-out error (%)")
    selected = column(t, "selected")
    assert set(selected) <= {"selected", "not selected", "diagnostic"} and "not selected" in selected
    per_model = pd.DataFrame({"model": column(t, "model"), "selected": selected})
    assert (per_model[per_model["selected"] == "selected"].groupby("model").size() == 1).all()
    assert set(per_model["model"]) == set(per_model[per_model["selected"] == "selected"]["model"])


# ---------------------------------------------------------------------------- replays
def test_replay_summary_has_p99_energy_split_and_facility_energy(demo_output):
    out = demo_output[0]
    page = (out / "report.html").read_text()
    summary = json.loads((out / "replay_synth_code_1h" / "summary.json").read_text())
    t = next(t for t in tables(page) if t["caption"].startswith("Summary per run") and "replay_synth_code_1h" in t["headers"])
    rows = {row[0]: row[t["headers"].index("replay_synth_code_1h")] for row in t["rows"]}
    assert rows["E2E p99 (s)"] == f"{summary['e2e_p99_s']:,.3f}"
    assert rows["TTFT p99 (ms)"] == f"{summary['ttft_p99_s'] * 1e3:,.1f}"
    for key, name in (("energy_busy_kwh", "IT energy busy (kWh)"), ("energy_idle_kwh", "IT energy idle (kWh)"),
                      ("facility_energy_kwh", "facility energy (kWh)"), ("energy_kwh", "IT energy (kWh)")):
        assert rows[name] == f"{summary[key]:,.4f}", name
    assert number(rows["IT energy busy (kWh)"]) + number(rows["IT energy idle (kWh)"]) == pytest.approx(
        number(rows["IT energy (kWh)"]), abs=2e-4)


def test_mnemosyne_drops_say_why_and_use_words(demo_output):
    out = demo_output[0]
    page = (out / "report.html").read_text()
    sweep = pd.read_csv(out / "mnemosyne_longctx.csv")
    t = table(page, "Per configuration and context length")
    dropped = column(t, "dropped")
    assert set(dropped) == {"yes", "no"} and dropped.count("yes") == int(sweep["dropped"].sum())
    for row, flag in zip(t["rows"], dropped):
        if flag == "yes":
            assert row[t["headers"].index("ttft_s")] == "–"  # no time: unknown, not 0 or NaN
    why = table(page, "Why runs were dropped")
    expected = sweep[sweep["dropped"]]
    assert len(why["rows"]) == len(expected)
    for row, (_, want) in zip(why["rows"], expected.iterrows()):
        assert row[0] == want["config"] and number(row[1]) == want["context_tokens"]
        assert row[2] == want["drop_reason"] and row[2] not in ("", "–", "nan")


# ---------------------------------------------------------------------------- DynamoLLM
def test_dynamollm_timeline_rebuilt_from_events():
    """Class A scales, changes clock and re-shards to A@tp2 (whose count and clock are what its next
    events started from); B never changes (its one clock); C uses the highest profiled clock."""
    from reports.timelines import HIGHEST, dynamollm_timeline

    summary = {"duration_s": 50.0, "policy": {"name": "dynamollm", "classes": [
        {"class": "A", "tp": 1, "instances": 4, "clocks_used": [1410.0, 1980.0]},
        {"class": "B", "tp": 1, "instances": 2, "clocks_used": [1410.0]},
        {"class": "C", "tp": 2, "instances": 3, "clocks_used": []}]}}
    nan = math.nan
    events = pd.DataFrame([
        (0.0, "scale", "A", None, 4.0, 2.0, 0.0, "dynamollm"),
        (0.0, "clock", "A", 0, nan, 1410.0, 0.005, "dynamollm"),
        (0.0, "clock", "A", 1, nan, 1410.0, 0.0, "dynamollm"),
        (10.0, "reshard", "A@tp2", None, 1.0, 2.0, 30.0, "dynamollm re-shard from A"),
        (20.0, "scale", "A@tp2", None, 2.0, 3.0, 0.0, "dynamollm"),
        (20.0, "clock", "A@tp2", 5, 1980.0, 1410.0, 0.0, "dynamollm"),
    ], columns=["t_s", "kind", "pool", "instance", "from_value", "to_value", "cost_s", "reason"])
    frame = dynamollm_timeline(events, summary)
    a = frame[frame["class"] == "A"]
    assert a[["start_s", "end_s"]].values.tolist() == [[0.0, 10.0], [10.0, 20.0], [20.0, 50.0]]
    assert a["pool"].tolist() == ["A", "A@tp2", "A@tp2"] and a["tp"].tolist() == [1.0, 2.0, 2.0]
    assert a["active"].tolist() == [2.0, 2.0, 3.0] and a["clock"].tolist() == [1410.0, 1980.0, 1410.0]
    b, c = frame[frame["class"] == "B"], frame[frame["class"] == "C"]
    assert b[["start_s", "end_s", "clock", "active"]].values.tolist() == [[0.0, 50.0, 1410.0, 2.0]]
    assert c[["start_s", "end_s", "clock", "active"]].values.tolist() == [[0.0, 50.0, HIGHEST, 3.0]]
    # policy_events.csv's columns say the re-shard's count and clock outright
    recorded = events.assign(active=[2, nan, nan, 4, 3, nan], sm_clock_mhz=[nan, 1410, 1410, 1620, nan, 1410])
    a = dynamollm_timeline(recorded, summary).query("`class` == 'A'")
    assert a["start_s"].tolist() == [0.0, 10.0, 20.0]
    assert a["active"].tolist() == [2.0, 4.0, 3.0] and a["clock"].tolist() == [1410.0, 1620.0, 1410.0]
    # a re-shard nothing later describes: its count and clock are unknown, not guessed
    a = dynamollm_timeline(events.iloc[:4], summary).query("`class` == 'A'")
    assert a["end_s"].tolist() == [10.0, 50.0] and math.isnan(a["active"].iloc[1]) and a["clock"].iloc[1] is None


def test_dynamollm_timeline_matches_the_demo_runs_events(demo_output):
    """At every clock and scale event of the demo's DynamoLLM run, the timeline holds the event's
    new value for the event's class, and each class's stretches tile the run without gaps."""
    from reports.timelines import class_of, dynamollm_timeline

    run = demo_output[0] / "dynamollm_conv_x8"
    events = pd.read_parquet(run / "events.parquet")
    summary = json.loads((run / "summary.json").read_text())
    frame = dynamollm_timeline(events, summary)
    assert set(frame["class"]) == {c["class"] for c in summary["policy"]["classes"]}
    for cls, rows in frame.groupby("class"):
        assert rows["start_s"].iloc[0] == 0.0 and rows["end_s"].iloc[-1] == pytest.approx(summary["duration_s"])
        assert np.allclose(rows["start_s"].iloc[1:], rows["end_s"].iloc[:-1])
    checked = 0
    for ev in events.itertuples(index=False):
        if ev.kind not in ("clock", "scale") or ev.t_s >= summary["duration_s"]:
            continue
        at = frame[(frame["class"] == class_of(ev.pool)) & (frame["start_s"] <= ev.t_s) & (frame["end_s"] > ev.t_s)]
        assert len(at) == 1
        got = at["clock"].iloc[0] if ev.kind == "clock" else at["active"].iloc[0]
        assert got == ev.to_value, (ev, got)
        checked += 1
    assert checked >= 10
    assert (frame["active"] >= 1).all()


def test_demo_report_has_the_dynamollm_timeline(demo_output):
    page = (demo_output[0] / "report.html").read_text()
    dyn = [body for heading, body in sections(page) if "DynamoLLM" in heading]
    assert len(dyn) == 1
    captions = [_text(c) for c in re.findall(r"<figcaption>(.*?)</figcaption>", dyn[0], re.S)]
    timeline = [c for c in captions if "DynamoLLM per request class over time" in c]
    assert len(timeline) == 1 and timeline[0].startswith("[SIMULATED] dynamollm_conv_x8:")
    changes = pd.read_parquet(demo_output[0] / "dynamollm_conv_x8" / "events.parquet")
    assert f"{int(changes['kind'].isin(['clock', 'scale', 'reshard']).sum()):,} changes" in timeline[0]


def test_dynamollm_figure_lanes_and_stack():
    """One lane per class coloured by clock, and the stacked instances add up to all active ones."""
    from reports import figures
    from reports.timelines import HIGHEST

    frame = pd.DataFrame([("A", 0.0, 10.0, "A", 1.0, 1410.0, 2.0), ("A", 10.0, 30.0, "A", 1.0, 1980.0, 3.0),
                          ("B", 0.0, 20.0, "B", 1.0, HIGHEST, 1.0), ("B", 20.0, 30.0, "B@tp2", 2.0, None, math.nan)],
                         columns=["class", "start_s", "end_s", "pool", "tp", "clock", "active"])
    report = Report("t")
    report.section("dyn", simulated=True)
    fig = figures.dynamollm_timeline(frame)
    lanes, stack = fig.axes[:2]
    assert [t.get_text() for t in lanes.get_yticklabels()] == ["A", "B"]
    legend = [t.get_text() for t in lanes.get_legend().get_texts()]
    assert legend == ["1,410 MHz", "1,980 MHz", HIGHEST, "- (not recorded)"]
    tops = np.max([p.get_paths()[0].vertices[:, 1].max() for p in stack.collections])
    assert tops == 4.0  # 3 of A + 1 of B from t = 10 to 20 (B's count after 20 is unknown: not stacked)
    report.figure(fig, "timeline")
    assert any(t.get_text() == "[SIMULATED]" for t in fig.texts)


# ---------------------------------------------------------------------------- POLCA
ROW_TOML = """
[[pool]]
name = "high"
priority = "high"
instances = 2
tp = 1
kv_capacity_tokens = 400000

[[pool]]
name = "low"
priority = "low"
instances = 2
tp = 1
kv_capacity_tokens = 400000

[polca]
budget_w = 1800
"""


def _trace(n=800, rate=12.0, seed=3):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"arrival_s": np.cumsum(rng.exponential(1 / rate, n)), "input_tokens": rng.integers(300, 3000, n),
                         "output_tokens": rng.integers(20, 300, n)})


@pytest.fixture(scope="module")
def polca_search(demo_output, tmp_path_factory):
    """A small search (4-server row, a fixed 2,200 W budget, up to 2 servers added, one seed) whose
    replays cap, uncap and brake, written as the CSV and the timeline a report reads."""
    from characterize.model_io import ModelBundle
    from replay.config import ClusterConfig, PoolConfig
    from replay.policies.polca import PolcaConfig, oversubscription_search, write_search_timeline

    warnings.simplefilter("ignore")
    bundle = ModelBundle.load(demo_output[0] / "models_sim_llama3-8b.json")
    row = ClusterConfig(pools=[PoolConfig(name="high", priority="high", instances=2),
                               PoolConfig(name="low", priority="low", instances=2)])
    result = oversubscription_search(_trace(), bundle, row, PolcaConfig(budget_w=2200.0), max_extra=2, seeds=1,
                                     budget_source="fixed")
    out = tmp_path_factory.mktemp("polca")
    csv = out / "search.csv"
    result["table"].to_csv(csv, index=False)
    write_search_timeline(result, out / "search_timeline.parquet", simulated=True)
    return result, csv


def _marks_in_log(log: pd.DataFrame) -> dict:
    """Cappings, uncappings and brakes of a controller log, counted here without the report's code."""
    level, counts = 0, {"capping": 0, "uncapping": 0, "brake": 0, "decisions": 0}
    for ev in log.sort_values("t_s", kind="stable").itertuples(index=False):
        if ev.kind == "apply":
            if ev.level > level:
                counts["capping"] += 1
            elif ev.level < level:
                counts["uncapping"] += 1
            level = ev.level
        elif ev.kind == "brake":
            counts["brake"] += 1
        elif ev.kind == "command":
            counts["decisions"] += 1
        elif ev.kind == "release" and ev.level == ev.level:
            level = ev.level
    return counts


def test_polca_search_timeline_is_written_with_its_settings(polca_search, tmp_path):
    from reports.timelines import read_search_timeline

    result, csv = polca_search
    rows, settings, simulated = read_search_timeline(csv.with_name("search_timeline.parquet"))
    assert simulated and settings["budget_w"] == 2200.0 and (settings["t1"], settings["t2"], settings["uncap"]) == (0.85, 0.95, 0.8)
    assert sorted(rows["servers_added"].unique()) == [0, 1, 2] and set(rows["seed"]) == {0}
    kinds = set(rows["kind"])
    assert {"row_power", "command", "apply", "brake"} <= kinds
    for n, mine in rows.groupby("servers_added"):
        power = mine[mine["kind"] == "row_power"]
        # the stretches tile the replay, and their energy is the capped run's (the search's energy_kwh)
        assert np.allclose((power["t_s"] + power["duration_s"]).iloc[:-1], power["t_s"].iloc[1:])
        energy_kwh = float((power["power_w"] * power["duration_s"]).sum()) / 3.6e6
        assert energy_kwh == pytest.approx(result["table"].loc[n, "energy_kwh"], rel=1e-6)


def test_polca_section_draws_row_power_against_the_budget(polca_search, run_cli, tmp_path):
    """`report polca` on the search: the section is marked [SIMULATED] (the timeline says so), the
    figure is there, and the events table agrees with the controller's log and the search's
    metered over-budget seconds; the page fits 1,400 px in Chromium."""
    result, csv = polca_search
    output = tmp_path / "polca.html"
    done = run_cli("report", "polca", csv, "-o", output)
    assert done.exit_code == 0, done.output
    page = output.read_text()
    (heading, body), = sections(page)
    assert heading == "POLCA power oversubscription [SIMULATED]"
    captions = [_text(c) for c in re.findall(r"<figcaption>(.*?)</figcaption>", body, re.S)]
    timeline = [c for c in captions if "Row power against the budget (2,200 W) over time" in c]
    assert len(timeline) == 1 and timeline[0].startswith("[SIMULATED]")
    assert "No row power timeline" not in page
    events = table(page, "Controller events in the replays shown")
    log = result["timeline"]
    assert [number(v) for v in column(events, "servers_added")] == [0, 1, 2]  # the original row, the best, the first failing
    for row in events["rows"]:
        values = dict(zip(events["headers"], row))
        n = int(number(values["servers_added"]))
        expected = _marks_in_log(log[(log["servers_added"] == n) & (log["kind"] != "row_power")])
        for name in ("capping", "uncapping", "brake", "decisions"):
            assert number(values[name]) == expected[name], (n, name)
        assert number(values["over_budget_s"]) == pytest.approx(result["table"].loc[n, "over_budget_s"], abs=0.5)
    assert sum(number(v) for v in column(events, "brake")) >= 1 and sum(number(v) for v in column(events, "capping")) >= 2
    impact = table(page, "Latency change against the uncapped replay")
    for n, row in enumerate(impact["rows"]):
        for priority in ("high", "low"):
            cell = row[impact["headers"].index(f"p99 E2E {priority}")]
            pct = 100 * result["table"].loc[n, f"p99_impact_{priority}"]
            if not np.isfinite(pct):
                assert cell == "–"
            elif abs(pct) < 0.05:
                assert cell == "no change"
            else:  # the sign as a word: capping costs latency ("slower") or, by chance, saves some
                assert cell == f"{abs(pct):.1f} % {'slower' if pct > 0 else 'faster'}", (cell, pct)
    assert any(c.endswith("slower") for row in impact["rows"] for c in row)
    assert not SCIENTIFIC.search(_text(without_images(page)))
    viewport, offenders = sideways_scrolling(output, tmp_path)
    assert 1300 <= viewport <= 1400 and offenders == []


def test_polca_figure_lines_shading_and_marks(polca_search):
    from reports import figures
    from reports.timelines import polca_panel, read_search_timeline

    _, csv = polca_search
    rows, settings, _ = read_search_timeline(csv.with_name("search_timeline.parquet"))
    mine = rows[rows["servers_added"] == 2]
    panel = polca_panel(mine[mine["kind"] == "row_power"], mine[mine["kind"] != "row_power"], settings, "+2")
    fig = figures.polca_timeline([panel])
    ax = fig.axes[0]
    flat = sorted({round(float(line.get_ydata()[0]), 6) for line in ax.lines if len(set(line.get_ydata())) == 1})
    assert flat == sorted(round(2200.0 * f, 6) for f in (0.8, 0.85, 0.95, 1.0))
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "budget 2,200 W" in legend and "t2: cap all (2,090 W)" in legend and "brake" in legend
    assert len(panel["states"]) >= 1 and set(panel["states"]["state"]) <= {"low capped", "all capped", "power brake"}
    assert "power brake" in set(panel["states"]["state"])
    assert len(ax.patches) >= len(panel["states"])


def test_polca_section_without_a_timeline_says_so(polca_search, tmp_path):
    from reports.builders import add_polca

    _, csv = polca_search
    alone = tmp_path / "alone.csv"
    alone.write_text(csv.read_text())
    report = Report("t", base=tmp_path)
    add_polca(report, alone, simulated=False)
    page = report.render()
    assert "No row power timeline beside this search (alone_timeline.parquet)" in page
    assert "Row power against the budget" not in page and "[SIMULATED]" not in page


def test_report_polca_names_a_missing_csv(run_cli, tmp_path):
    result = run_cli("report", "polca", tmp_path / "nope.csv", "-o", tmp_path / "r.html")
    one_error_line(result, "nope.csv", "does not exist")
    assert not (tmp_path / "r.html").exists()


def test_polca_events_from_clock_changes_match_the_controller(demo_output):
    """What a `replay run --policy polca` directory keeps (its clock changes) gives back the
    controller's level changes, at the times they took effect."""
    from characterize.model_io import ModelBundle
    from replay.config import ClusterConfig, PoolConfig
    from replay.engine import replay
    from replay.policies.polca import PolcaConfig, PolcaController
    from reports.timelines import polca_events_from_clock_changes

    bundle = ModelBundle.load(demo_output[0] / "models_sim_llama3-8b.json")
    row = ClusterConfig(pools=[PoolConfig(name="high", priority="high", instances=2),
                               PoolConfig(name="low", priority="low", instances=2)])
    trace = _trace(1200, 14.0, seed=5)
    priority = np.where(np.random.default_rng(5).random(len(trace)) < 0.5, "high", "low").astype(object)
    controller = PolcaController(PolcaConfig(budget_w=2500.0, t1=0.8, t2=0.9, uncap=0.75))
    result = replay(trace, bundle, row, priority=priority, controller=controller)
    level, wanted = 0, []
    for entry in controller.log:
        if entry["event"] == "apply" and entry["level"] != level:
            wanted.append((round(entry["t_s"], 9), float(entry["level"])))
            level = entry["level"]
    derived = polca_events_from_clock_changes(result.events)
    got = [(round(t, 9), lv) for t, lv in zip(derived["t_s"], derived["level"])]
    assert len(wanted) >= 2 and got == wanted


def test_report_replay_of_a_polca_run(run_cli, demo_output, tmp_path):
    """`replay run --policy polca -o DIR` then `report replay DIR`: the run's row power against its
    budget, and a note for the brake engagements no clock change shows."""
    trace = tmp_path / "t.csv"
    _trace(1500, 14.0).assign(priority=lambda f: np.where(np.arange(len(f)) % 2 == 0, "high", "low")).to_csv(trace, index=False)
    toml = tmp_path / "row.toml"
    toml.write_text(ROW_TOML)
    run = tmp_path / "polca run"
    done = run_cli("replay", "run", "--trace", trace, "--models", demo_output[0] / "models_sim_llama3-8b.json",
                   "--cluster", toml, "--policy", "polca", "-o", run)
    assert done.exit_code == 0, done.output
    output = tmp_path / "r.html"
    assert run_cli("report", "replay", run, "-o", output).exit_code == 0
    page = output.read_text()
    captions = [_text(c) for c in re.findall(r"<figcaption>(.*?)</figcaption>", page, re.S)]
    assert any(c.startswith("[SIMULATED] polca run: POLCA row power against the budget (1,800 W)") for c in captions), captions
    policy = json.loads((run / "summary.json").read_text())["policy"]
    if policy["brake_events"]:
        assert f"engaged the power brake {policy['brake_events']:,} time(s)" in html.unescape(page)


def test_demo_report_polca_section_has_its_timeline_when_the_demo_writes_one(demo_output):
    """The demo's POLCA section draws the row power against the budget once the demo writes the
    search's timeline beside its CSV; until then it says where the timeline would be."""
    out = demo_output[0]
    page = (out / "report.html").read_text()
    (heading, body), = [(h, b) for h, b in sections(page) if h.startswith("POLCA")]
    if not (out / "polca_search_timeline.parquet").exists():
        assert "No row power timeline beside this search (polca_search_timeline.parquet)" in _text(body)
        pytest.skip("the demo does not write polca_search_timeline.parquet (toolkit/demo.py: write_search_timeline)")
    captions = [_text(c) for c in re.findall(r"<figcaption>(.*?)</figcaption>", body, re.S)]
    assert any(c.startswith("[SIMULATED] Row power against the budget (") for c in captions), captions
    assert "Controller events in the replays shown" in body


def test_parity_plots_label_ticks_with_plain_numbers():
    """Predicted against measured: power on linear axes in W, latency on log axes, both labelled
    with plain numbers (200, 1,500, 0.01), never "2x10^2" or an offset."""
    from reports import figures

    rng = np.random.default_rng(0)
    power = pd.DataFrame({"mean_power_w": rng.uniform(150, 700, 200), "phase": "decode"})
    latency = pd.DataFrame({"latency_s": np.geomspace(0.004, 6, 200), "phase": "prefill"})
    for frame, target in ((power, "mean_power_w"), (latency, "latency_s")):
        fig = figures.fit_diagnostics(frame, frame[target].to_numpy() * rng.uniform(0.9, 1.1, len(frame)), target)
        ax = fig.axes[0]
        fig.canvas.draw()
        labels = [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]
        assert len(labels) >= 6 and all(re.fullmatch(r"-?[\d,]+(\.\d+)?k?", label) for label in labels), labels
        assert not ax.xaxis.get_offset_text().get_text() and not ax.yaxis.get_offset_text().get_text()
        assert ax.get_xscale() == ("log" if target == "latency_s" else "linear")
        assert ax.get_xlabel() == ("measured latency (s)" if target == "latency_s" else "measured mean power (W)")
