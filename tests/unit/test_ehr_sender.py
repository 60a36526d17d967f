"""``make up``'s simulated EHR: the messages it sends for the EHR clinic's day read as
check-in reads them (the right appointment, time, provider, patient), and the floor that
follows (check-in's bookings and arrivals in place of the simulator's, every later fact
naming check-in's visit) applies without a refusal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.checkin.feeds import Feeds
from services.checkin.hl7.messages import (
    RegistrationMessage,
    ScheduleMessage,
    read_message,
)
from shared import events as ev
from shared.clinics import ClinicDirectory
from shared.floor.clinic_flow import ClinicFlow
from tools.ehr_sender import (
    EHR_CLINIC,
    EHR_FACILITY,
    adt,
    ehr_day,
    feed_setting,
    made_up_patient,
    siu,
    with_visits,
)
from tools.live_demo import DEMO_CLINICS, clinics_setting

DIRECTORY = ClinicDirectory.parse(clinics_setting())
CLINIC = next(c for c in DEMO_CLINICS if c.clinic_id == EHR_CLINIC)
ZONE = DIRECTORY.zone(EHR_CLINIC)
MOMENTS = (datetime(2026, 12, 6, 20, 20, tzinfo=UTC),  # 15:20 in New York
           datetime(2026, 12, 7, 5, 10, tzinfo=UTC),  # 00:10 there: a day across midnight
           datetime(2026, 7, 1, 13, 0, tzinfo=UTC))  # 09:00 EDT


@pytest.mark.parametrize("now", MOMENTS, ids=lambda m: m.isoformat())
def test_the_ehr_books_every_scheduled_patient_still_to_come_and_nobody_else(
    now: datetime,
) -> None:
    day = ehr_day(CLINIC, DIRECTORY, started=now)
    assert day.past and day.future and len(day.bookings) >= 5
    assert all(e.at <= now for e in day.past) and all(e.at > now for e in day.future)
    coming = {e.payload.visit_id for e in day.future
              if isinstance(e.payload, ev.PatientArrived) and e.payload.scheduled_at}
    assert set(day.bookings) == coming
    walk_ins = [e for e in day.future if isinstance(e.payload, ev.PatientArrived)
                and e.payload.scheduled_at is None]
    assert not {e.payload.visit_id for e in walk_ins} & set(day.bookings)  # type: ignore[attr-defined]


@pytest.mark.parametrize("now", MOMENTS, ids=lambda m: m.isoformat())
def test_each_booking_and_arrival_reads_as_check_in_reads_it(now: datetime) -> None:
    day = ehr_day(CLINIC, DIRECTORY, started=now)
    feed = Feeds.parse(feed_setting(CLINIC)).for_facility(EHR_FACILITY)
    assert feed is not None and feed.clinic_id == EHR_CLINIC
    arrivals = {e.payload.visit_id: e.payload for e in day.future
                if isinstance(e.payload, ev.PatientArrived)}
    for visit, booking in day.bookings.items():
        booked = read_message(siu("S12", booking, facility=EHR_FACILITY, zone=ZONE,
                                  sent_at=now))
        assert isinstance(booked, ScheduleMessage) and booked.action == "book"
        assert booked.header.sending_facility == EHR_FACILITY
        assert booked.appointment_id == booking.appointment_id
        assert booked.start is not None
        assert booked.start.replace(tzinfo=ZONE) == arrivals[visit].scheduled_at
        assert booked.provider is not None
        assert feed.provider(booked.provider.ehr_id) == arrivals[visit].provider_id
        assert booked.visit_type_code == arrivals[visit].visit_type
        assert booked.patient is not None and booked.patient.birth_date is not None
        registered = read_message(adt("A04", booking.patient, facility=EHR_FACILITY,
                                      zone=ZONE, sent_at=now, visit_number=f"V{visit}",
                                      attending=booking.provider))
        assert isinstance(registered, RegistrationMessage)
        assert registered.action == "arrive" and registered.visit_number == f"V{visit}"
        assert registered.patient == booked.patient  # the same MRN, name, birth date


def test_made_up_patients_are_the_same_every_run_and_differ_between_visits() -> None:
    assert made_up_patient("v1") == made_up_patient("v1")
    assert made_up_patient("v1").mrn != made_up_patient("v2").mrn


@pytest.mark.parametrize("now", MOMENTS, ids=lambda m: m.isoformat())
def test_the_floor_after_check_in_took_the_ehrs_patients_applies_without_a_refusal(
    now: datetime,
) -> None:
    """What the floor receives when every EHR message is taken: the past as simulated,
    check-in's appointment.scheduled for each booking, check-in's patient.arrived (its own
    visit id) for each booked arrival, and the simulator's later facts naming that visit."""
    day = ehr_day(CLINIC, DIRECTORY, started=now)
    floor = ClinicFlow(EHR_CLINIC)
    for event in day.past:
        floor.apply(event.payload, event.at)
    for booking in day.bookings.values():
        floor.apply(ev.AppointmentScheduled(
            appointment_id=booking.appointment_id, patient_ref=f"pt-{booking.patient.mrn}",
            provider_id=Feeds.parse(feed_setting(CLINIC)).by_facility[EHR_FACILITY].provider(
                booking.provider), visit_type=booking.visit_type,
            scheduled_at=booking.start, duration_minutes=booking.minutes), now)
    visits: dict[str, str] = {}
    for n, event in enumerate(day.future):
        arrival = event.payload
        if isinstance(arrival, ev.PatientArrived) and arrival.visit_id in day.bookings:
            booking = day.bookings[arrival.visit_id]
            visits[arrival.visit_id] = f"v-checkin-{n}"
            floor.apply(arrival.model_copy(update={
                "visit_id": visits[arrival.visit_id], "ticket_code": f"A-{n + 1}",
                "appointment_id": booking.appointment_id,
                "late": event.at > booking.start + timedelta(minutes=10)}), event.at)
            continue
        floor.apply(with_visits(event.payload, visits), event.at)
    assert len(visits) == len(day.bookings)
