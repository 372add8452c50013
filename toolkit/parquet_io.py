"""Parquet files of wattlas artifacts: atomic writes and schema-checked reads."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import InputError
from .schemas import ALL_SCHEMAS, SCHEMA_KEY, SIMULATED_KEY, VERSION_KEY, ArtifactSchema


def atomic_write_table(table: pa.Table, path: str | Path, **parquet_options: Any) -> Path:
    """Write ``table`` to ``path`` so that readers see either the old file or the whole new one.

    The data goes to a temporary file in the same directory, is fsynced, then renamed over the
    target; a crash mid-write leaves at most a stray ``*.tmp-*`` file, never a truncated artifact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            pq.write_table(table, handle, compression=parquet_options.pop("compression", "zstd"), **parquet_options)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; artifacts are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def artifact_metadata(schema: pa.Schema) -> dict[str, str]:
    """The key/value metadata of an Arrow ``schema``, decoded to text (empty if it has none)."""
    return {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}


def is_simulated(schema: pa.Schema) -> bool:
    """Whether ``schema`` is marked as holding simulated (not measured) data."""
    return (schema.metadata or {}).get(SIMULATED_KEY, b"false").lower() == b"true"


def read_artifact(path: str | Path, expected: ArtifactSchema, columns: list[str] | None = None) -> pa.Table:
    """Read a wattlas Parquet artifact, refusing files of another schema or a newer version."""
    path = Path(path)
    try:
        file_schema = pq.read_schema(path)
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(path, f"not a readable Parquet file ({exc})") from None
    meta = file_schema.metadata or {}
    name = meta.get(SCHEMA_KEY, b"").decode() or None
    if name is not None and name != expected.name:
        raise InputError(path, f"is a {name!r} artifact, expected {expected.name!r}")
    version = int(meta.get(VERSION_KEY, b"0") or 0)
    if version > expected.version:
        raise InputError(path, f"{expected.name} schema version {version} is newer than this wattlas understands ({expected.version}); upgrade wattlas")
    missing = [c for c in expected.required_names if c not in file_schema.names]
    if missing:
        raise InputError(path, f"missing required column (found: {', '.join(file_schema.names)})", column=missing[0])
    return pq.read_table(path, columns=columns)


def describe_artifact(path: str | Path) -> str:
    """One-line description of an artifact: schema, version, rows and whether it is simulated."""
    meta = pq.read_metadata(path)
    kv = artifact_metadata(meta.schema.to_arrow_schema())
    name = kv.get("wattlas.schema", "unknown")
    label = " [SIMULATED]" if kv.get("wattlas.simulated") == "true" else ""
    known = "" if name in ALL_SCHEMAS else " (not a wattlas schema)"
    return f"{path}: {name} v{kv.get('wattlas.schema_version', '?')}{known}, {meta.num_rows} rows{label}"
