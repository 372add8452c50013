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
import os
import time
from contextlib import contextmanager
from pathlib import Path

ENV_VAR = "WATTLAS_MARKER_FILE"


def write_marker(path: str | Path, event: str, window: str, t: float | None = None, **attrs) -> None:
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


class MarkerReader:
    """Incrementally reads complete marker lines; malformed lines are reported, not fatal."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.offset = 0
        self.line_no = 0
        self.errors: list[str] = []

    def poll(self) -> list[dict]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        events = []
        for raw in data[: end + 1].splitlines():
            self.line_no += 1
            try:
                record = json.loads(raw)
                if record.get("event") not in ("start", "end") or not isinstance(record.get("window"), str):
                    raise ValueError("needs event start|end and a window name")
                record["t"] = float(record["t"])
                events.append(record)
            except (ValueError, KeyError, TypeError) as exc:
                self.errors.append(f"{self.path}: line {self.line_no}: bad marker ({exc})")
        return events
