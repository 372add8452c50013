"""Composed whole-iteration latency (``characterize compose``) vs measured whole-model decode ITL.

Run: python benchmarks/bench_compose.py [--data ../shared/data] [--prompt 1000]

Ground truth: ML.ENERGY benchmark v3 (mlenergy/mlenergy_v3_llm_configs.csv), task lm-arena-chat on
H100: median inter-token latency (median_itl_ms) of vLLM serving at a measured mean batch
(avg_batch_size), for Llama-3.1-8B-Instruct (TP1), Llama-3.1-70B-Instruct and Llama-3.3-70B-Instruct
(TP4).  Composed from Vidur's H100 operator profiles, which do not cover these exact models:

* 70B: the Llama-2-70B profile (same layers, hidden, heads, KV heads and MLP width as Llama-3.x-70B;
  vocabulary 32 K vs 128 K, which only the LM head sees: it is composed at 128,256);
* 8B: the Llama-2-7B profile scaled operator by operator to the Llama-3-8B shape (preset ``llama3-8b``:
  8 KV heads instead of 32, MLP 14,336 instead of 11,008, vocabulary 128,256);
* attention: the only attention profile is A100 (Llama-2-70B-shaped, TP2), transferred to H100 by the
  ratio of peak bandwidth / FLOPs and scaled by heads per shard (the "roofline" rows use no attention
  profile at all, only the H100 peaks at assumed efficiencies);
* all-reduce: Vidur's H100 NCCL all-reduce profile (intra-node).

Assumed context: ML.ENERGY v3 does not publish input lengths.  Each decode's KV length is taken as
``--prompt`` tokens (default 1,000: an assumption, not a measurement) plus half the measured mean
output length; the 500- and 2,000-token columns show how much the assumption matters.

Two compositions per point, both reported:

* ``decode``: a decode-only iteration of ``b`` sequences (the comparison the ITL names);
* ``steady``: the same decodes batched with the prefill work a steady state adds per iteration on
  average: ``b / output_len`` new prompts of ``--prompt`` tokens each.  That is a *mean* iteration,
  so it is compared with the mean time per output token of a sequence, avg_batch_size /
  output_throughput_tokens_per_sec (Little's law), not with the median ITL: vLLM runs prefills in
  some iterations only, and the median iteration carries none.

What the composition leaves out, so expect it to read low at small batches: CPU time of vLLM's
scheduler, sampler and input preparation (Vidur profiles these separately; not in the data here).
Nothing here is tuned to the ground truth: the constants are fixed in characterize/compose.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

CASES = [
    # (ML.ENERGY model_id, TP, preset, shape overrides, H100 operator profile)
    ("meta-llama/Llama-3.1-8B-Instruct", 1, "llama3-8b", {}, "compute_h100_Llama-2-7b-hf_mlp.csv"),
    ("meta-llama/Llama-3.1-70B-Instruct", 4, "llama2-70b", {"vocab": 128256, "name": "llama3.1-70b"},
     "compute_h100_Llama-2-70b-hf_mlp.csv"),
    ("meta-llama/Llama-3.3-70B-Instruct", 4, "llama2-70b", {"vocab": 128256, "name": "llama3.3-70b"},
     "compute_h100_Llama-2-70b-hf_mlp.csv"),
]
TASK = "lm-arena-chat"


def mape(predicted: np.ndarray, measured: np.ndarray) -> float:
    return float(np.mean(np.abs(predicted - measured) / measured) * 100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--prompt", type=float, default=1000.0, help="Assumed prompt tokens per request.")
    args = parser.parse_args()
    vidur, truth = args.data / "vidur", args.data / "mlenergy" / "mlenergy_v3_llm_configs.csv"
    needed = [truth, vidur / "legacy_acb95f6_a100_attention.csv", vidur / "network_h100_dgx_all_reduce.csv"]
    needed += [vidur / case[4] for case in CASES]
    absent = [str(p) for p in needed if not p.exists()]
    if absent:
        print(f"skipped: shared data absent ({', '.join(absent)})")
        return 0

    import pandas as pd

    from characterize.compose import ComposeShape, build_composer, compose_bundle

    table = pd.read_csv(truth)
    rows = []
    for model_id, tp, preset, overrides, mlp in CASES:
        shape = ComposeShape.from_preset(preset, **overrides)
        composers = {
            "profile": build_composer(shape, "h100", vidur / mlp, vidur / "legacy_acb95f6_a100_attention.csv",
                                      vidur / "network_h100_dgx_all_reduce.csv"),
            "roofline": build_composer(shape, "h100", vidur / mlp, None, vidur / "network_h100_dgx_all_reduce.csv"),
        }
        bundle, _ = compose_bundle(composers["profile"], [tp])
        decode_model = bundle.find("latency_s", "decode")
        measured = table[(table["model_id"] == model_id) & (table["task"] == TASK) & table["gpu_model"].str.contains("H100")
                         & (table["tensor_parallel"] == tp)].sort_values("avg_batch_size")
        for r in measured.itertuples():
            b = float(round(r.avg_batch_size))
            out_len = float(r.avg_output_len)
            row = {"model": model_id.split("/")[1], "tp": tp, "batch": int(b), "out_len": round(out_len),
                   "measured_ms": float(r.median_itl_ms),
                   "mean_itl_ms": 1e3 * float(r.avg_batch_size) / float(r.output_throughput_tokens_per_sec)}
            for prompt in (args.prompt, 500.0, 2000.0):
                k = prompt + out_len / 2
                row[f"decode@{prompt:g}"] = float(composers["profile"].iteration("decode", b, k, tp)["total"]) * 1e3
            k = args.prompt + out_len / 2
            row["bundle"] = float(decode_model.predict(pd.DataFrame({"batch_size": [b], "kv_tokens": [k], "tp": [tp]}))[0]) * 1e3
            row["roofline"] = float(composers["roofline"].iteration("decode", b, k, tp)["total"]) * 1e3
            row["steady"] = float(composers["profile"].mixed_iteration(b, k, args.prompt, 0.0, tp, chunks=b / out_len)["total"]) * 1e3
            rows.append(row)
    frame = pd.DataFrame(rows)
    main_col = f"decode@{args.prompt:g}"
    print(f"Composed decode iteration vs ML.ENERGY v3 {TASK} median ITL on H100 (KV per sequence = prompt + "
          f"out_len/2; prompt assumed {args.prompt:g} tokens)")
    print(f"  columns: measured median ITL; composed decode-only iteration at prompt {args.prompt:g} (main), 500 and 2000;")
    print("  the fitted bundle's decode model (main context); roofline attention instead of the A100 profile; mean")
    print("  ITL (avg_batch_size / output throughput) vs steady state with amortized prefills (b/out_len prompts per")
    print("  iteration).  err = (composed - measured) / measured; steady is scored against mean_itl_ms.")
    shown = frame.copy()
    shown["err_main_%"] = (shown[main_col] / shown["measured_ms"] - 1) * 100
    shown["err_steady_%"] = (shown["steady"] / shown["mean_itl_ms"] - 1) * 100
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print()
    columns = [main_col, "decode@500", "decode@2000", "bundle", "roofline", "steady"]

    def scores(g) -> str:
        return ", ".join(f"{c} {mape(g[c].to_numpy(), g['mean_itl_ms' if c == 'steady' else 'measured_ms'].to_numpy()):.1f}%"
                         for c in columns)

    for model, g in frame.groupby("model", sort=False):
        print(f"MAPE {model} (TP{g['tp'].iloc[0]}, {len(g)} points): {scores(g)}")
    print(f"MAPE all ({len(frame)} points): {scores(frame)}")
    small = frame[frame["batch"] <= 32]
    large = frame[frame["batch"] >= 256]
    for label, g in (("batch <= 32", small), ("batch >= 256", large)):
        signed = float(np.mean(g[main_col] / g["measured_ms"] - 1) * 100)
        print(f"  {label}: main MAPE {mape(g[main_col].to_numpy(), g['measured_ms'].to_numpy()):.1f}% "
              f"(mean signed error {signed:+.1f}%), steady MAPE {mape(g['steady'].to_numpy(), g['mean_itl_ms'].to_numpy()):.1f}% (vs mean ITL)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
