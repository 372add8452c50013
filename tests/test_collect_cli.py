import json
import sys

import pytest

from prometheus_client.parser import text_string_to_metric_families

from collectors.telemetry.prometheus import format_textfile
from collectors.telemetry.segments import read_segments
from toolkit.schemas import PHASE_WINDOWS


def test_collect_sample_sim_is_labelled_simulated(run_cli, tmp_path):
    out = tmp_path / "c"
    result = run_cli("collect", "sample", "--backend", "sim", "--sim-gpus", "2", "--period", "0.05",
                     "--duration", "0.6", "-o", out)
    assert result.exit_code == 0, result.output
    assert result.output.count("[SIMULATED]") == 2
    summary = json.loads(run_cli("collect", "summary", "--json", out).output)
    assert [r["backend"] for r in summary["gpus"]] == ["sim", "sim"] and summary["phases"] == []
    assert all(r["energy_method"] == "counter" and r["energy_j"] > 0 for r in summary["gpus"])
    assert f"to {out}" in result.output.strip().splitlines()[-1]  # the closing line says where it wrote


def test_collect_run_measures_marked_phases(run_cli, tmp_path):
    out = tmp_path / "r"
    script = (
        "import time\n"
        "from collectors.telemetry.markers import phase\n"
        "with phase('prefill', tokens=8192):\n"
        "    time.sleep(0.3)\n"
        "with phase('decode', batch=16):\n"
        "    time.sleep(0.2)\n"
        "raise SystemExit(3)\n"
    )
    result = run_cli("collect", "run", "--backend", "sim", "--period", "0.02", "-o", out, "--", sys.executable, "-c", script)
    assert result.exit_code == 3  # the command's own exit status
    frame = read_segments(out, "windows", PHASE_WINDOWS.arrow()).to_pandas().set_index("window")
    assert set(frame.index) == {"command", "prefill", "decode"}
    assert frame.loc["prefill", "duration_s"] > 0.29
    assert json.loads(frame.loc["decode", "attrs_json"]) == {"batch": 16}
    assert (frame["energy_method"] == "counter").all()
    assert frame.loc["command", "energy_j"] > frame.loc["prefill", "energy_j"]
    assert "phase prefill [SIMULATED]: 1 window(s)" in result.output  # per-phase energy, printed
    phases = {p["window"]: p for p in json.loads(run_cli("collect", "summary", "--json", out).output)["phases"]}
    assert phases["prefill"]["energy_j"] == pytest.approx(frame.loc["prefill", "energy_j"])
    assert phases["decode"]["windows"] == 1 and phases["decode"]["energy_method"] == "counter"


def test_collect_run_missing_command_is_clean_error(run_cli, tmp_path):
    result = run_cli("collect", "run", "--backend", "sim", "-o", tmp_path / "x", "--", "/no/such/program")
    assert result.exit_code != 0 and "cannot run" in result.output


def test_daemon_writes_prometheus_textfile(run_cli, tmp_path):
    prom = tmp_path / "node" / "wattlas.prom"
    result = run_cli("collect", "daemon", "--backend", "sim", "--period", "0.05", "--flush", "0.1",
                     "--max-runtime", "0.5", "--prom-textfile", prom, "-o", tmp_path / "d")
    assert result.exit_code == 0, result.output
    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    (power,) = families["DCGM_FI_DEV_POWER_USAGE"].samples
    assert power.labels["gpu"] == "0" and power.labels["backend"] == "sim" and power.value > 0
    assert families["wattlas_gpu_energy_joules"].type == "counter"
    assert list((tmp_path / "d").glob("telemetry-*.parquet"))


def test_prometheus_omits_unsupported_and_escapes_labels():
    rows = [{"gpu_index": 0, "gpu_name": 'weird "name"\n', "host": "h", "backend": "nvml",
             "power_avg_w": 250.0, "temp_mem_c": None, "energy_j": 12.5}]
    families = {f.name: f for f in text_string_to_metric_families(format_textfile(rows))}
    assert "DCGM_FI_DEV_MEMORY_TEMP" not in families
    assert families["DCGM_FI_DEV_POWER_USAGE"].samples[0].labels["modelName"] == 'weird "name"\n'
    assert families["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"].samples[0].value == 12500


def test_daemon_serves_a_scrape_endpoint(tmp_path):
    """collect daemon --prom-port: a scrape parsed by prometheus_client's own parser."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:  # a free port on the loopback
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "collect", "daemon", "--backend", "sim", "--sim-gpus", "2",
                             "--period", "0.05", "--flush", "0.1", "--prom-port", str(port), "--prom-addr", "127.0.0.1",
                             "-o", str(tmp_path / "d")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120  # a bound for a slow machine, not a speed check
        families = {}
        while "DCGM_FI_DEV_POWER_USAGE" not in families and time.monotonic() < deadline:
            time.sleep(0.1)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                    families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
            except OSError:
                continue  # not listening yet
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, proc.stderr.read()
    power = families["DCGM_FI_DEV_POWER_USAGE"].samples
    assert sorted(s.labels["gpu"] for s in power) == ["0", "1"] and all(s.value > 0 for s in power)
    assert {s.labels["backend"] for s in power} == {"sim"}


def test_prometheus_port_in_use_is_one_line(run_cli, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_cli("collect", "daemon", "--backend", "sim", "--max-runtime", "0.2",
                         "--prom-port", taken.getsockname()[1], "-o", tmp_path)
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and "--prom-port" in lines[-1] and "cannot listen" in lines[-1]


def test_summary_of_empty_directory_is_one_line_error(run_cli, tmp_path):
    result = run_cli("collect", "summary", tmp_path)
    assert result.exit_code != 0 and "no telemetry" in result.output
