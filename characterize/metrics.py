"""Error measures used for model selection."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def mape(actual: ArrayLike, predicted: ArrayLike) -> float:
    """Mean absolute percentage error, in percent.

    Rows where ``actual`` is 0 or ``predicted`` is NaN are left out.
    """
    actual = np.asarray(actual, dtype="float64")
    predicted = np.asarray(predicted, dtype="float64")
    ok = (actual != 0) & ~np.isnan(predicted)  # NaN: a group the training fold did not have
    return float(np.mean(np.abs(predicted[ok] - actual[ok]) / np.abs(actual[ok])) * 100.0)
