"""Marker files: how a process the sampler does not run announces its phases.

The process appends one JSON object per line; ``t`` is wall-clock Unix seconds (``time.time()``):

    {"event": "start", "window": "prefill", "t": 1732450000.123, "attrs": {"tokens": 8192}}
    {"event": "end", "window": "prefill", "t": 1732450000.456}

``end`` closes the most recent open window of that name.  ``wattlas collect run`` passes the file
to its command in ``WATTLAS_MARKER_FILE``; :func:`phase` is a ready client for Python code.
A half-written last line (the writer was mid-append) is left for the next poll.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

ENV_VAR = "WATTLAS_MARKER_FILE"


def write_marker(path: str | Path, event: str, window: str, t: float | None = None, **attrs) -> None:
    """Append one marker line (event start/end of a window, at ``t`` or now) to the file a sampler reads."""
    record = {"event": event, "window": window, "t": time.time() if t is None else t}
    if attrs:
        record["attrs"] = attrs
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


@contextmanager
def phase(window: str, path: str | Path | None = None, **attrs):
    """Mark a phase in the file named by ``WATTLAS_MARKER_FILE`` (a no-op when unset)."""
    path = path or os.environ.get(ENV_VAR)
    if not path:
        yield
        return
    write_marker(path, "start", window, **attrs)
    try:
        yield
    finally:
        write_marker(path, "end", window)


MAX_WINDOW_NAME = 200  # characters; a phase name, not a payload
CLOCK_SKEW_S = 5.0  # how far a marker's time may lie outside the run before it is refused


class MarkerReader:
    """Incrementally reads complete marker lines; malformed lines are reported, never fatal.

    A line is used only if it is a JSON object with ``event`` "start" or "end", a non-empty
    ``window`` name, a finite ``t`` within the run (``not_before`` .. ``not_after`` of
    :meth:`poll`, give or take ``CLOCK_SKEW_S``) and, if present, an object ``attrs``.  Anything
    else becomes one line in ``errors`` naming the file and line, and is skipped.
    """

    def __init__(self, path: str | Path, max_errors: int = 1000) -> None:
        self.path = Path(path)
        self.offset = 0
        self.line_no = 0
        self.errors: list[str] = []
        self.error_count = 0
        self.max_errors = max_errors  # kept in memory; the rest are only counted

    def poll(self, not_before: float | None = None, not_after: float | None = None) -> list[dict]:
        """New complete marker lines as events; ``t`` outside [not_before, not_after] (wall s) is refused."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        events = []
        for raw in data[: end + 1].splitlines():
            self.line_no += 1
            try:
                events.append(_parse_marker(raw, not_before, not_after))
            except ValueError as exc:
                self.error_count += 1
                if len(self.errors) < self.max_errors:
                    self.errors.append(f"{self.path}: line {self.line_no}: bad marker skipped ({exc})")
        return events


def _parse_marker(raw: bytes, not_before: float | None, not_after: float | None) -> dict:
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):
        raise ValueError("not JSON") from None
    if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, expected an object")
    if record.get("event") not in ("start", "end"):
        raise ValueError("key event must be 'start' or 'end'")
    window = record.get("window")
    if not isinstance(window, str) or not window.strip() or len(window) > MAX_WINDOW_NAME:
        raise ValueError(f"key window must be a name of 1-{MAX_WINDOW_NAME} characters")
    t = record.get("t")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise ValueError("key t must be a finite number (Unix seconds)")
    t = float(t)
    if not_before is not None and t < not_before - CLOCK_SKEW_S:
        raise ValueError(f"key t {t:.3f} is before the collection started ({not_before:.3f})")
    if not_after is not None and t > not_after + CLOCK_SKEW_S:
        raise ValueError(f"key t {t:.3f} is in the future (now {not_after:.3f})")
    attrs = record.get("attrs")
    if attrs is not None and not isinstance(attrs, dict):
        raise ValueError("key attrs must be an object")
    return {"event": record["event"], "window": window, "t": t, "attrs": attrs}
