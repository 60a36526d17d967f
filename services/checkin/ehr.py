"""What an EHR feed may do at check-in, whichever way it speaks (HL7 v2 over MLLP, FHIR
R4 over HTTP): the desk's own commands (schedule import, arrival, cancel, no-show),
with what a feed needs around them:

- **order**: a message carries its own time; one older than the last applied to the
  same appointment, EHR visit or patient (its *subject*) is superseded and changes
  nothing;
- **EHR visits**: the EHR's visit (HL7 ``PV1-19``, a FHIR ``Encounter.id``) is mapped to
  our visit once, so a second registration of it is not a second arrival and a cancel
  or end names the right one. The EHR's identifier is kept only as a keyed digest.

- **no clinic-wide lock**: a message waits only for messages of the same subject in
  this process (``subject_lock``); a booking holds its one appointment in Redis
  (``CheckinStore.hold_appointment``: a whole-file import of the clinic and a feed's
  booking never run at once, and two messages never change one appointment at once),
  so one clinic's messages about different appointments and visits are applied side by
  side.

Refusals are ``shared.errors`` kinds (the HL7 feed turns them into AE/AR, the FHIR API
into HTTP statuses). No HL7 or FHIR here.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any, Literal

from services.checkin import metrics as m
from services.checkin.desk import SOURCE, ArrivalOverrides, CheckinDesk, WalkIn
from services.checkin.domain import (
    ID_PATTERN,
    Appointment,
    AppointmentState,
    clinic_day,
    kiosk_code,
    kiosk_days,
    plan_import,
)
from services.checkin.store import FEED_PENDING, CheckinStore, IdentityMatches, VisitClaim
from shared import events as ev
from shared.errors import Conflict, NotFound, Unavailable
from shared.logging import get_logger

log = get_logger("clinicflow.checkin.ehr")
KIOSK_CODE_TRIES = 8
# what a booking makes of the appointment as stored (None: not stored); None: nothing
Build = Callable[[Appointment | None], Appointment | None]
# refuses (raises) a booking the clinic cannot have
Check = Callable[[Appointment], Awaitable[None]]
# queues, into the Redis transaction that stores a change, what the caller keeps with it
# (the HL7 feed: its ACK and order mark); given what happened, in words
Finish = Callable[[str, Any], None]

EndReason = Literal["entered_in_error", "ended"]


class EhrCommands:
    """The desk's commands as an EHR feed uses them (see the module's docstring)."""

    def __init__(self, desk: CheckinDesk, store: CheckinStore) -> None:
        self.desk = desk
        self.store = store
        self._subjects: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    # ------------------------------------------------------------------ order

    async def superseded(self, clinic: str, subject: str, at: datetime) -> bool:
        """Whether a message of time ``at`` about ``subject`` is older than the last one
        applied to it."""
        seen = await self.store.feed_seen_at(clinic, subject)
        return seen is not None and at < seen

    async def applied(self, clinic: str, subject: str, at: datetime) -> None:
        await self.store.mark_feed_seen(clinic, subject, at)

    @asynccontextmanager
    async def subject_lock(self, clinic: str, subject: str) -> AsyncIterator[None]:
        """One message about ``subject`` (an appointment, an EHR visit, a patient) at a time
        in this process, so its order check and its change are one step; messages about
        other subjects go on meanwhile. The lock is dropped once nobody holds or awaits
        it."""
        key = f"{clinic}|{subject}"
        lock, users = self._subjects.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._subjects[key]

    def ehr_visit(self, clinic: str, number: str) -> str:
        """A keyed digest of the EHR's visit identifier (the identifier is not kept)."""
        text = f"ehr-visit|{clinic}|{number}".encode()
        return hmac.new(self.desk.config.identity_secret, text, hashlib.sha256).hexdigest()[:32]

    # --------------------------------------------------------------- schedule

    async def book(self, clinic: str, appointment_id: str, build: Build, *, now: datetime,
                   holder: str, providers: dict[str, str] | None = None,
                   rooms: dict[str, str] | None = None,
                   held: tuple[int, Appointment | None] | None = None,
                   finish: Finish | None = None, check: Check | None = None,
                   origin: str = "hl7") -> str:
        """Book, change or cancel one appointment as the desk's schedule import would
        (the same planning, kiosk code and ``appointment.scheduled``, published only when
        it changed), holding only that appointment: ``build`` makes the appointment from
        the one stored. ``holder`` names the message (a resend of it takes its own hold
        back); ``held``: the hold already asked for (``CheckinStore.feed_state``);
        ``finish``: what to store with the change; ``check``: refuses a booked appointment
        the clinic cannot have (``CheckinDesk.check_booking``), before anything changes;
        ``origin`` (hl7, fhir): where the display names ``providers`` and ``rooms`` came
        from (``directory.named`` is published for those new or changed, compared with
        the stored ones in the transaction that stores the change).
        Returns what happened, in words;
        ``Conflict`` (``import_running``) while an import of the clinic runs or another
        message changes the appointment."""
        answer, stored = held or await self.store.hold_appointment(clinic, appointment_id,
                                                                   holder)
        if answer != 1:
            raise Conflict("a schedule import of this clinic is running" if answer == 0 else
                           f"appointment {appointment_id!r} is being changed by another "
                           "message", "import_running")
        try:
            appointment = build(stored)
            if appointment is None:
                raise NotFound(f"appointment {appointment_id!r} is not on clinic {clinic!r}'s "
                               "schedule: nothing to cancel", "not_found")
            if check is not None and appointment.status == "booked":
                await check(appointment)
            return await self._book_held(clinic, stored, appointment, now=now,
                                         providers=providers or {}, rooms=rooms or {},
                                         finish=finish, holder=holder, origin=origin)
        except BaseException:
            await self.store.release_hold(clinic, appointment_id)
            raise

    async def _book_held(self, clinic: str, stored: Appointment | None,
                         appointment: Appointment, *, now: datetime,
                         providers: dict[str, str], rooms: dict[str, str],
                         finish: Finish | None, holder: str, origin: str) -> str:
        appointment_id = appointment.appointment_id
        zone = self.desk.zone(clinic)
        day = clinic_day(appointment.scheduled_at, zone)
        code = stored.kiosk_code if stored is not None and clinic_day(
            stored.scheduled_at, zone) == day else None
        if code is None:
            secret = self.desk.config.identity_secret
            code = await self.store.claim_kiosk_code(clinic, appointment_id, day, [
                kiosk_code(secret, clinic, appointment_id, day, attempt)
                for attempt in range(KIOSK_CODE_TRIES)])
            if code is None:
                raise Unavailable("no free kiosk code for this appointment's day; try again",
                                  "unavailable")
        previous = {appointment_id: stored} if stored is not None else {}
        plan = plan_import([replace(appointment, kiosk_code=code)], previous)
        if plan.to_publish:
            # the same event id at every try of the message: a resend after a try that
            # died between its publish and its answer publishes that same event again
            event = ev.make_event(plan.to_publish[0].payload(), clinic_id=clinic,
                                  source=SOURCE, occurred_at=now,
                                  correlation_id=appointment_id,
                                  event_id=self.attempt_ids(f"{holder}|{appointment_id}")[1])
            outcome = (await self.desk.publish([event]))[0]
            if outcome is not None:
                log.warning("publish failed", event_type=event.event_type,
                            error=repr(outcome))
                raise Unavailable("could not publish to Kafka; nothing was recorded, try "
                                  "again", "unavailable")
        if plan.created:
            text = "appointment booked" if appointment.status == "booked" \
                else "appointment recorded as cancelled"
        elif plan.updated:
            text = "appointment cancelled" if appointment.status == "cancelled" \
                else "appointment updated"
        else:
            text = "no change"
        await self.store.save_held(
            clinic, [*plan.to_publish, *plan.restored], previous, zone, providers, rooms,
            held=appointment_id,
            also=(lambda pipe: finish(text, pipe)) if finish is not None else None,
            now=now, origin=origin)
        outcome_name = ("created" if plan.created else "updated" if plan.updated
                        else "restored" if plan.restored else "unchanged")
        m.SCHEDULE_ROWS.labels("ehr", outcome_name).inc()
        return text

    async def no_show(self, clinic: str, appointment_id: str, *, now: datetime) -> str:
        event = await self.desk.mark_no_show(clinic, appointment_id, now=now)
        return "no-show recorded" if event is not None else "already a no-show"

    async def update_identity(self, clinic: str, patient_ref: str, identity: str, *,
                              now: datetime, holder: str) -> str:
        """The patient's kiosk check (birth date + initials digest) on their appointments
        the kiosk takes now; nothing is published (each appointment held as a booking
        holds it)."""
        states = await self.patient_appointments(clinic, patient_ref, now)
        changed = [s.appointment for s in states if s.appointment.identity != identity]
        if not changed:
            return "no change"

        def with_identity(stored: Appointment | None) -> Appointment | None:
            return replace(stored, identity=identity) if stored is not None else None

        for appointment in changed:
            async with self.subject_lock(clinic, f"appt:{appointment.appointment_id}"):
                await self.book(clinic, appointment.appointment_id, with_identity, now=now,
                                holder=holder)
        return f"kiosk check of {len(changed)} appointment(s) updated"

    # --------------------------------------------------------------- arrivals

    async def patient_appointments(self, clinic: str, patient_ref: str, now: datetime,
                                   identity: str | None = None,
                                   matches: IdentityMatches | None = None,
                                   ) -> list[AppointmentState]:
        """The patient's booked appointments the kiosk would take now (the clinic's
        today, and across midnight the nearby ones). ``identity`` (the kiosk check's
        digest, when the message names birth date and name) finds them through the
        kiosk's index (``matches``: that index read ahead, used when it was read for
        these days); without it, or when it finds none, the days are read whole."""
        days = kiosk_days(now, self.desk.zone(clinic))
        if identity is not None:
            ids = matches.ids if matches is not None and matches.digest == identity \
                and list(matches.days) == days \
                else await self.store.identity_matches(clinic, days, identity)
            states = await self.store.appointment_states(clinic, ids)
            found = [s for s in states.values() if s.appointment.patient_ref == patient_ref
                     and s.appointment.status == "booked"]
            if found:
                return found
        found = []
        for day in days:
            found.extend(s for s in await self.desk.schedule(clinic, day)
                         if s.appointment.patient_ref == patient_ref
                         and s.appointment.status == "booked")
        return found

    def attempt_ids(self, attempt: str) -> tuple[str, str]:
        """The visit and event ids of an arrival tried by the message ``attempt`` (keyed
        digests: the same at every try of that message, unguessable)."""
        def digest(kind: str, size: int) -> str:
            text = f"{kind}|{attempt}".encode()
            return hmac.new(self.desk.config.identity_secret, text,
                            hashlib.sha256).hexdigest()[:size]

        return f"v-{digest('visit', 16)}", digest("event", 32)

    @staticmethod
    def pending_mark(attempt: str) -> str:
        """What an EHR visit's claim holds while ``attempt`` publishes its arrival."""
        return f"{FEED_PENDING}:{attempt}"

    async def arrive(self, clinic: str, ehr_visit: str, patient_ref: str | None, *,
                     now: datetime, appointment_id: str | None = None,
                     provider_id: str | None = None, urgent: bool = False,
                     identity: str | None = None, finish: Finish | None = None,
                     attempt: str | None = None,
                     claim: VisitClaim | None = None,
                     matches: IdentityMatches | None = None) -> tuple[str, str]:
        """The EHR registered a visit: check the patient in once, on ``appointment_id``
        when the EHR names it, else on their appointment closest to now (``identity``,
        the kiosk check's digest, finds it faster), else as a walk-in; ``finish``: what to
        store with the EHR visit's mapping. ``attempt`` names the message (the same at
        every resend): its visit and event ids are derived from it, so a resend after a
        try that died (the process killed between its publish and its answer) finds that
        try's arrival on the floor, once the projection has read the clinic's partition to
        its end, instead of making a second one. ``claim``: the EHR visit's claim already
        asked for (``CheckinStore.feed_state``, with ``pending_mark``); ``matches``: the
        kiosk's index for ``identity`` read ahead (``feed_state``). Returns (our visit
        id, what happened in words)."""
        attempt = attempt or f"once-{uuid.uuid4().hex}"
        pending = self.pending_mark(attempt)
        ids = self.attempt_ids(attempt)
        claim = claim or await self.store.claim_feed_visit(clinic, ehr_visit, pending, ids[0])
        holder = claim.holder

        async def done(visit_id: str, text: str) -> None:
            await self.store.set_feed_visit(
                clinic, ehr_visit, visit_id,
                also=(lambda pipe: finish(text, pipe)) if finish is not None else None)

        if holder == pending or (holder is None and claim.tried):
            # this message was tried before and that try never answered (its claim may
            # have lapsed since: its visit is stored)
            finished = await self._tried_before(clinic, ids[1])
            if finished is not None:
                await done(*finished)
                return finished
        elif holder is not None and holder.startswith(FEED_PENDING):
            raise Unavailable("this visit's registration is being processed; try again",
                              "in_progress")
        elif holder is not None:
            return holder, f"already checked in (visit {holder})"
        try:
            visit_id, text = await self._check_in(clinic, patient_ref, now=now,
                                                  appointment_id=appointment_id,
                                                  provider_id=provider_id, urgent=urgent,
                                                  identity=identity, ids=ids,
                                                  matches=matches)
        except BaseException:
            await self.store.forget_feed_visit(clinic, ehr_visit)
            raise
        await done(visit_id, text)
        return visit_id, text

    async def _tried_before(self, clinic: str, event_id: str) -> tuple[str, str] | None:
        """The visit and answer of an earlier try's arrival when it is on the floor (read
        by the projection up to the partition's end as of now), else None: that try died
        before its publish, and this one goes on with the same ids."""
        await self.desk.barrier(clinic)
        visit_id = await self.store.arrival_event_visit(clinic, event_id)
        if visit_id is None:
            return None
        view = await self.store.visit(clinic, visit_id)
        ticket = view.ticket_code if view is not None else "?"
        where = f"on appointment {view.appointment_id}" if view is not None \
            and view.appointment_id else "as a walk-in"
        log.info("an earlier try of this registration was published; answering it",
                 clinic=clinic, visit_id=visit_id)
        return visit_id, f"checked in {where}, ticket {ticket}"

    async def _check_in(self, clinic: str, patient_ref: str | None, *, now: datetime,
                        appointment_id: str | None, provider_id: str | None,
                        urgent: bool, identity: str | None,
                        ids: tuple[str, str],
                        matches: IdentityMatches | None = None) -> tuple[str, str]:
        priority: Literal["routine", "urgent"] = "urgent" if urgent else "routine"
        states = await self.patient_appointments(clinic, patient_ref, now, identity,
                                                 matches) \
            if patient_ref and appointment_id is None else []
        ours = (None, ids[0])  # not arrived, or claimed by an earlier try of this message
        chosen: AppointmentState | None = None  # as just read: not read again
        if appointment_id is None:
            open_ones = sorted((s for s in states if s.arrived_visit in ours),
                               key=lambda s: abs(s.appointment.scheduled_at - now))
            chosen = open_ones[0] if open_ones else None
            appointment_id = chosen.appointment.appointment_id if chosen else None
        if appointment_id is not None:
            try:
                result = await self.desk.arrive_scheduled(
                    clinic, appointment_id, channel="ehr", now=now,
                    overrides=ArrivalOverrides(priority=priority), ids=ids, state=chosen)
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
        arrived = [s for s in states if s.arrived_visit not in ours]
        if arrived:
            visit_id = str(arrived[0].arrived_visit)
            return visit_id, f"already checked in (visit {visit_id})"
        if provider_id is not None and (
                not ID_PATTERN.match(provider_id)
                or provider_id not in await self.desk.known_providers(clinic)):
            provider_id = None  # a provider the clinic does not know: first available
        result = await self.desk.arrive_walk_in(
            clinic, WalkIn(provider_id=provider_id, visit_type="walk_in", priority=priority,
                           patient_ref=patient_ref), channel="ehr", now=now, ids=ids)
        return result.visit_id, f"checked in as a walk-in, ticket {result.ticket_code}"

    async def end(self, clinic: str, ehr_visit: str, reason: EndReason, *,
                  now: datetime, name: str | None = None) -> str:
        """The EHR cancelled a registration (``entered_in_error``: the arrival is
        cancelled and its appointment waits again) or ended a visit (``ended``: a patient
        still waiting here left without being seen; a roomed visit ends at checkout,
        which is billing's). ``Conflict`` for a cancel of a visit no longer waiting;
        ``NotFound`` naming the EHR's visit (``name``: as the EHR calls it) when no arrival
        of it was registered here: an end or cancel of nothing is an error the EHR must
        see, not a success."""
        visit_id = await self.store.feed_visit(clinic, ehr_visit)
        cancelled = await self.store.feed_cancelled(clinic, ehr_visit) \
            if visit_id is None else None
        if cancelled is not None:
            raise Conflict(f"{name or 'this visit'}'s arrival was already cancelled (visit "
                           f"{cancelled}): nothing to end or cancel", "already_cancelled")
        if visit_id is None:
            raise NotFound(f"{name or 'this visit'} was never checked in at clinic "
                           f"{clinic!r}: nothing to end or cancel", "not_found")
        if visit_id.startswith(FEED_PENDING):
            raise Unavailable(f"{name or 'this visit'}'s registration is being processed; "
                              "try again", "in_progress")
        view = await self.store.visit(clinic, visit_id)
        if reason == "ended" and (view is None or view.status != "waiting"):
            return f"visit {visit_id} is not waiting here: nothing to change"
        try:
            await self.desk.cancel(clinic, visit_id, "entered_in_error" if reason ==
                                   "entered_in_error" else "left_without_being_seen", now=now)
        except NotFound:
            return f"visit {visit_id} is not known here any more: nothing to change"
        if reason == "entered_in_error":
            await self.store.forget_feed_visit(clinic, ehr_visit, cancelled=visit_id)
            return f"arrival of visit {visit_id} cancelled"
        return f"visit {visit_id} ended before it was roomed: left without being seen"
