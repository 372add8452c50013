"""KVP combine cost: merging the KV-parallel groups' partial attention, per iteration.

With KV-cache parallelism (Mnemosyne/Medha KVP) a sequence's KV is spread over ``G`` groups (each
a full TP x SPP replica).  At every layer each group attends the iteration's query tokens to its
shard of the KV; the partial outputs and their softmax statistics are then reduced over the
``G`` groups (online-softmax merge) before the layer goes on.  Per layer and iteration that is one
all-reduce among ``G`` ranks (one per group, holding the same heads) of

    tokens x (heads / tp) x (head_dim + 2) fp16 elements

(the partial output of the rank's heads, plus the running max and sum of each head), on the
critical path of every layer: ``layers`` of them per full pass.

Two ways to price one all-reduce:

* a network profile (Vidur's ``data/profiling/network/<gpu>_dgx/all_reduce.csv``: columns
  ``time_stats.all_reduce.median`` in ms, ``num_workers``, ``size`` in fp16 elements): the median
  time at the smallest profiled worker count >= ``G``, interpolated in size (made non-decreasing
  in size and in worker count, so the profile's noise cannot make more groups cheaper);
* without one, a fitted alpha + beta model::

      t(G, bytes) = KVP_ALPHA_S x (1 + max(0, ceil(log2 G) - 3)) + KVP_BETA_S_PER_BYTE x bytes x 2 (G - 1) / G

  ``KVP_ALPHA_S`` and ``KVP_BETA_S_PER_BYTE`` are the least-squares fit of ``alpha + beta x bytes x
  2 (G - 1) / G`` to every (workers, size) median of Vidur's H100 DGX all-reduce profile
  (``network_h100_dgx_all_reduce.csv``, 2-8 workers, 4 KB-134 MB; :func:`fit_network_profile`
  recomputes it).  Within one 8-GPU NVSwitch node the latency term is flat in the worker count
  (the profile shows no trend at 2, 4 and 8); beyond 8 (groups on different nodes) each doubling
  adds one latency step - an extrapolation, not a measurement.  The bandwidth term grows with
  ``G`` through the ring factor 2 (G - 1) / G.

Either way the cost is affine in the iteration's tokens, ``A(G) + B(G) x tokens`` (the profile's
size interpolation is linearised around one token and a 4,096-token iteration), which is what lets
the adaptive chunk solve for the largest chunk in closed form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from toolkit.errors import InputError

# Least-squares fit of t = alpha + beta x bytes x 2 (G - 1) / G to Vidur's H100 DGX all-reduce
# medians (2,979 (workers, size) points): alpha = 30.4 us, beta = 1.42e-12 s/B (~700 GB/s bus)
KVP_ALPHA_S = 3.04e-5
KVP_BETA_S_PER_BYTE = 1.42e-12
NODE_GPUS_LOG2 = 3  # 8 GPUs a node: more groups than that cross nodes (one more latency step a doubling)
LINEARISE_TOKENS = 4096  # the profile's size interpolation is made affine between 1 and this many tokens
MEDIAN = "time_stats.all_reduce.median"


def _latency_steps(groups: int) -> int:
    return 1 + max(0, math.ceil(math.log2(groups)) - NODE_GPUS_LOG2)


@dataclass(frozen=True)
class NetworkProfile:
    """All-reduce time (s) by worker count, interpolated over size (fp16 elements)."""

    workers: tuple[int, ...]
    sizes: tuple[np.ndarray, ...]
    seconds: tuple[np.ndarray, ...]
    source: str = ""

    def all_reduce_s(self, groups: int, elements: float) -> float:
        """One all-reduce of ``elements`` fp16 values among ``groups`` ranks."""
        fits = [i for i, w in enumerate(self.workers) if w >= groups]
        i = fits[0] if fits else len(self.workers) - 1
        t = float(np.interp(elements, self.sizes[i], self.seconds[i]))
        if not fits:  # more groups than profiled: one more latency step per doubling past the largest
            t *= 1 + max(0, math.ceil(math.log2(groups)) - math.ceil(math.log2(self.workers[i])))
        return t


def load_network_profile(path: str | Path) -> NetworkProfile:
    """A Vidur ``all_reduce.csv`` network profile, validated (InputError naming the file)."""
    import pandas as pd

    from toolkit.validation import read_csv_table

    path = Path(path)
    frame = read_csv_table(path)
    missing = [c for c in (MEDIAN, "num_workers", "size") if c not in frame.columns]
    if missing:
        raise InputError(path, f"not a Vidur all_reduce profile: missing column(s) {', '.join(missing)}")
    for column in (MEDIAN, "num_workers", "size"):
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(values) | (values <= 0)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(path, f"must be a positive number (got {frame[column].iloc[row]!r})", row=row + 1,
                             column=column)
    medians = frame.groupby(["num_workers", "size"])[MEDIAN].median().reset_index().sort_values(["num_workers", "size"])
    workers, sizes, seconds = [], [], []
    floor = None
    for w, group in medians.groupby("num_workers", sort=True):
        s = group["size"].to_numpy(dtype=float)
        t = np.maximum.accumulate(group[MEDIAN].to_numpy(dtype=float) * 1e-3)  # non-decreasing in size
        if floor is not None:  # ... and in the worker count
            t = np.maximum(t, np.interp(s, *floor))
        workers.append(int(w))
        sizes.append(s)
        seconds.append(t)
        floor = (s, t)
    return NetworkProfile(tuple(workers), tuple(sizes), tuple(seconds), str(path))


@lru_cache(maxsize=16)
def network_profile(path: str) -> NetworkProfile:
    """:func:`load_network_profile`, loaded once per path."""
    return load_network_profile(path)


def fit_network_profile(path: str | Path) -> tuple[float, float]:
    """(alpha s, beta s/B): the least-squares fit of ``alpha + beta x bytes x 2 (G - 1) / G`` to every
    (workers, size) median of a Vidur all-reduce profile - how the default constants were made."""
    from toolkit.validation import read_csv_table

    frame = read_csv_table(path)
    medians = frame.groupby(["num_workers", "size"])[MEDIAN].median().reset_index()
    g = medians["num_workers"].to_numpy(dtype=float)
    nbytes = medians["size"].to_numpy(dtype=float) * 2
    x = np.c_[np.ones_like(g), nbytes * 2 * (g - 1) / g]
    (alpha, beta), *_ = np.linalg.lstsq(x, medians[MEDIAN].to_numpy(dtype=float) * 1e-3, rcond=None)
    return float(alpha), float(beta)


@dataclass(frozen=True)
class CombineModel:
    """The combine cost of one iteration (s): ``layers`` all-reduces among the groups, each of the
    iteration's tokens x ``elements_per_token`` fp16 values (module docstring)."""

    layers: int
    elements_per_token: float
    profile: NetworkProfile | None = None

    @classmethod
    def for_shape(cls, shape, tp: int, profile: NetworkProfile | None = None) -> "CombineModel":
        """For a model shape (``toolkit.model_shapes.ModelShape``) sharded over ``tp`` GPUs a group."""
        heads = max(1, math.ceil(shape.heads / tp))
        return cls(shape.layers, heads * (shape.head_dim + 2), profile)

    def terms(self, groups: int) -> tuple[float, float]:
        """(A, B): the iteration's combine cost is A + B x tokens with ``groups`` > 1 groups."""
        if groups <= 1:
            return 0.0, 0.0
        if self.profile is None:
            alpha = KVP_ALPHA_S * _latency_steps(groups)
            beta = KVP_BETA_S_PER_BYTE * 2 * self.elements_per_token * 2 * (groups - 1) / groups
            return self.layers * alpha, self.layers * beta
        one = self.profile.all_reduce_s(groups, self.elements_per_token)
        many = self.profile.all_reduce_s(groups, self.elements_per_token * LINEARISE_TOKENS)
        slope = max(0.0, (many - one) / (LINEARISE_TOKENS - 1))
        return self.layers * (one - slope), self.layers * slope

    def __call__(self, groups: int, tokens: float) -> float:
        a, b = self.terms(groups)
        return a + b * tokens
