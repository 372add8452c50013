"""Output-length prediction for DynamoLLM's routing, from what is known when a request arrives.

A request's true output length is known only once it has finished, so routing it by that length
is an oracle.  :class:`OutputPredictor` predicts it from the request's input length and the
outputs of requests that arrived *earlier*:

* time is cut into refit epochs of ``refit_s``; the model used for a request arriving in epoch
  ``e`` (``[e * refit_s, (e + 1) * refit_s)``) is fitted at the epoch's start on the requests that
  arrived in the ``window_s`` before it, leaving out those of the last ``lag_s`` (still running
  then, their output not known yet - an approximation of "finished before the refit", which the
  planner cannot know before the replay);
* the model: input lengths in power-of-two buckets; per bucket the ``quantile`` of the past
  outputs (a bucket with fewer than ``min_samples`` past requests takes the quantile of the whole
  window); before any past at all (the first epoch), ``prior_tokens``.

So a prediction never reads the output of the request it predicts, nor of any request that
arrived at or after its epoch's start minus ``lag_s`` (``tests/test_dynamollm_predictor.py``
permutes future outputs and checks that past predictions do not move).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# input buckets: (0, 32], (32, 64], ..., (65536, 131072], above
INPUT_EDGES = tuple(float(2**k) for k in range(5, 18))


@dataclass
class OutputPredictor:
    """Per-input-bucket quantile of past outputs, refitted every ``refit_s`` on the past ``window_s``
    (less the last ``lag_s``); ``prior_tokens`` before any past."""

    refit_s: float = 300.0
    window_s: float = 3600.0
    lag_s: float = 60.0
    quantile: float = 0.5
    min_samples: int = 20
    prior_tokens: float = 256.0
    input_edges: tuple[float, ...] = INPUT_EDGES

    def _fit(self, inputs: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, float]:
        """(quantile per bucket, NaN where too few samples; quantile of all) of past requests."""
        n_buckets = len(self.input_edges) + 1
        per_bucket = np.full(n_buckets, np.nan)
        if len(outputs) == 0:
            return per_bucket, float(self.prior_tokens)
        overall = float(np.quantile(outputs, self.quantile))
        buckets = np.searchsorted(np.asarray(self.input_edges), inputs, side="left")
        for b in np.unique(buckets):
            values = outputs[buckets == b]
            if len(values) >= self.min_samples:
                per_bucket[b] = np.quantile(values, self.quantile)
        return per_bucket, overall

    def predict(self, arrival: np.ndarray, inputs: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        """Predicted output length (tokens, float) of every request; ``outputs`` are the true
        lengths, read only for requests in the fitting window of a *later* request (module docstring)."""
        arrival = np.asarray(arrival, dtype=np.float64)
        inputs = np.asarray(inputs, dtype=np.float64)
        outputs = np.asarray(outputs, dtype=np.float64)
        order = np.argsort(arrival, kind="stable")
        t_sorted = arrival[order]
        predicted = np.empty(len(arrival))
        if not len(arrival):
            return predicted
        epochs = np.floor(arrival / self.refit_s).astype(np.int64)
        edges = np.asarray(self.input_edges)
        for e in np.unique(epochs):
            start = e * self.refit_s
            hi = np.searchsorted(t_sorted, start - self.lag_s, side="left")  # arrived before start - lag
            lo = np.searchsorted(t_sorted, start - self.lag_s - self.window_s, side="left") if math.isfinite(self.window_s) else 0
            past = order[lo:hi]
            per_bucket, overall = self._fit(inputs[past], outputs[past])
            mine = epochs == e
            guess = per_bucket[np.searchsorted(edges, inputs[mine], side="left")]
            predicted[mine] = np.where(np.isnan(guess), overall, guess)
        return predicted


def output_class(lengths: np.ndarray, output_bins: tuple[float, ...]) -> np.ndarray:
    """Output bin of each length (a length equal to a bound falls in the bin below it, as
    :func:`replay.policies.dynamollm.classify`)."""
    return np.searchsorted(np.asarray(output_bins, dtype=np.float64), np.asarray(lengths, dtype=np.float64), side="left")


def accuracy_report(predicted_bin: np.ndarray, true_bin: np.ndarray) -> dict:
    """How the predicted output classes compare with the true ones: the fraction right, and the
    requests that outgrew their predicted class (true class above: served late in place) or were
    put in a longer class than needed."""
    predicted_bin, true_bin = np.asarray(predicted_bin), np.asarray(true_bin)
    n = len(true_bin)
    right = int(np.count_nonzero(predicted_bin == true_bin))
    return {
        "requests": n,
        "predictor_accuracy": right / n if n else float("nan"),
        "mispredicted": n - right,
        "outgrown": int(np.count_nonzero(true_bin > predicted_bin)),
        "overpredicted": int(np.count_nonzero(true_bin < predicted_bin)),
    }
