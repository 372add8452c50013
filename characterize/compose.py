"""Whole-iteration latency models composed from operator profiles, as Vidur does.

Vidur (microsoft/vidur) profiles the operators of one transformer layer on one GPU - the linear
layers vs tokens per TP degree (``mlp.csv``), attention prefill and decode (``attention.csv``), and
the collectives (``all_reduce.csv``, ``send_recv.csv``) - and composes an iteration from them.
This module does the same for any model shape, then samples the composed iteration on a grid and
fits the project's physical terms models (:class:`characterize.linear_model.TermsModel` over
:data:`characterize.terms.DEFAULT_TERMS`), so ``replay run`` and ``characterize predict`` accept
the result as they accept a fitted bundle.

One iteration of ``T`` tokens (a prefill chunk of ``c`` tokens after a prefix of ``p``: ``T = c``;
``b`` decodes of KV length ``k``: ``T = b``) on TP degree ``t`` and ``pp`` stages::

    layers x (linear ops(T) + attention + [t > 1] 2 all-reduces of T x hidden x 2 bytes)
    + embedding(T) + [t > 1] its all-reduce
    + LM head(n) + [t > 1] the logits all-gather        (n: 1 per prefill chunk, b for decodes)
    + (pp - 1) send/recv of T x hidden x 2 bytes          (one per stage boundary)

* linear ops: per operator and TP, piecewise-linear interpolation of the measured medians vs
  tokens (duplicates of a point: their median), linear extrapolation above the largest profiled
  count (slope of the top quarter), the smallest count's time below it.  When the target shape
  differs from the profile's, each operator is scaled by its work per token (weights of a GEMM,
  width of an elementwise op), a first-order estimate that the metadata states.
* the LM head (which Vidur leaves out) is the measured ``mlp_up_proj`` GEMM scaled to
  ``hidden x vocab`` weights; the embedding is the measured ``emb`` operator.
* attention: a fit of the profile (prefill ``1, c, c*p, c^2, p``; decode ``1, b, b*k, k``; non-
  negative least squares on relative error), scaled to the target's heads per shard; measured on
  another GPU, its memory terms are scaled by the ratio of peak memory bandwidths and its FLOP
  terms by the ratio of peak FLOP rates (same share of peak on both GPUs).  Without an attention
  profile, a roofline of the GPU's peak bandwidth and FLOPs at stated efficiencies.
* collectives: ``alpha + beta x bytes`` per number of workers (non-negative, relative error),
  intra-node rows (``devices_per_node == num_workers``) for all-reduce, as Vidur selects them.

The bundle's latency models are the *unsplit* iteration (every layer in turn, no PP transfers):
replay's cost model divides prefill over the stages and adds ``pp_transfer_s`` per stage
boundary itself; the composed per-boundary send/recv times are in the metadata for that setting.
Times in the profiles are milliseconds; everything returned here is in seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from toolkit.errors import InputError
from toolkit.validation import format_value

# ----------------------------------------------------------------------------- constants

#: Vidur's per-layer operators in ``mlp.csv`` (``time_stats.<op>.median``, ms).
LINEAR_OPS = ("emb", "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
              "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")
#: Operators a profile must have; the others (norms, rope, add, embedding) count 0 when absent,
#: as Vidur fills them.
REQUIRED_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_act", "mlp_down_proj")
#: Per-layer operators (``emb`` runs once per iteration, not per layer).
LAYER_OPS = tuple(op for op in LINEAR_OPS if op != "emb")
MLP_SHAPE_COLUMNS = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size", "use_gated_mlp")
MLP_COLUMNS = MLP_SHAPE_COLUMNS + ("num_tokens", "num_tensor_parallel_workers")
ATTENTION_COLUMNS = ("n_embd", "n_q_head", "n_kv_head", "num_tensor_parallel_workers", "batch_size",
                     "prefill_chunk_size", "kv_cache_size", "is_prefill")
NETWORK_COLUMNS = ("num_workers", "size")
BYTES_PER_ELEMENT = 2  # fp16/bf16 activations and KV

PREFILL_TERMS = ("1", "c", "c*p", "c^2", "p")
DECODE_TERMS = ("1", "b", "b*k", "k")


@dataclass(frozen=True)
class GpuSpec:
    """Peak numbers of a GPU (dense fp16/bf16 tensor FLOP/s, HBM bytes/s) for rooflines."""

    name: str
    flops: float
    bandwidth: float


#: Datasheet peaks: A100 SXM4 80 GB (312 TFLOP/s dense fp16, 2,039 GB/s), H100 SXM5 80 GB
#: (989 TFLOP/s dense fp16, 3,350 GB/s).
GPUS = {"a100": GpuSpec("A100-SXM4-80GB", 312e12, 2.039e12), "h100": GpuSpec("H100-SXM5-80GB", 989e12, 3.35e12)}

#: Roofline attention without a profile: shares of peak reached (FlashAttention-class kernels)
#: and a fixed cost per kernel.  Assumptions, recorded in the bundle's metadata when used.
ROOFLINE_FLOPS_EFFICIENCY = 0.5
ROOFLINE_BANDWIDTH_EFFICIENCY = 0.75
ROOFLINE_KERNEL_S = 10e-6


def gpu_of_name(path: str | Path) -> str | None:
    """The GPU a profile's file name names (``compute_h100_...``: ``h100``), or None."""
    lowered = Path(path).name.lower()
    return next((g for g in GPUS if g in lowered), None)


# ----------------------------------------------------------------------------- model shape

@dataclass(frozen=True)
class ComposeShape:
    """A dense decoder's shape: what composition scales operators by."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    gated: bool = True

    @property
    def head_dim(self) -> int:
        """Dimension of one attention head (hidden / heads)."""
        return self.hidden // self.heads

    @classmethod
    def from_preset(cls, preset: str, **overrides: object) -> "ComposeShape":
        """A preset of :mod:`toolkit.model_shapes` (a gated MLP, as every preset there), with
        ``overrides`` (None values ignored) replacing its fields; changed fields without a new
        ``name`` rename it ``<preset>-custom``.  Raises ``ValueError`` for an unknown preset."""
        from toolkit.model_shapes import PRESETS

        if preset not in PRESETS:
            raise ValueError(f"unknown model preset {preset!r} (presets: {', '.join(PRESETS)})")
        s = PRESETS[preset]
        fields = {"name": s.name, "layers": s.layers, "hidden": s.hidden, "heads": s.heads, "kv_heads": s.kv_heads,
                  "intermediate": s.ffn, "vocab": s.vocab, "gated": True}
        given = {k: v for k, v in overrides.items() if v is not None}
        if "name" not in given and any(fields[k] != v for k, v in given.items()):
            given["name"] = f"{s.name}-custom"  # no longer the preset: replay must not size it as one
        fields.update(given)
        return cls(**fields).checked()

    def checked(self) -> "ComposeShape":
        """This shape, or a ``ValueError`` saying which field is impossible."""
        for name in ("layers", "hidden", "heads", "kv_heads", "intermediate", "vocab"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"model shape: {name} must be an integer >= 1 (got {value!r})")
        if self.hidden % self.heads:
            raise ValueError(f"model shape: hidden {self.hidden} is not a multiple of heads {self.heads}")
        if self.heads % self.kv_heads:
            raise ValueError(f"model shape: heads {self.heads} is not a multiple of kv_heads {self.kv_heads}")
        return self

    def to_json(self) -> dict:
        """The shape as a JSON-ready object (with ``head_dim``)."""
        return {"name": self.name, "layers": int(self.layers), "hidden": int(self.hidden), "heads": int(self.heads),
                "kv_heads": int(self.kv_heads), "head_dim": int(self.head_dim), "intermediate": int(self.intermediate),
                "vocab": int(self.vocab), "gated_mlp": bool(self.gated)}


def op_work(op: str, hidden: int, heads: int, kv_heads: int, intermediate: int, gated: bool) -> float:
    """Work per token of a per-layer operator, up to a constant shared by every shape: weights of
    a GEMM (``hidden x`` its output width), the width an elementwise operator touches."""
    head_dim = hidden / heads
    if op == "attn_pre_proj":  # fused QKV projection
        return hidden * (heads + 2 * kv_heads) * head_dim
    if op == "attn_post_proj":
        return heads * head_dim * hidden
    if op == "attn_rope":  # rotates Q and K
        return (heads + kv_heads) * head_dim
    if op == "mlp_up_proj":  # fused gate + up for a gated MLP
        return hidden * intermediate * (2 if gated else 1)
    if op == "mlp_act":
        return intermediate
    if op == "mlp_down_proj":
        return intermediate * hidden
    return hidden  # emb (one row gathered), norms, add


# ----------------------------------------------------------------------------- CSV reading

def _read_csv(path: str | Path, what: str) -> pd.DataFrame:
    """A CSV as a frame, or an :class:`InputError` saying why not."""
    from toolkit.validation import read_csv_table

    path = Path(path)
    raw = read_csv_table(path)
    if raw.empty:
        raise InputError(path, f"no data rows: not a {what}")
    return raw


def _require(raw: pd.DataFrame, columns: Iterable[str], path: Path, what: str) -> None:
    missing = [c for c in columns if c not in raw.columns]
    if missing:
        found = ", ".join(map(str, raw.columns[:8])) + ("..." if len(raw.columns) > 8 else "")
        raise InputError(path, f"missing required column of a {what} (found: {found})", column=missing[0])


def _numbers(raw: pd.DataFrame, column: str, path: Path, *, minimum: float | None = 0.0, integer: bool = False,
             allow_missing: bool = False, rows: np.ndarray | None = None) -> np.ndarray:
    """Column ``column`` as float64, checked on the rows ``rows`` selects (all by default): finite
    numbers, >= ``minimum``, integers where ``integer``; a missing value is NaN where
    ``allow_missing``.  The first bad cell is an :class:`InputError` naming its 1-based data row."""
    values = pd.to_numeric(raw[column], errors="coerce").to_numpy(dtype="float64")
    where = np.ones(len(values), dtype=bool) if rows is None else rows
    text = raw[column]

    def fail(mask: np.ndarray, message: str) -> None:
        hits = np.flatnonzero(mask & where)
        if hits.size:
            i = int(hits[0])
            raise InputError(path, message.format(value=format_value(text.iloc[i])), row=i + 1, column=column)

    missing = text.isna().to_numpy()
    if not allow_missing:
        fail(missing, "missing value")
    fail(~missing & ~np.isfinite(values), "not a finite number ({value})")
    if minimum is not None:
        fail(np.isfinite(values) & (values < minimum), f"must be >= {minimum:g} (got {{value}})")
    if integer:
        fail(np.isfinite(values) & (values != np.round(values)), "must be an integer (got {value})")
    return values


def _flags(raw: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    """A true/false column (``True``, ``false``, 1, 0) as booleans."""
    text = raw[column].astype(str).str.strip().str.lower()
    truth = text.isin(("true", "1", "1.0"))
    bad = ~(truth | text.isin(("false", "0", "0.0")))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(path, f"must be true or false (got {format_value(raw[column].iloc[i])})", row=i + 1, column=column)
    return truth.to_numpy()


def _constant(raw: pd.DataFrame, column: str, values: np.ndarray, path: Path, what: str) -> float:
    """The one value of a column that must not vary within the file."""
    differ = np.flatnonzero(values != values[0])
    if differ.size:
        i = int(differ[0])
        raise InputError(path, f"{what} holds one model shape; this row has {format_value(raw[column].iloc[i])}, "
                               f"row 1 has {format_value(raw[column].iloc[0])}", row=i + 1, column=column)
    return float(values[0])


# ----------------------------------------------------------------------------- small models

@dataclass
class Curve:
    """Piecewise-linear interpolation of measured (x, y); above the last point, linear with the
    slope of the top quarter of the points (>= 0); below the first, the first point's value."""

    xs: np.ndarray
    ys: np.ndarray
    slope: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray) -> "Curve":
        """The curve through the medians of ``y`` at each distinct ``x``."""
        frame = pd.DataFrame({"x": x, "y": y}).groupby("x", sort=True)["y"].median()
        xs, ys = frame.index.to_numpy(dtype="float64"), frame.to_numpy(dtype="float64")
        slope = 0.0
        if len(xs) >= 2:
            top = max(2, len(xs) // 4)
            slope = max(0.0, float(np.polyfit(xs[-top:], ys[-top:], 1)[0]))
        return cls(xs, ys, slope)

    def __call__(self, x: np.ndarray | float) -> np.ndarray:
        x = np.asarray(x, dtype="float64")
        inside = np.interp(x, self.xs, self.ys)
        return np.where(x > self.xs[-1], self.ys[-1] + self.slope * (x - self.xs[-1]), inside)


def _nnls_relative(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Non-negative coefficients minimizing relative squared error, and the fit's MAPE and
    largest absolute percentage error (percent)."""
    from scipy.optimize import nnls

    w = 1.0 / np.maximum(y, 1e-12)
    scale = np.maximum(np.abs(X * w[:, None]).max(axis=0), 1e-300)  # conditioning
    coef, _ = nnls(X * w[:, None] / scale, y * w)
    coef = coef / scale
    ape = np.abs(X @ coef - y) / np.maximum(y, 1e-12) * 100
    return coef, float(ape.mean()), float(ape.max())


@dataclass
class Affine:
    """``alpha + beta x bytes`` (ms), fitted on ``n`` sizes; ``mape`` of the fit (percent)."""

    alpha_ms: float
    beta_ms_per_byte: float
    n: int
    mape: float

    def __call__(self, nbytes: np.ndarray | float) -> np.ndarray:
        return self.alpha_ms + self.beta_ms_per_byte * np.asarray(nbytes, dtype="float64")

    def to_json(self) -> dict:
        """Parameters for the metadata: latency (us), bandwidth (GB/s), fit quality."""
        return {"alpha_us": round(self.alpha_ms * 1e3, 3),
                "bandwidth_gb_s": round(1e-6 / self.beta_ms_per_byte, 2) if self.beta_ms_per_byte > 0 else None,
                "sizes": self.n, "fit_mape_pct": round(self.mape, 2)}


# ----------------------------------------------------------------------------- profiles

@dataclass
class MlpProfile:
    """Vidur ``mlp.csv``: per TP, per operator, time (ms) vs tokens; the profiled shape."""

    path: Path
    gpu: str | None
    shape: dict
    curves: dict[int, dict[str, Curve]]
    max_tokens: int
    absent_ops: list[str] = field(default_factory=list)

    def op_ms(self, op: str, tp: int, tokens: np.ndarray) -> np.ndarray:
        """Interpolated time (ms) of operator ``op`` at TP ``tp`` for ``tokens``."""
        curve = self.curves[tp].get(op)
        return np.zeros(np.shape(tokens)) if curve is None else curve(tokens)


def read_mlp_profile(path: str | Path) -> MlpProfile:
    """A Vidur operator profile (``mlp.csv``), validated: its shape columns constant, token
    counts and TP degrees integers >= 1, every time a finite number >= 0 (the norms, rope, add and
    embedding may be absent or empty: they then count 0).  Raises :class:`InputError` naming the
    file, the first bad row and the column."""
    path = Path(path)
    what = "Vidur mlp.csv operator profile"
    raw = _read_csv(path, what)
    _require(raw, MLP_COLUMNS + tuple(f"time_stats.{op}.median" for op in REQUIRED_OPS), path, what)
    tokens = _numbers(raw, "num_tokens", path, minimum=1, integer=True)
    tps = _numbers(raw, "num_tensor_parallel_workers", path, minimum=1, integer=True)
    shape = {}
    for column in MLP_SHAPE_COLUMNS:
        if column == "use_gated_mlp":
            shape["gated"] = bool(_constant(raw, column, _flags(raw, column, path).astype(float), path, what))
        else:
            values = _numbers(raw, column, path, minimum=1, integer=True)
            shape[column] = int(_constant(raw, column, values, path, what))
    if shape["n_embd"] % shape["n_head"] or shape["n_head"] % shape["n_kv_head"]:
        raise InputError(path, f"n_embd {shape['n_embd']}, n_head {shape['n_head']} and n_kv_head {shape['n_kv_head']} "
                               "do not divide (n_embd by n_head, n_head by n_kv_head)", row=1, column="n_head")
    times, absent = {}, []
    for op in LINEAR_OPS:
        column = f"time_stats.{op}.median"
        if column not in raw:
            absent.append(op)
            continue
        values = _numbers(raw, column, path, allow_missing=op not in REQUIRED_OPS)
        if op not in REQUIRED_OPS and np.isnan(values).all():
            absent.append(op)
            continue
        times[op] = np.nan_to_num(values, nan=0.0)
    curves: dict[int, dict[str, Curve]] = {}
    for tp in sorted(set(tps.astype(int))):
        rows = tps == tp
        curves[int(tp)] = {op: Curve.fit(tokens[rows], t[rows]) for op, t in times.items()}
    return MlpProfile(path, gpu_of_name(path), shape, curves, int(tokens.max()), absent)


@dataclass
class AttentionGroup:
    """One profiled attention configuration (shape and TP): fitted prefill and decode times
    (ms) per layer on one GPU, terms :data:`PREFILL_TERMS` / :data:`DECODE_TERMS`."""

    q_heads: int
    kv_heads: int
    head_dim: int
    tp: int
    prefill: np.ndarray | None
    decode: np.ndarray | None
    fit: dict

    @property
    def q_shard(self) -> float:
        return self.q_heads / self.tp

    @property
    def kv_shard(self) -> float:
        return max(1.0, self.kv_heads / self.tp)


@dataclass
class AttentionProfile:
    """Vidur ``attention.csv``: fitted groups, one per (heads, KV heads, hidden, TP)."""

    path: Path
    gpu: str | None
    groups: list[AttentionGroup]
    max_kv: int


def _prefill_design(c: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones_like(c), c, c * p, c * c, p])


def _decode_design(b: np.ndarray, k: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones_like(b), b, b * k, k])


def read_attention_profile(path: str | Path) -> AttentionProfile:
    """A Vidur attention profile, validated and fitted per configuration: prefill time (the
    ``attn_prefill`` kernel plus the input/output reshapes where measured) on ``1, c, c*p, c^2,
    p`` and decode time on ``1, b, b*k, k``, non-negative, minimizing relative error.  Raises
    :class:`InputError` naming the file, the first bad row and the column."""
    path = Path(path)
    what = "Vidur attention.csv profile"
    raw = _read_csv(path, what)
    _require(raw, ATTENTION_COLUMNS, path, what)
    prefill = _flags(raw, "is_prefill", path)
    needed = [("time_stats.attn_prefill.median", prefill), ("time_stats.attn_decode.median", ~prefill)]
    for column, rows in needed:
        if rows.any() and column not in raw:
            _require(raw, [column], path, what)
    ints = {c: _numbers(raw, c, path, minimum=0 if c in ("batch_size", "prefill_chunk_size", "kv_cache_size") else 1,
                        integer=True)
            for c in ATTENTION_COLUMNS if c != "is_prefill"}
    chunk, kv, batch = ints["prefill_chunk_size"], ints["kv_cache_size"], ints["batch_size"]
    for column, rows, values in (("prefill_chunk_size", prefill, chunk), ("batch_size", ~prefill, batch)):
        bad = np.flatnonzero(rows & (values < 1))
        if bad.size:
            raise InputError(path, f"must be >= 1 on a {'prefill' if column == 'prefill_chunk_size' else 'decode'} row "
                                   f"(got {format_value(raw[column].iloc[int(bad[0])])})", row=int(bad[0]) + 1, column=column)
    latency = np.zeros(len(raw))
    for column, rows in needed:
        if rows.any():
            latency[rows] = _numbers(raw, column, path, rows=rows)[rows]
    for op in ("attn_input_reshape", "attn_output_reshape", "attn_kv_cache_save"):
        column = f"time_stats.{op}.median"
        if column in raw:
            latency += np.nan_to_num(_numbers(raw, column, path, allow_missing=True), nan=0.0)
    zero = np.flatnonzero(latency <= 0)
    if zero.size:
        i = int(zero[0])
        column = "time_stats.attn_prefill.median" if prefill[i] else "time_stats.attn_decode.median"
        raise InputError(path, "attention time must be > 0 (got 0)", row=i + 1, column=column)
    keys = np.column_stack([ints["n_q_head"], ints["n_kv_head"], ints["n_embd"], ints["num_tensor_parallel_workers"]])
    groups = []
    for key in np.unique(keys, axis=0):
        q, kvh, embd, tp = (int(v) for v in key)
        if embd % q or q % kvh:
            i = int(np.flatnonzero((keys == key).all(axis=1))[0])
            raise InputError(path, f"n_embd {embd}, n_q_head {q} and n_kv_head {kvh} do not divide", row=i + 1, column="n_q_head")
        rows = (keys == key).all(axis=1)
        fit, pre_coef, dec_coef = {}, None, None
        pre, dec = rows & prefill, rows & ~prefill
        if pre.sum() >= 2 * len(PREFILL_TERMS):
            pre_coef, m, mx = _nnls_relative(_prefill_design(chunk[pre], kv[pre]), latency[pre])
            fit["prefill"] = {"rows": int(pre.sum()), "fit_mape_pct": round(m, 2), "fit_max_ape_pct": round(mx, 1)}
        if dec.sum() >= 2 * len(DECODE_TERMS):
            dec_coef, m, mx = _nnls_relative(_decode_design(batch[dec], kv[dec]), latency[dec])
            fit["decode"] = {"rows": int(dec.sum()), "fit_mape_pct": round(m, 2), "fit_max_ape_pct": round(mx, 1)}
        groups.append(AttentionGroup(q, kvh, embd // q, tp, pre_coef, dec_coef, fit))
    if not any(g.prefill is not None for g in groups) or not any(g.decode is not None for g in groups):
        missing = "prefill" if not any(g.prefill is not None for g in groups) else "decode"
        raise InputError(path, f"too few {missing} rows to fit attention (each configuration needs "
                               f"{2 * len(PREFILL_TERMS if missing == 'prefill' else DECODE_TERMS)})", column="is_prefill")
    return AttentionProfile(path, gpu_of_name(path), groups, int(kv.max()))


@dataclass
class NetworkProfile:
    """Vidur ``all_reduce.csv`` / ``send_recv.csv``: per (workers, devices per node) an affine
    time (ms) vs bytes."""

    path: Path
    op: str
    fits: dict[tuple[int, int | None], Affine]

    def model(self, workers: int, devices_per_node: int | None) -> Affine | None:
        """The fit for ``workers`` on ``devices_per_node`` per node (None: whatever was profiled
        for that many workers, the most devices per node first), or None."""
        if (workers, devices_per_node) in self.fits:
            return self.fits[(workers, devices_per_node)]
        if devices_per_node is None:
            candidates = sorted((k for k in self.fits if k[0] == workers), key=lambda k: -(k[1] or 0))
            return self.fits[candidates[0]] if candidates else None
        return self.fits.get((workers, None))


def read_network_profile(path: str | Path, op: str) -> NetworkProfile:
    """A Vidur collective profile (``op``: ``all_reduce`` or ``send_recv``), validated and fitted:
    ``alpha + beta x bytes`` per (num_workers, devices_per_node).  ``size`` is in bytes: Vidur's
    profiler writes twice the fp16 element count (``collectives_wrapper.py``: ``size * 2  # bytes``).
    Raises :class:`InputError` naming the file, the first bad row and the column."""
    path = Path(path)
    what = f"Vidur {op}.csv profile"
    raw = _read_csv(path, what)
    column = f"time_stats.{op}.median"
    _require(raw, NETWORK_COLUMNS + (column,), path, what)
    if "collective" in raw:
        wrong = np.flatnonzero(raw["collective"].astype(str).to_numpy() != op)
        if wrong.size:
            i = int(wrong[0])
            raise InputError(path, f"collective is {format_value(raw['collective'].iloc[i])}, expected {op!r} "
                                   f"(give the {op} profile here)", row=i + 1, column="collective")
    workers = _numbers(raw, "num_workers", path, minimum=1, integer=True)
    size = _numbers(raw, "size", path, minimum=1)
    time_ms = _numbers(raw, column, path)
    zero = np.flatnonzero(time_ms <= 0)
    if zero.size:
        raise InputError(path, "time must be > 0 (got 0)", row=int(zero[0]) + 1, column=column)
    per_node = (_numbers(raw, "devices_per_node", path, minimum=1, integer=True) if "devices_per_node" in raw
                else np.full(len(raw), np.nan))
    fits = {}
    frame = pd.DataFrame({"w": workers, "d": per_node, "size": size, "t": time_ms})
    for (w, d), g in frame.groupby(["w", "d"], dropna=False, sort=True):
        medians = g.groupby("size")["t"].median()
        x, y = medians.index.to_numpy(dtype="float64"), medians.to_numpy(dtype="float64")
        if len(x) < 2:
            continue
        coef, mape, _ = _nnls_relative(np.column_stack([np.ones_like(x), x]), y)
        fits[(int(w), None if np.isnan(d) else int(d))] = Affine(float(coef[0]), float(coef[1]), len(x), mape)
    if not fits:
        raise InputError(path, f"no (num_workers, devices_per_node) with two sizes or more to fit {op}", column="size")
    return NetworkProfile(path, op, fits)


# ----------------------------------------------------------------------------- attention sources

class ProfiledAttention:
    """Attention per layer and shard from a profile, scaled to the target's heads per shard and,
    when measured on another GPU, by the ratio of the GPUs' peaks."""

    def __init__(self, profile: AttentionProfile, shape: ComposeShape, gpu: str) -> None:
        self.profile, self.shape, self.gpu = profile, shape, gpu
        source = profile.gpu or gpu
        self.transfer = None if source == gpu else (GPUS[source], GPUS[gpu])
        self.notes: list[str] = []

    def _group(self, tp: int, phase: str) -> AttentionGroup:
        q, kv = self.shape.heads / tp, max(1.0, self.shape.kv_heads / tp)
        fitted = [g for g in self.profile.groups if getattr(g, phase) is not None]
        return min(fitted, key=lambda g: (abs(math.log(g.q_shard / q)) + abs(math.log(g.kv_shard / kv))
                                          + abs(math.log(g.head_dim / self.shape.head_dim))))

    def _scales(self, tp: int, group: AttentionGroup) -> tuple[float, float, float, float]:
        """(query-side ratio, KV-side ratio, memory-peak ratio, FLOP-peak ratio) target / profile."""
        rq = (self.shape.heads / tp * self.shape.head_dim) / (group.q_shard * group.head_dim)
        rk = (max(1.0, self.shape.kv_heads / tp) * self.shape.head_dim) / (group.kv_shard * group.head_dim)
        if self.transfer is None:
            return rq, rk, 1.0, 1.0
        src, dst = self.transfer
        return rq, rk, src.bandwidth / dst.bandwidth, src.flops / dst.flops

    def prefill_s(self, c: np.ndarray, p: np.ndarray, tp: int) -> np.ndarray:
        """One layer's prefill attention (s) of chunks ``c`` after prefixes ``p`` at TP ``tp``."""
        g = self._group(tp, "prefill")
        rq, rk, mem, fl = self._scales(tp, g)
        k0, kc, kcp, kc2, kp = g.prefill
        return (k0 + kc * rq * mem * c + (kcp * c * p + kc2 * c * c) * rq * fl + kp * rk * mem * p) / 1e3

    def decode_s(self, b: np.ndarray, k: np.ndarray, tp: int) -> np.ndarray:
        """One layer's decode attention (s) of ``b`` sequences of KV length ``k`` at TP ``tp``."""
        g = self._group(tp, "decode")
        rq, rk, mem, _ = self._scales(tp, g)
        d0, db, dbk, dk = g.decode
        return (d0 + db * rq * mem * b + (dbk * b * k + dk * k) * rk * mem) / 1e3

    def describe(self, tps: list[int]) -> list[str]:
        """What was measured and how it was scaled, per TP."""
        base = Path(self.profile.path).name
        lines = []
        for tp in tps:
            g = self._group(tp, "decode")
            rq, rk, _, _ = self._scales(tp, g)
            same = abs(rq - 1) < 1e-9 and abs(rk - 1) < 1e-9
            lines.append(f"tp={tp}: attention from {base} (measured with {g.q_heads} q / {g.kv_heads} kv heads, head_dim "
                         f"{g.head_dim}, TP{g.tp}: {g.q_shard:g} q / {g.kv_shard:g} kv heads per shard)"
                         + ("" if same else f", scaled by heads per shard: query-side x{rq:.3g}, KV-side x{rk:.3g}"))
        if self.profile.gpu is None:
            lines.append(f"the attention profile's file name names no GPU: taken as measured on {GPUS[self.gpu].name}")
        if self.transfer is not None:
            src, dst = self.transfer
            lines.append(f"attention measured on {src.name}, target {dst.name}: memory terms x{src.bandwidth / dst.bandwidth:.3f} "
                         f"(peak bandwidth ratio), FLOP terms x{src.flops / dst.flops:.3f} (peak FLOP ratio): assumes the "
                         "same share of peak on both GPUs")
        return lines


class RooflineAttention:
    """Attention per layer and shard from the GPU's peaks: FLOPs (4 x heads x head_dim per query-key
    pair, causal within the chunk) over ``ROOFLINE_FLOPS_EFFICIENCY`` x peak, KV and Q/O bytes over
    ``ROOFLINE_BANDWIDTH_EFFICIENCY`` x peak bandwidth, the larger of both plus a kernel's fixed cost."""

    def __init__(self, shape: ComposeShape, gpu: str, flops_eff: float = ROOFLINE_FLOPS_EFFICIENCY,
                 bw_eff: float = ROOFLINE_BANDWIDTH_EFFICIENCY, kernel_s: float = ROOFLINE_KERNEL_S) -> None:
        self.shape, self.spec = shape, GPUS[gpu]
        self.flops, self.bandwidth, self.kernel_s = self.spec.flops * flops_eff, self.spec.bandwidth * bw_eff, kernel_s
        self.flops_eff, self.bw_eff = flops_eff, bw_eff

    def _widths(self, tp: int) -> tuple[float, float]:
        return self.shape.heads / tp * self.shape.head_dim, max(1.0, self.shape.kv_heads / tp) * self.shape.head_dim

    def prefill_s(self, c: np.ndarray, p: np.ndarray, tp: int) -> np.ndarray:
        """One layer's prefill attention (s) of chunks ``c`` after prefixes ``p`` at TP ``tp``."""
        q, kv = self._widths(tp)
        flops = 4 * q * (c * p + c * (c + 1) / 2)
        nbytes = BYTES_PER_ELEMENT * (2 * kv * (p + c) + 2 * q * c)
        return self.kernel_s + np.maximum(flops / self.flops, nbytes / self.bandwidth)

    def decode_s(self, b: np.ndarray, k: np.ndarray, tp: int) -> np.ndarray:
        """One layer's decode attention (s) of ``b`` sequences of KV length ``k`` at TP ``tp``."""
        q, kv = self._widths(tp)
        nbytes = BYTES_PER_ELEMENT * (2 * kv * b * k + 2 * q * b)
        return self.kernel_s + nbytes / self.bandwidth

    def describe(self, tps: list[int]) -> list[str]:
        return [f"no attention profile for this GPU: attention is a roofline of {self.spec.name} peaks "
                f"({self.spec.flops / 1e12:g} TFLOP/s at {self.flops_eff:g}, {self.spec.bandwidth / 1e9:g} GB/s at "
                f"{self.bw_eff:g}, +{self.kernel_s * 1e6:g} us per kernel) - assumed efficiencies, not measured"]


# ----------------------------------------------------------------------------- composition

COMPONENTS = ("linear", "attention", "all_reduce", "embedding", "lm_head", "send_recv")


@dataclass
class Composer:
    """Composes whole iterations of ``shape`` on ``gpu`` from operator profiles."""

    shape: ComposeShape
    gpu: str
    mlp: MlpProfile
    attention: ProfiledAttention | RooflineAttention
    all_reduce: NetworkProfile | None = None
    send_recv: NetworkProfile | None = None
    devices_per_node: int = 8

    def __post_init__(self) -> None:
        s, prof = self.shape, self.mlp.shape
        args = dict(hidden=prof["n_embd"], heads=prof["n_head"], kv_heads=prof["n_kv_head"],
                    intermediate=prof["n_expanded_embd"], gated=prof["gated"])
        target = dict(hidden=s.hidden, heads=s.heads, kv_heads=s.kv_heads, intermediate=s.intermediate, gated=s.gated)
        self.op_scale = {op: op_work(op, **target) / op_work(op, **args) for op in LINEAR_OPS}
        # LM head: hidden x vocab weights, timed as the profiled up-projection GEMM scaled by weights
        self.lm_head_scale = (s.hidden * s.vocab) / op_work("mlp_up_proj", **args)

    # -- checks
    def check_tp(self, tp: int, pp: int = 1) -> None:
        """Raise ``ValueError`` when ``tp``/``pp`` cannot be composed (and why)."""
        if tp not in self.mlp.curves:
            raise ValueError(f"the operator profile {self.mlp.path.name} has no rows at TP {tp} "
                             f"(profiled: {', '.join(map(str, sorted(self.mlp.curves)))})")
        if self.shape.heads % tp:
            raise ValueError(f"TP {tp} does not divide the {self.shape.heads} attention heads")
        if tp > 1 and self._all_reduce(tp) is None:
            raise ValueError(f"TP {tp} needs an all-reduce profile with num_workers={tp}"
                             + ("" if self.all_reduce is None else f" (in {self.all_reduce.path.name}: "
                                f"{sorted({w for w, _ in self.all_reduce.fits})})"))
        if pp > 1 and self._send_recv(tp, pp) is None:
            raise ValueError("PP > 1 needs a send/recv profile with num_workers=2" if self.send_recv is None else
                             f"no send/recv fit for 2 workers in {self.send_recv.path.name}")
        if pp > self.shape.layers:
            raise ValueError(f"PP {pp} exceeds the {self.shape.layers} layers")

    def _all_reduce(self, tp: int) -> Affine | None:
        if self.all_reduce is None:
            return None
        # Vidur: one node's workers all on it (devices_per_node == num_workers)
        return self.all_reduce.fits.get((tp, tp)) or self.all_reduce.model(tp, None)

    def _send_recv(self, tp: int, pp: int) -> Affine | None:
        if self.send_recv is None:
            return None
        multi_node = tp * pp > self.devices_per_node  # Vidur: devices_per_node 1 across nodes, 2 within one
        return self.send_recv.model(2, 1 if multi_node else 2) or self.send_recv.model(2, None)

    # -- the iteration
    def _linear_ms(self, tokens: np.ndarray, tp: int) -> np.ndarray:
        return sum(self.mlp.op_ms(op, tp, tokens) * self.op_scale[op] for op in LAYER_OPS)

    def _compose(self, tokens: np.ndarray, logits: np.ndarray, attention_s: np.ndarray, tp: int, pp: int) -> dict[str, np.ndarray]:
        """Seconds per component of iterations of ``tokens`` tokens, ``logits`` LM-head rows and
        ``attention_s`` seconds of attention per layer."""
        layers = self.shape.layers
        act_bytes = tokens * self.shape.hidden * BYTES_PER_ELEMENT
        out = {"linear": layers * self._linear_ms(tokens, tp) / 1e3, "attention": layers * attention_s,
               "embedding": self.mlp.op_ms("emb", tp, tokens) * self.op_scale["emb"] / 1e3,
               "lm_head": self.mlp.op_ms("mlp_up_proj", tp, logits) * self.lm_head_scale / 1e3,
               "all_reduce": np.zeros_like(tokens), "send_recv": np.zeros_like(tokens)}
        if tp > 1:
            ar = self._all_reduce(tp)
            gathered = logits * self.shape.vocab * BYTES_PER_ELEMENT
            # 2 per layer, 1 after the vocab-parallel embedding; the logits all-gather as the
            # all-reduce's latency plus half its bandwidth term (a ring all-reduce is a
            # reduce-scatter plus an all-gather)
            out["all_reduce"] = ((2 * layers + 1) * ar(act_bytes) + ar.alpha_ms + 0.5 * ar.beta_ms_per_byte * gathered) / 1e3
        if pp > 1:
            out["send_recv"] = (pp - 1) * self._send_recv(tp, pp)(act_bytes) / 1e3
        out["unsplit"] = sum(out[k] for k in COMPONENTS if k != "send_recv")
        out["total"] = out["unsplit"] + out["send_recv"]
        return out

    def iteration(self, phase: str, x: np.ndarray | float, y: np.ndarray | float, tp: int, pp: int = 1) -> dict[str, np.ndarray]:
        """Seconds per component (:data:`COMPONENTS`) and ``total`` of iterations: ``phase``
        ``prefill`` (x = chunk tokens c, y = prefix tokens p) or ``decode`` (x = batch b, y = KV
        tokens per sequence k), on TP ``tp`` over ``pp`` stages.  ``total`` includes the PP send/recv;
        ``unsplit`` is the total without it (what replay's cost model takes).  Raises ``ValueError``
        for a TP or PP that cannot be composed (:meth:`check_tp`) or an unknown phase."""
        self.check_tp(tp, pp)
        x, y = np.broadcast_arrays(np.asarray(x, dtype="float64"), np.asarray(y, dtype="float64"))
        if phase == "prefill":
            return self._compose(x, np.ones_like(x), self.attention.prefill_s(x, y, tp), tp, pp)
        if phase == "decode":
            return self._compose(x, x, self.attention.decode_s(x, y, tp), tp, pp)
        raise ValueError(f"phase must be prefill or decode (got {phase!r})")

    def mixed_iteration(self, b: float, k: float, c: float, p: float, tp: int, chunks: float = 1.0,
                        pp: int = 1) -> dict[str, np.ndarray]:
        """Seconds per component of one iteration of ``b`` decodes (KV ``k`` each) batched with
        ``chunks`` prefill chunks of ``c`` tokens after ``p`` (``chunks`` may be fractional: an
        average over iterations).  The linear operators and collectives see all the tokens at once."""
        self.check_tp(tp, pp)
        b, k, c, p = (np.asarray(v, dtype="float64") for v in (b, k, c, p))
        attention = self.attention.decode_s(b, k, tp) * (b > 0) + chunks * self.attention.prefill_s(c, p, tp) * (c > 0)
        return self._compose(b + chunks * c, b + chunks * (c > 0), attention, tp, pp)

    def assumptions(self, tps: list[int], pp: int) -> list[str]:
        """What the composition assumed, in words, for the bundle's metadata."""
        notes = ["per-operator medians (ms) of the profiles; kernels only: no CPU scheduling, sampling or "
                 "launch gaps between kernels (Vidur models those separately; not here)"]
        scaled = {op: f for op, f in self.op_scale.items() if abs(f - 1) > 1e-9 and op not in self.mlp.absent_ops}
        prof = self.mlp.shape
        if scaled:
            notes.append(f"target shape differs from the operator profile's ({prof['n_embd']} hidden, {prof['n_head']} q / "
                         f"{prof['n_kv_head']} kv heads, {prof['n_expanded_embd']} intermediate, gated {prof['gated']}): "
                         "operators scaled by work per token (first-order, GEMM efficiency taken as equal): "
                         + ", ".join(f"{op} x{f:.3g}" for op, f in scaled.items()))
        if self.mlp.absent_ops:
            notes.append(f"operators absent from the profile counted 0: {', '.join(self.mlp.absent_ops)}")
        notes.append(f"LM head: the profiled mlp_up_proj GEMM scaled to hidden x vocab weights (x{self.lm_head_scale:.3g}), "
                     "1 logits row per prefill chunk, b per decode batch")
        notes.extend(self.attention.describe(tps))
        if any(tp > 1 for tp in tps):
            fits = {tp: self._all_reduce(tp).to_json() for tp in tps if tp > 1}
            notes.append(f"TP all-reduce: 2 per layer + 1 after the embedding, tokens x hidden x {BYTES_PER_ELEMENT} bytes, "
                         f"alpha + beta x bytes fitted on {self.all_reduce.path.name} (intra-node rows) "
                         f"{fits}; logits all-gather = all-reduce latency + half its bandwidth term")
        if pp > 1:
            sr = self._send_recv(max(tps), pp)
            notes.append(f"PP: {pp - 1} send/recv of tokens x hidden x {BYTES_PER_ELEMENT} bytes per full pass, fitted on "
                         f"{self.send_recv.path.name} {sr.to_json()}; left out of the latency models (replay adds "
                         "pp_transfer_s per stage boundary itself), see metadata pp_transfer_s")
        notes.append("beyond the profiled tokens, operators extrapolate linearly; attention extrapolates in its fitted "
                     "terms (c*p, c^2, b*k)")
        return notes


# ----------------------------------------------------------------------------- bundle

PREFILL_CHUNKS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
PREFILL_PREFIXES = (0, 256, 1024, 4096, 16384, 32768)
DECODE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
DECODE_KV = (128, 512, 1024, 2048, 4096, 8192, 16384, 32768)


def sample_grid(composer: Composer, tps: list[int], pp: int = 1) -> pd.DataFrame:
    """Composed iterations on the grid: prefill chunks up to the profile's largest token count
    after every prefix, decodes of every batch up to it at every KV length, per TP.  Profile
    columns (``phase``, ``chunk_tokens``, ...), ``latency_s`` the unsplit iteration, plus one
    ``*_s`` column per component."""
    frames = []
    cap = composer.mlp.max_tokens
    for tp in tps:
        for phase, xs, ys in (("prefill", PREFILL_CHUNKS, PREFILL_PREFIXES), ("decode", DECODE_BATCHES, DECODE_KV)):
            xs = [v for v in xs if v <= cap] or [cap]
            x, y = (a.ravel() for a in np.meshgrid(np.array(xs, dtype="float64"), np.array(ys, dtype="float64")))
            parts = composer.iteration(phase, x, y, tp, pp)
            prefill = phase == "prefill"
            frames.append(pd.DataFrame({
                "phase": phase, "chunk_tokens": x if prefill else 0.0, "prefix_tokens": y if prefill else 0.0,
                "batch_size": 0.0 if prefill else x, "kv_tokens": 0.0 if prefill else y, "tp": tp,
                "latency_s": parts["unsplit"], **{f"{k}_s": parts[k] for k in COMPONENTS},
            }))
    frame = pd.concat(frames, ignore_index=True)
    frame["load_tokens"] = frame["chunk_tokens"] + frame["batch_size"]
    return frame


def compose_bundle(composer: Composer, tps: list[int], pp: int = 1, sources: list[str | Path] = ()):
    """A :class:`~characterize.model_io.ModelBundle` of the composed iteration: per phase
    (``prefill``, ``decode``) a :class:`TermsModel` over ``DEFAULT_TERMS`` grouped by TP, fitted
    on :func:`sample_grid`, its validation report (grouped-CV and extrapolation MAPE, plus
    ``grid_mape``: the fit vs the composed iteration on the grid), and metadata (shape, GPU,
    source basenames, ``composed_from``, assumptions, ``pp_transfer_s``)."""
    from .fitting import select_latency_model
    from .linear_model import TermsModel
    from .model_io import ModelBundle
    from .terms import DEFAULT_TERMS

    for tp in tps:
        composer.check_tp(tp, pp)
    frame = sample_grid(composer, tps, pp)
    bundle = ModelBundle(metadata={})
    for phase in ("prefill", "decode"):
        rows = frame[frame["phase"] == phase]
        terms = DEFAULT_TERMS[phase]
        physical = {"physical": lambda df, t=terms, ph=phase: TermsModel.fit(df, "latency_s", ph, t)}
        model, report = select_latency_model(rows, phase, physical)
        ape = np.abs(model.predict(rows) - rows["latency_s"].to_numpy()) / rows["latency_s"].to_numpy() * 100
        report["physical"]["grid_mape"] = float(ape.mean())
        report["physical"]["grid_max_ape"] = float(ape.max())
        bundle.models.append(model)
        bundle.validation[f"latency_s/{phase}"] = report
    transfer = {}
    if pp > 1:
        for tp in tps:
            tokens = np.array([1.0, 32.0, 256.0, 2048.0])
            seconds = composer._send_recv(tp, pp)(tokens * composer.shape.hidden * BYTES_PER_ELEMENT) / 1e3
            transfer[str(tp)] = {"tokens": tokens.astype(int).tolist(), "seconds": [float(f"{s:.4g}") for s in seconds]}
    from toolkit.model_shapes import PRESETS

    shape = composer.shape
    preset = shape.name if shape.name in PRESETS and _matches_preset(shape) else None
    bundle.metadata.update({
        "model": preset or shape.name, "model_shape": shape.to_json(), "gpu": composer.gpu,
        "gpu_name": [GPUS[composer.gpu].name], "tp": [int(t) for t in tps], "pp": int(pp),
        "composed_from": "operator profiles", "backend": "composed:vidur-operators", "simulated": False,
        "sources": [Path(s).name for s in sources],
        "assumptions": composer.assumptions(tps, pp),
        "grid": {"prefill_chunks": sorted(set(frame.loc[frame.phase == "prefill", "chunk_tokens"].astype(int))),
                 "prefill_prefixes": list(PREFILL_PREFIXES),
                 "decode_batches": sorted(set(frame.loc[frame.phase == "decode", "batch_size"].astype(int))),
                 "decode_kv": list(DECODE_KV)},
        "latency": "unsplit iteration (all layers in turn, no PP send/recv), seconds",
        "rows": int(len(frame)),
    })
    if transfer:
        bundle.metadata["pp_transfer_s"] = transfer
    if preset is None and shape.name in PRESETS:
        bundle.metadata["assumptions"].append(f"shape named {shape.name!r} differs from that preset: not marked as it "
                                              "(replay derives KV capacity only from an exact preset)")
    return bundle, frame


def _matches_preset(shape: ComposeShape) -> bool:
    from toolkit.model_shapes import PRESETS

    p = PRESETS[shape.name]
    return (p.layers, p.hidden, p.heads, p.kv_heads, p.ffn, p.vocab) == (
        shape.layers, shape.hidden, shape.heads, shape.kv_heads, shape.intermediate, shape.vocab) and shape.gated


def build_composer(shape: ComposeShape, gpu: str, mlp: str | Path | MlpProfile, attention: str | Path | None = None,
                   all_reduce: str | Path | None = None, send_recv: str | Path | None = None) -> Composer:
    """Read and fit the profiles and return a :class:`Composer` (profiles may be None but the mlp
    one, which may be read already).  Raises :class:`InputError` for a bad profile, ``ValueError``
    for an unknown GPU or a profile measured on another GPU than ``gpu`` (by its file name)."""
    if gpu not in GPUS:
        raise ValueError(f"unknown GPU {gpu!r} (known: {', '.join(GPUS)})")
    profile = mlp if isinstance(mlp, MlpProfile) else read_mlp_profile(mlp)
    if profile.gpu is not None and profile.gpu != gpu:
        raise ValueError(f"{profile.path.name} was measured on {profile.gpu}, not {gpu}: operator times do not transfer "
                         "between GPUs here (give that GPU's profile)")
    att = (ProfiledAttention(read_attention_profile(attention), shape, gpu) if attention is not None
           else RooflineAttention(shape, gpu))
    ar = read_network_profile(all_reduce, "all_reduce") if all_reduce is not None else None
    sr = read_network_profile(send_recv, "send_recv") if send_recv is not None else None
    for net in (ar, sr):
        net_gpu = gpu_of_name(net.path) if net is not None else None
        if net_gpu is not None and net_gpu != gpu:
            raise ValueError(f"{net.path.name} was measured on {net_gpu}, not {gpu}")
    return Composer(shape, gpu, profile, att, ar, sr)
