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

``source_row`` is the 1-based data row of the input each measurement came from.  Rows without a
positive latency are left out with a warning naming the first such row.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from toolkit.errors import InputError
from toolkit.parquet_io import read_artifact
from toolkit.schemas import PROFILE_ITERATIONS

VIDUR_LINEAR_OPS = ["emb", "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
                    "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add"]

SIGNATURES = {
    "vidur-mlp": ["num_tokens", "num_tensor_parallel_workers", "time_stats.mlp_up_proj.median"],
    "vidur-attention": ["is_prefill", "prefill_chunk_size", "kv_cache_size", "batch_size"],
    "splitwise": ["prompt_size", "batch_size", "token_size", "prompt_time", "token_time", "tensor_parallel"],
    "mlenergy": ["avg_power_watts", "num_gpus", "avg_batch_size", "median_itl_ms"],
    "mlenergy-v2": ["Energy/req (J)", "Avg TPOT (s)", "Token tput (tok/s)", "Avg Output Tokens", "Avg BS (reqs)", "TP"],
    "mlenergy-v1": ["gpu", "model", "throughput", "response_length", "latency", "energy"],
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
    prefill = pd.DataFrame({"phase": "prefill", "chunk_tokens": raw["prompt_size"] * raw["batch_size"], "prefix_tokens": 0,
                            "batch_size": 0, "kv_tokens": 0, "latency_s": raw["prompt_time"] / 1000.0, **common})
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
             "mlenergy-v1": from_mlenergy_v1}


def detect(columns: list[str]) -> str | None:
    for name, needed in SIGNATURES.items():
        if all(c in columns for c in needed):
            return name
    return None


def load_measurements(path: str | Path, fmt: str = "auto") -> pd.DataFrame:
    """Any supported measurement table as profile-iteration columns."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if path.suffix == ".parquet" or fmt == "wattlas":
        return from_profile(read_artifact(path, PROFILE_ITERATIONS), path)
    try:
        raw = pd.read_csv(path)
    except UnicodeDecodeError:
        raise InputError(path, "not UTF-8 text") from None
    except pd.errors.EmptyDataError:
        raise InputError(path, "file is empty") from None
    except pd.errors.ParserError as exc:
        raise InputError(path, f"malformed CSV: {exc}") from None
    name = detect(list(raw.columns)) if fmt == "auto" else fmt
    if name is None:
        raise InputError(path, "unrecognized measurement table (expected a wattlas profile, Vidur mlp/attention, "
                               "Splitwise perf_model or ML.ENERGY v1/v2/v3 results)")
    _require(raw, SIGNATURES[name], path)
    frame = IMPORTERS[name](raw, path)
    bad = (frame["latency_s"].isna() | (frame["latency_s"] <= 0)) & ~frame["phase"].eq("serving")
    if bad.any():
        rows = sorted(frame.loc[bad, "source_row"].unique())
        warnings.warn(f"{path}: {len(rows)} rows without a positive latency were left out "
                      f"(first: row {rows[0]}, column latency)", stacklevel=2)
    frame = frame[~bad]
    frame.attrs["source"] = str(path)
    frame.attrs["format"] = name
    return frame
