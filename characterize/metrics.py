"""Error measures used for model selection."""

from __future__ import annotations

import numpy as np


def mape(actual, predicted) -> float:
    """Mean absolute percentage error, in percent."""
    actual = np.asarray(actual, dtype="float64")
    predicted = np.asarray(predicted, dtype="float64")
    ok = (actual != 0) & ~np.isnan(predicted)  # NaN: a group the training fold did not have
    return float(np.mean(np.abs(predicted[ok] - actual[ok]) / np.abs(actual[ok])) * 100.0)
