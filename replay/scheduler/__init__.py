"""Replica batch schedulers (as Vidur's ``replica_scheduler`` registry): what an instance admits
from its queue and which prefill pieces ride in its next iteration.

A pool names its scheduler (``scheduler = "fcfs"`` in the cluster TOML); each instance gets its
own object from :func:`make_scheduler`.  A scheduler implements

* ``admit(inst)``: move requests from ``inst.queue`` to ``inst.prefilling`` (reserving their KV:
  ``inst.kv_reserved``), dropping those that could never fit (``drop_if_never_fits``);
* ``plan(inst, b, k_sum, groups)``: the prefill pieces of the next iteration, as
  ``(item, chunk tokens, prefix tokens)`` with ``item`` an entry ``[request, tokens done]`` of
  ``inst.prefilling``, given the ``b`` running decodes holding ``k_sum`` KV tokens over ``groups``
  KVP groups.  The instance runs the iteration (latency, energy, first tokens) and advances the items.

Registered here: ``fcfs`` (first come, first served: the engine's original admission and chunking)
and ``lars`` (Mnemosyne's length-aware least-slack scheduling).  Add one with :func:`register`.
"""

from __future__ import annotations

from typing import Callable

from .base import MIN_CHUNK, BatchScheduler, drop_if_never_fits

SCHEDULERS: dict[str, Callable[[], BatchScheduler]] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a :class:`BatchScheduler` subclass available as ``name``."""
    def add(cls: type) -> type:
        cls.name = name
        SCHEDULERS[name] = cls
        return cls
    return add


def make_scheduler(name: str) -> BatchScheduler:
    """A new scheduler ``name`` for one instance (``KeyError`` naming the known ones otherwise)."""
    try:
        return SCHEDULERS[name]()
    except KeyError:
        raise KeyError(f"no replica scheduler {name!r} (known: {', '.join(SCHEDULERS)})") from None


from . import fcfs, lars  # noqa: E402,F401  (they register themselves)

__all__ = ["MIN_CHUNK", "SCHEDULERS", "BatchScheduler", "drop_if_never_fits", "make_scheduler", "register"]
