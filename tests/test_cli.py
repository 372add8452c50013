import json

from toolkit import __version__


def test_version_and_groups(run_cli):
    assert __version__ in run_cli("--version").output
    help_text = run_cli("--help").output
    for group in ("collect", "characterize", "replay", "report", "trace", "demo"):
        assert group in help_text


def test_synth_convert_stats_round_trip(run_cli, tmp_path):
    out = tmp_path / "s.parquet"
    assert run_cli("trace", "synth", "--duration", "120", "--seed", "3", "-o", out).exit_code == 0
    csv = tmp_path / "s.csv"
    assert run_cli("trace", "convert", out, csv).exit_code == 0
    a = json.loads(run_cli("trace", "stats", "--json", out).output)
    b = json.loads(run_cli("trace", "stats", "--json", csv).output)
    assert a["label"] == "synthetic"
    assert a["requests"] == b["requests"] > 100
    assert a["input_tokens"] == b["input_tokens"]


def test_chunked_convert_equals_in_memory(run_cli, tmp_path):
    import pyarrow.parquet as pq

    src = tmp_path / "s.parquet"
    run_cli("trace", "synth", "--duration", "300", "-o", src)
    csv = tmp_path / "s.csv"
    run_cli("trace", "convert", src, csv)
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    assert run_cli("trace", "convert", "--mode", "chunked", csv, a).exit_code == 0
    assert run_cli("trace", "convert", "--mode", "memory", csv, b).exit_code == 0
    assert pq.read_table(a).select(["request_id", "arrival_s", "input_tokens"]).equals(
        pq.read_table(b).select(["request_id", "arrival_s", "input_tokens"]))


def test_demo_runs_every_stage_and_labels_simulated(demo_output):
    out, output = demo_output
    assert (out / "trace_stats.json").exists()
    assert (out / "models_sim_llama3-8b.json").exists()
    summary = json.loads((out / "replay_synth_conv_1h" / "summary.json").read_text())
    assert summary["simulated_models"] is True and summary["synthetic_trace"] is True
    assert summary["finished"] == summary["requests"]
    assert "[SIMULATED" in output
    assert (out / "report.html").exists()
    # the simulated profile has memory-bound small chunks: the roofline candidate wins prefill
    assert "latency_s/prefill      roofline" in output
    assert "roofline pieces per group" in (out / "report.html").read_text()
