"""What an EHR feed may do at check-in, whichever way it speaks (HL7 v2 over MLLP, FHIR
R4 over HTTP): the desk's own commands (schedule import, arrival, cancel, no-show),
with what a feed needs around them:

- **order**: a message carries its own time; one older than the last applied to the
  same appointment, EHR visit or patient (its *subject*) is superseded and changes
  nothing;
- **EHR visits**: the EHR's visit (HL7 ``PV1-19``, a FHIR ``Encounter.id``) is mapped to
  our visit once, so a second registration of it is not a second arrival and a cancel
  or end names the right one. The EHR's identifier is kept only as a keyed digest.

Refusals are ``shared.errors`` kinds (the HL7 feed turns them into AE/AR, the FHIR API
into HTTP statuses). No HL7 or FHIR here.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from typing import Literal

from services.checkin.desk import ArrivalOverrides, CheckinDesk, WalkIn
from services.checkin.domain import ID_PATTERN, Appointment, AppointmentState, kiosk_days
from services.checkin.schedule import ParsedSchedule
from services.checkin.store import FEED_PENDING, CheckinStore
from shared.errors import Conflict, NotFound, Unavailable

EndReason = Literal["entered_in_error", "ended"]


class EhrCommands:
    """The desk's commands as an EHR feed uses them (see the module's docstring)."""

    def __init__(self, desk: CheckinDesk, store: CheckinStore) -> None:
        self.desk = desk
        self.store = store
        self._clinics: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------------ order

    async def superseded(self, clinic: str, subject: str, at: datetime) -> bool:
        """Whether a message of time ``at`` about ``subject`` is older than the last one
        applied to it."""
        seen = await self.store.feed_seen_at(clinic, subject)
        return seen is not None and at < seen

    async def applied(self, clinic: str, subject: str, at: datetime) -> None:
        await self.store.mark_feed_seen(clinic, subject, at)

    @asynccontextmanager
    async def schedule_lock(self, clinic: str) -> AsyncIterator[None]:
        """One schedule change of a clinic at a time in this process (the desk's import
        holds the clinic's lock in Redis and refuses a second import meanwhile)."""
        lock = self._clinics.setdefault(clinic, asyncio.Lock())
        async with lock:
            yield

    def ehr_visit(self, clinic: str, number: str) -> str:
        """A keyed digest of the EHR's visit identifier (the identifier is not kept)."""
        text = f"ehr-visit|{clinic}|{number}".encode()
        return hmac.new(self.desk.config.identity_secret, text, hashlib.sha256).hexdigest()[:32]

    # --------------------------------------------------------------- schedule

    async def book(self, clinic: str, appointment: Appointment, *, now: datetime,
                   providers: dict[str, str] | None = None,
                   rooms: dict[str, str] | None = None) -> str:
        """Book, change or cancel one appointment through the desk's schedule import
        (published only when it changed). Returns what happened, in words."""
        parsed = ParsedSchedule(appointments=[appointment], rows=1,
                                providers=dict(providers or {}), rooms=dict(rooms or {}))
        result = await self.desk.import_schedule(clinic, parsed, fmt="ehr", dry_run=False,
                                                 now=now)
        if result.created:
            return "appointment booked" if appointment.status == "booked" \
                else "appointment recorded as cancelled"
        if result.updated:
            return "appointment cancelled" if appointment.status == "cancelled" \
                else "appointment updated"
        return "no change"

    async def no_show(self, clinic: str, appointment_id: str, *, now: datetime) -> str:
        event = await self.desk.mark_no_show(clinic, appointment_id, now=now)
        return "no-show recorded" if event is not None else "already a no-show"

    async def update_identity(self, clinic: str, patient_ref: str, identity: str, *,
                              now: datetime) -> str:
        """The patient's kiosk check (birth date + initials digest) on their appointments
        the kiosk takes now; nothing is published."""
        states = await self.patient_appointments(clinic, patient_ref, now)
        changed = [replace(s.appointment, identity=identity) for s in states
                   if s.appointment.identity != identity]
        if not changed:
            return "no change"
        await self.desk.import_schedule(
            clinic, ParsedSchedule(appointments=changed, rows=len(changed)), fmt="ehr",
            dry_run=False, now=now)
        return f"kiosk check of {len(changed)} appointment(s) updated"

    # --------------------------------------------------------------- arrivals

    async def patient_appointments(self, clinic: str, patient_ref: str,
                                   now: datetime) -> list[AppointmentState]:
        """The patient's booked appointments the kiosk would take now (the clinic's
        today, and across midnight the nearby ones)."""
        found: list[AppointmentState] = []
        for day in kiosk_days(now, self.desk.zone(clinic)):
            found.extend(s for s in await self.desk.schedule(clinic, day)
                         if s.appointment.patient_ref == patient_ref
                         and s.appointment.status == "booked")
        return found

    async def arrive(self, clinic: str, ehr_visit: str, patient_ref: str | None, *,
                     now: datetime, appointment_id: str | None = None,
                     provider_id: str | None = None, urgent: bool = False) -> tuple[str, str]:
        """The EHR registered a visit: check the patient in once, on ``appointment_id``
        when the EHR names it, else on their appointment closest to now, else as a
        walk-in. Returns (our visit id, what happened in words)."""
        holder = await self.store.claim_feed_visit(clinic, ehr_visit)
        if holder == FEED_PENDING:
            raise Unavailable("this visit's registration is being processed; try again",
                              "in_progress")
        if holder is not None:
            return holder, f"already checked in (visit {holder})"
        try:
            visit_id, text = await self._check_in(clinic, patient_ref, now=now,
                                                  appointment_id=appointment_id,
                                                  provider_id=provider_id, urgent=urgent)
        except BaseException:
            await self.store.forget_feed_visit(clinic, ehr_visit)
            raise
        await self.store.set_feed_visit(clinic, ehr_visit, visit_id)
        return visit_id, text

    async def _check_in(self, clinic: str, patient_ref: str | None, *, now: datetime,
                        appointment_id: str | None, provider_id: str | None,
                        urgent: bool) -> tuple[str, str]:
        priority: Literal["routine", "urgent"] = "urgent" if urgent else "routine"
        states = await self.patient_appointments(clinic, patient_ref, now) \
            if patient_ref and appointment_id is None else []
        if appointment_id is None:
            open_ones = sorted((s for s in states if s.arrived_visit is None),
                               key=lambda s: abs(s.appointment.scheduled_at - now))
            appointment_id = open_ones[0].appointment.appointment_id if open_ones else None
        if appointment_id is not None:
            try:
                result = await self.desk.arrive_scheduled(
                    clinic, appointment_id, channel="ehr", now=now,
                    overrides=ArrivalOverrides(priority=priority))
            except Conflict as refused:
                if refused.code != "already_arrived":
                    raise
                fresh = await self.store.appointment_states(clinic, [appointment_id])
                visit_id = fresh[appointment_id].arrived_visit if appointment_id in fresh \
                    else None
                if visit_id is None:
                    raise
                return visit_id, f"already checked in (visit {visit_id})"
            return result.visit_id, (f"checked in on appointment {appointment_id}, ticket "
                                     f"{result.ticket_code}")
        arrived = [s for s in states if s.arrived_visit is not None]
        if arrived:
            visit_id = str(arrived[0].arrived_visit)
            return visit_id, f"already checked in (visit {visit_id})"
        if provider_id is not None and (
                not ID_PATTERN.match(provider_id)
                or provider_id not in await self.desk.known_providers(clinic)):
            provider_id = None  # a provider the clinic does not know: first available
        result = await self.desk.arrive_walk_in(
            clinic, WalkIn(provider_id=provider_id, visit_type="walk_in", priority=priority,
                           patient_ref=patient_ref), channel="ehr", now=now)
        return result.visit_id, f"checked in as a walk-in, ticket {result.ticket_code}"

    async def end(self, clinic: str, ehr_visit: str, reason: EndReason, *,
                  now: datetime) -> str:
        """The EHR cancelled a registration (``entered_in_error``: the arrival is
        cancelled and its appointment waits again) or ended a visit (``ended``: a patient
        still waiting here left without being seen; a roomed visit ends at checkout,
        which is billing's). ``Conflict`` for a cancel of a visit no longer waiting."""
        visit_id = await self.store.feed_visit(clinic, ehr_visit)
        if visit_id is None or visit_id == FEED_PENDING:
            return "no arrival of this visit here: nothing to change"
        view = await self.store.visit(clinic, visit_id)
        if reason == "ended" and (view is None or view.status != "waiting"):
            return f"visit {visit_id} is not waiting here: nothing to change"
        try:
            await self.desk.cancel(clinic, visit_id, "entered_in_error" if reason ==
                                   "entered_in_error" else "left_without_being_seen", now=now)
        except NotFound:
            return f"visit {visit_id} is not known here any more: nothing to change"
        if reason == "entered_in_error":
            await self.store.forget_feed_visit(clinic, ehr_visit)
            return f"arrival of visit {visit_id} cancelled"
        return f"visit {visit_id} ended before it was roomed: left without being seen"
