"""Per-request state of a replay: column arrays indexed by *slot*.

The in-memory replay gives each request of the trace its own slot (slot = row of the trace).  A
streaming replay (:mod:`replay.stream`) gives a slot to each request when it arrives and takes it
back once the request's results are written out, so the arrays hold the requests in flight (and
those waiting to be written in arrival order), whatever the trace's length.  Instances and
schedulers only ever see slots; ``row`` maps a slot back to the request's row in the trace.
"""

from __future__ import annotations

import numpy as np

#: columns a replay writes per request, with their dtype and value before anything happened
_STATE = (("pool", np.int64, -1), ("instance", np.int64, -1), ("first_token", np.float64, np.nan),
          ("finish", np.float64, np.nan), ("tbt_max", np.float64, 0.0), ("energy", np.float64, 0.0),
          ("e_join", np.float64, 0.0), ("h_join", np.int64, 0))


class Requests:
    """Column arrays of the requests plus each one's outcome, one entry per slot.

    ``e_join`` is the instance's energy-per-sequence counter when the request began decoding and
    ``h_join`` the length of the instance's latency history then (see :class:`replay.instance.Instance`).
    """

    def __init__(self, arrival: np.ndarray, inputs: np.ndarray, outputs: np.ndarray) -> None:
        n = len(arrival)
        self.arrival = np.asarray(arrival, dtype=np.float64)
        self.input = np.asarray(inputs, dtype=np.int64)
        self.output = np.asarray(outputs, dtype=np.int64)
        self.row = np.arange(n, dtype=np.int64)  # the request's row in the trace
        self.request_id = self.row.copy()  # (the trace's own id where it has one: streaming replays)
        for name, dtype, fill in _STATE:
            setattr(self, name, np.full(n, fill, dtype=dtype))
        self.drop_reason = np.full(n, None, dtype=object)
        self.priority = np.full(n, None, dtype=object)
        self._free = np.empty(0, dtype=np.int64)  # slots given back, reused first

    @classmethod
    def empty(cls, capacity: int) -> "Requests":
        """Requests with ``capacity`` free slots (a streaming replay's store; it grows as needed)."""
        store = cls(np.zeros(capacity), np.zeros(capacity, dtype=np.int64), np.zeros(capacity, dtype=np.int64))
        store.row[:] = -1
        store._free = np.arange(capacity, dtype=np.int64)
        return store

    @property
    def capacity(self) -> int:
        """Slots allocated (in use or free)."""
        return len(self.arrival)

    def _grow(self, at_least: int) -> None:
        """Double the arrays (at least to ``at_least`` slots); slots in use keep their index."""
        old = self.capacity
        new = max(2 * old, at_least, 1024)
        for name in ("arrival", "input", "output", "row", "request_id", "drop_reason", "priority") + tuple(s[0] for s in _STATE):
            column = getattr(self, name)
            grown = np.empty(new, dtype=column.dtype)
            grown[:old] = column
            setattr(self, name, grown)
        self._free = np.concatenate([self._free, np.arange(old, new, dtype=np.int64)])

    def add(self, rows: np.ndarray, arrival: np.ndarray, inputs: np.ndarray, outputs: np.ndarray,
            pool: np.ndarray, request_id: np.ndarray | None = None, priority: np.ndarray | None = None) -> np.ndarray:
        """Give the requests at trace ``rows`` a slot each, holding their columns (``request_id``
        defaults to the row) and a fresh outcome; returns the slots in the order given."""
        n = len(rows)
        if n > len(self._free):
            self._grow(self.capacity - len(self._free) + n)
        slots, self._free = self._free[:n], self._free[n:]
        self.row[slots] = rows
        self.arrival[slots] = arrival
        self.input[slots] = inputs
        self.output[slots] = outputs
        for name, _, fill in _STATE:
            getattr(self, name)[slots] = fill
        self.pool[slots] = pool
        self.request_id[slots] = rows if request_id is None else request_id
        self.priority[slots] = priority
        self.drop_reason[slots] = None
        return slots

    def done(self, slots: np.ndarray) -> np.ndarray:
        """Whether each of ``slots`` holds a request that finished or was dropped (its outcome final)."""
        return ~np.isnan(self.finish[slots]) | (self.drop_reason[slots] != None)  # noqa: E711  (object array)

    def release(self, slots: np.ndarray) -> None:
        """Take ``slots`` back (their requests are written out)."""
        self.row[slots] = -1
        self._free = np.concatenate([self._free, np.asarray(slots, dtype=np.int64)])
