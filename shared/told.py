"""Recording what a patient was told about their wait (``wait.told`` on the told topic),
for notifications' accuracy projection to score against the truth.

Who tells, and when it counts as telling (issue 17):

* check-in: the kiosk's check-in answer and its follow-up polls (channel ``kiosk``), the
  status lookup by ticket (``status``), whenever they answer a range;
* flow: the waiting-room screen (``tv``) shows each waiting visit's range; told when the
  visit first gets one and whenever it changes materially;
* notifications: a sent delay warning (its channel) or "please come back now" (``next``).

Not flooding the topic (``tell_again``, pure): a visit is told again on a channel only
when ``MIN_GAP`` has passed since it last was there (the clock injected: ``at``) and the
range moved at least ``MATERIAL_MINUTES`` at either end beyond what the clock explains (a
range that only ran down with the minutes is what the patient expects). The range
recorded is the one the screens show (``screen_range``: five-minute steps, as kiosk.js
and waiting-room.js draw it). ``ToldLog`` keeps each visit's last told range in Redis and
queues the record on the service's outbox in the same transaction (the relay publishes it
with acks=all); its event id is derived from what was told, so a race of two lookups or a
replay is one record for the projection.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from shared import events as ev
from shared.logging import get_logger
from shared.outbox import Outbox, outbox_entry

log = get_logger("clinicflow.told")

MIN_GAP = timedelta(minutes=3)
MATERIAL_MINUTES = 5.0
KEEP_SECONDS = 2 * 24 * 3600


@dataclass(frozen=True, slots=True)
class LastTold:
    """What a visit was last told on a channel: when, and the range (minutes)."""

    at: datetime
    low: float
    high: float


def tell_again(last: LastTold | None, at: datetime, low: float, high: float) -> bool:
    """Whether a range shown at ``at`` is a new told record (see the module docstring)."""
    if last is None:
        return True
    if at - last.at < MIN_GAP:
        return False
    elapsed = (at - last.at).total_seconds() / 60.0
    return (abs(low - max(0.0, last.low - elapsed)) >= MATERIAL_MINUTES
            or abs(high - max(0.0, last.high - elapsed)) >= MATERIAL_MINUTES)


def screen_range(low: float, high: float) -> tuple[int, int]:
    """The range as the kiosk and the waiting-room screen draw it (five-minute steps)."""
    lo = max(0, math.floor(low / 5) * 5)
    return lo, max(lo + 5, math.ceil(high / 5) * 5)


def told_event(clinic_id: str, visit_id: str, *, channel: ev.ToldChannel, low: float,
               high: float, point: float, at: datetime, source: str,
               provider_id: str | None = None, ticket_code: str | None = None,
               reference_minutes: float | None = None) -> ev.Event:
    """The ``wait.told`` event; its id is derived from the clinic, visit, channel, range
    and instant, so the same telling recorded twice is one record."""
    digest = hashlib.sha256(
        f"{clinic_id}|{visit_id}|{channel}|{low}|{high}|{at.timestamp()}".encode()
    ).hexdigest()[:32]
    return ev.make_event(
        ev.WaitTold(visit_id=visit_id, ticket_code=ticket_code, channel=channel,
                    low=low, high=high, wait_minutes=round(min(max(0.0, point), 1440.0), 1),
                    provider_id=provider_id, reference_minutes=reference_minutes),
        clinic_id=clinic_id, source=source, occurred_at=at, correlation_id=visit_id,
        event_id=f"told-{digest}")


class ToldLog:
    """A service's told records through its outbox (``record``), each visit's last told
    range per channel in ``P:told-last:{clinic}`` (a hash, two days)."""

    def __init__(self, redis: Redis, prefix: str, outbox: Outbox, *, source: str,
                 queued: Callable[[], Any] | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        self.outbox = outbox
        self.source = source
        self.queued = queued

    async def record(self, clinic_id: str, visit_id: str, *, channel: ev.ToldChannel,
                     low: float, high: float, point: float | None, at: datetime,
                     provider_id: str | None = None, ticket_code: str | None = None) -> bool:
        """Record a range shown at ``at`` (the screens' steps), unless the visit was told
        about the same on this channel moments ago. Never fails the caller: a told record
        lost is logged, the patient's answer matters more. True when one was queued."""
        try:
            return await self._record(clinic_id, visit_id, channel, low, high, point, at,
                                      provider_id, ticket_code)
        except Exception as exc:
            log.warning("told record not kept", clinic_id=clinic_id, channel=channel,
                        error=repr(exc))
            return False

    async def _record(self, clinic_id: str, visit_id: str, channel: ev.ToldChannel,
                      low: float, high: float, point: float | None, at: datetime,
                      provider_id: str | None, ticket_code: str | None) -> bool:
        key, field = f"{self.prefix}:told-last:{clinic_id}", f"{visit_id}|{channel}"
        raw = await self.redis.hget(key, field)
        last = None
        if raw:
            when, lo, hi = (raw.decode() if isinstance(raw, bytes) else raw).split(",")
            last = LastTold(datetime.fromtimestamp(float(when), at.tzinfo), float(lo),
                            float(hi))
        if not tell_again(last, at, low, high):
            return False
        shown_low, shown_high = screen_range(low, high)
        event = told_event(clinic_id, visit_id, channel=channel, low=float(shown_low),
                           high=float(shown_high),
                           point=(shown_low + shown_high) / 2 if point is None else point,
                           at=at, source=self.source, provider_id=provider_id,
                           ticket_code=ticket_code)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, field, f"{at.timestamp()!r},{low!r},{high!r}")
            pipe.expire(key, KEEP_SECONDS)
            self.outbox.queue(pipe, [outbox_entry("told", clinic_id, ev.encode(event))])
            await pipe.execute()
        if self.queued is not None:
            self.queued()
        return True
