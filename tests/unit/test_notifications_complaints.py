"""Complaints (services/notifications/complaints.py) and waits x satisfaction
(services/notifications/satisfaction.py), pure: the business-hour due time, the
transitions, the escalation decision, the follow-up list; the satisfaction rows merged in
any order, a low rating's complaint raised once per visit, and the report's arithmetic.
Time is the (injected) clock's."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.notifications import complaints as cp
from services.notifications.complaints_store import complaint_event
from services.notifications.satisfaction import (
    Row,
    SatisfactionPlan,
    low_rating_complaint_id,
    report,
    told_band,
    wait_band,
)
from services.notifications.satisfaction_api import week_range
from services.notifications.satisfaction_store import satisfaction_reader
from shared import events as ev
from shared.errors import Conflict, Rejected
from shared.events_notifications import ComplaintLogged, FeedbackGiven, NotificationSent
from tests.fakes import FakeClock

CHICAGO = ZoneInfo("America/Chicago")
CLOCK = FakeClock(datetime(2026, 3, 2, 15, 0, tzinfo=UTC))  # Monday 09:00 in Chicago
FLOOR, TOLD, NOTES = "floor", "told", "notifications"
READER = satisfaction_reader(FLOOR, TOLD, NOTES)
PLAN = SatisfactionPlan(zone=lambda _clinic: CHICAGO, floor_topic=FLOOR)


def local(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=CHICAGO)


# ------------------------------------------------------------------ due times


@pytest.mark.parametrize(("logged", "due"), [
    (local(2, 9, 0), local(2, 10, 0)),  # Monday morning: an hour later
    (local(2, 17, 30), local(3, 8, 30)),  # half an hour left today, half tomorrow
    (local(2, 19, 0), local(3, 9, 0)),  # after hours: the next morning's first hour
    (local(2, 6, 0), local(2, 9, 0)),  # before opening
    (local(6, 17, 45), local(9, 8, 45)),  # Friday evening -> Monday (across DST: -5)
    (local(7, 11, 0), local(9, 9, 0)),  # Saturday -> Monday
])
def test_acknowledge_within_one_business_hour_on_the_clinics_clock(
        logged: datetime, due: datetime) -> None:
    complaint = cp.log("cp-1", "north", visit_id="v1", category="wait", source="phone",
                       by="desk-2", now=logged.astimezone(UTC), zone=CHICAGO)
    assert complaint.due_at == due
    assert complaint.due_at.utcoffset() == due.utcoffset()  # the clinic's (DST on 8 March)
    assert complaint.status == "open"


def test_two_business_days_to_resolve_once_acknowledged() -> None:
    complaint = cp.log("cp-1", "north", visit_id=None, category="billing",
                       source="in_person", by="desk-2", now=CLOCK.now(), zone=CHICAGO)
    acked = cp.acknowledge(complaint, owner="desk-3", now=local(2, 9, 20), zone=CHICAGO)
    assert (acked.status, acked.owner) == ("acknowledged", "desk-3")
    assert acked.due_at == local(4, 9, 20)  # 16 business hours: Wednesday 09:20


def test_transitions_only_move_forward() -> None:
    complaint = cp.log("cp-1", "north", visit_id="v1", category="staff", source="phone",
                       by="desk-2", now=CLOCK.now(), zone=CHICAGO)
    resolved = cp.resolve(complaint, owner="mgr", now=CLOCK.now(), zone=CHICAGO)
    assert (resolved.status, resolved.owner) == ("resolved", "mgr")  # settled on the spot
    with pytest.raises(Conflict, match="complaint cp-1 is resolved: only an open"):
        cp.acknowledge(resolved, owner="desk-2", now=CLOCK.now(), zone=CHICAGO)
    with pytest.raises(Conflict, match="already resolved"):
        cp.resolve(resolved, owner="desk-2", now=CLOCK.now(), zone=CHICAGO)
    acked = cp.acknowledge(complaint, owner="desk-2", now=CLOCK.now(), zone=CHICAGO)
    with pytest.raises(Conflict, match="is acknowledged"):
        cp.acknowledge(acked, owner="desk-3", now=CLOCK.now(), zone=CHICAGO)
    assert cp.resolve(acked, owner="mgr", now=CLOCK.now(), zone=CHICAGO).owner == "desk-2"


def test_escalated_once_when_not_acknowledged_by_its_due_time() -> None:
    complaint = cp.log("cp-1", "north", visit_id="v1", category="wait", source="phone",
                       by="desk-2", now=CLOCK.now(), zone=CHICAGO)
    assert not cp.due_escalation(complaint, local(2, 9, 59))
    assert cp.due_escalation(complaint, local(2, 10, 0))
    escalated = cp.escalate(complaint, local(2, 10, 0), CHICAGO)
    assert not cp.due_escalation(escalated, local(2, 12, 0))  # once
    acked = cp.acknowledge(complaint, owner="desk-2", now=local(2, 9, 30), zone=CHICAGO)
    assert not cp.due_escalation(acked, local(5, 12, 0))  # acknowledged in time


def test_follow_up_list_overdue_first_then_by_due_time_without_the_resolved() -> None:
    def logged(cid: str, at: datetime) -> cp.Complaint:
        return cp.log(cid, "north", visit_id=None, category="other", source="phone",
                      by="desk", now=at, zone=CHICAGO)
    early, late, done = logged("a", local(2, 8)), logged("b", local(2, 9)), logged(
        "c", local(2, 8))
    done = cp.resolve(done, owner="desk", now=local(2, 8, 5), zone=CHICAGO)
    listed = cp.follow_up([late, done, early], local(2, 9, 30))
    assert [c.complaint_id for c in listed] == ["a", "b"]
    assert listed[0].overdue(local(2, 9, 30)) and not listed[1].overdue(local(2, 9, 30))


def test_events_carry_ids_category_and_times_never_text() -> None:
    complaint = cp.log("cp-1", "north", visit_id="v1", category="wait", source="phone",
                       by="desk-2", now=CLOCK.now(), zone=CHICAGO)
    event = complaint_event(complaint, "logged", CLOCK.now())
    assert event.event_type == "complaint.logged"
    assert event.envelope.event_id == "cp-1-logged"
    assert event.payload.model_dump() == {
        "complaint_id": "cp-1", "visit_id": "v1", "category": "wait", "source": "phone",
        "due_at": "2026-03-02T10:00:00-06:00"}
    assert cp.Complaint.from_dict(complaint.to_dict()) == complaint


# ------------------------------------------------------------------ satisfaction


def at(minutes: float) -> datetime:
    return CLOCK.now() + timedelta(minutes=minutes)


def visit(visit_id: str, *, waited: float, told_point: float | None, rating: int | None,
          provider: str = "p1", wait_answer: str = "about_right", start: float = 0
          ) -> list[tuple[str, ev.Event]]:
    """One visit's records: arrival, told at arrival (point), rooming after ``waited``
    minutes, and feedback after."""
    def event(payload: ev.Payload, minute: float) -> ev.Event:
        return ev.make_event(payload, clinic_id="north", source="test",
                             occurred_at=at(start + minute))
    records = [(FLOOR, event(ev.PatientArrived(visit_id=visit_id, ticket_code="A-1",
                                                provider_id=provider,
                                                visit_type="follow_up"), 0)),
               (FLOOR, event(ev.PatientRoomed(visit_id=visit_id, room_id="r1"), waited))]
    if told_point is not None:
        records.append((TOLD, event(ev.WaitTold(visit_id=visit_id, channel="kiosk",
                                                low=max(0, told_point - 5),
                                                high=told_point + 5,
                                                wait_minutes=told_point), 0)))
    if rating is not None:
        records.append((NOTES, event(FeedbackGiven(
            visit_id=visit_id, rating=rating, wait=wait_answer,  # type: ignore[arg-type]
            text_given=False), waited + 60)))
    return records


class Rows:
    """The satisfaction keys in a dict, written as SatisfactionStore.write writes Redis."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Row] = {}
        self.raised: list[cp.Complaint] = []
        self.offset = itertools.count()

    def apply(self, records: list[tuple[str, ev.Event]]) -> None:
        batch = [READER.read(topic, 0, next(self.offset), e.clinic_id.encode(),
                             ev.encode(e)) for topic, e in records]
        assert all(r.reason is None for r in batch), [r.reason for r in batch]
        planned = PLAN(batch, {k: dict(v) for k, v in self.rows.items()})
        for key, fields in planned.changes.rows.items():
            self.rows.setdefault(key, {}).update(fields)
        self.raised += planned.changes.raised

    def report(self) -> dict:  # type: ignore[type-arg]
        return report(self.rows.values())


def test_bands() -> None:
    assert [wait_band(m) for m in (0, 9.9, 10, 19.9, 20, 29.9, 30, 300)] == [
        "0-10", "0-10", "10-20", "10-20", "20-30", "20-30", "30+", "30+"]
    assert [told_band(e) for e in (None, 25, 20, 19.9, -19.9, -20)] == [
        "not_told", "longer_20_plus", "longer_20_plus", "within", "within",
        "shorter_20_plus"]


def test_a_low_rating_raises_one_complaint_per_visit_in_any_order() -> None:
    records = visit("v1", waited=50, told_point=10, rating=2, wait_answer="longer")
    again = records[-1]  # the answer's event delivered twice (the outbox: at least once)
    forward, backward = Rows(), Rows()
    forward.apply(records)
    forward.apply([again])
    for record in reversed([*records, again]):
        backward.apply([record])
    assert forward.rows == backward.rows
    assert len(forward.raised) == len(backward.raised) == 1
    raised = forward.raised[0]
    assert raised.complaint_id == low_rating_complaint_id("north", "v1")
    assert (raised.category, raised.source, raised.status) == ("wait", "low_rating", "open")
    assert raised.logged_at == at(110)  # the answer's time, on the clinic's clock
    assert forward.rows[("north", "v1")]["rating"] == "2"
    good = Rows()
    good.apply(visit("v2", waited=5, told_point=10, rating=3))
    assert good.raised == []


def test_the_earliest_told_wins_whatever_order_it_is_read_in() -> None:
    records = visit("v1", waited=40, told_point=10, rating=4)
    later = ev.make_event(ev.WaitTold(visit_id="v1", channel="sms", low=25, high=35,
                                      wait_minutes=30), clinic_id="north", source="test",
                          occurred_at=at(10))
    one, two = Rows(), Rows()
    one.apply([*records, (TOLD, later)])
    two.apply([(TOLD, later), *reversed(records)])
    assert one.rows == two.rows
    # first told 10 at minute 0, waited 40: 30 longer than told
    assert one.report()["by_told_band"]["longer_20_plus"]["ratings"] == 1


def test_the_reports_arithmetic_and_its_sentence() -> None:
    rows = Rows()
    records = [
        # told 10, waited 35 (25 longer): ratings 2 and 3 -> mean 2.5
        *visit("a", waited=35, told_point=10, rating=2, wait_answer="longer"),
        *visit("b", waited=35, told_point=10, rating=3, start=1),
        # about as told: 5 and 4 -> 4.5; one not rated
        *visit("c", waited=12, told_point=10, rating=5, provider="p2", start=2),
        *visit("d", waited=8, told_point=10, rating=4, provider="p2", start=3),
        *visit("e", waited=15, told_point=10, rating=None, provider="p2", start=4),
        # waited 5 when told 30: shorter by 25; rated 3 (counts with "about as told or less")
        *visit("f", waited=5, told_point=30, rating=3, start=5),
        # never told: rated 1
        *visit("g", waited=22, told_point=None, rating=1, start=6),
    ]
    staff = ComplaintLogged(complaint_id="cp-x", visit_id="c", category="staff",
                            source="phone", due_at="2026-03-02T10:00:00-06:00")
    records.append((NOTES, ev.make_event(staff, clinic_id="north", source="test",
                                         occurred_at=at(100))))
    other = NotificationSent(notification_id="n1", kind="delay_warning", channel="sms",
                             visit_id="c", attempts=1)
    records.append((NOTES, ev.make_event(other, clinic_id="north", source="test",
                                         occurred_at=at(100))))
    rows.apply(records)
    # the low ratings' complaints come back on the topic
    rows.apply([(NOTES, complaint_event(c, "logged", c.logged_at)) for c in rows.raised])
    found = rows.report()
    assert (found["visits"], found["ratings"]) == (7, 6)
    assert found["mean_rating"] == round(18 / 6, 2)
    assert found["complaints_by_category"] == {"other": 1, "staff": 1, "wait": 1}
    told = found["by_told_band"]
    assert (told["longer_20_plus"]["ratings"], told["longer_20_plus"]["mean_rating"]) == (
        2, 2.5)
    assert (told["within"]["visits"], told["within"]["mean_rating"]) == (3, 4.5)
    assert told["shorter_20_plus"]["mean_rating"] == 3.0
    assert told["not_told"]["complaints_by_category"] == {"other": 1}
    waits = found["by_wait_band"]
    assert [waits[b]["visits"] for b in ("0-10", "10-20", "20-30", "30+")] == [2, 2, 1, 2]
    assert waits["30+"]["complaints_by_category"] == {"wait": 1}
    p2 = found["by_provider"]["p2"]
    assert (p2["visits"], p2["mean_rating"], p2["complaints"]) == (3, 4.5, 1)
    # longer 2.5 against within + shorter (5 + 4 + 3) / 3 = 4.0: 1.5 lower
    assert found["finding"] == (
        "Patients who waited 20+ minutes longer than told rate 1.5 points lower (2.50 from "
        "2 ratings) than those who waited about as told or less (4.00 from 3).")


def test_the_sentence_says_when_there_is_not_enough_to_compare() -> None:
    rows = Rows()
    rows.apply(visit("a", waited=5, told_point=10, rating=4))
    assert rows.report()["finding"].startswith("Not enough ratings yet")


def test_a_reports_week_is_the_clinics_iso_week() -> None:
    assert week_range("2026-W10") == (date(2026, 3, 2), date(2026, 3, 8))
    assert week_range("2026-W01") == (date(2025, 12, 29), date(2026, 1, 4))
    for bad in ("2026-10", "2026-W54", "W10"):
        with pytest.raises(Rejected, match="is not an ISO week"):
            week_range(bad)
