"""The fee schedule file a clinic edits: loaded and validated at start-up, reloaded
when it changes (an invalid edit is refused and the last good schedule stays)."""

from __future__ import annotations

import os
from pathlib import Path

from services.billing import metrics as m
from services.billing.domain.fee_schedule import (
    FeeSchedule,
    FeeScheduleError,
    parse_fee_schedule,
)
from shared.logging import get_logger

EXAMPLE = Path(__file__).with_name("fee_schedule.example.csv")
log = get_logger("clinicflow.billing.fees")


def load_fee_schedule(path: str | Path) -> FeeSchedule:
    """Read and validate ``path``; ``FeeScheduleError`` names the file and its bad lines."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise FeeScheduleError(f"fee schedule {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise FeeScheduleError(f"fee schedule {path}: not UTF-8 text") from None
    return parse_fee_schedule(text, source=f"fee schedule {path}")


class FeeScheduleFile:
    """The schedule in use, re-read when the file's modification time or size changes."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else EXAMPLE
        self._stamp = self._stat()
        self._schedule = load_fee_schedule(self.path)  # start-up: an invalid file stops here
        self.last_error: str | None = None
        m.FEE_SCHEDULE_LOADS.labels("ok").inc()
        m.FEE_SCHEDULE_CODES.set(_codes(self._schedule))

    def _stat(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def current(self) -> FeeSchedule:
        """The schedule to price with now."""
        stamp = self._stat()
        if stamp is not None and stamp != self._stamp:
            self._stamp = stamp
            try:
                self._schedule = load_fee_schedule(self.path)
            except FeeScheduleError as exc:
                self.last_error = str(exc)
                m.FEE_SCHEDULE_LOADS.labels("invalid").inc()
                log.error("fee schedule edit refused: the last good schedule stays",
                          error=str(exc))
            else:
                self.last_error = None
                m.FEE_SCHEDULE_LOADS.labels("ok").inc()
                m.FEE_SCHEDULE_CODES.set(_codes(self._schedule))
                log.info("fee schedule reloaded", path=str(self.path))
        return self._schedule


def _codes(schedule: FeeSchedule) -> int:
    return sum(len(fees) for fees in schedule.fees.values())
