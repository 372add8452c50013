"""Reports: escaping, self-containment, and a real headless-Chromium render."""

import html
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reports.html import Report

HOSTILE = '<script>alert("x")</script>&"\''


def _chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian chromium (.ci/run does)")
        pytest.skip("chromium not installed")
    return path


WIDTH = 1400  # the window a fleet engineer reads the report in

# Injected into a copy of the page: after load, every element that is wider inside than its box
# (scrollWidth > clientWidth) and does not clip is a sideways scroll (overflow auto/scroll) or
# spills out of its box (overflow visible); so is a document wider than the window.  The
# offenders are written into the DOM, which --dump-dom returns.
LAYOUT_SCRIPT = """
window.addEventListener('load', function () {
  var out = [], els = document.body.getElementsByTagName('*');
  for (var i = 0; i < els.length; i++) {
    var el = els[i], cs = getComputedStyle(el);
    if (cs.display === 'inline' || cs.display === 'none' || el.tagName === 'SCRIPT') continue;
    if (cs.overflowX === 'hidden' || cs.overflowX === 'clip') continue;
    if (el.scrollWidth > el.clientWidth + 1) {
      out.push(el.tagName.toLowerCase() + (el.className ? '.' + el.className : '') + ' ' + el.scrollWidth + '>' +
               el.clientWidth + ' overflow-x:' + cs.overflowX + ' "' + (el.textContent || '').trim().slice(0, 80) + '"');
    }
  }
  var d = document.documentElement;
  if (d.scrollWidth > d.clientWidth) out.push('document ' + d.scrollWidth + '>' + d.clientWidth);
  var pre = document.createElement('pre');
  pre.id = 'layout-check';
  pre.setAttribute('data-viewport', String(d.clientWidth));
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
"""


def _chromium_cmd(profile, *args):
    return [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
            f"--user-data-dir={profile}", f"--window-size={WIDTH},900", *args]


def sideways_scrolling(html_path, tmp_path):
    """(viewport width, [elements that scroll or spill sideways]) of ``html_path`` in Chromium at
    WIDTH px: the page is copied with LAYOUT_SCRIPT added and its DOM dumped after load."""
    import json

    page = tmp_path / "layout_check.html"
    page.write_text(html_path.read_text().replace("</body>", f"<script>{LAYOUT_SCRIPT}</script></body>"))
    dom, console = render_in_chromium(page)
    assert console == [], console
    found = re.search(r'<pre id="layout-check" data-viewport="(\d+)">(.*?)</pre>', dom, re.S)
    assert found, "the layout check did not run"
    return int(found.group(1)), json.loads(html.unescape(found.group(2)))


def screenshot(html_path, png_path, height=20000):
    """A screenshot of ``html_path`` at WIDTH px wide, ``height`` px tall (for people to look at)."""
    profile = tempfile.mkdtemp()
    try:
        subprocess.run(_chromium_cmd(profile, "--virtual-time-budget=5000", f"--window-size={WIDTH},{height}",
                                     f"--screenshot={png_path}", html_path.as_uri()),
                       capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return png_path


def render_in_chromium(html_path):
    """(DOM after load, console lines) from headless Chromium, in a WIDTH px wide window."""
    profile = tempfile.mkdtemp()
    cmd = _chromium_cmd(profile, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
                        "--dump-dom", html_path.as_uri())
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, console


def hostile_report():
    import matplotlib.pyplot as plt

    report = Report(HOSTILE, simulated=True, subtitle=HOSTILE)
    report.heading(HOSTILE)
    report.paragraph(HOSTILE)
    report.table(pd.DataFrame({HOSTILE: [HOSTILE, None], "x": [1.5, np.nan]}), caption=HOSTILE)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    report.figure(fig, HOSTILE)
    return report


def test_every_user_string_is_escaped():
    html = hostile_report().render()
    assert "alert(" not in html.replace("alert(&quot;", "")  # only the escaped form remains
    assert '<script>alert("x")</script>' not in html
    assert html.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") >= 6
    assert "&ndash;" in html  # unknown values shown as unknown, not 0
    assert "SIMULATED" in html


def test_report_is_self_contained():
    html = hostile_report().render()
    assert not re.search(r'(src|href)="(?!data:)', html)
    assert "data:image/png;base64," in html


def test_browser_test_detects_console_errors(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>throw new Error('boom')</script></body></html>")
    _, console = render_in_chromium(bad)
    assert any("boom" in line for line in console)


def test_demo_report_renders_in_chromium(demo_output):
    report = demo_output[0] / "report.html"
    text = report.read_text()
    n_figures = text.count("<img ")
    assert n_figures >= 7
    dom, console = render_in_chromium(report)
    assert f"[figures ok: {n_figures}/{n_figures}]" in dom  # every figure decoded
    assert console == []
    assert "SIMULATED" in dom


def test_browser_layout_check_catches_sideways_scrolling(tmp_path):
    """The check fails a page with a wide table in a scrolling box and a long unbreakable string."""
    bad = tmp_path / "bad.html"
    wide = "<tr>" + "".join(f"<td>/a/very/long/absolute/path/column_{i}.parquet</td>" for i in range(12)) + "</tr>"
    bad.write_text('<!DOCTYPE html><html><body style="max-width:1100px;margin:auto">'
                   f'<div style="overflow-x:auto"><table>{wide}</table></div>'
                   f'<p>{"x" * 400}</p></body></html>')
    viewport, offenders = sideways_scrolling(bad, tmp_path)
    assert 1300 <= viewport <= WIDTH
    assert any(o.startswith("div ") and "overflow-x:auto" in o for o in offenders), offenders
    assert any(o.startswith("p ") for o in offenders), offenders
    assert any(o.startswith("document ") for o in offenders), offenders


def _sections(dom):
    """(heading text, section HTML) of every <section> of a report's DOM."""
    return [(re.sub(r"<[^>]+>", "", m.group(1)), m.group(0))
            for m in re.finditer(r"<section[^>]*><h2>(.*?)</h2>.*?</section>", dom, re.S)]


def test_demo_report_fits_1400px_and_marks_simulated(demo_output, tmp_path):
    """The demo report (everything in it simulated) in Chromium at 1400 px: nothing scrolls sideways,
    every section and every figure is marked [SIMULATED], synthetic traces are marked, unknowns
    are dashes, and no absolute path of the machine appears."""
    out = demo_output[0]
    report = out / "report.html"
    viewport, offenders = sideways_scrolling(report, tmp_path)
    assert 1300 <= viewport <= WIDTH
    assert offenders == []

    dom, _ = render_in_chromium(report)
    sections = _sections(dom)
    assert len(sections) >= 6  # collection, models, two replays, POLCA, Mnemosyne
    for heading, body in sections:
        assert "[SIMULATED]" in heading, heading
        for caption in re.findall(r"<figcaption>(.*?)</figcaption>", body, re.S):
            assert "[SIMULATED]" in caption, (heading, caption)
    n_figures = dom.count("<img ")
    assert sum(s[1].count("<img ") for s in sections) == n_figures  # no figure outside a section
    replays = [body for heading, body in sections if "replay" in heading.lower() or "DynamoLLM" in heading]
    assert replays and all("[synthetic trace]" in body for body in replays)

    cells = re.findall(r"<td[^>]*>(.*?)</td>", dom, re.S)
    assert not [c for c in cells if c.strip().lower() in ("nan", "none", "null", "true", "false")]
    assert "–" in cells  # unknowns are dashes (e.g. no chunk fits the SLO at 1M prefix)

    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", report.read_text())
    for absolute in {str(out), str(out.resolve()), str(Path(__file__).resolve().parents[1]), str(Path.home())}:
        assert absolute not in text, absolute
    assert not re.search(r"(?<![\w.])/(?:tmp|home|work|root|Users|var|mnt|opt|srv)/", text)

    png = screenshot(report, tmp_path / "report_1400.png")
    assert png.exists() and png.stat().st_size > 10_000
    if os.environ.get("WATTLAS_REPORT_SCREENSHOT"):  # keep it to look at
        shutil.copy(png, os.environ["WATTLAS_REPORT_SCREENSHOT"])


def test_simulated_figures_carry_the_mark_in_the_image():
    import matplotlib.pyplot as plt

    report = Report("t")
    report.section("measured", simulated=False)
    fig, ax = plt.subplots()
    report.figure(fig, "real")
    assert not any("[SIMULATED]" in t.get_text() for t in fig.texts)
    report.section("model", simulated=True)
    fig, ax = plt.subplots()
    report.figure(fig, "sim")
    assert any(t.get_text() == "[SIMULATED]" for t in fig.texts)
    page = report.render()
    assert page.count("<section") == 2 and page.count("</section>") == 2
    assert "<figcaption>[SIMULATED] sim</figcaption>" in page and "<figcaption>real</figcaption>" in page


def test_table_cells_for_people():
    report = Report("t", base=Path("/srv/out"))
    report.table(pd.DataFrame({"a": [True, False, None], "b": [np.nan, "nan", "None"], "c": [np.int64(1234), 0, 2.5]}).astype(object))
    page = report.render()
    assert '<td class="n">yes</td>' in page and '<td class="n">no</td>' in page
    assert page.count('<td class="n">&ndash;</td>') == 4  # None, NaN, "nan", "None": a dash, never 0 or the word
    assert '<td class="n">1,234</td>' in page and '<td class="n">0</td>' in page
    assert report.display_path("/srv/out/run1/summary.json") == "run1/summary.json"
    assert report.display_path("/elsewhere/deep/trace.parquet") == "trace.parquet"


TEX_LIKE = r"phase $\frac{$"  # two dollars: matplotlib parsed it as mathtext and raised


def test_tex_like_user_labels_reach_figures_literally(run_cli, tmp_path):
    """Window names (collection) and run directory names (replay legends) are shown as typed."""
    import time

    from collectors.telemetry.sampler import Sampler
    from collectors.telemetry.sim_source import SimSource

    from .test_replay import linear_bundle, trace

    source = SimSource(gpus=1, seed=0)
    with Sampler(source, tmp_path / "col", period_s=0.05, flush_s=0.2) as sampler:
        for name in (TEX_LIKE, "decode"):
            with sampler.window(name):
                time.sleep(0.3)
    result = run_cli("report", "collection", tmp_path / "col", "-o", tmp_path / "col.html")
    assert result.exit_code == 0, result.output
    assert TEX_LIKE in (tmp_path / "col.html").read_text()  # (HTML-escaping leaves these characters alone)

    bundle = linear_bundle().save(tmp_path / "m.json")
    csv = tmp_path / "t.csv"
    trace([0.0, 1.0, 2.0], [100, 200, 300], [5, 5, 5]).to_csv(csv, index=False)
    run = tmp_path / f"run {TEX_LIKE}"
    assert run_cli("replay", "run", "--trace", csv, "--models", bundle, "-o", run).exit_code == 0
    result = run_cli("report", "replay", run, "-o", tmp_path / "rep.html")
    assert result.exit_code == 0, result.output


def test_power_curve_from_runs_equals_rolling_mean_of_bins():
    """The report's smoothed power over time, computed from runs of equal power, is the curve the
    per-bin rolling mean drew: same values at every bin (idle stretches drawn as straight lines)."""
    from reports.figures import _smoothed_cluster_power

    rng = np.random.default_rng(1)
    bin_s = 0.5
    busy = rng.uniform(200, 900, 2000)
    per_bin = np.r_[busy[:700], np.full(30_000, 160.0), busy[700:], np.full(5, 0.0), np.full(40_000, 160.0), busy[:50]]
    change = np.r_[True, per_bin[1:] != per_bin[:-1]]
    starts = np.flatnonzero(change)
    runs = pd.DataFrame({"t_s": starts * bin_s, "duration_s": np.diff(np.r_[starts, len(per_bin)]) * bin_s,
                         "power_w": per_bin[starts]})
    t_s, power_w = _smoothed_cluster_power(runs)
    assert len(t_s) < 0.2 * len(per_bin)
    width = len(per_bin) // 600
    expected = pd.Series(per_bin).rolling(width, min_periods=1).mean().to_numpy()
    assert np.allclose(np.interp(np.arange(len(per_bin)) * bin_s, t_s, power_w), expected, rtol=1e-9)
