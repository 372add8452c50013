"""collect import: an nvidia-smi CSV log becomes telemetry segments that summary and reports read."""

import pandas as pd
import pytest

from characterize.model_io import ModelBundle
from collectors.telemetry.importers import read_nvidia_smi
from collectors.telemetry.summary import load_telemetry, summarize_telemetry
from toolkit.errors import InputError

HEADER = ("timestamp, index, uuid, name, power.draw [W], power.draw.instant [W], clocks.sm [MHz], temperature.gpu, "
          "utilization.gpu [%], memory.used [MiB], pstate, clocks_event_reasons.active")


def log(rows: int = 5, step_ms: int = 250) -> str:
    lines = [HEADER]
    for i in range(rows):
        t = f"2024/05/12 10:00:{(i * step_ms) // 1000:02d}.{(i * step_ms) % 1000:03d}"
        lines.append(f"{t}, 0, GPU-aaaa, NVIDIA H100 80GB HBM3, 300.00 W, 310.00 W, 1980 MHz, 45, 87 %, 60000 MiB, P0, "
                     "0x0000000000000000")
        lines.append(f"{t}, 1, GPU-bbbb, NVIDIA H100 80GB HBM3, 100.00 W, [N/A], 1410 MHz, 40, 0 %, 1000 MiB, P0, "
                     "0x0000000000000004")
    return "\n".join(lines) + "\n"


def test_nvidia_smi_log_imports_and_summarises_with_integrated_energy(run_cli, tmp_path):
    path = tmp_path / "smi.csv"
    path.write_text(log())
    result = run_cli("collect", "import", "--format", "nvidia-smi", path, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    frame = load_telemetry(tmp_path / "out")
    assert len(frame) == 10 and set(frame["backend"]) == {"nvidia-smi"}
    gpu1 = frame[frame["gpu_index"] == 1]
    assert gpu1["power_instant_w"].isna().all()  # [N/A]: null, never 0
    assert (gpu1["mem_used_bytes"] == 1000 * 2**20).all() and (gpu1["clocks_event_reasons"] == 4).all()
    summary = summarize_telemetry(frame).set_index("gpu_index")
    assert summary.loc[0, "energy_method"] == "integrated_power"
    assert summary.loc[0, "energy_j"] == pytest.approx(310.0 * 1.0)  # instant power where reported
    assert summary.loc[1, "energy_j"] == pytest.approx(100.0 * 1.0)  # else the averaged power
    assert summary.loc[1, "power_capped_share"] == 1.0 and summary.loc[0, "power_capped_share"] == 0.0


def test_nounits_logs_and_unknown_fields(tmp_path):
    path = tmp_path / "smi.csv"
    path.write_text("timestamp, index, power.draw, fan.speed\n2024/05/12 10:00:00.000, 0, 250.5, 30\n"
                    "2024/05/12 10:00:01.000, 0, 251.5, 31\n")
    table = read_nvidia_smi(path)
    assert table.column("power_avg_w").to_pylist() == [250.5, 251.5] and table.num_rows == 2


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("index, power.draw\n0, 1\n", "no 'timestamp' field"),
    (HEADER + "\n", "no samples"),
    (log(2).replace("300.00 W", "-3 W", 1), r"line 2: column power.draw \[W\]: .-3 W. is not a finite non-negative"),
    (log(2).replace("P0", "P99", 1), "line 2: column pstate"),
    (log(2).replace("2024/05/12 10:00:00.250", "yesterday", 1), "line 4: column timestamp"),
    (log(2).replace(", 1410 MHz", "", 1), "line 3: 11 fields where the header has 12"),
    (log(2).replace("10:00:00.000, 0,", "10:00:00.000, 99999,", 1), "line 2: column index"),
    ("\0" * 1000, "NUL bytes"),
])
def test_bad_logs_are_one_line(run_cli, tmp_path, content, message):
    path = tmp_path / "smi.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_nvidia_smi(path)
    result = run_cli("collect", "import", path, "-o", tmp_path / "out")
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith(f"Error: {path}")
    assert not (tmp_path / "out").exists()  # nothing half-imported


DCGM_LABELS = 'gpu="{g}",UUID="GPU-{g}",device="nvidia{g}",modelName="NVIDIA H100 80GB HBM3",Hostname="h1"'


def dcgm_scrapes(seconds: int = 3) -> str:
    """dcgm-exporter scrapes as a capture loop writes them: '# TIMESTAMP' then the exposition."""
    out = []
    for i in range(seconds + 1):
        out.append(f"# TIMESTAMP {1715500000 + i}.0")
        out.append("# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).\n# TYPE DCGM_FI_DEV_POWER_USAGE gauge")
        for g, watts in ((0, 300), (1, 100)):
            out.append(f"DCGM_FI_DEV_POWER_USAGE{{{DCGM_LABELS.format(g=g)}}} {watts}")
        out.append("# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot (in mJ).\n"
                   "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter")
        for g, watts in ((0, 300), (1, 100)):
            out.append(f"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{DCGM_LABELS.format(g=g)}}} {5_000_000 + watts * 1000 * i}")
        out.append(f'DCGM_FI_DEV_FB_USED{{{DCGM_LABELS.format(g=0)}}} 1024')
    return "\n".join(out) + "\n"


def vllm_scrapes(running: list[float]) -> str:
    out = []
    for i, n in enumerate(running):
        out.append(f"# TIMESTAMP {1715500000 + i}.0")
        out.append('vllm:num_requests_running{engine="0",model_name="llama"} %s' % n)
        out.append('vllm:num_requests_waiting{engine="0",model_name="llama"} 0')
        out.append('vllm:kv_cache_usage_perc{engine="0",model_name="llama"} 0.25')
    return "\n".join(out) + "\n"


def test_dcgm_scrapes_import_with_counter_energy(run_cli, tmp_path):
    path = tmp_path / "dcgm.prom"
    path.write_text(dcgm_scrapes(3))
    result = run_cli("collect", "import", "--format", "dcgm", path, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    frame = load_telemetry(tmp_path / "out")
    assert len(frame) == 8 and set(frame["host"]) == {"h1"}
    assert frame.loc[frame["gpu_index"] == 0, "mem_used_bytes"].eq(1024 * 2**20).all()
    summary = summarize_telemetry(frame).set_index("gpu_index")
    assert summary.loc[0, "energy_method"] == "counter" and summary.loc[0, "energy_j"] == pytest.approx(900.0)
    assert summary.loc[1, "energy_j"] == pytest.approx(300.0)


def test_vllm_load_beside_telemetry_gives_a_power_vs_load_table_that_fits(run_cli, tmp_path):
    (tmp_path / "dcgm.prom").write_text(dcgm_scrapes(3))
    (tmp_path / "vllm.prom").write_text(vllm_scrapes([2, 4, 8, 16]))
    out = tmp_path / "out"
    assert run_cli("collect", "import", "--format", "dcgm", tmp_path / "dcgm.prom", "-o", out).exit_code == 0
    result = run_cli("collect", "import", "--format", "vllm-metrics", tmp_path / "vllm.prom", "--host", "h1", "-o", out)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "power_vs_load.csv")
    assert table["batch_size"].tolist() == [3.0, 6.0, 12.0]  # mean running requests of each interval
    assert table["mean_power_w"].tolist() == [200.0, 200.0, 200.0] and table["gpus"].tolist() == [2, 2, 2]
    # three intervals are too few for a model: fit says so in one line instead of writing an empty bundle
    refused = run_cli("characterize", "fit", out / "power_vs_load.csv", "-o", tmp_path / "m.json")
    assert refused.exit_code != 0 and "no model could be fitted" in refused.output
    assert not (tmp_path / "m.json").exists()


def test_a_longer_power_vs_load_table_fits_a_power_model(run_cli, tmp_path):
    running = [1, 2, 4, 8, 16, 32, 64, 32, 16, 8, 4, 2, 1, 2, 4, 8]
    lines = []
    for i, n in enumerate(running):  # power per GPU saturating in the running requests, as a GPU's does
        lines.append(f"# TIMESTAMP {1715500000 + i}.0")
        watts = 100 + 400 * (1 - 2.718 ** (-n / 8))
        lines.append(f"DCGM_FI_DEV_POWER_USAGE{{{DCGM_LABELS.format(g=0)}}} {watts:.3f}")
    (tmp_path / "dcgm.prom").write_text("\n".join(lines) + "\n")
    (tmp_path / "vllm.prom").write_text(vllm_scrapes(running))
    out = tmp_path / "out"
    assert run_cli("collect", "import", "--format", "dcgm", tmp_path / "dcgm.prom", "-o", out).exit_code == 0
    assert run_cli("collect", "import", "--format", "vllm-metrics", tmp_path / "vllm.prom", "--host", "h1",
                   "-o", out).exit_code == 0
    result = run_cli("characterize", "fit", out / "power_vs_load.csv", "-o", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    bundle = ModelBundle.load(tmp_path / "m.json")
    assert bundle.find("mean_power_w", "serving") is not None and bundle.find("latency_s", "serving") is None


@pytest.mark.parametrize("content, message", [
    ('DCGM_FI_DEV_POWER_USAGE{gpu="0"} 300\n', "has no time"),
    ("# TIMESTAMP yesterday\n", "line 1: 'yesterday' is not Unix seconds"),
    ("# TIMESTAMP 1715500000\nDCGM_FI_DEV_POWER_USAGE{gpu=\"0\" 300\n", "line 2: not Prometheus text exposition"),
    ("# TIMESTAMP 1715500000\nDCGM_FI_DEV_POWER_USAGE{UUID=\"x\"} 300\n", "has no GPU index"),
    ("# TIMESTAMP 1715500000\nDCGM_FI_DEV_POWER_USAGE{gpu=\"0\"} -3\n", "out of range"),
    ("# TIMESTAMP 1715500000\nsomething_else 1\n", "holds no dcgm-exporter GPU metrics"),
    ("", "holds no Prometheus samples"),
])
def test_bad_scrapes_are_one_line(run_cli, tmp_path, content, message):
    path = tmp_path / "dcgm.prom"
    path.write_text(content)
    result = run_cli("collect", "import", "--format", "dcgm", path, "-o", tmp_path / "out")
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith(f"Error: {path}"), result.output
    assert message in lines[0]
