"""Driving a sampler by hand on a fake clock, so no assertion depends on how fast the machine runs."""

from __future__ import annotations

from .fake_pynvml import FakeClock

__all__ = ["WALL0", "FakeClock", "finish"]

WALL0 = 1.7e9  # the wall clock's reading when the fake monotonic clock reads 0


def finish(sampler, clock: FakeClock, dt: float = 0.1) -> None:
    """Close a hand-driven sampler as a real run would: a moment after its last tick."""
    clock.advance(dt)
    sampler.close()
