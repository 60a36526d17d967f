"""A demo clinic's front desk (``make up``): the clinic's day as the simulator planned it
(``tools.ehr_sender.ehr_day``), with its scheduled patients on check-in's schedule and
checked in at its desk, so the clinic's kiosk has codes (and birth dates + initials) to
take from the start, and its no-show list and FHIR reads are about real appointments.

At the start: what is already past goes straight onto the floor (as every demo clinic's
past does), and every scheduled patient still to come is imported into check-in's
schedule in one CSV (``POST .../schedule/csv``: the made-up patient's MRN, which check-in
turns into its pseudonym, birth date and initials for the kiosk). Then, as the day
plays, each such patient's arrival is the desk's check-in (``POST .../arrivals`` on the
appointment); a patient someone already checked in at the kiosk keeps that visit. Every
other step is done as staff do it, through the services' doors (``SimulatedFloor.act``):
walk-ins at the desk (their tickets from check-in's counter), rooming, room ready,
provider in and delays through flow, checkout through billing, cancels at the desk, each
naming check-in's visit. A step refused (404/409: someone got there first) is skipped.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime

import httpx

from shared import events as ev
from shared.clinics import ClinicDirectory
from shared.logging import get_logger
from tools.ehr_sender import (
    Booking,
    DemoEvent,
    Doors,
    SimulatedFloor,
    _checked_in_visit,
    ehr_day,
)
from tools.live_demo import DemoClinic

log = get_logger("clinicflow.desk_sender")
FRONT_DESK = {"Authorization": "Bearer dev-front-desk"}


def _utcnow() -> datetime:
    return datetime.now(UTC)


def schedule_csv(bookings: list[Booking]) -> str:
    """The bookings as check-in's CSV schedule (made-up patients: MRN, birth date,
    initials; the MRN becomes a pseudonym at check-in)."""
    rows = ["appointment_id,mrn,provider_id,visit_type,scheduled_at,duration_minutes,dob,"
            "initials"]
    for booking in bookings:
        patient = booking.patient
        rows.append(",".join((
            booking.appointment_id, patient.mrn, booking.provider, booking.visit_type,
            booking.start.isoformat(), str(booking.minutes), patient.born.isoformat(),
            patient.given[0] + patient.family[0])))
    return "\n".join(rows) + "\n"


async def check_in(client: httpx.AsyncClient, clinic_id: str, booking: Booking) -> str | None:
    """Check-in's visit of the booking's patient, checked in at the desk now (or earlier,
    at the kiosk); None when check-in would not take it."""
    answer = await client.post(f"/clinics/{clinic_id}/arrivals",
                               json={"appointment_id": booking.appointment_id},
                               headers={**FRONT_DESK, "Idempotency-Key": uuid.uuid4().hex})
    if answer.status_code == 201:
        visit: str = answer.json()["visit_id"]
        return visit
    if answer.status_code == 409 and answer.json().get("code") == "already_arrived":
        return await _checked_in_visit(client, clinic_id, booking.appointment_id)
    log.warning("desk sender: check-in refused", clinic=clinic_id,
                status=answer.status_code, detail=str(answer.json().get("detail"))[:120])
    return None


async def play_desk_clinic(bootstrap: str, floor_topic: str, *, checkin_url: str,
                           clinic: DemoClinic, directory: ClinicDirectory,
                           speed: float = 1.0, stop: asyncio.Event | None = None,
                           clock: Callable[[], datetime] = _utcnow,
                           on_caught_up: Callable[[int], None] | None = None,
                           flow_url: str | None = None, billing_url: str | None = None,
                           notifications_url: str | None = None,
                           day: date | None = None, rate: float = 1.0) -> int:
    """Play one demo clinic's day through its front desk (see the module's docstring).
    ``day`` and ``rate``: as ``tools.ehr_sender.play_with_ehr``. Returns how many facts
    and requests went out."""
    stop = stop or asyncio.Event()
    plan = ehr_day(clinic, directory, started=clock(), speed=speed, day=day)
    bookings = desk_bookings(plan.bookings, plan.future)
    floor = SimulatedFloor(bootstrap, floor_topic, stop=stop, clock=clock, rate=rate,
                           doors=Doors(checkin_url, flow_url, billing_url, notifications_url))
    sent = 0
    await floor.producer.start()
    try:
        async with httpx.AsyncClient(base_url=checkin_url, timeout=10) as client:
            sent = await floor.publish_past(plan.past)
            if bookings and not await import_schedule(client, clinic.clinic_id, bookings):
                bookings.clear()  # the day is simulated as it is
            sent += 1 if bookings else 0
            if on_caught_up is not None:
                on_caught_up(sent)
            async for event in floor.coming(plan.future):
                arrival = event.payload
                simulated = arrival.visit_id if isinstance(arrival, ev.PatientArrived) \
                    else None
                booked = bookings.get(simulated) if simulated is not None else None
                visit = await check_in(client, clinic.clinic_id, booked) \
                    if booked is not None else None
                if simulated is not None and visit is not None:
                    floor.checked_in(clinic.clinic_id, simulated, visit)
                    sent += 1
                else:  # walk-ins and every other step, as staff do them
                    sent += await floor.act(event)
            await floor.producer.flush()
    finally:
        await floor.close()
        await floor.producer.stop()
    # stopped (Ctrl-C) before its end, or played to it
    log.info("desk clinic's day stopped" if stop.is_set() else "desk clinic's day played",
             clinic=clinic.clinic_id, sent=sent,
             through_desk=len(floor.visits), skipped=floor.skipped)
    return sent


async def import_schedule(client: httpx.AsyncClient, clinic_id: str,
                          bookings: dict[str, Booking]) -> bool:
    """The bookings on check-in's schedule (one CSV import); False when refused."""
    imported = await client.post(f"/clinics/{clinic_id}/schedule/csv",
                                 content=schedule_csv(list(bookings.values())).encode(),
                                 headers={**FRONT_DESK, "Content-Type": "text/csv"})
    if imported.status_code != 200:
        log.warning("desk sender: schedule not imported; the day is simulated as is",
                    clinic=clinic_id, status=imported.status_code, detail=imported.text[:200])
    return imported.status_code == 200


def desk_bookings(bookings: dict[str, Booking], future: list[DemoEvent]) -> dict[str, Booking]:
    """The EHR's bookings as the desk books them: with the clinic's own provider ids
    (the EHR's ids are only its HL7 feed's)."""
    providers = {e.payload.visit_id: e.payload.provider_id for e in future
                 if isinstance(e.payload, ev.PatientArrived) and e.payload.provider_id}
    return {visit: replace(booking, provider=providers.get(visit, booking.provider))
            for visit, booking in bookings.items()}
