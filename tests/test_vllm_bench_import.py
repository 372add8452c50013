"""``characterize`` reads ``vllm bench serve --save-result`` JSON (issue #18).

The key set follows vllm-project/vllm ``vllm/benchmarks/serve.py`` (``main_async``/``benchmark``);
``OLD_RUN`` that of its predecessor ``benchmarks/benchmark_serving.py`` (no ``latencies`` list,
per-request ``ttfts``/``itls`` kept).
"""

import json
import warnings

import numpy as np
import pytest

from characterize.importers import load_measurements
from characterize.model_io import ModelBundle
from toolkit.errors import InputError

from .conftest import one_error_line


def vllm_run(**changes) -> dict:
    """One run as ``vllm bench serve --save-result --percentile-metrics ttft,tpot,itl,e2el
    --metadata tp=2 gpu=H100`` writes it (without --save-detailed)."""
    run = {
        "date": "20250601-120000", "endpoint_type": "vllm", "backend": "vllm", "label": None,
        "model_id": "meta-llama/Llama-3.1-8B-Instruct", "tokenizer_id": "meta-llama/Llama-3.1-8B-Instruct",
        "num_prompts": 200, "tp": "2", "gpu": "H100", "request_rate": "inf", "burstiness": 1.0, "max_concurrency": 16,
        "duration": 40.0, "completed": 200, "failed": 0, "total_input_tokens": 204800, "total_output_tokens": 25600,
        "request_throughput": 5.0, "request_goodput": None, "output_throughput": 640.0,
        "total_token_throughput": 5760.0, "latencies": [3.2] * 4, "queue_times": [0.0] * 4,
        "max_output_tokens_per_s": 900.0, "max_concurrent_requests": 16, "rtfx": 0.0,
        "mean_ttft_ms": 120.0, "median_ttft_ms": 100.0, "std_ttft_ms": 30.0, "p99_ttft_ms": 300.0,
        "mean_tpot_ms": 23.0, "median_tpot_ms": 22.5, "std_tpot_ms": 1.0, "p99_tpot_ms": 30.0,
        "mean_itl_ms": 23.0, "median_itl_ms": 22.0, "std_itl_ms": 5.0, "p99_itl_ms": 40.0,
        "mean_e2el_ms": 3200.0, "median_e2el_ms": 3100.0, "std_e2el_ms": 100.0, "p99_e2el_ms": 3500.0,
        "mean_client_queue_time_ms": 0.0, "median_client_queue_time_ms": 0.0,
    }
    run.update(changes)
    return {k: v for k, v in run.items() if v is not ...}  # ... drops a key


OLD_RUN = {  # benchmarks/benchmark_serving.py, default --percentile-metrics ttft,tpot,itl: no e2el
    "date": "20250101-090000", "backend": "vllm", "model_id": "m", "tokenizer_id": "m", "num_prompts": 3,
    "request_rate": 2.0, "burstiness": 1.0, "max_concurrency": None, "duration": 2.0, "completed": 2,
    "total_input_tokens": 300, "total_output_tokens": 6, "request_throughput": 1.0, "request_goodput": None,
    "output_throughput": 3.0, "total_token_throughput": 153.0, "input_lens": [100, 100, 100], "output_lens": [3, 3, 0],
    "ttfts": [0.2, 0.4, 0.0], "itls": [[0.05, 0.05], [0.1, 0.1], []], "generated_texts": ["a b c", "d e f", ""],
    "errors": ["", "", "Bad Request"], "mean_ttft_ms": 300.0, "median_ttft_ms": 300.0, "std_ttft_ms": 100.0,
    "p99_ttft_ms": 398.0, "mean_tpot_ms": 75.0, "median_tpot_ms": 75.0, "std_tpot_ms": 25.0, "p99_tpot_ms": 99.5,
    "mean_itl_ms": 75.0, "median_itl_ms": 75.0, "std_itl_ms": 25.0, "p99_itl_ms": 100.0,
}


def load_quietly(path, fmt="auto"):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = load_measurements(path, fmt)
    return frame, [str(w.message) for w in caught]


def only_row(path, fmt="auto"):
    frame, messages = load_quietly(path, fmt)
    (row,) = frame.to_dict("records")
    return row, messages


def test_one_result_file_is_one_serving_row(tmp_path):
    path = tmp_path / "vllm-infqps-concurrency16-Llama-3.1-8B-Instruct-20250601-120000.json"
    path.write_text(json.dumps(vllm_run()))
    frame, messages = load_quietly(path)
    (row,) = frame.to_dict("records")
    assert frame.attrs["format"] == "vllm-bench"
    assert row["phase"] == "serving" and row["backend"] == "measured:vllm-bench"
    assert row["batch_size"] == pytest.approx(5.0 * 3.2)  # Little's law: 5 requests/s x 3.2 s in flight
    assert row["latency_s"] == pytest.approx(0.022) and row["latency_from"] == "median_itl_ms"
    assert row["concurrency_from"] == "mean_e2el_ms"
    assert np.isnan(row["mean_power_w"]) and np.isnan(row["kv_tokens"])
    assert row["tp"] == 2 and row["gpu_name"] == "H100" and row["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert row["mean_input_tokens"] == 1024 and row["mean_output_tokens"] == 128 and row["max_concurrency"] == 16
    assert row["source_row"] == 1
    assert any("measures no power: mean_power_w is null" in m and str(path) in m for m in messages)
    assert not any("queued in the server" in m for m in messages)  # max_concurrency bounds what is sent


def test_without_metadata_tp_and_gpu_are_null_and_tpot_stands_in_for_itl(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(vllm_run(tp=..., gpu=..., median_itl_ms=..., mean_itl_ms=..., std_itl_ms=...,
                                        p99_itl_ms=...)))
    row, _ = only_row(path)
    assert np.isnan(row["tp"]) and row["gpu_name"] is None
    assert row["latency_s"] == pytest.approx(0.023) and row["latency_from"] == "mean_tpot_ms"


def test_mean_e2e_latency_falls_back_on_per_request_data_then_an_approximation(tmp_path):
    latencies = tmp_path / "latencies.json"  # serve.py always writes latencies; a failed request's is 0
    latencies.write_text(json.dumps(vllm_run(mean_e2el_ms=..., latencies=[2.0, 4.0, 0.0])))
    row, _ = only_row(latencies)
    assert row["batch_size"] == pytest.approx(5.0 * 3.0) and row["concurrency_from"] == "latencies"

    old = tmp_path / "old.json"  # ttft + the gaps: 0.3 s and 0.6 s, the failed third left out
    old.write_text(json.dumps(OLD_RUN))
    row, messages = only_row(old)
    assert row["batch_size"] == pytest.approx(1.0 * 0.45) and row["concurrency_from"] == "ttfts+itls"
    assert row["latency_s"] == pytest.approx(0.075) and np.isnan(row["max_concurrency"])
    assert not any("queued in the server" in m for m in messages)  # a finite request rate

    summary = tmp_path / "summary.json"  # no per-request data: mean TTFT + mean TPOT x (128 - 1)
    summary.write_text(json.dumps(vllm_run(mean_e2el_ms=..., latencies=..., max_concurrency=None)))
    row, messages = only_row(summary)
    assert row["batch_size"] == pytest.approx(5.0 * (0.120 + 0.023 * 127))
    assert row["concurrency_from"] == "mean_ttft_ms+mean_tpot_ms"
    assert any("an approximation (first: run 1, key mean_e2el_ms)" in m for m in messages)
    assert any("request_rate inf and no max_concurrency" in m and "queued in the server" in m for m in messages)


def test_appended_runs_json_lines_and_arrays_each_give_one_row_per_run(tmp_path):
    runs = [vllm_run(max_concurrency=c, request_throughput=c / 3.2, median_itl_ms=20.0 + c) for c in (1, 4, 16)]
    appended = tmp_path / "appended.json"  # --append-result: one object per line, same .json file
    appended.write_text("\n".join(json.dumps(r) for r in runs))
    jsonl = tmp_path / "runs.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in runs) + "\n\n")
    array = tmp_path / "runs.json"
    array.write_text(json.dumps(runs, indent=2))
    sniffed = tmp_path / "runs.txt"  # no .json name: recognized by its first character
    sniffed.write_text("\ufeff  " + json.dumps(runs))
    for path in (appended, jsonl, array, sniffed):
        frame, _ = load_quietly(path)
        assert frame["batch_size"].tolist() == pytest.approx([1, 4, 16]), path
        assert frame["latency_s"].tolist() == pytest.approx([0.021, 0.024, 0.036]), path
        assert frame["source_row"].tolist() == [1, 2, 3]


def test_format_is_forced_and_csv_detection_is_unchanged(tmp_path, write_text):
    path = tmp_path / "result.out"
    path.write_text(json.dumps(vllm_run()))
    assert load_quietly(path, "vllm-bench")[0].attrs["format"] == "vllm-bench"
    csv = write_text("perf.csv", "gpu,task,model,throughput,response_length,latency,energy\nA100,chat,m,25,250,10,2000\n")
    assert load_measurements(csv).attrs["format"] == "mlenergy-v1"
    with pytest.raises(InputError, match=r"perf.csv: line 1: not JSON"):
        load_measurements(csv, "vllm-bench")


def test_cli_fit_on_runs_gives_a_serving_latency_model_and_says_there_is_no_power(run_cli, tmp_path):
    runs = tmp_path / "sweep.jsonl"
    lines = []
    for c in (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256):
        itl = 18.0 + 0.08 * c + 0.6 * c ** 0.5  # ms: a decode step grows with the batch
        e2e = 0.1 + itl * 127 / 1000.0
        lines.append(json.dumps(vllm_run(max_concurrency=c, median_itl_ms=itl, mean_e2el_ms=e2e * 1000,
                                         request_throughput=c / e2e)))
    runs.write_text("\n".join(lines) + "\n")
    bundle = tmp_path / "b.json"
    result = run_cli("characterize", "fit", runs, "-o", bundle, "--trees", "20")
    assert result.exit_code == 0, result.output
    assert "latency_s/serving" in result.output and "mean_power_w" not in result.output.split("warning")[0]
    assert f"warning: {runs}: vllm bench serve measures no power" in result.output
    loaded = ModelBundle.load(bundle)
    assert loaded.find("latency_s", "serving") is not None and loaded.find("mean_power_w", "serving") is None
    assert loaded.metadata["model"] == ["meta-llama/Llama-3.1-8B-Instruct"] and loaded.metadata["gpu_name"] == ["H100"]
    assert run_cli("characterize", "validate", bundle, runs, "--format", "vllm-bench").exit_code == 0


VALID = json.dumps(vllm_run())

BAD_INPUTS = [
    ("trunc.json", VALID[:200], ["trunc.json", "line 1", "not JSON"]),
    ("nan.json", VALID.replace('"median_itl_ms": 22.0', '"median_itl_ms": NaN'), ["key median_itl_ms", "finite"]),
    ("inf.json", VALID.replace('"request_throughput": 5.0', '"request_throughput": 1e999'),
     ["key request_throughput", "finite"]),
    ("zero.json", VALID.replace('"median_itl_ms": 22.0', '"median_itl_ms": 0'), ["key median_itl_ms", "> 0"]),
    ("negative.json", VALID.replace('"mean_e2el_ms": 3200.0', '"mean_e2el_ms": -1'), ["key mean_e2el_ms", "> 0"]),
    ("text.json", VALID.replace('"request_throughput": 5.0', '"request_throughput": "5"'),
     ["key request_throughput", "must be a number"]),
    ("no-itl.json", json.dumps(vllm_run(median_itl_ms=..., mean_tpot_ms=...)),
     ["key median_itl_ms", "missing, and no mean_tpot_ms"]),
    ("no-e2e.json", json.dumps(vllm_run(mean_e2el_ms=..., latencies=..., mean_ttft_ms=...)),
     ["key mean_e2el_ms", "--percentile-metrics ttft,tpot,itl,e2el"]),
    ("no-rate.json", json.dumps(vllm_run(request_throughput=...)), ["key request_throughput", "missing"]),
    ("failed.json", json.dumps(vllm_run(mean_e2el_ms=..., latencies=[0.0, 0.0])),
     ["key latencies", "no request completed"]),
    ("latency-text.json", json.dumps(vllm_run(mean_e2el_ms=..., latencies=[1.0, "x"])),
     ["key latencies[1]", "must be a number"]),
    ("itls.json", json.dumps(dict(OLD_RUN, itls=[[0.1], [0.1, "x"], []])), ["key itls[1][1]"]),
    ("itls-short.json", json.dumps(dict(OLD_RUN, itls=[[0.1]])), ["key itls", "one list per request"]),
    ("tp.json", json.dumps(vllm_run(tp="two")), ["key tp", "integer >= 1"]),
    ("tp-half.json", json.dumps(vllm_run(tp="1.5")), ["key tp", "must be an integer"]),
    ("tp-zero.json", json.dumps(vllm_run(tp=0)), ["key tp", ">= 1"]),
    ("numbers.json", "[1, 2, 3]", ["key [0]", "a number, expected a vllm bench serve result object"]),
    ("runs.json", json.dumps([vllm_run(), vllm_run(completed=0)]), ["key [1].completed", ">= 1"]),
    ("string.json", '"hello"', ["a string, expected a vllm bench serve result object"]),
    ("empty-array.json", "[]", ["an empty array"]),
    ("empty.json", "  \n", ["empty file"]),
    ("deep.json", "[" * 200_000 + "]" * 200_000, ["not JSON (nested too deeply)"]),
    ("deep-value.json", VALID.replace('"median_itl_ms": 22.0', '"median_itl_ms": ' + "[" * 50 + "]" * 50),
     ["key median_itl_ms", "must be a number"]),
    ("digits.json", VALID.replace('"completed": 200', '"completed": ' + "9" * 5000), ["digits.json", "not JSON"]),
    ("other.json", json.dumps({"schema": "wattlas.bundle", "models": []}),
     ["unrecognized measurement file", "not a vllm bench serve result"]),
    ("lines.jsonl", VALID + "\n" + VALID.replace('"median_itl_ms": 22.0', '"median_itl_ms": -3') + "\n",
     ["lines.jsonl", "line 2", "key median_itl_ms"]),
    ("lines2.jsonl", VALID + "\n{oops\n", ["line 2", "not JSON"]),
    ("bytes.json", b'{"request_throughput": \xff}', ["not UTF-8"]),
]


@pytest.mark.parametrize("name, text, fragments", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_result_files_fail_as_one_line_naming_file_and_key(run_cli, write_text, tmp_path, name, text, fragments):
    path = write_text(name, text)
    result = run_cli("characterize", "fit", path, "-o", tmp_path / "b.json")
    one_error_line(result, str(path), *fragments)
    assert not (tmp_path / "b.json").exists()


def test_forcing_the_format_on_other_files_is_one_line(run_cli, write_text, tmp_path):
    path = write_text("perf.csv", "a,b\n1,2\n")
    one_error_line(run_cli("characterize", "fit", path, "-o", tmp_path / "b.json", "--format", "vllm-bench"),
                   "perf.csv: line 1: not JSON")
    other = write_text("bundle.json", json.dumps({"schema": "wattlas.bundle", "models": []}))
    one_error_line(run_cli("characterize", "fit", other, "-o", tmp_path / "b.json", "--format", "vllm-bench"),
                   "bundle.json: key request_throughput: missing: not a vllm bench serve result")
