"""Mnemosyne long-context study: TTFT and TBT against context length under chunking, SPP and KVP,
and a planner that picks the cheapest configuration for a context.

For each context length and instance configuration, one long request arrives while a stream of
short requests keeps a decode batch running.  The replay measures the long request's TTFT and its
own time between tokens (decoding over its full KV: mean and worst gap), the worst gap the
co-batched decodes saw while the long prompt was being prefilled - what adaptive chunking
protects - and the TTFT of every short request that arrived during that prefill (finished or not;
``short_unfinished`` of them had no first token at the end of the replay and count as waiting
until then).  The pool's replica scheduler decides whether short prompts prefill beside the long
one (``lars``) or behind it (``fcfs``).

KV capacity comes from the model shape and GPU memory (``replay/memory_planner.py``): a
configuration whose shard does not fit, or whose instance cannot hold the context, is a dropped
row whose ``drop_reason`` gives the bytes it needs.

:func:`plan_configuration` (``replay longctx --plan``) searches TP x SPP x KVP for the cheapest
configuration (fewest GPU-seconds for the long request, or fewest GPUs) meeting a TTFT target, the
TBT SLO for the long request and the co-batched decodes, and a p99 TTFT target for the short
requests during the prefill: an analytic screen (memory, decode and prefix-read bounds, a TTFT
estimate from the adaptive chunk sizes) ranks the candidates, then replays verify them in order.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
import pandas as pd

from toolkit.errors import WattlasError

from ..config import ClusterConfig, PoolConfig
from ..engine import replay
from ..memory_planner import DoesNotFit, bundle_preset, plan_for, pool_kv_capacity

if TYPE_CHECKING:
    from characterize.model_io import ModelBundle

# The four configurations of the first study (all at TP1), kept for `replay longctx` without --tp/--pp/--kvp
CONFIGS = {
    "fixed chunk 8192": dict(chunk_policy="fixed", chunk_size=8192),
    "adaptive chunks": dict(chunk_policy="adaptive"),
    "adaptive + SPP x4": dict(chunk_policy="adaptive", pp=4),
    "adaptive + SPP x4 + KVP x4": dict(chunk_policy="adaptive", pp=4, kvp=4),
}
DEFAULT_SHAPE = "llama3-8b"  # the Python API's shape when neither the caller nor the bundle names one

COLUMNS = ["config", "context_tokens", "tp", "pp", "kvp", "gpus", "ttft_s", "long_tbt_s", "decode_tbt_max_s",
           "short_ttft_p50_s", "short_ttft_p99_s", "shorts_during_prefill", "kv_capacity_tokens", "tbt_slo_s",
           "dropped", "drop_reason", "short_unfinished", "long_tbt_max_s", "gpu_seconds", "scheduler",
           "max_tokens_per_kvp_group"]


def grid_configs(tps: Iterable[int], pps: Iterable[int], kvps: Iterable[int]) -> dict:
    """Adaptive-chunk configurations, one per (tp, pp, kvp)."""
    return {f"adaptive TP{tp} x SPP{pp} x KVP{kvp}": dict(chunk_policy="adaptive", tp=tp, pp=pp, kvp=kvp)
            for tp in tps for pp in pps for kvp in kvps}


def _row(name: str, context: int, pool: PoolConfig, capacity: int | None, **values) -> dict:
    row = {"config": name, "context_tokens": int(context), "tp": pool.tp, "pp": pool.pp, "kvp": pool.kvp,
           "gpus": pool.tp * pool.pp * pool.kvp, "ttft_s": np.nan, "long_tbt_s": np.nan, "decode_tbt_max_s": np.nan,
           "short_ttft_p50_s": np.nan, "short_ttft_p99_s": np.nan, "shorts_during_prefill": 0,
           "kv_capacity_tokens": capacity, "tbt_slo_s": pool.tbt_slo_s, "dropped": False, "drop_reason": None,
           "short_unfinished": 0, "long_tbt_max_s": np.nan, "gpu_seconds": np.nan, "scheduler": pool.scheduler,
           "max_tokens_per_kvp_group": pool.max_tokens_per_kvp_group}
    row.update(values)
    row["long_tbt_mean_s"] = row["long_tbt_s"]  # (the column's earlier name, read by reports)
    return row


def context_sweep(bundle: ModelBundle, contexts: Iterable[int], configs: dict | None = None, base: PoolConfig | None = None,
                  short_rate: float = 5.0, short_input: int = 512, short_output: int = 64,
                  long_output: int = 256, model_shape: str | None = None, gpu_memory_gib: float | None = None,
                  progress: Callable[[], None] | None = None) -> pd.DataFrame:
    """One row per (context, configuration) (columns: ``COLUMNS``, plus ``long_tbt_mean_s``).

    A steady stream of short requests (``short_rate`` per second, small prompts and outputs, so
    their own KV stays small) keeps a decode batch running while the long request's prompt is
    prefilled; ``decode_tbt_max_s`` is the worst gap seen by the short requests that finished
    during that prefill (later ones also decode beside the long request's own KV, which is
    ``long_tbt_s``, mean, and ``long_tbt_max_s``, worst gap).  ``short_ttft_p50_s``/``p99`` cover
    every short request that arrived during the long prefill (``shorts_during_prefill`` of them),
    finished or not: one without a first token at the end of the replay (dropped) counts as
    waiting until then (censored), and ``short_unfinished`` counts them.  The stream covers 1.5x
    the long request's end-to-end time when served alone.  ``gpu_seconds``: the instance's GPUs x
    the long request's end-to-end time.  The pool's ``scheduler`` (``base.scheduler``) batches.

    KV capacity: ``base.kv_capacity_tokens`` when set, else derived for ``model_shape`` (default:
    the bundle's model when it names a preset, else llama3-8b) on ``gpu_memory_gib`` GPUs.
    ``progress`` is called once per row.
    """
    shape = model_shape or (base.model_shape if base else None) or bundle_preset(bundle) or DEFAULT_SHAPE
    base = base or PoolConfig(instances=1, max_batch_tokens=16384, tbt_slo_s=0.05, kv_capacity_tokens=None)
    base = replace(base, instances=1, model_shape=shape,
                   gpu_memory_gib=gpu_memory_gib if gpu_memory_gib is not None else base.gpu_memory_gib)
    rows = []
    for context in contexts:
        context = int(context)
        long = pd.DataFrame({"arrival_s": [1.0], "input_tokens": [context], "output_tokens": [long_output]})
        for name, overrides in (configs or CONFIGS).items():
            pool = replace(base, **overrides)
            rows.append(_one(bundle, name, context, pool, long, short_rate, short_input, short_output, long_output))
            if progress is not None:
                progress()
    return pd.DataFrame(rows, columns=COLUMNS + ["long_tbt_mean_s"])


def _one(bundle, name, context, pool, long, short_rate, short_input, short_output, long_output) -> dict:
    try:
        kv = pool_kv_capacity(pool, bundle)
    except DoesNotFit as exc:  # the weights alone do not fit the GPUs
        return _row(name, context, pool, None, dropped=True, drop_reason=exc.message)
    pool = replace(pool, kv_capacity_tokens=kv.tokens, kv_capacity_source=kv.source)
    need = context + long_output
    if need > kv.tokens * pool.kvp:
        plan = kv.plan or plan_for(pool, pool.model_shape)
        return _row(name, context, pool, kv.tokens, dropped=True,
                    drop_reason=f"needs {need} KV tokens, instance holds {kv.tokens * pool.kvp}: "
                                f"{plan.context_need(need, pool.kvp)}")
    cluster = ClusterConfig(pools=[pool], router="round_robin")
    alone = replay(long, bundle, cluster).requests.iloc[0]
    if alone["dropped"]:
        return _row(name, context, pool, kv.tokens, dropped=True, drop_reason=alone["drop_reason"])
    horizon = 1.0 + 1.5 * alone["e2e_s"]
    shorts = np.arange(0.0, horizon, 1.0 / short_rate) if short_rate > 0 else np.zeros(0)
    trace = pd.DataFrame({
        "arrival_s": np.r_[shorts, 1.0],
        "input_tokens": np.r_[np.full(len(shorts), short_input), context],
        "output_tokens": np.r_[np.full(len(shorts), short_output), long_output],
    }).sort_values("arrival_s", kind="stable").reset_index(drop=True)
    result = replay(trace, bundle, cluster)
    req = result.requests
    is_long = req["input_tokens"] == context
    lr = req[is_long].iloc[0]
    short = req[~is_long]
    # short requests that lived through part of the long prefill and finished before its first
    # token: every gap they saw after its arrival was during the prefill
    overlap = (short["finish_s"] > lr["arrival_s"]) & (short["finish_s"] <= lr["first_token_s"])
    # every short request that arrived during the long prefill, finished or not (no first token:
    # still waiting at the end of the replay)
    during = short[(short["arrival_s"] >= lr["arrival_s"]) & (short["arrival_s"] < lr["first_token_s"])]
    waits, unfinished = censored_waits(during["arrival_s"].to_numpy(), during["first_token_s"].to_numpy(),
                                       result.summary["duration_s"])
    worst = short.loc[overlap, "tbt_max_s"]
    return _row(name, context, pool, kv.tokens, gpus=result.summary["gpus"], ttft_s=lr["ttft_s"],
                long_tbt_s=lr["tbt_mean_s"], decode_tbt_max_s=worst.max() if len(worst) else np.nan,
                short_ttft_p50_s=float(np.quantile(waits, 0.5)) if len(waits) else np.nan,
                short_ttft_p99_s=float(np.quantile(waits, 0.99)) if len(waits) else np.nan,
                shorts_during_prefill=int(len(waits)), short_unfinished=unfinished,
                long_tbt_max_s=lr["tbt_max_s"], gpu_seconds=result.summary["gpus"] * lr["e2e_s"])


def censored_waits(arrival: np.ndarray, first_token: np.ndarray, end_s: float) -> tuple[np.ndarray, int]:
    """(TTFT of every request, how many had no first token): one without a first token by the end
    of the replay (``end_s``) counts as waiting until then - censored, never left out."""
    missing = ~np.isfinite(first_token)
    return np.where(missing, end_s, first_token) - arrival, int(missing.sum())


# ---------------------------------------------------------------------------------------- planner
PLAN_TPS = (1, 2, 4, 8)
PLAN_PPS = (1, 2, 4, 8)
PLAN_KVPS = (1, 2, 3, 4, 6, 8)
OBJECTIVES = ("gpu-seconds", "gpus")
SLO_TOLERANCE = 1.001  # a replayed gap within 0.1 % of the SLO meets it (the adaptive chunk solves to the boundary)
PLAN_COLUMNS = ["config", "tp", "pp", "kvp", "gpus", "status", "reason", "est_ttft_s", "est_long_tbt_s",
                "est_gpu_seconds", "ttft_s", "long_tbt_s", "long_tbt_max_s", "decode_tbt_max_s", "short_ttft_p99_s",
                "short_unfinished", "gpu_seconds"]


def _estimate(cost, pool: PoolConfig, context: int, long_output: int, b: float, k_sum: float) -> dict:
    """Analytic screen of one configuration (no replay): the long request's decode gap at full
    context, the adaptive chunk at the deepest prefix (0: the prefix read alone breaks the SLO beside
    ``b`` decodes holding ``k_sum`` KV tokens), and the TTFT from the chunk sizes along the prompt."""
    from ..scheduler import MIN_CHUNK

    cap = pool.max_tokens_per_kvp_group if pool.kvp > 1 else None

    def groups(tokens: float) -> int:
        return pool.kvp if cap is None else min(pool.kvp, max(1, -(-int(tokens) // cap)))

    slo, pp = pool.tbt_slo_s, pool.pp
    bi = max(1, int(round(b)))
    end = context + long_output
    long_tbt = cost.decode_latency(1 + bi, end + k_sum, groups(end))
    deepest = cost.largest_chunk(context - 1, bi, k_sum, slo, groups=groups(context - 1))
    points = 64
    ttft = 0.0
    for p in (np.arange(points) + 0.5) * context / points:
        g = groups(p)
        c = max(MIN_CHUNK, min(cost.largest_chunk(p, bi, k_sum, slo, groups=g), pool.max_batch_tokens))
        full = cost.piece_latency(c, p, g)
        latency = cost.iteration_latency(pp * c, pp * c * p, pp * c * c, pp * p, bi, k_sum, n=pp, largest=full, groups=g)
        ttft += latency / (pp * c) * context / points
    return {"est_ttft_s": ttft, "est_long_tbt_s": long_tbt, "deepest_chunk": deepest}


def _meets(row: dict, ttft_target_s: float, tbt_slo_s: float, short_ttft_target_s: float) -> str | None:
    """Why a replayed row misses the targets (None: it meets them all)."""
    if row["dropped"]:
        return f"dropped: {row['drop_reason']}"
    checks = [("TTFT", row["ttft_s"], ttft_target_s, 1.0), ("long-request TBT (worst gap)", row["long_tbt_max_s"], tbt_slo_s,
              SLO_TOLERANCE), ("co-batched decode TBT", row["decode_tbt_max_s"], tbt_slo_s, SLO_TOLERANCE),
              ("short p99 TTFT", row["short_ttft_p99_s"], short_ttft_target_s, 1.0)]
    for what, value, target, tolerance in checks:
        if value is not None and np.isfinite(value) and value > target * tolerance:
            return f"{what} {value:.4g} s > {target:g} s"
    if row["short_unfinished"]:
        return f"{row['short_unfinished']} short request(s) never got a first token"
    return None


def plan_configuration(bundle: ModelBundle, context: int, ttft_target_s: float, tbt_slo_s: float,
                       short_ttft_target_s: float = 10.0, tps: Iterable[int] = PLAN_TPS, pps: Iterable[int] = PLAN_PPS,
                       kvps: Iterable[int] = PLAN_KVPS, base: PoolConfig | None = None, objective: str = "gpu-seconds",
                       max_replays: int = 8, short_rate: float = 5.0, short_input: int = 512, short_output: int = 64,
                       long_output: int = 256, model_shape: str | None = None, gpu_memory_gib: float | None = None,
                       progress: Callable[[], None] | None = None) -> dict:
    """The cheapest TP x SPP x KVP configuration for ``context`` tokens meeting the targets.

    Targets: the long request's TTFT <= ``ttft_target_s``; its worst decode gap and the worst gap
    of the decodes co-batched with its prefill <= ``tbt_slo_s``; the p99 TTFT of the short requests
    arriving during the prefill (every one, :func:`context_sweep`) <= ``short_ttft_target_s``.
    Cheapest: fewest GPU-seconds (GPUs x the long request's end-to-end time) or, with ``objective``
    "gpus", fewest GPUs (then GPU-seconds).

    Every candidate is screened analytically (:func:`_estimate`): its shard and the context must
    fit (the bytes otherwise), the long request's decode gap and the co-batched gap at the deepest
    prefix must be within the SLO, and the estimated TTFT within 1.25x the target.  The survivors
    are replayed (the stream of :func:`context_sweep`, ``base.scheduler``: give ``lars`` for
    short requests beside the long prefill) cheapest estimate first, until one meets every target;
    then the others whose estimate could still beat it, at most ``max_replays`` replays in all.

    Returns ``{"context_tokens", "chosen": row or None, "candidates": DataFrame}``: one row per
    candidate (``PLAN_COLUMNS``) with its ``status`` (``chosen``, ``meets``, ``misses``,
    ``rejected``, ``not replayed``) and why.
    """
    from ..cost_model import InstanceCost
    from ..scheduler import MIN_CHUNK

    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}")
    shape = model_shape or (base.model_shape if base else None) or bundle_preset(bundle) or DEFAULT_SHAPE
    base = base or PoolConfig(instances=1, max_batch_tokens=16384, kv_capacity_tokens=None, scheduler="lars")
    base = replace(base, instances=1, model_shape=shape, chunk_policy="adaptive", tbt_slo_s=tbt_slo_s,
                   gpu_memory_gib=gpu_memory_gib if gpu_memory_gib is not None else base.gpu_memory_gib)
    context = int(context)
    b = max(1.0, short_rate * short_output * tbt_slo_s)  # short decodes in flight (Little's law at one token an SLO)
    k_sum = b * (short_input + short_output / 2)
    rows = []
    for tp in tps:
        for pp in pps:
            for kvp in kvps:
                pool = replace(base, tp=tp, pp=pp, kvp=kvp)
                row = {"config": f"TP{tp} x SPP{pp} x KVP{kvp}", "tp": tp, "pp": pp, "kvp": kvp, "gpus": tp * pp * kvp,
                       "status": "rejected", "reason": None, "pool": pool}
                rows.append(row)
                try:
                    kv = pool_kv_capacity(pool, bundle)
                except DoesNotFit as exc:
                    row["reason"] = f"does not fit: {exc.message}"
                    continue
                need = context + long_output
                if need > kv.tokens * kvp:
                    plan = kv.plan or plan_for(pool, shape)
                    row["reason"] = f"context does not fit: {plan.context_need(need, kvp)}"
                    continue
                row["pool"] = pool = replace(pool, kv_capacity_tokens=kv.tokens, kv_capacity_source=kv.source)
                try:
                    cost = InstanceCost.from_bundle(bundle, tp, pool.sm_clock_mhz, pp, kvp, pool.kvp_combine_s,
                                                    pp_transfer_s=pool.pp_transfer_s, model_shape=shape,
                                                    network=pool.kvp_network_csv)
                except (KeyError, WattlasError) as exc:
                    row["reason"] = f"no latency model: {str(exc).strip(chr(34))}"
                    continue
                est = _estimate(cost, pool, context, long_output, b, k_sum)
                row.update({k: est[k] for k in ("est_ttft_s", "est_long_tbt_s")})
                row["est_gpu_seconds"] = row["gpus"] * (est["est_ttft_s"] + long_output * est["est_long_tbt_s"])
                if est["est_long_tbt_s"] > tbt_slo_s:
                    row["reason"] = f"long-request decode {est['est_long_tbt_s'] * 1e3:.1f} ms > TBT SLO"
                elif est["deepest_chunk"] < MIN_CHUNK:
                    row["reason"] = "co-batched decodes: the prefix read at the deepest chunk alone breaks the TBT SLO"
                elif est["est_ttft_s"] > 1.25 * ttft_target_s:
                    row["reason"] = f"estimated TTFT {est['est_ttft_s']:.4g} s > target"
                else:
                    row["status"], row["reason"] = "not replayed", None
    key = (lambda r: (r["est_gpu_seconds"],)) if objective == "gpu-seconds" else (lambda r: (r["gpus"], r["est_gpu_seconds"]))
    screened = sorted((r for r in rows if r["status"] == "not replayed"), key=key)
    long = pd.DataFrame({"arrival_s": [1.0], "input_tokens": [context], "output_tokens": [long_output]})
    best = None
    replays = 0
    for row in screened:
        if replays >= max_replays:
            break
        if best is not None and key(row) >= _actual_key(best, objective):
            break  # its estimate cannot beat what already meets the targets
        result = _one(bundle, row["config"], context, row["pool"], long, short_rate, short_input, short_output, long_output)
        replays += 1
        if progress is not None:
            progress()
        row.update({k: result[k] for k in ("ttft_s", "long_tbt_s", "long_tbt_max_s", "decode_tbt_max_s",
                                            "short_ttft_p99_s", "short_unfinished", "gpu_seconds")})
        why = _meets(result, ttft_target_s, tbt_slo_s, short_ttft_target_s)
        row["status"], row["reason"] = ("misses", why) if why else ("meets", None)
        if why is None and (best is None or _actual_key(row, objective) < _actual_key(best, objective)):
            best = row
    if best is not None:
        best["status"] = "chosen"
    table = pd.DataFrame([{k: r.get(k) for k in PLAN_COLUMNS} for r in rows], columns=PLAN_COLUMNS)
    order = {"chosen": 0, "meets": 1, "misses": 2, "not replayed": 3, "rejected": 4}
    table = table.sort_values(["status", "gpus"], key=lambda s: s.map(order) if s.name == "status" else s, kind="stable")
    chosen = {k: best.get(k) for k in PLAN_COLUMNS} if best is not None else None
    return {"context_tokens": context, "chosen": chosen, "candidates": table.reset_index(drop=True)}


def _actual_key(row: dict, objective: str) -> tuple:
    return (row["gpu_seconds"],) if objective == "gpu-seconds" else (row["gpus"], row["gpu_seconds"])
