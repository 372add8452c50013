import json
import sys


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
    assert [r["backend"] for r in summary] == ["sim", "sim"]
    assert all(r["energy_method"] == "counter" and r["energy_j"] > 0 for r in summary)


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


def test_collect_run_missing_command_is_clean_error(run_cli, tmp_path):
    result = run_cli("collect", "run", "--backend", "sim", "-o", tmp_path / "x", "--", "/no/such/program")
    assert result.exit_code != 0 and "cannot run" in result.output


def test_daemon_writes_prometheus_textfile(run_cli, tmp_path):
    prom = tmp_path / "node" / "wattlas.prom"
    result = run_cli("collect", "daemon", "--backend", "sim", "--period", "0.05", "--flush", "0.1",
                     "--max-runtime", "0.5", "--prom-textfile", prom, "-o", tmp_path / "d")
    assert result.exit_code == 0, result.output
    text = prom.read_text()
    assert 'DCGM_FI_DEV_POWER_USAGE{gpu="0"' in text and 'backend="sim"' in text
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter" in text
    assert list((tmp_path / "d").glob("telemetry-*.parquet"))


def test_prometheus_omits_unsupported_and_escapes_labels():
    rows = [{"gpu_index": 0, "gpu_name": 'weird "name"\n', "host": "h", "backend": "nvml",
             "power_avg_w": 250.0, "temp_mem_c": None, "energy_j": 12.5}]
    text = format_textfile(rows)
    assert "DCGM_FI_DEV_MEMORY_TEMP" not in text
    assert 'modelName="weird \\"name\\"\\n"' in text
    assert "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION" in text and "12500" in text


def test_summary_of_empty_directory_is_one_line_error(run_cli, tmp_path):
    result = run_cli("collect", "summary", tmp_path)
    assert result.exit_code != 0 and "no telemetry" in result.output
