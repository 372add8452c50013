"""Reports: escaping, self-containment, and a real headless-Chromium render."""

import os
import re
import shutil
import subprocess
import tempfile

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


def render_in_chromium(html_path):
    """(DOM after load, console lines) from headless Chromium."""
    profile = tempfile.mkdtemp()
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
           "--dump-dom", html_path.as_uri()]
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
    html = report.read_text()
    n_figures = html.count("<img ")
    assert n_figures >= 7
    dom, console = render_in_chromium(report)
    assert f"[figures ok: {n_figures}/{n_figures}]" in dom
    assert console == []
    assert "SIMULATED" in dom


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
