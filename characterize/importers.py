"""Measurement tables into one frame of profile-iteration columns.

Every importer returns the columns of ``profile_iterations`` it can fill (``phase``,
``chunk_tokens`` c, ``prefix_tokens`` p, ``batch_size`` b, ``kv_tokens`` k, ``tp``,
``sm_clock_mhz``, ``latency_s``, ``mean_power_w``, ``gpu_name``, ``model``, ``backend``) plus
``load_tokens`` (c + b, the work of the iteration).  What a source does not measure is null.

* wattlas profile (Parquet, ``profile_iterations``): iterations of full model steps.
* Vidur ``mlp.csv``: per-layer time of the non-attention operators vs tokens -> phase ``linear``.
* Vidur ``attention.csv``: per-layer attention prefill (chunk, KV prefix) and decode (batch, KV).
* Splitwise-sim ``perf_model.csv``: batch prefill and per-token decode times of whole models.
  Its power columns are normalized (and zero for H100), so they are left null, not used.
* ML.ENERGY benchmark results: per-GPU average power and inter-token latency vs serving batch
  -> phase ``serving``.  v3 (``avg_power_watts``, summed over ``num_gpus``) as measured; v2 and v1
  report energy per request instead, so power is derived from it: power = energy/request x
  requests/s, requests/s = token throughput / output tokens per request, per GPU over TP x PP.
  v2 gives the mean batch; v1 does not, so its concurrency comes from Little's law (token
  throughput x time per output token); its latency column is per request, so the inter-token
  latency is latency / response_length.
* ``vllm bench serve --save-result`` JSON (and its predecessor ``benchmarks/benchmark_serving.py``):
  one result object per run; a file may hold several (``--append-result`` appends one per line,
  JSON Lines, ``.jsonl``) or a JSON array of them -> phase ``serving``, one row per run.  The
  batch is the mean number of requests in flight by Little's law (request throughput x mean
  end-to-end latency), the latency the median inter-token latency (mean TPOT without ITL).
  vLLM measures no power: ``mean_power_w`` is null (join GPU telemetry to fit power).  Read as
  JSON when the name ends in ``.json``/``.jsonl``, the text starts with ``{`` or ``[``, or with
  ``--format vllm-bench``.

``source_row`` is the 1-based data row of the input each measurement came from.  Rows without a
positive latency are left out with a warning naming the first such row.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from toolkit.errors import InputError
from toolkit.parquet_io import read_artifact
from toolkit.schemas import PROFILE_ITERATIONS
from toolkit.validation import check_number, read_text

VIDUR_LINEAR_OPS = ["emb", "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
                    "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add"]

SIGNATURES = {
    "vidur-mlp": ["num_tokens", "num_tensor_parallel_workers", "time_stats.mlp_up_proj.median"],
    "vidur-attention": ["is_prefill", "prefill_chunk_size", "kv_cache_size", "batch_size"],
    "splitwise": ["prompt_size", "batch_size", "token_size", "prompt_time", "token_time", "tensor_parallel"],
    "mlenergy": ["avg_power_watts", "num_gpus", "avg_batch_size", "median_itl_ms"],
    "mlenergy-v2": ["Energy/req (J)", "Avg TPOT (s)", "Token tput (tok/s)", "Avg Output Tokens", "Avg BS (reqs)", "TP"],
    "mlenergy-v1": ["gpu", "model", "throughput", "response_length", "latency", "energy"],
    "power-vs-load": ["phase", "batch_size", "mean_power_w", "gpus", "t_start_s", "t_end_s"],
}

OUTPUT_COLUMNS = ["phase", "chunk_tokens", "prefix_tokens", "batch_size", "kv_tokens", "tp", "sm_clock_mhz",
                  "latency_s", "mean_power_w", "gpu_name", "model", "backend", "load_tokens"]


def _require(frame: pd.DataFrame, columns: list[str], source) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(source, f"missing required column (found: {', '.join(map(str, frame.columns[:12]))}...)", column=missing[0])


def _finish(frame: pd.DataFrame) -> pd.DataFrame:
    for column in OUTPUT_COLUMNS:
        if column not in frame:
            frame[column] = np.nan if column not in ("phase", "gpu_name", "model", "backend") else None
    frame["load_tokens"] = frame["chunk_tokens"].fillna(0) + frame["batch_size"].fillna(0)
    return frame[OUTPUT_COLUMNS + [c for c in frame.columns if c not in OUTPUT_COLUMNS]].reset_index(drop=True)


def _gpu_from_name(path: Path) -> str | None:
    lowered = path.name.lower()
    return next((g.upper() for g in ("a100", "h100", "h200", "b200", "a40") if g in lowered), None)


def from_vidur_mlp(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    ops = [f"time_stats.{op}.median" for op in VIDUR_LINEAR_OPS if f"time_stats.{op}.median" in raw]
    latency_ms = raw[ops].sum(axis=1, min_count=len(ops))
    return _finish(pd.DataFrame({
        "phase": "linear", "chunk_tokens": raw["num_tokens"], "prefix_tokens": 0, "batch_size": 0, "kv_tokens": 0,
        "tp": raw["num_tensor_parallel_workers"], "latency_s": latency_ms / 1000.0,
        "gpu_name": _gpu_from_name(path), "model": path.stem, "backend": "measured:vidur",
        "source_row": np.arange(1, len(raw) + 1),
    }))


def from_vidur_attention(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    prefill = raw["is_prefill"].astype(str).str.lower() == "true"
    latency_ms = np.where(prefill, raw["time_stats.attn_prefill.median"], raw["time_stats.attn_decode.median"])
    return _finish(pd.DataFrame({
        "phase": np.where(prefill, "prefill", "decode"),
        "chunk_tokens": np.where(prefill, raw["prefill_chunk_size"], 0),
        "prefix_tokens": np.where(prefill, raw["kv_cache_size"], 0),
        "batch_size": np.where(prefill, 0, raw["batch_size"]),
        "kv_tokens": np.where(prefill, 0, raw["kv_cache_size"]),
        "tp": raw["num_tensor_parallel_workers"], "latency_s": latency_ms / 1000.0,
        "gpu_name": _gpu_from_name(path), "model": "attention", "backend": "measured:vidur",
        "source_row": np.arange(1, len(raw) + 1),
    }))


def from_splitwise(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    common = {"tp": raw["tensor_parallel"], "gpu_name": raw.get("hardware"), "model": raw.get("model"), "backend": "measured:splitwise",
              "source_row": np.arange(1, len(raw) + 1)}
    # a batch of b prompts of s tokens: c = b*s tokens, but attention is b * s^2 (prefill_sequences = b), not (b*s)^2
    prefill = pd.DataFrame({"phase": "prefill", "chunk_tokens": raw["prompt_size"] * raw["batch_size"], "prefix_tokens": 0,
                            "prefill_sequences": raw["batch_size"], "batch_size": 0, "kv_tokens": 0,
                            "latency_s": raw["prompt_time"] / 1000.0, **common})
    decode = pd.DataFrame({"phase": "decode", "chunk_tokens": 0, "prefix_tokens": 0, "batch_size": raw["batch_size"],
                           "kv_tokens": raw["prompt_size"] + raw["token_size"] / 2.0,  # mean KV length while generating
                           "latency_s": raw["token_time"] / 1000.0, **common})
    return _finish(pd.concat([prefill, decode], ignore_index=True))


def from_mlenergy(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    return _finish(pd.DataFrame({
        "phase": "serving", "chunk_tokens": 0, "prefix_tokens": 0, "batch_size": raw["avg_batch_size"], "kv_tokens": np.nan,
        "tp": raw.get("tensor_parallel", raw["num_gpus"]), "latency_s": raw["median_itl_ms"] / 1000.0,
        "mean_power_w": raw["avg_power_watts"] / raw["num_gpus"],  # the table sums over GPUs
        "gpu_name": raw.get("gpu_model"), "model": raw.get("model_id"), "backend": "measured:ml.energy",
        "task": raw.get("task"), "source_row": np.arange(1, len(raw) + 1),
    }))


def from_mlenergy_v2(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    gpus = raw["TP"] * raw.get("PP", 1)
    requests_per_s = raw["Token tput (tok/s)"] / raw["Avg Output Tokens"]
    return _finish(pd.DataFrame({
        "phase": "serving", "chunk_tokens": 0, "prefix_tokens": 0, "batch_size": raw["Avg BS (reqs)"], "kv_tokens": np.nan,
        "tp": raw["TP"], "latency_s": raw["Avg TPOT (s)"],
        "mean_power_w": raw["Energy/req (J)"] * requests_per_s / gpus,
        "gpu_name": raw.get("GPU"), "model": raw.get("Model"), "backend": "measured:ml.energy-v2",
        "task": raw.get("task"), "source_row": np.arange(1, len(raw) + 1),
    }))


def from_mlenergy_v1(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    time_per_token = raw["latency"] / raw["response_length"]
    return _finish(pd.DataFrame({
        "phase": "serving", "chunk_tokens": 0, "prefix_tokens": 0,
        "batch_size": raw["throughput"] * time_per_token,  # Little's law: sequences generating at once
        "kv_tokens": np.nan, "tp": 1, "latency_s": time_per_token,
        "mean_power_w": raw["energy"] * raw["throughput"] / raw["response_length"],
        "gpu_name": raw["gpu"], "model": raw["model"], "backend": "measured:ml.energy-v1",
        "task": raw.get("task"), "source_row": np.arange(1, len(raw) + 1),
    }))


# ---------------------------------------------------------------- vllm bench serve result JSON
# The format, as read in the GitHub repository vllm-project/vllm: vllm/benchmarks/serve.py (main_async
# and benchmark; commit 009e6d4a1cd6) and its predecessor benchmarks/benchmark_serving.py (commit
# 0049e29c41fd, before "vllm bench serve"): one object per run holding date, endpoint_type,
# backend, label, model_id, tokenizer_id, num_prompts, the --metadata KEY=VALUE pairs (strings,
# e.g. "tp": "2"), request_rate (a number or the string "inf"), burstiness, max_concurrency (null
# when unlimited), then duration, completed, failed, total_input_tokens, total_output_tokens,
# request_throughput, output_throughput, total_token_throughput and, per metric chosen by
# --percentile-metrics (default "ttft,tpot,itl": no e2el unless asked), mean_/median_/std_/
# p<NN>_{ttft,tpot,itl,e2el}_ms.  Per-request lists (seconds): latencies (serve.py writes it
# always), ttfts, itls (a list per request), input_lens, output_lens, errors.  --append-result
# writes one more object on a new line of the same file.
MAX_VLLM_BENCH_BYTES = 512 * 2**20  # --save-detailed files with generated texts run to a few 100 MB
VLLM_BENCH_SIGNATURE = ("request_throughput", "median_itl_ms", "mean_tpot_ms")
_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _json_kind(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def _looks_like_json(path: Path) -> bool:
    """By name (``.json``, ``.jsonl``) or by content: the first character is ``{`` or ``[``."""
    if path.suffix.lower() in (".json", ".jsonl"):
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False  # the CSV reader says why
    return head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] in (b"{", b"[")


def _vllm_records(path: Path) -> list[tuple[dict, int | None, str]]:
    """The run objects of a result file with their line (None for a file of one value) and key
    prefix (``[3].`` in an array): one JSON value, an array of them, or several one after another."""
    if path.is_file() and path.stat().st_size > MAX_VLLM_BENCH_BYTES:
        raise InputError(path, f"larger than {MAX_VLLM_BENCH_BYTES // 2**20} MiB: too large for a vllm bench serve result")
    text = read_text(path, MAX_VLLM_BENCH_BYTES).removeprefix("\ufeff")
    decoder, values, pos, line, last = json.JSONDecoder(), [], 0, 1, 0
    while True:
        pos = _JSON_WHITESPACE.match(text, pos).end()
        if pos == len(text):
            break
        line += text.count("\n", last, pos)
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"not JSON ({exc.msg}, column {exc.colno})", line=exc.lineno) from None
        except ValueError as exc:  # an integer of thousands of digits
            raise InputError(path, f"not JSON ({str(exc).split(':')[0]})", line=line) from None
        except RecursionError:
            raise InputError(path, "not JSON (nested too deeply)", line=line) from None
        values.append((value, line))
        line, last, pos = line + text.count("\n", pos, end), end, end
    if len(values) == 1:
        values = [(values[0][0], None)]
    records = []
    for value, at in values:
        items = [(value, "")] if not isinstance(value, list) else [(v, f"[{i}].") for i, v in enumerate(value)]
        if isinstance(value, list) and not value:
            raise InputError(path, "an empty array: no vllm bench serve results", line=at)
        for item, prefix in items:
            if not isinstance(item, dict):
                raise InputError(path, f"{_json_kind(item)}, expected a vllm bench serve result object",
                                 line=at, key=prefix[:-1] or None)
            records.append((item, at, prefix))
    return records


class _Run:
    """One result object, each value read through a check that names its key (and line)."""

    def __init__(self, record: dict, path: Path, line: int | None, prefix: str) -> None:
        self.record, self.path, self.line, self.prefix = record, path, line, prefix

    def error(self, key: str, message: str) -> InputError:
        return InputError(self.path, message, key=self.prefix + key, line=self.line)

    def has(self, key: str) -> bool:
        return key in self.record

    def number(self, key: str, **rules) -> float:
        if key not in self.record:
            raise self.error(key, "missing (vllm bench serve --save-result writes it)")
        return check_number(self.record[key], self.path, self.prefix + key, line=self.line, **rules)

    def numbers(self, key: str, **rules) -> np.ndarray:
        values = self.record[key]
        if not isinstance(values, list):
            raise self.error(key, f"must be a list (got {_json_kind(values)})")
        return np.array([check_number(v, self.path, f"{self.prefix}{key}[{i}]", line=self.line, **rules)
                         for i, v in enumerate(values)], dtype="float64")

    def gap_sum(self, itls: list, i: int) -> float:
        """The sum of request ``i``'s inter-token gaps (``itls[i]``, a list of seconds)."""
        if not isinstance(itls[i], list):
            raise self.error(f"itls[{i}]", f"must be a list (got {_json_kind(itls[i])})")
        return float(sum(check_number(g, self.path, f"{self.prefix}itls[{i}][{j}]", line=self.line, minimum=0)
                         for j, g in enumerate(itls[i])))

    def integer_setting(self, *keys: str) -> float:
        """A --metadata value (a string such as "2") or a number: an integer >= 1, NaN if absent."""
        key = next((k for k in keys if self.record.get(k) is not None), None)
        if key is None:
            return np.nan
        value = self.record[key]
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise self.error(key, f"must be an integer >= 1 (got {value[:60]!r})") from None
        return float(check_number(value, self.path, self.prefix + key, integer=True, minimum=1, line=self.line))

    def text(self, *keys: str) -> str | None:
        return next((self.record[k].strip() for k in keys
                     if isinstance(self.record.get(k), str) and self.record[k].strip()), None)


def _mean_e2e_latency(run: _Run) -> tuple[float, str]:
    """Mean end-to-end latency (s) of the completed requests and where it came from."""
    if run.has("mean_e2el_ms"):
        return run.number("mean_e2el_ms", minimum=0, exclusive_minimum=True) / 1000.0, "mean_e2el_ms"
    if run.has("latencies"):  # a failed request's latency is 0
        latencies = run.numbers("latencies", minimum=0)
        if not (latencies > 0).any():
            raise run.error("latencies", "no request completed (every latency is 0)")
        return float(latencies[latencies > 0].mean()), "latencies"
    if run.has("ttfts") and run.has("itls"):  # the last token arrives at ttft + sum of the gaps
        ttfts = run.numbers("ttfts", minimum=0)
        itls = run.record["itls"]
        if not isinstance(itls, list) or len(itls) != len(ttfts):
            raise run.error("itls", f"must be a list of one list per request ({len(ttfts)}, as ttfts)")
        spans = ttfts + np.array([run.gap_sum(itls, i) for i in range(len(itls))])
        done = ttfts > 0  # a failed request has no first token
        if not done.any():
            raise run.error("ttfts", "no request completed (every ttft is 0)")
        return float(spans[done].mean()), "ttfts+itls"
    if all(run.has(k) for k in ("mean_ttft_ms", "mean_tpot_ms", "total_output_tokens", "completed")):
        # Approximate: the mean of ttft + tpot x (n - 1) taken as mean ttft + mean tpot x (mean n - 1)
        completed = run.number("completed", integer=True, minimum=1)
        tokens_after_first = max(run.number("total_output_tokens", minimum=0) / completed - 1.0, 0.0)
        seconds = (run.number("mean_ttft_ms", minimum=0) + run.number("mean_tpot_ms", minimum=0) * tokens_after_first) / 1000.0
        if seconds <= 0:
            raise run.error("mean_ttft_ms", "mean TTFT and TPOT are 0: no end-to-end latency to derive")
        return seconds, "mean_ttft_ms+mean_tpot_ms"
    raise run.error("mean_e2el_ms", "missing, and no per-request latencies (latencies; ttfts and itls) or mean_ttft_ms, "
                                    "mean_tpot_ms, total_output_tokens and completed to derive it from: the batch (requests "
                                    "in flight, Little's law) needs the mean end-to-end latency; run vllm bench serve with "
                                    "--percentile-metrics ttft,tpot,itl,e2el")


def from_vllm_bench(path: str | Path, recognize: bool = False) -> pd.DataFrame:
    """``vllm bench serve --save-result`` runs as phase ``serving`` rows, one per run.

    * ``batch_size``: the mean number of requests in flight, by Little's law: request throughput x
      mean end-to-end latency of the completed requests (``mean_e2el_ms``; else the per-request
      ``latencies``; else ``ttfts`` + the sum of ``itls``; else, approximately, mean TTFT + mean TPOT x
      (mean output tokens - 1); column ``concurrency_from`` says which).  The latencies exclude the
      client-side wait for a --max-concurrency slot but include the wait in the server's queue, so
      when vLLM queues (more requests than max_num_seqs or KV cache) this exceeds its running batch.
    * ``latency_s``: ``median_itl_ms`` (the gap between streamed tokens: one decode iteration), else
      ``mean_tpot_ms``; column ``latency_from`` says which.
    * ``mean_power_w``: null.  vLLM's benchmark measures no power; join GPU telemetry over the run's
      time window to fit a power model.
    * ``tp`` and ``gpu_name`` from --metadata (``tp``/``tensor_parallel_size``, ``gpu_name``/``gpu``)
      where given, else null; ``model`` is ``model_id``.

    No prefill rows: TTFT holds the wait in the server's queue and a prefill that vLLM chunks and
    co-batches with other requests' decodes, so it is not the latency of a prefill iteration.
    ``recognize``: refuse (as unrecognized) a JSON file that has none of the signature keys.
    """
    path = Path(path)
    records = _vllm_records(path)
    rows, queued, approximated = [], [], []
    for number, (record, line, prefix) in enumerate(records, 1):
        run = _Run(record, path, line, prefix)
        if not any(run.has(k) for k in VLLM_BENCH_SIGNATURE):
            if recognize:
                raise InputError(path, "unrecognized measurement file: JSON, but not a vllm bench serve result (no "
                                       "request_throughput, median_itl_ms or mean_tpot_ms key)", line=line)
            raise run.error("request_throughput", "missing: not a vllm bench serve result (no request_throughput, "
                                                  "median_itl_ms or mean_tpot_ms)")
        throughput = run.number("request_throughput", minimum=0, exclusive_minimum=True)
        latency_from = "median_itl_ms" if run.has("median_itl_ms") else "mean_tpot_ms"
        if not run.has(latency_from):
            raise run.error("median_itl_ms", "missing, and no mean_tpot_ms either: nothing gives the time between "
                                          "tokens (run vllm bench serve with --percentile-metrics including itl)")
        latency = run.number(latency_from, minimum=0, exclusive_minimum=True) / 1000.0
        e2e, concurrency_from = _mean_e2e_latency(run)
        completed = run.number("completed", integer=True, minimum=1) if run.has("completed") else np.nan
        if record.get("request_rate") is None:
            rate = np.nan
        elif record["request_rate"] == "inf":  # how vLLM writes an unpaced run
            rate = np.inf
        else:
            rate = run.number("request_rate", minimum=0, exclusive_minimum=True)
        max_concurrency = run.integer_setting("max_concurrency")
        if np.isinf(rate) and np.isnan(max_concurrency) and record.get("ramp_up_strategy") is None:
            queued.append(number)
        if concurrency_from == "mean_ttft_ms+mean_tpot_ms":
            approximated.append(number)
        per_request = {k: run.number(f"total_{k}_tokens", minimum=0) / completed if run.has(f"total_{k}_tokens") else np.nan
                       for k in ("input", "output")}
        rows.append({
            "phase": "serving", "chunk_tokens": 0, "prefix_tokens": 0, "batch_size": throughput * e2e,
            "kv_tokens": np.nan, "tp": run.integer_setting("tp", "tensor_parallel_size"), "latency_s": latency,
            "mean_power_w": np.nan, "gpu_name": run.text("gpu_name", "gpu"), "model": run.text("model_id"),
            "backend": "measured:vllm-bench", "request_rate": rate, "max_concurrency": max_concurrency,
            "mean_input_tokens": per_request["input"], "mean_output_tokens": per_request["output"],
            "latency_from": latency_from, "concurrency_from": concurrency_from, "source_row": number,
        })
    if queued:
        warnings.warn(f"{path}: {len(queued)} runs have request_rate inf and no max_concurrency: unless a timed trace "
                      "paced them, every request was sent at once, so their batch_size counts requests queued in the "
                      f"server too (first: run {queued[0]})", stacklevel=2)
    if approximated:
        warnings.warn(f"{path}: {len(approximated)} runs have no mean_e2el_ms or per-request latencies; their batch_size "
                      f"uses mean TTFT + mean TPOT x (mean output tokens - 1), an approximation (first: run "
                      f"{approximated[0]}, key mean_e2el_ms)", stacklevel=2)
    warnings.warn(f"{path}: vllm bench serve measures no power: mean_power_w is null and no power model is fitted "
                  "from it (join GPU telemetry for one)", stacklevel=2)
    return _finish(pd.DataFrame(rows))


def from_power_vs_load(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    """``power_vs_load.csv`` as ``collect import`` writes it (vLLM engine load beside GPU telemetry):
    phase ``serving``, batch = mean running requests, power per GPU; no latency, TP unknown (null)."""
    return _finish(pd.DataFrame({
        "phase": "serving", "chunk_tokens": 0, "prefix_tokens": 0, "batch_size": raw["batch_size"], "kv_tokens": np.nan,
        "tp": np.nan, "latency_s": np.nan, "mean_power_w": raw["mean_power_w"], "gpu_name": raw.get("gpu_name"),
        "model": raw.get("model"), "backend": "measured:vllm-metrics+telemetry", "source_row": np.arange(1, len(raw) + 1),
    }))


def from_profile(table, path: Path | None = None) -> pd.DataFrame:
    frame = table.to_pandas()
    frame["source_row"] = np.arange(1, len(frame) + 1)
    if "power_capped_share" in frame:
        capped = frame["power_capped_share"].fillna(0) > 0.05
        if capped.any():  # such a row ran below its locked clock: it is not a model of that clock
            warnings.warn(f"{path or 'profile'}: {int(capped.sum())} rows ran power-capped (first: row "
                          f"{int(frame.loc[capped, 'source_row'].iloc[0])}, column power_capped_share); their SM "
                          "clock was below sm_clock_mhz (see observed_sm_clock_mhz)", stacklevel=2)
    return _finish(frame)


IMPORTERS = {"vidur-mlp": from_vidur_mlp, "vidur-attention": from_vidur_attention,
             "splitwise": from_splitwise, "mlenergy": from_mlenergy, "mlenergy-v2": from_mlenergy_v2,
             "mlenergy-v1": from_mlenergy_v1, "power-vs-load": from_power_vs_load}


def detect(columns: list[str]) -> str | None:
    for name, needed in SIGNATURES.items():
        if all(c in columns for c in needed):
            return name
    return None


def _load_table(path: Path, fmt: str) -> tuple[str, pd.DataFrame]:
    from toolkit.validation import read_csv_table

    raw = read_csv_table(path)
    name = detect(list(raw.columns)) if fmt == "auto" else fmt
    if name is None:
        raise InputError(path, "unrecognized measurement table (expected a wattlas profile, Vidur mlp/attention, "
                               "Splitwise perf_model, ML.ENERGY v1/v2/v3 results or vllm bench serve JSON)")
    _require(raw, SIGNATURES[name], path)
    return name, IMPORTERS[name](raw, path)


def load_measurements(path: str | Path, fmt: str = "auto") -> pd.DataFrame:
    """Any supported measurement table as profile-iteration columns."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if path.suffix == ".parquet" or fmt == "wattlas":
        return from_profile(read_artifact(path, PROFILE_ITERATIONS), path)
    if fmt == "vllm-bench" or (fmt == "auto" and _looks_like_json(path)):
        name, frame = "vllm-bench", from_vllm_bench(path, recognize=fmt == "auto")
    else:
        name, frame = _load_table(path, fmt)
    bad = (frame["latency_s"].isna() | (frame["latency_s"] <= 0)) & ~frame["phase"].eq("serving")
    if bad.any():
        rows = sorted(frame.loc[bad, "source_row"].unique())
        warnings.warn(f"{path}: {len(rows)} rows without a positive latency were left out "
                      f"(first: row {rows[0]}, column latency)", stacklevel=2)
    frame = frame[~bad]
    frame.attrs["source"] = str(path)
    frame.attrs["format"] = name
    return frame
