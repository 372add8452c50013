"""Physically informed regression terms, parsed from a small safe vocabulary (never eval'd).

A term is ``1`` or a product of features with optional integer powers: ``c``, ``c*p``, ``c^2``,
``b*k``.  Features are the profile columns under short names:

=====  ===============  ==================================================
name   column           meaning
=====  ===============  ==================================================
c      chunk_tokens     prefill tokens in the iteration
p      prefix_tokens    KV prefix the chunk attends to
b      batch_size       decode sequences in the iteration
k      kv_tokens        KV length per decode sequence
f      sm_clock_mhz     SM clock
=====  ===============  ==================================================

Attention prefill costs ~ c*p + c^2/2 FLOPs, linear layers ~ c, decode attention reads b*k KV
entries: so ``latency = a + b1*c + b2*c*p + b3*c^2`` extrapolates in p where trees cannot.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

FEATURES = {"c": "chunk_tokens", "p": "prefix_tokens", "b": "batch_size", "k": "kv_tokens", "f": "sm_clock_mhz"}

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

_FACTOR = re.compile(r"^([a-z])(?:\^(\d+(?:\.\d+)?))?$")


def parse_term(term: str) -> list[tuple[str, float]]:
    """'c*p' -> [('c', 1), ('p', 1)]; '1' -> []. Raises ValueError on anything else."""
    term = term.replace(" ", "")
    if term == "1":
        return []
    factors = []
    for part in term.split("*"):
        match = _FACTOR.match(part)
        if not match or match.group(1) not in FEATURES:
            raise ValueError(f"bad model term {term!r}: use products of {', '.join(FEATURES)} with ^powers")
        factors.append((match.group(1), float(match.group(2) or 1)))
    return factors


def design_matrix(frame: pd.DataFrame, terms: list[str]) -> np.ndarray:
    """Columns of the terms evaluated on ``frame`` (profile column names)."""
    columns = []
    for term in terms:
        value = np.ones(len(frame))
        for name, power in parse_term(term):
            column = FEATURES[name]
            if column not in frame:
                raise KeyError(f"term {term!r} needs column {column!r}")
            value = value * np.asarray(frame[column], dtype="float64") ** power
        columns.append(value)
    return np.column_stack(columns) if columns else np.empty((len(frame), 0))
