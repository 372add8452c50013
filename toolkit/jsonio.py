"""Writing wattlas outputs: strict JSON, atomic text files, output paths checked before the work.

JSON has no NaN or Infinity; Python's ``json`` writes them anyway (as bare ``NaN``), which other
parsers (``jq``, browsers, most languages) reject.  Every JSON output goes through
:func:`dump_json`, which writes an unknown or infinite number as ``null``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError


def to_jsonable(value: object) -> Any:
    """``value`` with only JSON types inside: non-finite floats become None, numpy scalars and
    arrays plain Python, tuples lists, mapping keys strings; anything else its ``str``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_jsonable(v) for v in value]
    return str(value)


def dump_json(value: object, indent: int | None = 2) -> str:
    """Strict JSON text of ``value`` (see :func:`to_jsonable`): ``null``, never NaN or Infinity."""
    return json.dumps(to_jsonable(value), indent=indent, allow_nan=False)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one, never a
    truncated one; a failure names ``path`` (not the temporary file) and leaves no stray file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # (never created, or the directory refuses even that)
            tmp.unlink(missing_ok=True)
        raise InputError(path, f"cannot write ({exc.strerror or exc})") from None
    return path


def ensure_writable_dir(directory: str | Path) -> Path:
    """Create ``directory`` if needed and check that files can be created in it.

    Commands call this before their work, so a read-only or mistyped output path fails at once
    with one line naming it, instead of after a long run with a traceback."""
    directory = Path(directory)
    blocker = next((p for p in (directory, *directory.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise InputError(directory, f"cannot write output here ({blocker} is a file, not a directory)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".wattlas-write-check-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(directory, f"cannot write output here ({exc.strerror or exc})") from None
    return directory


def ensure_writable_file(path: str | Path) -> Path:
    """Check that ``path`` can be written as a file: not a directory, and its directory (created
    if needed) takes new files; see :func:`ensure_writable_dir`."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a directory; expected a file name")
    ensure_writable_dir(path.parent)
    return path
