"""Checkin's consumer without Kafka or Redis: what its reader takes from each topic (and
refuses, with the reason, for the dead-letter topic), and the pure plan of a batch: the
visits it changes and the appointments it marks arrived, frees again or marks missed, in
the order of the records. The same batches through the shared runner on a real Redis
are in tests/integration/test_checkin_projection.py."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from services.checkin.domain import Appointment, VisitView
from services.checkin.projection import (
    ProjectionState,
    checkin_reader,
    freed_appointments,
    plan_visits,
    undone_refs,
    visit_refs,
)
from shared import events as ev
from shared.projection import Inbound
from tests.fakes import KafkaRecord, record_of

NINE = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
FLOOR, ESTIMATES = "clinicflow.floor.v1", "clinicflow.estimates.v1"
UTC_ZONE = ZoneInfo("UTC")
READER = checkin_reader(FLOOR, ESTIMATES)
ZONES = {"north": ZoneInfo("America/New_York"), "reef": ZoneInfo("Pacific/Tongatapu"),
         "surf": ZoneInfo("Pacific/Honolulu")}


def in_utc(_clinic: str) -> ZoneInfo:
    return UTC_ZONE


def zone_of(clinic: str) -> ZoneInfo:
    return ZONES[clinic]


def event(payload: ev.Payload, at: datetime = NINE) -> ev.Event:
    return ev.make_event(payload, clinic_id="north", source="checkin", occurred_at=at)


def read(record: KafkaRecord) -> Inbound:
    return READER.read(record.topic, record.partition, record.offset, record.key,
                       record.value, 12)


def on_floor(offset: int, payload: ev.Payload, at: datetime) -> Inbound:
    return read(record_of(event(payload, at), FLOOR, offset, partitions=12))


def arrival(visit: str, ticket: str, appointment: str | None = "apt-1") -> ev.PatientArrived:
    return ev.PatientArrived(visit_id=visit, ticket_code=ticket, visit_type="follow_up",
                             appointment_id=appointment)


def estimate(visit: str = "v-1", position: int = 2) -> ev.WaitEstimated:
    return ev.WaitEstimated(visit_id=visit, ticket_code="A-1", provider_id="dr-lee",
                            position=position, wait_minutes=20.0, low=15.0, high=25.0)


# ------------------------------------------------------------------ reading


def test_the_floor_topic_takes_every_floor_fact_and_the_estimates_topic_only_estimates() -> None:
    floor = READER.accepts[FLOOR]
    assert floor is not None
    assert ev.WaitEstimated not in floor
    assert floor | {ev.WaitEstimated} == set(ev.EVENT_TYPES.values())
    assert READER.accepts[ESTIMATES] == {ev.WaitEstimated}
    roomed = on_floor(0, ev.PatientRoomed(visit_id="v-1", room_id="4"), NINE)
    assert roomed.reason is None and roomed.event is not None
    estimated = read(record_of(event(estimate()), ESTIMATES, 0, partitions=12))
    assert estimated.reason is None


def test_what_cannot_be_applied_is_refused_with_the_reason_for_the_dead_letter_topic() -> None:
    good = record_of(event(arrival("v-1", "A-1")), FLOOR, 0, partitions=12)
    refused = {
        "empty record (tombstone)": KafkaRecord(FLOOR, good.partition, 1, b"north", None),
        "key 'south' is not the event's clinic_id 'north'": KafkaRecord(
            FLOOR, good.partition, 2, b"south", good.value),
        f"wait.estimated does not belong on {FLOOR}": record_of(
            event(estimate()), FLOOR, 3, partitions=12),
        f"patient.arrived does not belong on {ESTIMATES}": record_of(
            event(arrival("v-1", "A-1")), ESTIMATES, 4, partitions=12),
    }
    for reason, record in refused.items():
        inbound = read(record)
        assert inbound.event is None, reason
        assert inbound.reason is not None and reason in inbound.reason, inbound.reason


# ------------------------------------------------------------------ planning


def test_a_rebuild_marks_arrivals_frees_those_entered_in_error_and_keeps_the_order() -> None:
    records = [on_floor(0, arrival("v-1", "A-1"), NINE),
               on_floor(1, ev.ArrivalCancelled(visit_id="v-1", reason="entered_in_error"),
                        NINE + timedelta(minutes=1)),
               on_floor(2, arrival("v-2", "A-2"), NINE + timedelta(minutes=2)),
               on_floor(3, ev.ArrivalCancelled(visit_id="v-2", reason="left_without_being_seen"),
                        NINE + timedelta(minutes=3)),
               on_floor(4, arrival("v-3", "A-3", appointment=None), NINE + timedelta(minutes=4))]
    planned = plan_visits(records, ProjectionState(), in_utc)
    assert planned.changes.arrivals == [("north", "apt-1", "v-1", True),
                                        ("north", "apt-1", "v-1", False),
                                        ("north", "apt-1", "v-2", True)]
    assert planned.changes.visits[("north", "v-2")].status == "cancelled"
    assert planned.applied == 5 and planned.dead_letters == []


def test_a_visit_checkin_saved_itself_is_not_marked_again_by_its_own_event() -> None:
    known = VisitView(clinic_id="north", visit_id="v-1", ticket_code="A-1", day=date(2026, 3, 2),
                      status="cancelled", status_at=NINE + timedelta(minutes=1),
                      appointment_id="apt-1")
    planned = plan_visits([on_floor(7, arrival("v-1", "A-1"), NINE)],
                          ProjectionState({("north", "v-1"): known}), in_utc)
    assert planned.changes.arrivals == []
    # off the no-show sweep's list only (written before any freeing of the batch)
    assert planned.changes.arrived_off_list == [("north", "apt-1")]
    assert planned.changes.visits == {}
    assert planned.applied == 1


def test_an_estimate_read_before_its_arrival_is_kept_and_the_arrival_marks_the_appointment(
) -> None:
    records = [read(record_of(event(estimate(), NINE + timedelta(minutes=1)), ESTIMATES, 0,
                              partitions=12)),
               on_floor(0, arrival("v-1", "A-1"), NINE)]
    planned = plan_visits(records, ProjectionState(), in_utc)
    visit = planned.changes.visits[("north", "v-1")]
    assert (visit.status, visit.position, visit.appointment_id) == ("waiting", 2, "apt-1")
    assert planned.changes.arrivals == [("north", "apt-1", "v-1", True)]
    assert visit_refs(records) == [("north", "v-1")]


def test_a_no_show_is_listed_on_the_clinics_day_of_the_appointment() -> None:
    late_evening = datetime(2026, 3, 3, 1, 30, tzinfo=UTC)  # 20:30 on the 2nd in New York
    missed = on_floor(0, ev.PatientNoShow(appointment_id="apt-9", provider_id="dr-lee",
                                          scheduled_at=late_evening),
                      late_evening + timedelta(minutes=30))
    planned = plan_visits([missed], ProjectionState(), zone_of)
    assert planned.changes.no_shows == [("north", "apt-9", late_evening, date(2026, 3, 2))]
    assert planned.changes.visits == {} and planned.changes.arrivals == []


def on_floor_of(clinic: str, offset: int, payload: ev.Payload, at: datetime) -> Inbound:
    return read(record_of(ev.make_event(payload, clinic_id=clinic, source="checkin",
                                        occurred_at=at), FLOOR, offset, partitions=12))


def test_each_clinic_has_its_tickets_and_no_shows_on_its_own_day_across_midnight_utc(
) -> None:
    # 09:30 UTC on 1 July: 23:30 on 30 June in Honolulu (UTC-10), 22:30 on 1 July in
    # Tongatapu (UTC+13)
    at = datetime(2026, 7, 1, 9, 30, tzinfo=UTC)
    # 00:15 on 1 July in Tongatapu, still 30 June in UTC
    just_after_midnight = datetime(2026, 6, 30, 11, 15, tzinfo=UTC)
    records = [on_floor_of("surf", 0, arrival("v-s", "A-1", None), at),
               on_floor_of("reef", 1, arrival("v-r", "A-1", None), at),
               on_floor_of("reef", 2, ev.PatientNoShow(appointment_id="apt-r",
                                                       provider_id="dr-tu",
                                                       scheduled_at=just_after_midnight),
                           at)]
    planned = plan_visits(records, ProjectionState(), zone_of)
    days = {ref: view.day for ref, view in planned.changes.visits.items()}
    assert days == {("surf", "v-s"): date(2026, 6, 30), ("reef", "v-r"): date(2026, 7, 1)}
    assert planned.changes.no_shows == [("reef", "apt-r", just_after_midnight,
                                         date(2026, 7, 1))]
    assert [(c, v, d) for c, _e, v, d in planned.changes.arrival_events] == [
        ("surf", "v-s", date(2026, 6, 30)), ("reef", "v-r", date(2026, 7, 1))]


def test_an_arrival_flow_undid_no_longer_waits_and_frees_its_appointment() -> None:
    arrived = event(arrival("v-1", "A-1"), NINE)
    undone = event(ev.ActionUndone(undone_event_id=arrived.envelope.event_id),
                   NINE + timedelta(minutes=1))
    records = [read(record_of(arrived, FLOOR, 0, partitions=12)),
               read(record_of(undone, FLOOR, 1, partitions=12))]
    assert undone_refs(records) == [("north", arrived.envelope.event_id)]
    # in one batch: the arrival's event is known from the batch itself
    planned = plan_visits(records, ProjectionState(), in_utc)
    visit = planned.changes.visits[("north", "v-1")]
    assert (visit.status, visit.status_at) == ("undone", NINE + timedelta(minutes=1))
    assert planned.changes.arrivals == [("north", "apt-1", "v-1", True),
                                        ("north", "apt-1", "v-1", False)]

    # in a later batch: the stored arrival event names the visit
    waiting = VisitView(clinic_id="north", visit_id="v-1", ticket_code="A-1",
                        day=date(2026, 3, 2), status="waiting", status_at=NINE,
                        appointment_id="apt-1")
    later = plan_visits(records[1:], ProjectionState(
        {("north", "v-1"): waiting}, {("north", arrived.envelope.event_id): "v-1"}), in_utc)
    assert later.changes.visits[("north", "v-1")].status == "undone"
    assert later.changes.arrivals == [("north", "apt-1", "v-1", False)]
    assert later.changes.reopened == {}  # its appointment was not read: nothing to go on

    # an undo of anything else (a rooming) changes nothing here: flow's next estimate does
    other = event(ev.ActionUndone(undone_event_id="e-rooming"), NINE)
    nothing = plan_visits([read(record_of(other, FLOOR, 2, partitions=12))],
                          ProjectionState({("north", "v-1"): waiting}), in_utc)
    assert nothing.changes.visits == {} and nothing.changes.arrivals == []
    assert nothing.applied == 1


def booked(appointment_id: str, at: datetime, status: str = "booked") -> Appointment:
    return Appointment(appointment_id=appointment_id, patient_ref="p-1", provider_id="dr-lee",
                       visit_type="follow_up", scheduled_at=at, duration_minutes=15,
                       status=status)  # type: ignore[arg-type]


def test_an_undone_or_mistaken_arrival_puts_a_booked_appointment_back_for_the_no_show_sweep(
) -> None:
    arrived = event(arrival("v-1", "A-1"), NINE)
    undone = event(ev.ActionUndone(undone_event_id=arrived.envelope.event_id),
                   NINE + timedelta(minutes=1))
    records = [read(record_of(arrived, FLOOR, 0, partitions=12)),
               read(record_of(undone, FLOOR, 1, partitions=12))]
    # the batch may free apt-1 (its own arrival names it): the store reads it
    assert freed_appointments(records, {}) == [("north", "apt-1")]
    assert freed_appointments(records[:1], {}) == []  # an arrival alone frees nothing
    due = NINE - timedelta(minutes=20)
    planned = plan_visits(records, ProjectionState(
        appointments={("north", "apt-1"): booked("apt-1", due)}), in_utc)
    assert planned.changes.reopened == {("north", "apt-1"): due}
    # a cancelled appointment is not awaited: it stays off the sweep's list
    cancelled = plan_visits(records, ProjectionState(
        appointments={("north", "apt-1"): booked("apt-1", due, "cancelled")}), in_utc)
    assert cancelled.changes.reopened == {}

    # entered in error, known from a stored visit: its appointment is read and reopened
    waiting = VisitView(clinic_id="north", visit_id="v-1", ticket_code="A-1",
                        day=date(2026, 3, 2), status="waiting", status_at=NINE,
                        appointment_id="apt-1")
    mistaken = [on_floor(5, ev.ArrivalCancelled(visit_id="v-1", reason="entered_in_error"),
                         NINE + timedelta(minutes=2))]
    assert freed_appointments(mistaken, {("north", "v-1"): waiting}) == [("north", "apt-1")]
    left = [on_floor(6, ev.ArrivalCancelled(visit_id="v-1", reason="left_without_being_seen"),
                     NINE + timedelta(minutes=2))]
    assert freed_appointments(left, {("north", "v-1"): waiting}) == []
    freed = plan_visits(mistaken, ProjectionState(
        {("north", "v-1"): waiting}, appointments={("north", "apt-1"): booked("apt-1", due)}),
        in_utc)
    assert freed.changes.arrivals == [("north", "apt-1", "v-1", False)]
    assert freed.changes.reopened == {("north", "apt-1"): due}
