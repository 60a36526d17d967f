"""Complaints as the front office handles them. Pure (no I/O, no clock: time comes in).

A complaint is logged by staff (front desk or manager: in person, by phone) or raised by
a low rating (1-2) on the feedback form, once per visit. It has a category (wait,
billing, staff, facility, other), a status that only moves forward (open ->
acknowledged -> resolved; open -> resolved too, when it is settled on the spot), an
owner (whoever acknowledged or resolved it) and a due time: **acknowledged within one
business hour** of being logged, business hours being Monday to Friday 08:00-18:00 on
the clinic's clock (a complaint logged at 17:30 is due at 08:30 the next business
morning). Once acknowledged, it is due resolved within two business days (20 business
hours); only a missed acknowledgement escalates (``due_escalation``): once, to the
manager.

The patient's words (``text``) stay in notifications' store, shown to the manager only;
events and logs carry ids, the category, the source and times.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo

from shared.errors import Conflict
from shared.events_notifications import ComplaintCategory, ComplaintSource

Status = Literal["open", "acknowledged", "resolved"]
CATEGORIES: tuple[str, ...] = get_args(ComplaintCategory)
SOURCES: tuple[str, ...] = get_args(ComplaintSource)
BUSINESS_OPEN = time(8, 0)
BUSINESS_CLOSE = time(18, 0)
BUSINESS_DAYS = frozenset(range(5))  # Monday to Friday
ACKNOWLEDGE_WITHIN = timedelta(hours=1)  # business time
RESOLVE_WITHIN = timedelta(hours=20)  # business time: two business days of 10 hours
LOW_RATING = 2  # a rating of 1 or 2 raises a complaint
MAX_TEXT = 2000


def add_business_time(start: datetime, span: timedelta, zone: ZoneInfo) -> datetime:
    """``start`` plus ``span`` of business time (Mon-Fri 08:00-18:00 in ``zone``): the
    clock stands still outside business hours. Returned on the clinic's clock."""
    at = start.astimezone(zone)
    left = span
    while True:
        day_open = datetime.combine(at.date(), BUSINESS_OPEN, zone)
        day_close = datetime.combine(at.date(), BUSINESS_CLOSE, zone)
        if at.weekday() not in BUSINESS_DAYS or at >= day_close:
            at = datetime.combine(at.date() + timedelta(days=1), BUSINESS_OPEN, zone)
            continue
        at = max(at, day_open)
        if at + left <= day_close:
            return at + left
        left -= day_close - at
        at = day_close


@dataclass(frozen=True, slots=True)
class Complaint:
    """One complaint as stored (``text`` is kept apart: see ``ComplaintStore``)."""

    complaint_id: str
    clinic_id: str
    visit_id: str | None
    category: str
    source: str
    status: Status
    logged_at: datetime
    logged_by: str
    due_at: datetime  # acknowledge by (open), resolve by (acknowledged)
    owner: str | None = None
    acknowledged_at: datetime | None = None
    resolved_at: datetime | None = None
    escalated_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {name: (value.isoformat() if isinstance(value, datetime) else value)
                for name in self.__slots__  # type: ignore[attr-defined]
                for value in [getattr(self, name)]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Complaint:
        values = dict(data)
        for name in ("logged_at", "due_at", "acknowledged_at", "resolved_at",
                     "escalated_at"):
            if values.get(name) is not None:
                values[name] = datetime.fromisoformat(values[name])
        return cls(**values)

    def overdue(self, now: datetime) -> bool:
        return self.status != "resolved" and now >= self.due_at


def log(complaint_id: str, clinic_id: str, *, visit_id: str | None, category: str,
        source: str, by: str, now: datetime, zone: ZoneInfo) -> Complaint:
    """A new open complaint, due acknowledged within one business hour."""
    return Complaint(complaint_id, clinic_id, visit_id, category, source, "open",
                     now.astimezone(zone), by,
                     add_business_time(now, ACKNOWLEDGE_WITHIN, zone))


def acknowledge(complaint: Complaint, *, owner: str, now: datetime,
                zone: ZoneInfo) -> Complaint:
    """open -> acknowledged: the owner takes it on; due resolved in two business days."""
    if complaint.status != "open":
        raise Conflict(f"complaint {complaint.complaint_id} is {complaint.status}: only an "
                       "open complaint can be acknowledged", code="complaint_not_open")
    return replace(complaint, status="acknowledged", owner=owner,
                   acknowledged_at=now.astimezone(zone),
                   due_at=add_business_time(now, RESOLVE_WITHIN, zone))


def resolve(complaint: Complaint, *, owner: str, now: datetime, zone: ZoneInfo) -> Complaint:
    """open or acknowledged -> resolved."""
    if complaint.status == "resolved":
        raise Conflict(f"complaint {complaint.complaint_id} is already resolved",
                       code="complaint_resolved")
    return replace(complaint, status="resolved", owner=complaint.owner or owner,
                   resolved_at=now.astimezone(zone))


def due_escalation(complaint: Complaint, now: datetime) -> bool:
    """Whether ``tick(now)`` escalates it: still open at or after its due time, and not
    escalated before."""
    return (complaint.status == "open" and complaint.escalated_at is None
            and now >= complaint.due_at)


def escalate(complaint: Complaint, now: datetime, zone: ZoneInfo) -> Complaint:
    return replace(complaint, escalated_at=now.astimezone(zone))


def follow_up(complaints: list[Complaint], now: datetime) -> list[Complaint]:
    """The front desk's list: every complaint not resolved, the overdue first, then by due
    time."""
    waiting = [c for c in complaints if c.status != "resolved"]
    return sorted(waiting, key=lambda c: (not c.overdue(now), c.due_at, c.complaint_id))
