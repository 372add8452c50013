"""What every replica scheduler shares: the interface and the KV admission check."""

from __future__ import annotations

MIN_CHUNK = 32  # the smallest adaptive chunk: the first piece of an iteration always progresses by this much


class BatchScheduler:
    """One instance's batch scheduler (``replay/scheduler/__init__.py`` describes the interface)."""

    name = ""

    def admit(self, inst) -> None:
        """Move what may start from ``inst.queue`` to ``inst.prefilling``, reserving its KV."""
        raise NotImplementedError

    def plan(self, inst, b: int, k_sum: float, groups: int) -> list[tuple[list[int], int, int]]:
        """The prefill pieces of the next iteration: (item of ``inst.prefilling``, chunk, prefix)."""
        raise NotImplementedError

    def forget(self, r: int) -> None:
        """Request in slot ``r`` finished its prefill: drop whatever was kept for it (the slot may
        next hold another request)."""

    def describe(self) -> dict:
        """The scheduler's name and settings, for summaries."""
        return {"name": self.name}


def drop_if_never_fits(inst, r: int, need: int) -> bool:
    """Drop request ``r`` (needing ``need`` KV tokens) with its reason when the instance could never
    hold it, even empty; True when dropped."""
    capacity = inst.kv_capacity
    if need <= capacity:
        return False
    reason = f"needs {need} KV tokens, instance holds {capacity}"
    if inst.memory is not None:
        reason += f": {inst.memory.context_need(need, inst.pool.kvp)}"
    inst.req.drop_reason[r] = reason
    inst.dropped_tokens(r)
    return True


def start(inst, r: int, need: int) -> None:
    """Reserve ``need`` KV tokens for request ``r`` and start its prefill."""
    inst.kv_reserved += need
    inst.prefilling.append([r, 0])
