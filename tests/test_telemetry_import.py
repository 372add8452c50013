"""collect import: an nvidia-smi CSV log becomes telemetry segments that summary and reports read."""

import pytest

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
