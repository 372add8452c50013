"""What a replay records as it runs: the token-weighted TBT histogram and each instance's energy per
time bin, run-length encoded (a stretch of equal bins is one run), so memory follows the events of
a trace, not its time span: ten idle years cost one run per instance.  A streaming replay takes the
runs of bins every instance has passed out of the recorder (:meth:`Recorder.take_before`) and
writes them, so the timeline held follows the bins still open.
"""

from __future__ import annotations

import math
from array import array

import numpy as np

TBT_BINS_PER_DECADE = 200
TBT_MIN_LOG = -6.0
TBT_BINS = TBT_BINS_PER_DECADE * 10
_TBT_TOPS = [10 ** (TBT_MIN_LOG + (k + 1) / TBT_BINS_PER_DECADE) for k in range(TBT_BINS)]  # each bin's upper edge (s)


class _Track:
    """One instance's energy per time bin, run-length encoded: bins ``[0, open_bin)`` as runs of
    ``counts[i]`` bins holding ``energy[i]`` joules each, then the bin still being filled.

    Plain ``array`` columns (16 bytes a run) rather than Python objects: a busy instance has a
    run per bin, and that must not cost more than a few times the dense array it replaces.
    """

    __slots__ = ("base", "counts", "energy", "open_bin", "open_j")

    def __init__(self) -> None:
        self.base = 0  # first bin held (the bins before it were taken out: Recorder.take_before)
        self.counts = array("q")
        self.energy = array("d")
        self.open_bin = 0
        self.open_j = 0.0

    def take_before(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Remove and return the runs of bins ``[base, k)`` as (first bin, bins, energy per bin J);
        ``k`` must not pass the open bin.  A run across ``k`` is split."""
        counts = np.array(self.counts, dtype=np.int64)  # (copies: the arrays shrink below)
        energy = np.array(self.energy, dtype=np.float64)
        starts = self.base + np.cumsum(counts) - counts
        whole = int(np.searchsorted(starts + counts, k, side="right"))  # runs ending at or before k
        taken = (starts[:whole], counts[:whole], energy[:whole])
        if whole < len(counts) and starts[whole] < k:  # the run across k: its part before k
            cut = k - int(starts[whole])
            taken = (np.r_[taken[0], starts[whole]], np.r_[taken[1], cut], np.r_[taken[2], energy[whole]])
            self.counts[whole] -= cut
        del self.counts[:whole]
        del self.energy[:whole]
        self.base = max(self.base, k)
        return taken

    def push(self, n: int, energy_j: float) -> None:
        """Append ``n`` bins of ``energy_j`` each (merged into the last run when equal)."""
        if self.energy and self.energy[-1] == energy_j:
            self.counts[-1] += n
        else:
            self.counts.append(n)
            self.energy.append(energy_j)

    def close_until(self, k: int) -> None:
        """Complete the open bin, leave the bins before ``k`` empty and open bin ``k``."""
        self.push(1, self.open_j)
        if k > self.open_bin + 1:
            self.push(k - self.open_bin - 1, 0.0)  # powered off, or not recorded yet
        self.open_bin, self.open_j = k, 0.0


class Recorder:
    """Token-weighted TBT histogram and per-instance energy per time bin (run-length encoded)."""

    def __init__(self, n_instances: int, bin_s: float) -> None:
        self.tbt_hist = np.zeros(TBT_BINS)
        self.bin_s = bin_s
        self._tracks = [_Track() for _ in range(n_instances)]

    def open_bins(self) -> list[int]:
        """Each instance's bin being filled: the bins before the smallest are complete everywhere."""
        return [track.open_bin for track in self._tracks]

    def take_before(self, k: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Remove the runs of bins before ``k`` (at most the smallest open bin) from every instance
        and return them, per instance, as (first bin, bins, energy per bin J)."""
        return [track.take_before(k) for track in self._tracks]

    @staticmethod
    def _tbt_bin(latency: float) -> int:
        idx = int((math.log10(latency if latency > 1e-6 else 1e-6) - TBT_MIN_LOG) * TBT_BINS_PER_DECADE)
        return idx if 0 <= idx < TBT_BINS else (0 if idx < 0 else TBT_BINS - 1)

    def add_tbt(self, first: float, slope: float, n: int, weight: float) -> None:
        """``n`` iterations of latency first + slope*j, each giving ``weight`` token gaps."""
        lo = int((math.log10(first if first > 1e-6 else 1e-6) - TBT_MIN_LOG) * TBT_BINS_PER_DECADE)
        last = first + slope * (n - 1)
        # the common case: the whole stretch falls in one bin (its last latency below the bin's top)
        if 0 <= lo < TBT_BINS and first <= last < _TBT_TOPS[lo]:
            self.tbt_hist[lo] += n * weight
            return
        lo, hi = self._tbt_bin(first), self._tbt_bin(last)
        if lo == hi:
            self.tbt_hist[lo] += n * weight
            return
        latencies = first + slope * np.arange(n)
        idx = ((np.log10(np.maximum(latencies, 1e-6)) - TBT_MIN_LOG) * TBT_BINS_PER_DECADE).astype(np.int64)
        np.add.at(self.tbt_hist, np.clip(idx, 0, TBT_BINS - 1), weight)

    def add_energy(self, instance: int, t0: float, t1: float, power_w: float) -> None:
        """Spread constant power over [t0, t1) into the instance's bins.

        An instance records its time in order (each call starts where its previous one ended),
        so only the bin being filled is open; the whole bins of a long stretch become one run.
        """
        if t1 <= t0:
            return
        track = self._tracks[instance]
        w = self.bin_s
        first, last = int(t0 // w), int(t1 // w)
        if first != track.open_bin:
            if first < track.open_bin:
                raise ValueError(f"instance {instance}: energy at {t0} s recorded after later energy")
            track.close_until(first)
        if first == last:
            track.open_j += power_w * (t1 - t0)
            return
        track.open_j += power_w * ((first + 1) * w - t0)
        track.close_until(first + 1)
        if last > first + 1:
            track.push(last - first - 1, power_w * w)
        track.open_bin, track.open_j = last, power_w * (t1 - last * w)

    def energy_in_bins(self, first: int, last: int) -> float:
        """Energy (J) of all instances in bins ``[first, last)``.

        Reads each instance's runs backwards from its newest, so a window near the present (what a
        controller asks for) costs a few runs, however long the timeline already is.  Bins already
        taken out (:meth:`take_before`) cannot be read: asking for them is an error, not a zero."""
        total = 0.0
        for track in self._tracks:
            if first < track.base:
                raise ValueError(f"energy of bins from {first} asked, but bins before {track.base} were written out")
            if first <= track.open_bin < last:
                total += track.open_j
            end, k = track.open_bin, len(track.counts) - 1
            while k >= 0 and end > first:
                start = end - track.counts[k]
                overlap = min(end, last) - max(start, first)
                if overlap > 0:
                    total += overlap * track.energy[k]
                end, k = start, k - 1
        return total

    def runs(self, instance: int, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(first bin, bins, energy per bin in J) of each run of equal bins of ``instance``, covering
        exactly bins ``[base, n_bins)`` (``base``: 0 unless bins were taken out): empty bins are a zero run, energy past ``n_bins`` is cut off."""
        track = self._tracks[instance]
        counts = np.append(np.asarray(track.counts, dtype=np.int64), [1, max(0, n_bins - track.open_bin - 1)])
        energy = np.append(np.asarray(track.energy, dtype=np.float64), [track.open_j, 0.0])
        starts = track.base + np.cumsum(counts) - counts
        keep = (counts > 0) & (starts < n_bins)
        starts, counts, energy = starts[keep], np.minimum(counts[keep], n_bins - starts[keep]), energy[keep]
        new = np.r_[True, energy[1:] != energy[:-1]]  # the open bin or the padding may equal their neighbour
        return starts[new], np.add.reduceat(counts, np.flatnonzero(new)), energy[new]

    def tbt_quantile(self, q: float) -> float:
        """Quantile ``q`` (0 to 1) of the token-weighted time between tokens, s, to the histogram's
        resolution (200 bins a decade); NaN before any decode."""
        return tbt_quantile(self.tbt_hist, q)


def tbt_quantile(hist: np.ndarray, q: float) -> float:
    """Quantile ``q`` (0 to 1) of a histogram of bins of 200 a decade from 1 us (:class:`Recorder`'s
    TBT, and the request latencies of :mod:`replay.summary`), s, at the bin's log midpoint; NaN
    when empty.  Any length: the bins past the TBT's ten decades continue the same grid."""
    total = hist.sum()
    if total == 0:
        return float("nan")
    idx = int(np.searchsorted(np.cumsum(hist), q * total))
    return float(10 ** (TBT_MIN_LOG + (idx + 0.5) / TBT_BINS_PER_DECADE))
