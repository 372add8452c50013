"""What the commands print for people and for programs: progress only on a terminal and only on
stderr, a closing line saying what was written where, numbers without scientific notation or NaN,
sign words for savings, [SIMULATED] marks, strict JSON on stdout for every --json.

Content and format only: nothing here measures time."""

import io
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from tests.test_replay import linear_bundle

ROOT = Path(__file__).resolve().parents[1]
SCIENTIFIC = re.compile(r"\d[eE][+-]?\d")


def strict_json(text: str):
    """``text`` parsed as JSON that has no NaN or Infinity."""
    def refuse(token):
        raise AssertionError(f"non-standard JSON constant {token} in {text[:200]!r}")
    return json.loads(text, parse_constant=refuse)


def cli(*args):
    """The CLI in-process, stdout and stderr apart (click >= 8.2 keeps both: ``result.output`` is
    them interleaved, ``result.stdout`` stdout alone)."""
    from toolkit.cli import cli as root

    return CliRunner().invoke(root, [str(a) for a in args], catch_exceptions=False)


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def bars_on(monkeypatch):
    """Progress bars drawn as on a terminal even though CliRunner's stderr is not one."""
    import toolkit.console as root

    real = root._bar_class()

    class Forced(real):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = False
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(root, "_bar_class", lambda: Forced)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small synthetic trace and a simulated bundle with known coefficients."""
    root = tmp_path_factory.mktemp("cli_output")
    trace = root / "t.parquet"
    assert cli("trace", "synth", "--duration", "60", "--seed", "2", "-o", trace).exit_code == 0
    return {"trace": trace, "models": linear_bundle().save(root / "m.json"), "root": root}


# ----------------------------------------------------------------------------- the helpers


def test_human_numbers_have_no_scientific_notation_and_dash_for_unknown():
    from toolkit.console import human_number

    assert human_number(18260.4) == "18,260" and human_number(-7.427e-14) == "0"
    assert human_number(None) == human_number(float("nan")) == human_number(np.float64("nan")) == "-"
    assert human_number(0.014297) == "0.0143" and human_number(11.3176) == "11.32" and human_number(2.0) == "2"
    assert human_number(np.int64(1000000)) == "1,000,000" and human_number(np.bool_(True)) == "yes"
    for value in (1e-5, 3.3e-9, 1e15, 123456789.123, -0.000123):
        assert not SCIENTIFIC.search(human_number(value)), value


def test_human_table_aligns_and_never_prints_nan():
    from toolkit.console import human_table

    frame = pd.DataFrame({"config": ["a", "long name"], "ttft_s": [11.31, np.nan], "gpus": [1, 16],
                          "tokens": [1.826e4, 2e-14], "dropped": [False, True]})
    text = human_table(frame)
    assert "NaN" not in text and "nan" not in text and not SCIENTIFIC.search(text)
    lines = text.splitlines()
    assert lines[0].split() == ["config", "ttft_s", "gpus", "tokens", "dropped"]
    assert lines[1].split() == ["a", "11.31", "1", "18,260", "no"] and lines[2].split()[-3:] == ["16", "0", "yes"]
    assert len({len(line) for line in lines}) == 1  # aligned columns


def test_saving_words_say_the_sign():
    from replay.runner import saving

    assert saving(0.302, "energy") == "saves 30.2 % energy"
    assert saving(-0.448, "money") == "costs 44.8 % more money"
    assert saving(float("nan"), "carbon") == "carbon n/a" and saving(None, "cost") == "cost n/a"


def test_replay_summary_shows_unknowns_as_dashes():
    from replay.runner import format_summary

    summary = {"requests": 3, "finished": 0, "dropped": 3, "instances": 1, "gpus": 1, "duration_s": 10.0,
               "iterations": 0, "ttft_p50_s": float("nan"), "ttft_p99_s": None, "tbt_p50_s": float("nan"),
               "tbt_p99_s": float("nan"), "e2e_p50_s": None, "e2e_p99_s": None, "slo_attainment": float("nan"),
               "energy_kwh": None, "gpu_hours": 0.0028, "cost_usd": 0.007, "replay_wall_s": 0.01,
               "simulated_models": True}
    text = format_summary(summary)
    assert "[SIMULATED models]" in text and "TTFT p50 - ms" in text and "SLO attainment - %" in text
    assert "nan" not in text.lower() and "None" not in text and not SCIENTIFIC.search(text)


def test_progress_bar_is_silent_off_a_terminal_and_draws_on_one():
    from toolkit.console import StageProgress, progress_bar

    quiet = io.StringIO()
    with progress_bar(10, "work", file=quiet) as bar:
        bar.update(10)
    assert bar.disable and quiet.getvalue() == ""
    screen = Terminal()
    with progress_bar(None, "work", tick_s=0.01, file=screen) as bar:
        bar.update(3)
        assert not bar.disable and bar._ticker is not None
    assert "work" in screen.getvalue() and bar._ticker is None  # drawn; the redraw thread ended with the bar
    # (a stage reporter with CliRunner-like stderr: nothing drawn, nothing raised)
    with StageProgress() as stages:
        stages("reading")
        stages("replay", 0.0)
        stages("replay", 0.5)
        stages("writing")


def test_closing_line_stays_off_json_stdout(capsys):
    from toolkit.console import closing_line

    closing_line("wrote x to y")
    closing_line("wrote z to w", as_json=True)  # stderr is not a terminal here: not printed at all
    out, err = capsys.readouterr()
    assert out == "wrote x to y\n" and err == ""


# ---------------------------------------------------------------------------- replay


def test_replay_run_says_what_it_wrote_or_that_it_wrote_nothing(files, tmp_path):
    plain = cli("replay", "run", "--trace", files["trace"], "--models", files["models"])
    assert plain.exit_code == 0, plain.output
    last = plain.stdout.strip().splitlines()[-1]
    assert last.startswith("nothing written (no -o/--out given)") and "-o DIR" in last
    assert "[SIMULATED models] [synthetic trace]" in plain.stdout and "E2E p50" in plain.stdout and "p99" in plain.stdout
    assert not SCIENTIFIC.search(plain.stdout)
    out = tmp_path / "run"
    kept = cli("replay", "run", "--trace", files["trace"], "--models", files["models"], "-o", out)
    assert kept.stdout.strip().splitlines()[-1].startswith(f"wrote {out}/ (requests.parquet, power_timeline.parquet, "
                                                           "summary.json")
    as_json = cli("replay", "run", "--trace", files["trace"], "--models", files["models"], "--json")
    summary = strict_json(as_json.stdout)
    assert summary["simulated_models"] is True and "nothing written" in as_json.stderr


def test_progress_goes_to_stderr_and_json_stdout_stays_json(files, bars_on):
    result = cli("replay", "run", "--trace", files["trace"], "--models", files["models"], "--json")
    assert result.exit_code == 0, result.output
    assert strict_json(result.stdout)["requests"] > 0
    assert "replay" in result.stderr and "%" in result.stderr  # the bar, drawn on stderr
    assert "|" not in result.stdout and "\r" not in result.stdout


def test_replay_run_progress_reports_every_stage(files):
    from replay.runner import run_replay

    seen = []
    run_replay(files["trace"], files["models"], None, None, progress=lambda stage, fraction=None: seen.append((stage, fraction)))
    stages = [s for s, _ in seen]
    assert stages[0] == "reading the trace and models" and "replay" in stages
    fractions = [f for s, f in seen if s == "replay"]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)


@pytest.fixture(scope="module")
def dask_address():
    """One in-process dask cluster for the sweep tests (no worker processes to start)."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0")
    yield cluster.scheduler_address
    cluster.close()


def test_replay_sweep_is_labelled_has_json_and_a_closing_line(files, tmp_path, dask_address):
    args = ["replay", "sweep", "--trace", files["trace"], "--models", files["models"],
            "--vary", "pool.instances=1,2", "--scheduler", dask_address]
    csv = tmp_path / "sweep.csv"
    human = cli(*args, "-o", csv)
    assert human.exit_code == 0, human.output
    lines = human.stdout.strip().splitlines()
    assert lines[0].startswith("sweep [SIMULATED models] [synthetic trace]: 2 point(s)")
    assert lines[1].split()[:3] == ["pool.instances", "finished", "dropped"]
    assert lines[-1] == f"wrote the sweep (2 rows) to {csv}" and csv.exists()
    assert not SCIENTIFIC.search(human.stdout) and "NaN" not in human.stdout
    rows = strict_json(cli(*args, "--json").stdout)
    assert [r["pool.instances"] for r in rows] == [1, 2] and all("energy_kwh" in r for r in rows)


def test_sweep_core_reports_points_as_they_finish(files, dask_address):
    from replay.config import ClusterConfig
    from replay.runner import sweep
    from replay.sweep import parse_vary

    seen = []
    table = sweep(files["trace"], files["models"], ClusterConfig(), parse_vary(["pool.instances=1,2"]), dask_address,
                  progress=lambda done, total: seen.append((done, total)))
    assert len(table) == 2 and seen == [(0, 2), (1, 2), (2, 2)]


def test_longctx_prints_dashes_not_nan_and_no_scientific_notation(files, tmp_path):
    args = ["replay", "longctx", "--models", files["models"], "--contexts", "65536,1000000", "--tp", "1", "--pp", "1",
            "--kvp", "1"]
    human = cli(*args)
    assert human.exit_code == 0, human.output
    assert "NaN" not in human.stdout and "nan" not in human.stdout and not SCIENTIFIC.search(human.stdout)
    dropped = next(line for line in human.stdout.splitlines() if line.startswith("adaptive") and "1,000,000" in line)
    assert " - " in dropped and dropped.split()[-1] == "-"
    assert "[SIMULATED models]" in human.stdout
    assert human.stdout.strip().splitlines()[-1].startswith("nothing written (no -o given)")
    csv = tmp_path / "l.csv"
    kept = cli(*args, "-o", csv, "--json")
    rows = strict_json(kept.stdout)
    assert len(rows) == 2 and rows[1]["ttft_s"] is None and csv.exists()


# ----------------------------------------------------------------------- characterize


def test_characterize_fit_show_predict_json(files, tmp_path):
    profile = tmp_path / "p.parquet"
    assert cli("collect", "profile", "--backend", "sim", "--sweep", "quick", "-o", profile).exit_code == 0
    models = tmp_path / "m.json"
    fitted = cli("characterize", "fit", profile, "-o", models, "--trees", "5", "--phase", "decode", "--json")
    assert fitted.exit_code == 0, fitted.output
    doc = strict_json(fitted.stdout)
    assert doc["bundle"] == str(models) and doc["simulated"] is True and doc["label"] == "[SIMULATED]"
    assert {m["phase"] for m in doc["models"]} == {"decode"} and "latency_s/decode" in doc["validation"]
    human = cli("characterize", "fit", profile, "-o", models, "--trees", "5", "--phase", "decode")
    assert human.stdout.strip().splitlines()[-1] == f"wrote {models}" and "[SIMULATED data]" in human.stdout
    shown = strict_json(cli("characterize", "show", models, "--json").stdout)
    assert [m["target"] for m in shown["models"]] == [m["target"] for m in doc["models"]]
    point = ["--phase", "decode", "-b", "16", "-k", "1024", "--tp", "1"]
    predicted = strict_json(cli("characterize", "predict", models, *point, "--json").stdout)
    assert predicted["latency_s"] > 0 and predicted["energy_j"] == pytest.approx(predicted["latency_s"] * predicted["power_w"])
    assert predicted["simulated"] is True and predicted["point"]["batch_size"] == 16
    text = cli("characterize", "predict", models, *point).stdout
    assert "[SIMULATED]" in text and not SCIENTIFIC.search(text)


def test_predicted_energy_is_never_in_scientific_notation():
    from characterize.cli import _energy

    assert _energy(18260.4) == "18260 J" and _energy(0.0123456) == "0.01235 J" and _energy(3e-12) == "0 J"


# ---------------------------------------------------------------------------- collect


def _phase_script():
    return ("import time\nfrom collectors.telemetry.markers import phase\n"
            "with phase('prefill'):\n    time.sleep(0.3)\nwith phase('decode'):\n    time.sleep(0.2)\n")


def test_collect_run_prints_each_phase_and_gpu_with_its_method(tmp_path):
    out = tmp_path / "r"
    result = cli("collect", "run", "--backend", "sim", "--sim-gpus", "2", "--period", "0.02", "-o", out, "--",
                 sys.executable, "-c", _phase_script())
    assert result.exit_code == 0, result.output
    text = result.stdout
    prefill = text.splitlines().index(next(line for line in text.splitlines() if line.startswith("phase prefill [SIMULATED]")))
    block = text.splitlines()[prefill:prefill + 3]
    assert "J (simulated energy counter), mean" in block[0]
    assert block[1].startswith("  GPU 0: ") and block[2].startswith("  GPU 1: ")
    assert all("(simulated energy counter)" in line for line in block[1:])
    assert f"to {out}" in result.stderr.strip().splitlines()[-1]
    doc = strict_json(cli("collect", "summary", "--json", out).stdout)
    per_gpu = [r for r in doc["phase_gpus"] if r["window"] == "prefill"]
    assert [r["gpu_index"] for r in per_gpu] == [0, 1]
    assert all(r["energy_method"] == "counter" and r["energy_method_words"] == "simulated energy counter"
               and r["energy_j"] > 0 for r in per_gpu)
    assert {p["window"] for p in doc["phases"]} == {"command", "prefill", "decode"}
    as_json = cli("collect", "run", "--backend", "sim", "--period", "0.02", "--json", "-o", tmp_path / "j", "--",
                  sys.executable, "-c", "pass")
    assert as_json.exit_code == 0 and strict_json(as_json.stdout)["phases"][0]["window"] == "command"


def test_unmeasured_phase_energy_is_a_dash_never_zero():
    from collectors.cli import _format_phases, _phase_gpus

    windows = pd.DataFrame({"run_id": "r", "window": "prefill", "gpu_index": [0, 1], "backend": "nvml",
                            "start_wall_s": 0.0, "end_wall_s": 1.0, "duration_s": 1.0, "energy_j": [120.0, np.nan],
                            "energy_method": ["counter", None], "mean_power_w": [120.0, np.nan],
                            "peak_power_w": [130.0, np.nan], "n_samples": 10, "attrs_json": None})
    text = _format_phases(windows)
    assert text.splitlines()[0].startswith("phase prefill: 1 window(s)") and "energy - (1 GPU-window(s) unmeasured)" in text
    assert "  GPU 0: 120.0 J (NVML energy counter), mean 120.0 W" in text
    assert "  GPU 1: - (1 of 1 window(s) unmeasured)" in text and " 0.0 J" not in text
    rows = _phase_gpus(windows)
    assert rows[1]["energy_j"] is None and rows[1]["energy_method_words"] is None
    assert rows[0]["energy_method_words"] == "NVML energy counter"


def test_collect_sample_json_is_the_summary(tmp_path):
    result = cli("collect", "sample", "--backend", "sim", "--sim-gpus", "2", "--period", "0.05", "--duration", "0.3",
                 "--json", "-o", tmp_path / "s")
    assert result.exit_code == 0, result.output
    doc = strict_json(result.stdout)
    assert [g["backend"] for g in doc["gpus"]] == ["sim", "sim"] and doc["phases"] == [] and doc["phase_gpus"] == []


# ----------------------------------------------------------------------------- traces


def test_trace_synth_json_and_closing_line(tmp_path):
    out = tmp_path / "s.parquet"
    result = cli("trace", "synth", "--duration", "60", "--seed", "1", "-o", out, "--json")
    doc = strict_json(result.stdout)
    assert doc["label"] == "synthetic" and doc["source"] == str(out) and doc["requests"] > 0
    human = cli("trace", "synth", "--duration", "60", "--seed", "1", "-o", out)
    assert human.stdout.strip().splitlines()[-1] == f"wrote {doc['requests']:,} requests to {out}"


def test_chunked_statistics_count_blocks_on_the_bar():
    import dask

    from toolkit.console import progress_bar
    from toolkit.traces.cli import _dask_progress

    screen = Terminal()
    with progress_bar(None, "blocks", file=screen) as bar, _dask_progress(bar):
        assert dask.compute(*[dask.delayed(math.sqrt)(i) for i in range(5)], scheduler="threads")[4] == 2.0
        counted = bar.n
    assert counted >= 5
    quiet = progress_bar(None, "blocks", file=io.StringIO())
    with _dask_progress(quiet):  # off a terminal: no callback at all
        dask.compute(dask.delayed(abs)(-1), scheduler="threads")
    assert quiet.n == 0


def test_trace_convert_streaming_counts_and_closes(tmp_path):
    src = tmp_path / "s.parquet"
    cli("trace", "synth", "--duration", "120", "-o", src)
    csv = tmp_path / "s.csv"
    cli("trace", "convert", src, csv)
    out = tmp_path / "c.parquet"
    result = cli("trace", "convert", "--mode", "chunked", csv, out)
    assert result.exit_code == 0 and result.stdout.strip().splitlines()[-1].startswith("wrote ")
    assert result.stdout.strip().endswith(f"requests to {out}")


# --------------------------------------------------------------------------- structure


def test_demo_and_reports_call_cores_never_another_command_module():
    """The demo and the report builders import the cores (replay.runner, characterize.fitting, ...),
    not the modules that parse a command's options (the root command module included: progress
    bars and the closing line are in toolkit.console)."""
    import ast

    commands = {"replay.cli", "characterize.cli", "collectors.cli", "toolkit.traces.cli", "reports.cli", "toolkit.cli"}
    sources = [ROOT / "toolkit" / "demo.py"] + [p for p in (ROOT / "reports").glob("*.py") if p.name != "cli.py"]
    for path in sources:
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:  # relative: resolve against the file's package
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    module = f"{base}.{module}" if module else base
                names = {a.name for a in node.names}
                assert module not in commands and not (names & {"cli"}), f"{path.name} imports {module}: {names}"
            elif isinstance(node, ast.Import):
                assert not {a.name for a in node.names} & commands, f"{path.name}: {[a.name for a in node.names]}"
    assert "replay.runner" in (ROOT / "toolkit" / "demo.py").read_text()
