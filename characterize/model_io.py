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

import numpy as np
import pandas as pd

from toolkit.errors import InputError

BUNDLE_SCHEMA = "wattlas.model_bundle"
BUNDLE_VERSION = 1


def plain_scalar(value):
    """JSON-friendly, comparable scalars (numpy ints/floats -> Python; integral floats -> int)."""
    if value is None:
        return None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return int(value) if float(value).is_integer() else float(value)
    return value


def model_from_json(data: dict):
    from .linear_model import TermsModel
    from .power_model import PowerModel
    from .roofline_model import RooflineModel
    from .trees import TreeEnsembleModel

    kinds = {"terms": TermsModel, "roofline": RooflineModel, "power_saturating": PowerModel, "gbr_trees": TreeEnsembleModel}
    if data.get("kind") not in kinds:
        raise ValueError(f"unknown model kind {data.get('kind')!r}")
    return kinds[data["kind"]].from_json(data)


@dataclass
class ModelBundle:
    models: list = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)

    @property
    def simulated(self) -> bool:
        return bool(self.metadata.get("simulated"))

    def find(self, target: str, phase: str):
        for model in self.models:
            if model.target == target and model.phase == phase:
                return model
        return None

    def phases(self, target: str) -> list[str]:
        return [m.phase for m in self.models if m.target == target]

    def predict(self, target: str, phase: str, frame: pd.DataFrame) -> np.ndarray:
        model = self.find(target, phase)
        if model is None:
            raise KeyError(f"bundle has no {target} model for phase {phase!r} (has: {self.phases(target)})")
        return model.predict(frame)

    def to_json(self) -> dict:
        return {"schema": BUNDLE_SCHEMA, "schema_version": BUNDLE_VERSION, "metadata": self.metadata,
                "validation": self.validation, "models": [m.to_json() for m in self.models]}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.metadata.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1, allow_nan=False, default=plain_scalar))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ModelBundle":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(path, "no such file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            line = getattr(exc, "lineno", None)
            raise InputError(path, f"not a JSON model bundle ({exc.msg if hasattr(exc, 'msg') else exc})", line=line) from None
        if not isinstance(data, dict) or data.get("schema") != BUNDLE_SCHEMA:
            raise InputError(path, f"not a wattlas model bundle (schema {data.get('schema') if isinstance(data, dict) else None!r})")
        if int(data.get("schema_version", 0)) > BUNDLE_VERSION:
            raise InputError(path, f"model bundle version {data['schema_version']} is newer than this wattlas understands")
        try:
            models = [model_from_json(m) for m in data.get("models", [])]
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(path, f"malformed model entry ({exc})") from None
        return cls(models, data.get("metadata", {}), data.get("validation", {}))
