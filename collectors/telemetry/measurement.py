"""What a measurement window returns: time and energy per GPU, each energy with its method."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Measurement:
    """One closed window, the way Zeus's ``end_window`` returns it (plus the method per GPU).

    ``energy_j[gpu]`` is None where it is unknown (a GPU lost inside the window, a driver outage
    the counter does not span) - never 0.  ``method[gpu]`` is ``"counter"`` or ``"integrated_power"``.
    """

    name: str
    time_s: float
    energy_j: dict[int, float | None]
    method: dict[int, str | None]
    start_wall_s: float
    end_wall_s: float
    simulated: bool = False
    attrs: dict = field(default_factory=dict)

    @property
    def total_energy_j(self) -> float | None:
        """Energy of every GPU together; None when any GPU's is unknown (a partial sum would mislead)."""
        values = list(self.energy_j.values())
        return None if not values or any(v is None for v in values) else float(sum(values))

    @classmethod
    def from_rows(cls, rows: list[dict], simulated: bool = False) -> "Measurement":
        """From the per-GPU rows of one phase window (``phase_windows`` schema)."""
        first = rows[0]
        return cls(
            name=first["window"],
            time_s=first["duration_s"],
            energy_j={r["gpu_index"]: r["energy_j"] for r in rows},
            method={r["gpu_index"]: r["energy_method"] for r in rows},
            start_wall_s=first["start_wall_s"],
            end_wall_s=first["end_wall_s"],
            simulated=simulated,
        )
