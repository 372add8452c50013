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
