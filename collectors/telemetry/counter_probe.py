"""How often a GPU's energy counter actually moves.

``nvmlDeviceGetTotalEnergyConsumption`` has millijoule units but is refreshed by the driver only
every 20-100 ms depending on GPU and driver, so the energy of a window is exact only to about one
refresh.  Polling the counter far faster than that and timing its changes measures the refresh
period; the profiler sizes its energy windows from it.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable


def counter_update_period(read_counter: Callable[[], float | None], duration_s: float = 1.0, poll_s: float = 0.001,
                          clock: Callable[[], float] = time.monotonic,
                          sleep: Callable[[float], None] = time.sleep) -> float | None:
    """Median time between changes of the counter over ``duration_s`` of polling; None when the
    counter is unsupported or moved fewer than three times (the GPU drew no measurable energy)."""
    changes, last = [], None
    end = clock() + duration_s
    while clock() < end:
        value = read_counter()
        if value is None:
            return None
        if last is not None and value != last:
            changes.append(clock())
        last = value
        sleep(poll_s)
    gaps = [b - a for a, b in zip(changes, changes[1:])]
    return statistics.median(gaps) if len(gaps) >= 2 else None


def window_for_counter(step_s: float | None, relative_error: float = 0.05, floor_s: float = 1.0) -> float:
    """Shortest energy window whose counter quantization (one step) is at most ``relative_error``."""
    return max(floor_s, step_s / relative_error) if step_s else floor_s
