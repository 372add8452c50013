"""Gradient-boosted trees (scikit-learn) as a data-driven rival to the physical models.

A fitted ``GradientBoostingRegressor`` is exported to plain arrays in JSON and evaluated with
numpy, so tree models are stored without pickle like every other model.  Trees interpolate
well inside the profiled grid but cannot extrapolate (a KV prefix beyond the grid gets the
latency of the largest profiled one); validation measures exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from toolkit.errors import InputError
from toolkit.validation import check_choice

if TYPE_CHECKING:
    from toolkit.validation import Settings

TREE_FEATURES = ["chunk_tokens", "prefix_tokens", "batch_size", "kv_tokens", "tp", "sm_clock_mhz"]


def _features(frame: pd.DataFrame, names: list[str]) -> np.ndarray:
    return np.column_stack([frame[n].to_numpy(dtype="float64") for n in names])


@dataclass
class TreeEnsembleModel:
    """Gradient-boosted regression trees as plain arrays: the prediction is ``base`` plus
    ``learning_rate`` times the sum of the trees' leaf values, exponentiated when ``log_target``.
    ``features`` are the :data:`TREE_FEATURES` columns the trees split on."""

    target: str
    phase: str
    features: list[str]
    base: float
    learning_rate: float
    trees: list[dict] = field(default_factory=list)
    log_target: bool = True
    kind: str = "gbr_trees"

    @classmethod
    def fit(cls, frame: pd.DataFrame, target: str, phase: str, seed: int = 0, **params: Any) -> "TreeEnsembleModel":
        """Fit scikit-learn's ``GradientBoostingRegressor`` on log ``target`` (which must be > 0)
        over the :data:`TREE_FEATURES` that vary in ``frame``; ``params`` override its options
        (300 trees of depth 4, learning rate 0.05, subsample 0.8), ``seed`` its random state."""
        from sklearn.ensemble import GradientBoostingRegressor

        names = [n for n in TREE_FEATURES if n in frame and frame[n].notna().all() and frame[n].nunique() > 1]
        y = np.log(frame[target].to_numpy(dtype="float64"))  # log: relative errors, like MAPE
        options = {"n_estimators": 300, "max_depth": 4, "learning_rate": 0.05, "subsample": 0.8, "random_state": seed}
        options.update(params)
        gbr = GradientBoostingRegressor(**options).fit(_features(frame, names), y)
        trees = []
        for (estimator,) in gbr.estimators_:
            t = estimator.tree_
            trees.append({"left": t.children_left.tolist(), "right": t.children_right.tolist(),
                          "feature": t.feature.tolist(), "threshold": t.threshold.tolist(),
                          "value": t.value[:, 0, 0].tolist()})
        base = float(np.ravel(gbr.init_.constant_)[0])
        return cls(target, phase, names, base, float(gbr.learning_rate), trees)

    def outside_support(self, frame: pd.DataFrame) -> np.ndarray:
        """No row: trees record no support (they predict their nearest leaf anywhere)."""
        return np.zeros(len(frame), dtype=bool)

    def predict(self, frame: pd.DataFrame, strict: bool = True, allow_extrapolation: bool = True) -> np.ndarray:
        """Predictions per row of ``frame`` (``strict`` and ``allow_extrapolation`` are accepted for a
        common interface: trees have no groups and no support, every row gets a value).  Raises ``KeyError`` if a feature column is missing."""
        X = _features(frame, self.features)
        total = np.full(len(X), self.base)
        rows = np.arange(len(X))
        for tree in self.trees:
            left, right = np.asarray(tree["left"]), np.asarray(tree["right"])
            feature, threshold = np.asarray(tree["feature"]), np.asarray(tree["threshold"])
            node = np.zeros(len(X), dtype=np.int64)
            while True:
                internal = left[node] != -1
                if not internal.any():
                    break
                go_left = X[rows, np.maximum(feature[node], 0)] <= threshold[node]
                node = np.where(internal, np.where(go_left, left[node], right[node]), node)
            total += self.learning_rate * np.asarray(tree["value"])[node]
        return np.exp(total) if self.log_target else total

    def to_json(self) -> dict:
        """The model as a JSON-ready object (:meth:`from_json` reads it back)."""
        return {"kind": self.kind, "target": self.target, "phase": self.phase, "features": self.features,
                "base": self.base, "learning_rate": self.learning_rate, "log_target": self.log_target, "trees": self.trees}

    @classmethod
    def from_json(cls, table: Settings) -> "TreeEnsembleModel":
        """The model of a bundle's JSON object (a :class:`toolkit.validation.Settings`), validated:
        features from TREE_FEATURES, finite numbers, and trees whose nodes each point to later
        nodes, so evaluating one always reaches a leaf."""
        features = table.sequence("features")
        for i, name in enumerate(features):
            check_choice(name, table.source, f"{table.path('features')}[{i}]", TREE_FEATURES)
            if name in features[:i]:
                raise InputError(table.source, f"{name!r} is listed twice", key=f"{table.path('features')}[{i}]")
        trees = [_read_tree(tree, len(features)) for tree in table.tables("trees")]
        return cls(table.text("target"), table.text("phase"), list(features), table.number("base"),
                   table.number("learning_rate", minimum=0, exclusive_minimum=True), trees, table.flag("log_target", True))


def _read_tree(tree, n_features: int) -> dict:
    """One tree's node arrays, checked: equal lengths, both children or none, children after
    their parent (no cycles: the evaluation loop ends), a valid feature at every split."""
    nodes = {name: tree.numbers(name, min_length=1, integer=name in ("left", "right", "feature"))
             for name in ("left", "right", "feature", "threshold", "value")}
    n = len(nodes["left"])
    for name, values in nodes.items():
        if len(values) != n:
            raise tree.error(name, f"has {len(values)} entries for {n} nodes")
    left, right, feature = nodes["left"], nodes["right"], nodes["feature"]
    for i in range(n):
        if (left[i] == -1) != (right[i] == -1):
            raise InputError(tree.source, f"node {i}: a split needs two children, a leaf none (-1 for both)",
                             key=f"{tree.path('left')}[{i}]")
        if left[i] == -1:
            continue
        for side, child in (("left", left[i]), ("right", right[i])):
            if not i < child < n:
                raise InputError(tree.source, f"node {i}'s child must be a later node ({i + 1} to {n - 1}, got {child})",
                                 key=f"{tree.path(side)}[{i}]")
        if not 0 <= feature[i] < n_features:
            raise InputError(tree.source, f"node {i} splits on feature {feature[i]}, the model has {n_features}",
                             key=f"{tree.path('feature')}[{i}]")
    return {**tree.data, **nodes}
