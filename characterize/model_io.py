"""Model bundles as JSON: versioned, inspectable, never pickled.

A bundle holds the fitted models of one GPU and model (latency and power per phase), where they
came from, whether the data was simulated, and their validation errors.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from toolkit.errors import InputError
from toolkit.validation import (MAX_CLOCK_MHZ, Settings, check_choice, check_numbers, check_text,
                                  read_text)

if TYPE_CHECKING:
    from .linear_model import TermsModel
    from .power_model import PowerModel
    from .roofline_model import RooflineModel
    from .trees import TreeEnsembleModel

    # what a bundle holds (for annotations only)
    FittedModel = TermsModel | RooflineModel | PowerModel | TreeEnsembleModel

BUNDLE_SCHEMA = "wattlas.model_bundle"
BUNDLE_VERSION = 1


def plain_scalar(value: object) -> object:
    """JSON-friendly, comparable scalars (numpy ints/floats -> Python; integral floats -> int)."""
    if value is None:
        return None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return int(value) if float(value).is_integer() else float(value)
    return value


# What a bundle may hold, checked at load: model kinds per target, grouping columns, and power-model
# load columns (a column every prediction frame has).
KINDS_BY_TARGET = {"latency_s": ("terms", "roofline", "gbr_trees"), "mean_power_w": ("power_saturating",)}
GROUP_KEYS = ("gpu_name", "model", "dtype", "tp", "sm_clock_mhz")
IDENTITY_KEYS = ("gpu_name", "model", "dtype")  # what a mixed table is split by: one model per combination
LOAD_COLUMNS = ("load_tokens", "chunk_tokens", "prefix_tokens", "batch_size", "kv_tokens")
MAX_BUNDLE_BYTES = 512 * 2**20  # a bundle of 300-tree models is a few MB


def model_from_json(data: object, source: str | Path | None = None, where: str = "model") -> FittedModel:
    """A model from its JSON object, validated (an :class:`InputError` naming ``where``'s keys)."""
    from .linear_model import TermsModel
    from .power_model import PowerModel
    from .roofline_model import RooflineModel
    from .trees import TreeEnsembleModel

    kinds = {"terms": TermsModel, "roofline": RooflineModel, "power_saturating": PowerModel, "gbr_trees": TreeEnsembleModel}
    table = Settings(data, source, where)
    kind = table.choice("kind", tuple(kinds))
    target = table.choice("target", tuple(KINDS_BY_TARGET))
    if kind not in KINDS_BY_TARGET[target]:
        raise table.error("kind", f"a {kind} model cannot predict {target} (use {' or '.join(KINDS_BY_TARGET[target])})")
    return kinds[kind].from_json(table)


def read_terms(table: Settings, name: str) -> list[str]:
    """A non-empty list of model terms, each from the vocabulary of ``terms.parse_term``."""
    from .terms import parse_term

    terms = table.sequence(name, min_length=1)
    for i, term in enumerate(terms):
        check_text(term, table.source, f"{table.path(name)}[{i}]")
        try:
            parse_term(term)
        except ValueError as exc:
            raise InputError(table.source, str(exc), key=f"{table.path(name)}[{i}]") from None
    return list(terms)


def read_group_keys(table: Settings) -> list[str]:
    """The columns a model's groups are keyed by: distinct names from GROUP_KEYS."""
    keys = table.sequence("group_keys")
    for i, key in enumerate(keys):
        check_choice(key, table.source, f"{table.path('group_keys')}[{i}]", GROUP_KEYS)
        if key in keys[:i]:
            raise InputError(table.source, f"{key!r} is listed twice", key=f"{table.path('group_keys')}[{i}]")
    return list(keys)


def read_support(table: Settings) -> dict | None:
    """A model's ``support`` (TP degrees and [lowest, highest] SM clock it was fitted on), or None."""
    if not table.has("support") or table.data.get("support") is None:
        return None
    support = table.table("support")
    tps = support.data.get("tp")
    clocks = support.data.get("sm_clock_mhz")
    out = {"tp": None, "sm_clock_mhz": None}
    if tps is not None:
        out["tp"] = [int(v) for v in check_numbers(tps, table.source, support.path("tp"), min_length=1, integer=True,
                                                    minimum=1)]
    if clocks is not None:
        lo, hi = check_numbers(clocks, table.source, support.path("sm_clock_mhz"), min_length=2, max_length=2,
                               minimum=0, exclusive_minimum=True, maximum=MAX_CLOCK_MHZ)
        if lo > hi:
            raise support.error("sm_clock_mhz", f"lowest clock {lo:g} is above the highest {hi:g}")
        out["sm_clock_mhz"] = [lo, hi]
    return out


def read_group(group: Settings, group_keys: list[str]) -> dict:
    """A fitted group's JSON object with its ``key`` checked: a value for every group key (TP a
    positive integer, a clock a positive number of MHz, a model name a string); extra fields are
    kept as written."""
    key = group.table("key")
    values = {}
    for name in group_keys:
        if name == "tp":
            values[name] = key.number(name, integer=True, minimum=1)
        elif name == "sm_clock_mhz":
            values[name] = key.number(name, minimum=0, exclusive_minimum=True, maximum=MAX_CLOCK_MHZ)
        else:
            values[name] = key.text(name)
    return {**group.data, "key": {**key.data, **values}}


def read_matrix(table: Settings, name: str, size: int) -> list[list[float]]:
    """A ``size`` x ``size`` matrix of finite numbers (a coefficient covariance)."""
    rows = table.sequence(name)
    if len(rows) != size:
        raise table.error(name, f"must be {size} x {size}, one row per term (got {len(rows)} rows)")
    key = table.path(name)
    return [check_numbers(row, table.source, f"{key}[{i}]", min_length=size, max_length=size) for i, row in enumerate(rows)]


def read_coefficients(table: Settings, name: str, terms: list[str]) -> list[float]:
    """One finite coefficient per term."""
    values = table.sequence(name)
    if len(values) != len(terms):
        raise table.error(name, f"must have one coefficient per term: {len(terms)} for {terms} (got {len(values)})")
    return table.numbers(name)


@dataclass
class ModelBundle:
    """The fitted models of one GPU and model: at most one per (target, phase), the metadata of
    their data (sources, ``simulated``, ``created``, ...) and their validation reports, keyed
    ``target/phase``.  Saved and loaded as JSON (:meth:`save`, :meth:`load`)."""

    models: list = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    # Run-time choices, never saved: whether replay may use models beyond their support (TP, clock),
    # and what it extrapolated (for the summary's marks).
    allow_extrapolation: bool = field(default=False, compare=False)
    extrapolated: list = field(default_factory=list, compare=False)

    def identities(self) -> dict[str, list[str]]:
        """The GPUs, models and dtypes the bundle's models are grouped by, where it holds several:
        ``{"gpu_name": [...], "model": [...]}`` (empty for a bundle of one GPU and model)."""
        found: dict[str, set] = {}
        for model in self.models:
            for group in getattr(model, "groups", []):
                for name in IDENTITY_KEYS:
                    if name in getattr(model, "group_keys", []):
                        found.setdefault(name, set()).add(str(group["key"].get(name)))
        return {name: sorted(values) for name, values in found.items() if len(values) > 1}

    def select(self, **wanted: str | None) -> "ModelBundle":
        """The bundle restricted to one GPU / model / dtype (``gpu_name=``, ``model=``, ``dtype=``;
        None: keep all), those keys dropped from the groups.  Raises :class:`InputError` naming a
        value no group has."""
        import copy

        wanted = {k: v for k, v in wanted.items() if v is not None}
        held = self.identities()
        for name, value in wanted.items():
            values = held.get(name) or sorted({str(g["key"].get(name)) for m in self.models
                                                for g in getattr(m, "groups", []) if name in getattr(m, "group_keys", [])})
            if values and value not in values:
                raise InputError(None, f"the bundle has no {name} {value!r} (it holds: {', '.join(values)})")
        models = []
        for model in self.models:
            keys = [k for k in getattr(model, "group_keys", []) if k in wanted]
            if not keys:
                models.append(model)
                continue
            model = copy.deepcopy(model)
            model.groups = [g for g in model.groups if all(str(g["key"].get(k)) == wanted[k] for k in keys)]
            for g in model.groups:
                g["key"] = {k: v for k, v in g["key"].items() if k not in keys}
            model.group_keys = [k for k in model.group_keys if k not in keys]
            models.append(model)
        metadata = {**self.metadata, **{f"selected_{k}": v for k, v in wanted.items()}}
        return ModelBundle(models, metadata, self.validation, self.allow_extrapolation)

    @property
    def simulated(self) -> bool:
        """Whether the models were fitted on simulated, not measured, data."""
        return bool(self.metadata.get("simulated"))

    def find(self, target: str, phase: str) -> FittedModel | None:
        """The model predicting ``target`` (``latency_s``, ``mean_power_w``) in ``phase``; None if
        the bundle has none."""
        for model in self.models:
            if model.target == target and model.phase == phase:
                return model
        return None

    def phases(self, target: str) -> list[str]:
        """The phases with a ``target`` model, in bundle order."""
        return [m.phase for m in self.models if m.target == target]

    def predict(self, target: str, phase: str, frame: pd.DataFrame) -> np.ndarray:
        """``target`` per row of ``frame`` (profile column names) from the ``phase`` model.

        Raises ``KeyError`` when the bundle has no such model or a row's group was not fitted.
        """
        model = self.find(target, phase)
        if model is None:
            raise KeyError(f"bundle has no {target} model for phase {phase!r} (has: {self.phases(target)})")
        return model.predict(frame)

    def to_json(self) -> dict:
        """The bundle as a JSON-ready object: schema, version, metadata, validation and models."""
        return {"schema": BUNDLE_SCHEMA, "schema_version": BUNDLE_VERSION, "metadata": self.metadata,
                "validation": self.validation, "models": [m.to_json() for m in self.models]}

    def save(self, path: str | Path) -> Path:
        """Write the bundle's JSON to ``path`` (parent directories created, the file replaced
        atomically) and return the path; sets ``metadata["created"]`` (UTC) if it is not set."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.metadata.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1, allow_nan=False, default=plain_scalar))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ModelBundle":
        """A bundle from its JSON file, validated whole before any model is used: every model's kind
        and target known, terms from the vocabulary, one finite coefficient per term, power-model
        parameters in range.  Any fault is an :class:`InputError` naming the file and the key
        (``models[2].groups[0].coef[3]``).  JSON is parsed as data, never evaluated."""
        path = Path(path)
        text = read_text(path, MAX_BUNDLE_BYTES)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"not a JSON model bundle ({exc.msg})", line=exc.lineno) from None
        except ValueError as exc:  # an integer of thousands of digits
            raise InputError(path, f"not a JSON model bundle ({exc})") from None
        except RecursionError:
            raise InputError(path, "not a JSON model bundle (nested too deeply)") from None
        if not isinstance(data, dict) or data.get("schema") != BUNDLE_SCHEMA:
            found = data.get("schema") if isinstance(data, dict) else None
            raise InputError(path, f"not a wattlas model bundle (schema {found!r}, expected {BUNDLE_SCHEMA!r})")
        table = Settings(data, path)
        version = table.number("schema_version", integer=True, minimum=1)
        if version > BUNDLE_VERSION:
            raise InputError(path, f"model bundle version {version} is newer than this wattlas understands "
                                   f"(up to {BUNDLE_VERSION})", key="schema_version")
        metadata = table.table("metadata", {})
        metadata.flag("simulated", False)
        validation = table.table("validation", {})
        for name in validation.data:
            _check_report(validation.table(name))
        models = [model_from_json(m, path, f"models[{i}]") for i, m in enumerate(table.sequence("models", []))]
        seen = {}
        for i, model in enumerate(models):
            first = seen.setdefault((model.target, model.phase), i)
            if first != i:
                raise InputError(path, f"a second {model.target} model for phase {model.phase!r} (the first is "
                                       f"models[{first}])", key=f"models[{i}]")
        return cls(models, metadata.data, validation.data)


def _check_report(report: Settings) -> None:
    """A phase's validation report: per candidate a table whose scores (the MAPEs ``show`` prints)
    are finite and >= 0, or null; other entries (an ``error`` text) are shown as written."""
    report.text("selected", None)
    for candidate in report.data:
        if candidate != "selected":
            scores = report.table(candidate)
            for name in ("cv_mape", "extrapolation_mape", "score"):
                scores.number(name, None, minimum=0)
