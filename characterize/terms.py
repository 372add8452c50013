"""Physically informed regression terms, parsed from a small safe vocabulary (never eval'd).

A term is ``1`` or a product of features with optional powers: ``c``, ``c*p``, ``c^2``,
``b*k``, ``c*t^-1``.  Features are the profile columns (or values derived from them) under short names:

=====  ====================  =====================================================================
name   column                meaning
=====  ====================  =====================================================================
c      chunk_tokens          prefill tokens in the iteration (all its prompts together)
p      prefix_tokens         KV prefix each prompt's chunk attends to
n      prefill_sequences     prompts in the prefill (missing: 1); sum of c_i^2 = c^2 / n
b      batch_size            decode sequences in the iteration
k      kv_tokens             KV length per decode sequence
f      sm_clock_mhz          SM clock (MHz)
t      tp                    tensor-parallel degree (missing: 1)
r      from tp               all-reduce share (t - 1) / t: the bytes a ring all-reduce moves per GPU
l      from tp               log2(t): the steps of a tree all-reduce (NCCL's choice on NVLink)
q      from sm_clock_mhz     clock period, 1000 / f (ns): compute-bound time scales with it
=====  ====================  =====================================================================

Attention prefill costs ~ c*p + c^2/2 FLOPs, linear layers ~ c, decode attention reads b*k KV
entries: so ``latency = a + b1*c + b2*c*p + b3*c^2`` extrapolates in p where trees cannot.

The *transferring* family (:data:`SHARD_TERMS`) makes TP and clock variables of one model instead
of fitting one model per (TP, clock): per TP shard a linear layer costs c/t FLOPs and attention
c*p/t and c^2/(n t) (heads split over the shards), the prefix KV read is p/t bytes, the weights
read is 1/t, and each layer's two all-reduces cost a latency and a per-token time that grow with
the all-reduce's steps, log2(t) (NCCL runs small all-reduces on NVLink as trees: on measured
Llama-2-70B tables a per-token log2(t) cost carries TP2 + TP4 to TP8 where the ring's (t - 1)/t
share underestimates it).  Terms are ordered so that, with only two TP degrees, the constant is
what is left out (1/t and log2(t) already span two points).  Compute terms appear twice,
flat and times q: with profiles at several clocks each compute coefficient becomes a + b/f
(compute-bound time ~ 1/f, memory-bound time flat); with one clock the q copies are collinear
and left out.  Fitted jointly on TP2 and TP4 rows the model predicts TP8 (and TP1).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

FEATURES = {"c": "chunk_tokens", "p": "prefix_tokens", "b": "batch_size", "k": "kv_tokens", "f": "sm_clock_mhz",
            "n": "prefill_sequences", "t": "tp", "r": "tp", "l": "tp", "q": "sm_clock_mhz"}
# Features of the instance (TP, clock), not of the iteration: replay evaluates them once per instance.
INSTANCE_FEATURES = ("t", "r", "l", "q", "f")
DEFAULTS = {"n": 1.0, "t": 1.0, "r": 1.0, "l": 1.0}  # a missing prefill_sequences / tp column: one prompt, TP1

DEFAULT_TERMS = {
    "prefill": ["1", "c", "c*p", "c^2", "p"],
    "decode": ["1", "b", "b*k", "k"],
    "mixed": ["1", "c", "c*p", "c^2", "b", "b*k"],
    "linear": ["1", "c", "c^0.5"],
    "serving": ["1", "b", "b^0.5"],
}

# (compute piece, memory piece) of the roofline candidate: a chunk's FLOPs grow with c, c*p and
# c^2; its memory traffic is the weights (constant) plus the prefix's KV read once (p).
ROOFLINE_TERMS = {
    "prefill": (["1", "c", "c*p", "c^2"], ["1", "p"]),
    "mixed": (["1", "c", "c*p", "c^2", "b"], ["1", "p", "b*k"]),  # plus the decodes' KV read
}

# The transferring family: (terms, memory-piece terms) per phase; "+q" marks compute terms that
# also appear times the clock period q (see the module docstring).
_PREFILL_COMPUTE = ["c*t^-1", "c*p*t^-1", "c^2*n^-1*t^-1"]
_DECODE_COMPUTE = ["b*t^-1"]
SHARD_TERMS = {
    "prefill": ["t^-1", "l", "1", "c*r", "p*t^-1"] + _PREFILL_COMPUTE,
    "decode": ["t^-1", "l", "1", "b*r", "b*k*t^-1", "k*t^-1"] + _DECODE_COMPUTE,
    "mixed": ["t^-1", "l", "1", "c*r", "b*r", "p*t^-1", "b*k*t^-1"] + _PREFILL_COMPUTE + _DECODE_COMPUTE,
}
SHARD_CLOCK_TERMS = {"prefill": _PREFILL_COMPUTE, "decode": _DECODE_COMPUTE, "mixed": _PREFILL_COMPUTE + _DECODE_COMPUTE}
SHARD_ROOFLINE_TERMS = {
    "prefill": (["l", "1", "c*r"] + _PREFILL_COMPUTE, ["t^-1", "l", "1", "p*t^-1"]),
    "mixed": (["l", "1", "c*r", "b*r"] + _PREFILL_COMPUTE + _DECODE_COMPUTE, ["t^-1", "l", "1", "p*t^-1", "b*k*t^-1"]),
}


def shard_terms(terms: list[str], phase: str, clocks: int) -> list[str]:
    """``terms`` plus, with profiles at two or more ``clocks``, the phase's compute terms times q."""
    if clocks < 2:
        return list(terms)
    return list(terms) + [f"{term}*q" for term in terms if term in SHARD_CLOCK_TERMS.get(phase, [])]


_FACTOR = re.compile(r"^([a-z])(?:\^(-?\d+(?:\.\d+)?))?$")


def parse_term(term: str) -> list[tuple[str, float]]:
    """'c*p' -> [('c', 1), ('p', 1)]; '1' -> []. Raises ValueError on anything else.

    Negative powers are allowed only for the features that are never zero (n, t, q, f)."""
    term = term.replace(" ", "")
    if term == "1":
        return []
    factors = []
    for part in term.split("*"):
        match = _FACTOR.match(part)
        if not match or match.group(1) not in FEATURES:
            raise ValueError(f"bad model term {term!r}: use products of {', '.join(FEATURES)} with ^powers")
        power = float(match.group(2) or 1)
        if power < 0 and match.group(1) not in ("n", "t", "q", "f"):
            raise ValueError(f"bad model term {term!r}: only n, t, q and f may have a negative power")
        factors.append((match.group(1), power))
    return factors


def feature_values(frame: pd.DataFrame, name: str) -> np.ndarray:
    """Values of feature ``name`` on ``frame``: its column, derived (r, q) or defaulted (n, t, r).
    Raises ``KeyError`` when the column is missing and has no default."""
    column = FEATURES[name]
    if column not in frame or (name in DEFAULTS and frame[column].isna().all()):
        if name not in DEFAULTS:
            raise KeyError(f"feature {name!r} needs column {column!r}")
        return np.full(len(frame), 1.0 if name not in ("r", "l") else 0.0)
    values = np.asarray(frame[column], dtype="float64")
    if name in DEFAULTS:
        values = np.where(np.isnan(values), DEFAULTS[name], values)
    if name == "r":
        return (values - 1.0) / values
    if name == "l":
        return np.log2(values)
    if name == "q":
        return 1000.0 / values
    return values


def instance_factor(factors: list[tuple[str, float]], tp: float, sm_clock_mhz: float | None) -> float:
    """The product of a term's instance factors (t, r, q, f) at one TP and clock."""
    value = 1.0
    for name, power in factors:
        if name == "t":
            value *= tp ** power
        elif name == "r":
            value *= ((tp - 1.0) / tp) ** power
        elif name == "l":
            value *= np.log2(tp) ** power
        elif name in ("q", "f"):
            if sm_clock_mhz is None:
                raise ValueError("the model needs an SM clock")
            value *= (1000.0 / sm_clock_mhz if name == "q" else sm_clock_mhz) ** power
    return value


def design_matrix(frame: pd.DataFrame, terms: list[str]) -> np.ndarray:
    """Columns of the terms evaluated on ``frame`` (profile column names)."""
    columns = []
    cache: dict[str, np.ndarray] = {}
    for term in terms:
        value = np.ones(len(frame))
        for name, power in parse_term(term):
            if name not in cache:
                try:
                    cache[name] = feature_values(frame, name)
                except KeyError:
                    raise KeyError(f"term {term!r} needs column {FEATURES[name]!r}") from None
            value = value * cache[name] ** power
        columns.append(value)
    return np.column_stack(columns) if columns else np.empty((len(frame), 0))
