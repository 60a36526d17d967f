"""The HL7 v2 feed: each message from an EHR becomes the desk's own command (the same
schedule import, arrival, cancel and no-show as the front desk's), and the answer an
interface engine can rely on.

- ``AA`` only once what the message changed is on Kafka (``acks=all``: the desk's
  publish) and stored, or when there was nothing to change (said in ``MSA-3``).
- ``AE``: the message is wrong (a required field missing, an unknown appointment, a
  visit no longer waiting); ``ERR`` names the segment, field and reason. Resending it
  unchanged gives the same ``AE``.
- ``AR``: not taken (unsupported type or version, an unknown sending facility, too
  large) or not now (Kafka unreachable, the same message still in progress): nothing
  was changed, and the sender may resend it.
- A message control id (``MSH-10``, per sending application and facility) seen before
  gets the same ACK again and changes nothing (kept in Redis, ``store.py``).
- Updates out of order are resolved by the message's own time (``MSH-7``, ``EVN-2``):
  a message older than the last one applied to the same appointment, EHR visit or
  patient changes nothing (``AA``, "superseded").
- ``PID``'s MRN becomes the keyed pseudonym ``patient_ref`` (as a FHIR ``Patient.id``
  does), birth date and initials the kiosk check's digest; the plain values are
  dropped here.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Literal

from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from services.checkin.desk import ArrivalOverrides, CheckinDesk, WalkIn
from services.checkin.domain import (
    ID_PATTERN,
    Appointment,
    AppointmentState,
    kiosk_days,
    map_visit_type,
    normalize_initials,
)
from services.checkin.feeds import Feed, Feeds
from services.checkin.hl7.messages import (
    APPLICATION_INTERNAL_ERROR,
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    TABLE_VALUE_NOT_FOUND,
    UNKNOWN_KEY_IDENTIFIER,
    Ack,
    FeedMessage,
    Header,
    PatientIdentity,
    Problem,
    RegistrationMessage,
    ScheduleMessage,
    ack_bytes,
    check_header,
    parse_message,
    read_message,
)
from services.checkin.hl7.mllp import Frame
from services.checkin.schedule import ParsedSchedule
from services.checkin.store import FEED_PENDING, CheckinStore
from shared.clock import Clock
from shared.errors import Conflict, NotFound, Refusal, Unavailable
from shared.logging import get_logger

log = get_logger("clinicflow.checkin.hl7")

APPLICATION = "CLINICFLOW"
FACILITY = "CHECKIN"

HL7_MESSAGES = Counter(
    "clinicflow_hl7_messages_total",
    "HL7 v2 messages answered by checkin's MLLP listener, by message type and ACK code "
    "(repeated: a message control id seen before, answered again)",
    ["message_type", "ack", "repeated"])
HL7_ACK_SECONDS = Histogram(
    "clinicflow_hl7_ack_seconds", "Time from a whole HL7 message received to its ACK ready",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
KNOWN_TYPES = {f"{c}^{t}" for c, ts in (("SIU", ("S12", "S13", "S14", "S15", "S17", "S26")),
                                        ("ADT", ("A04", "A11", "A08", "A03"))) for t in ts}


class Hl7Feed:
    """Answers HL7 frames: reads each, applies it through ``desk``, returns the ACK."""

    def __init__(self, desk: CheckinDesk, store: CheckinStore, feeds: Feeds, clock: Clock,
                 *, max_bytes: int) -> None:
        self.desk = desk
        self.store = store
        self.feeds = feeds
        self.clock = clock
        self.max_bytes = max_bytes
        self._messages: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._clinics: dict[str, asyncio.Lock] = {}
        self._visit_types: dict[str, Mapping[str, str]] = {}

    # ---------------------------------------------------------------- answer

    async def answer(self, received: Frame) -> bytes:
        """The ACK for one frame (never raises: every failure is an AR or AE)."""
        started = time.perf_counter()
        header: Header | None = None
        repeated = False
        ack: Ack | bytes
        try:
            if received.payload is None:
                header = self._header_of(received.head)
                ack = Ack("AR", Problem(
                    "AR", APPLICATION_INTERNAL_ERROR, f"the message is {received.size} bytes, "
                    f"over this listener's limit of {self.max_bytes}: it was not read",
                    "MSH"))
            else:
                _message, header = parse_message(received.payload)
                check_header(header)
                ack, repeated = await self._once(header, received.payload)
        except Problem as problem:
            ack = Ack(problem.ack, problem)
        except Exception:  # the sender gets an AR (and may resend); we log why
            log.exception("hl7 message failed")
            ack = Ack("AR", Problem("AR", APPLICATION_INTERNAL_ERROR, "the message could not "
                                    "be processed now; send it again", "MSH", retry=True))
        answer = self._ack(ack, header) if isinstance(ack, Ack) else ack
        kind = header.message_type if header else "unreadable"
        HL7_MESSAGES.labels(kind if kind in KNOWN_TYPES else "other",
                            _ack_code(answer), str(repeated).lower()).inc()
        HL7_ACK_SECONDS.observe(time.perf_counter() - started)
        return answer

    def _header_of(self, head: bytes) -> Header | None:
        """The header of a message known only by its first bytes (one too large)."""
        first = head.replace(b"\n", b"\r").split(b"\r", 1)[0]
        try:
            return parse_message(first)[1]
        except Problem:
            return None

    def _ack(self, ack: Ack, header: Header | None) -> bytes:
        application = (header.receiving_application if header else "") or APPLICATION
        facility = (header.receiving_facility if header else "") or FACILITY
        return ack_bytes(ack, header, application=application, facility=facility,
                         control_id=uuid.uuid4().hex[:20], now=self.clock.now())

    async def _once(self, header: Header, payload: bytes) -> tuple[Ack | bytes, bool]:
        """Apply a message once per control id: a repeat gets the ACK it got then. A
        transient AR is not kept (the resent message is tried again)."""
        feed = self.feeds.for_facility(header.sending_facility)
        if feed is None:
            raise Problem("AR", TABLE_VALUE_NOT_FOUND, f"no clinic takes messages from "
                          f"sending facility {header.sending_facility[:40]!r} "
                          "(CLINICFLOW_CHECKIN_FEEDS)", "MSH", 4)
        message_key = hashlib.sha256("|".join(
            (header.sending_application, header.sending_facility.upper(), header.control_id)
        ).encode()).hexdigest()[:32]
        # one at a time per control id (a resend on a second connection waits for the
        # first and gets its ACK); the lock is dropped once nobody holds or awaits it
        lock, users = self._messages.setdefault(message_key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                stored = await self.store.feed_ack(message_key)
                if stored is not None:
                    return stored, True
                try:
                    text = await self._apply(feed, read_message(payload))
                    ack = Ack("AA", text=text)
                except Problem as problem:
                    if problem.retry or problem.ack == "AR":
                        raise
                    ack = Ack(problem.ack, problem)
                answer = self._ack(ack, header)
                await self.store.save_feed_ack(message_key, answer)
                return answer, False
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._messages[message_key]

    # ------------------------------------------------------------------ apply

    async def _apply(self, feed: Feed, message: FeedMessage) -> str:
        now = self.clock.now()
        try:
            if isinstance(message, ScheduleMessage):
                return await self._schedule(feed, message, now)
            return await self._registration(feed, message, now)
        except Unavailable as refused:
            raise Problem("AR", APPLICATION_INTERNAL_ERROR, f"{refused.detail}: nothing was "
                          "changed; send the message again", "MSH", retry=True) from None
        except Refusal as refused:
            if refused.code == "import_running":
                raise Problem("AR", "206", f"{refused.detail}: send the message again",
                              "MSH", retry=True) from None
            raise Problem("AE", APPLICATION_INTERNAL_ERROR, refused.detail, "MSH") from None

    def _at(self, feed: Feed, at: datetime | None, now: datetime) -> datetime:
        """A message time as an instant: naive ones are the clinic's own clock."""
        if at is None:
            return now
        if at.tzinfo is None:
            at = at.replace(tzinfo=self.desk.zone(feed.clinic_id))
        return at.astimezone(UTC)

    def _visit_type_table(self, feed: Feed) -> Mapping[str, str]:
        table = self._visit_types.get(feed.facility)
        if table is None:
            table = {**self.desk.config.visit_types, **feed.visit_types}
            self._visit_types[feed.facility] = table
        return table

    @asynccontextmanager
    async def _clinic(self, clinic_id: str) -> AsyncIterator[None]:
        """One schedule change of a clinic at a time in this process (the desk's import
        takes the clinic's lock and refuses a second import meanwhile)."""
        lock = self._clinics.setdefault(clinic_id, asyncio.Lock())
        async with lock:
            yield

    # --------------------------------------------------------------- schedule

    async def _schedule(self, feed: Feed, message: ScheduleMessage, now: datetime) -> str:
        clinic = feed.clinic_id
        if not feed.takes_schedule_from("hl7"):
            raise Problem("AR", TABLE_VALUE_NOT_FOUND, f"clinic {clinic!r} takes its schedule "
                          f"from {feed.source_of_truth}, not from this HL7 feed", "MSH", 4)
        at = self._at(feed, message.at, now)
        subject = f"appt:{message.appointment_id}"
        async with self._clinic(clinic):
            seen = await self.store.feed_seen_at(clinic, subject)
            if seen is not None and at < seen:
                return "superseded by a later message for this appointment; nothing changed"
            if message.action == "no_show":
                text = await self._no_show(clinic, message, now)
            else:
                text = await self._book(feed, message, now)
            await self.store.mark_feed_seen(clinic, subject, at)
        return text

    async def _no_show(self, clinic: str, message: ScheduleMessage, now: datetime) -> str:
        try:
            event = await self.desk.mark_no_show(clinic, message.appointment_id, now=now)
        except NotFound:
            raise Problem("AE", UNKNOWN_KEY_IDENTIFIER, f"appointment "
                          f"{message.appointment_id!r} is not on the clinic's schedule",
                          "SCH", 2, 1) from None
        except Conflict as refused:
            raise Problem("AE", APPLICATION_INTERNAL_ERROR, refused.detail, "SCH", 2,
                          1) from None
        return "no-show recorded" if event is not None else "already a no-show"

    async def _book(self, feed: Feed, message: ScheduleMessage, now: datetime) -> str:
        clinic = feed.clinic_id
        stored = (await self.store.appointments(clinic, [message.appointment_id])).get(
            message.appointment_id)
        appointment = self._appointment(feed, message, stored)
        if appointment is None:
            return "appointment not known here: nothing to cancel"
        parsed = ParsedSchedule(appointments=[appointment], rows=1)
        if message.provider is not None and message.provider.name:
            parsed.providers[appointment.provider_id] = message.provider.name[:80]
        if message.room is not None and message.room.name:
            room = feed.room(message.room.ehr_id)
            if ID_PATTERN.match(room):
                parsed.rooms[room] = message.room.name[:80]
        result = await self.desk.import_schedule(clinic, parsed, fmt="hl7", dry_run=False,
                                                 now=now)
        if result.created:
            return "appointment booked"
        if result.updated:
            return "appointment cancelled" if appointment.status == "cancelled" \
                else "appointment updated"
        return "no change"

    def _appointment(self, feed: Feed, message: ScheduleMessage,
                     stored: Appointment | None) -> Appointment | None:
        """The appointment as the message has it (what it leaves out, as stored); None
        for a cancel of an appointment never seen that says too little to record."""
        cancelled = message.action == "cancel"
        keys = self.desk.import_keys(feed.clinic_id)
        patient_ref = identity = None
        if message.patient is not None:
            patient_ref = keys.pseudonymize(message.patient.mrn)
            identity = self._identity(feed, message.patient)
        elif stored is not None:
            patient_ref, identity = stored.patient_ref, stored.identity
        provider_id = stored.provider_id if stored is not None else None
        if message.provider is not None:
            provider_id = feed.provider(message.provider.ehr_id)
            if not ID_PATTERN.match(provider_id):
                raise Problem("AE", DATA_TYPE_ERROR, "AIP-3 (provider id) must be 1-64 "
                              "letters, digits, _ . : -", "AIP", 3, 1)
        visit_type = stored.visit_type if stored is not None else None
        if message.visit_type_code:
            visit_type = map_visit_type(message.visit_type_code, self._visit_type_table(feed))
        start = stored.scheduled_at if stored is not None else None
        if message.start is not None:
            start = self._at(feed, message.start, message.start)
        duration = message.duration_minutes or (stored.duration_minutes if stored else None)
        missing = [(ok, problem) for ok, problem in (
            (patient_ref, ("PID", 3, 1, "patient identifier")),
            (provider_id, ("AIP", 3, 1, "provider")),
            (visit_type, ("SCH", 7, 1, "appointment reason (visit type)")),
            (start, ("SCH", 11, 4, "start date/time")),
        ) if not ok]
        if missing:
            if cancelled and stored is None:
                return None
            segment, field_no, component, what = missing[0][1]
            raise Problem("AE", REQUIRED_FIELD_MISSING, f"{segment}-{field_no} ({what}) is "
                          "missing and the appointment is not known here", segment, field_no,
                          component)
        assert patient_ref and provider_id and visit_type and start is not None
        appointment = Appointment(
            appointment_id=message.appointment_id, patient_ref=patient_ref,
            provider_id=provider_id, visit_type=visit_type, scheduled_at=start,
            duration_minutes=duration, status="cancelled" if cancelled else "booked",
            identity=identity or (stored.identity if stored else None))
        try:
            appointment.payload()
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"])
            raise Problem("AE", DATA_TYPE_ERROR, f"the appointment's {where}: {error['msg']}",
                          "SCH", 2, 1) from None
        return appointment

    def _identity(self, feed: Feed, patient: PatientIdentity) -> str | None:
        """The kiosk check's digest of birth date + initials (None without both)."""
        letters = normalize_initials(patient.initials)
        if patient.birth_date is None or letters is None or len(letters) < 2:
            return None
        return self.desk.identity_hasher(feed.clinic_id)(patient.birth_date, letters)

    # ----------------------------------------------------------- registration

    def _ehr_visit(self, feed: Feed, message: RegistrationMessage) -> str:
        """A keyed digest of the EHR's visit number (PV1-19), else of the message: the
        EHR's identifiers are not kept in plain."""
        number = message.visit_number or f"msg|{message.header.control_id}"
        text = f"ehr-visit|{feed.clinic_id}|{number}".encode()
        return hmac.new(self.desk.config.identity_secret, text, hashlib.sha256).hexdigest()[:32]

    async def _registration(self, feed: Feed, message: RegistrationMessage,
                            now: datetime) -> str:
        clinic = feed.clinic_id
        at = self._at(feed, message.at, now)
        if message.action == "update_patient":
            assert message.patient is not None
            patient_ref = self.desk.import_keys(clinic).pseudonymize(message.patient.mrn)
            subject = f"patient:{patient_ref}"
        else:
            ehr_visit = self._ehr_visit(feed, message)
            subject = f"visit:{ehr_visit}"
        seen = await self.store.feed_seen_at(clinic, subject)
        if seen is not None and at < seen:
            return "superseded by a later message for this visit; nothing changed"
        if message.action == "arrive":
            text = await self._arrive(feed, message, ehr_visit, now)
        elif message.action == "update_patient":
            text = await self._update_patient(feed, message, patient_ref, now)
        else:
            text = await self._end(feed, message, ehr_visit, now)
        await self.store.mark_feed_seen(clinic, subject, at)
        return text

    async def _patient_appointments(self, clinic: str, patient_ref: str,
                                    now: datetime) -> list[AppointmentState]:
        """The patient's booked appointments the kiosk would take now (the clinic's
        today, and across midnight the nearby ones)."""
        found: list[AppointmentState] = []
        for day in kiosk_days(now, self.desk.zone(clinic)):
            found.extend(s for s in await self.desk.schedule(clinic, day)
                         if s.appointment.patient_ref == patient_ref
                         and s.appointment.status == "booked")
        return found

    async def _arrive(self, feed: Feed, message: RegistrationMessage, ehr_visit: str,
                      now: datetime) -> str:
        clinic = feed.clinic_id
        assert message.patient is not None
        patient_ref = self.desk.import_keys(clinic).pseudonymize(message.patient.mrn)
        holder = await self.store.claim_feed_visit(clinic, ehr_visit)
        if holder == FEED_PENDING:
            raise Problem("AR", "206", "this visit's registration is being processed; send "
                          "the message again", "PV1", 19, 1, retry=True)
        if holder is not None:
            return f"already checked in (visit {holder})"
        try:
            visit_id, text = await self._check_in(feed, message, patient_ref, now)
        except BaseException:
            await self.store.forget_feed_visit(clinic, ehr_visit)
            raise
        await self.store.set_feed_visit(clinic, ehr_visit, visit_id)
        return text

    async def _check_in(self, feed: Feed, message: RegistrationMessage, patient_ref: str,
                        now: datetime) -> tuple[str, str]:
        """Check the patient in on their appointment closest to now, or as a walk-in."""
        clinic = feed.clinic_id
        priority: Literal["routine", "urgent"] = "urgent" if message.urgent else "routine"
        states = await self._patient_appointments(clinic, patient_ref, now)
        open_ones = sorted((s for s in states if s.arrived_visit is None),
                           key=lambda s: abs(s.appointment.scheduled_at - now))
        if open_ones:
            appointment_id = open_ones[0].appointment.appointment_id
            try:
                result = await self.desk.arrive_scheduled(
                    clinic, appointment_id, channel="ehr", now=now,
                    overrides=ArrivalOverrides(priority=priority))
            except Conflict as refused:
                if refused.code != "already_arrived":
                    raise Problem("AE", APPLICATION_INTERNAL_ERROR, refused.detail, "PV1",
                                  19, 1) from None
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
        provider_id = feed.provider(message.attending.ehr_id) if message.attending else None
        if provider_id is not None and (
                not ID_PATTERN.match(provider_id)
                or provider_id not in await self.desk.known_providers(clinic)):
            provider_id = None  # a provider the clinic does not know: first available
        result = await self.desk.arrive_walk_in(
            clinic, WalkIn(provider_id=provider_id, visit_type="walk_in",
                           priority=priority, patient_ref=patient_ref),
            channel="ehr", now=now)
        return result.visit_id, f"checked in as a walk-in, ticket {result.ticket_code}"

    async def _end(self, feed: Feed, message: RegistrationMessage, ehr_visit: str,
                   now: datetime) -> str:
        """A11 (registration cancelled): the arrival was entered in error. A03 (visit
        ended): a patient still waiting here left without being seen; a visit that was
        roomed ends at checkout, which is billing's."""
        clinic = feed.clinic_id
        visit_id = await self.store.feed_visit(clinic, ehr_visit)
        if visit_id is None or visit_id == FEED_PENDING:
            return "no arrival of this visit here: nothing to change"
        view = await self.store.visit(clinic, visit_id)
        if message.action == "end_visit" and (view is None or view.status != "waiting"):
            return f"visit {visit_id} is not waiting here: nothing to change"
        reason = "entered_in_error" if message.action == "cancel_arrival" \
            else "left_without_being_seen"
        try:
            await self.desk.cancel(clinic, visit_id, reason, now=now)
        except NotFound:
            return f"visit {visit_id} is not known here any more: nothing to change"
        except Conflict as refused:
            raise Problem("AE", APPLICATION_INTERNAL_ERROR, refused.detail, "PV1", 19,
                          1) from None
        if message.action == "cancel_arrival":
            await self.store.forget_feed_visit(clinic, ehr_visit)
            return f"arrival of visit {visit_id} cancelled"
        return f"visit {visit_id} ended before it was roomed: left without being seen"

    async def _update_patient(self, feed: Feed, message: RegistrationMessage,
                              patient_ref: str, now: datetime) -> str:
        """A08: the patient's birth date or name changed; the kiosk check of their
        appointments (today and across midnight) follows. Nothing is published."""
        assert message.patient is not None
        identity = self._identity(feed, message.patient)
        if identity is None:
            return "no birth date and name to update"
        clinic = feed.clinic_id
        async with self._clinic(clinic):
            states = await self._patient_appointments(clinic, patient_ref, now)
            changed = [replace(s.appointment, identity=identity) for s in states
                       if s.appointment.identity != identity]
            if not changed:
                return "no change"
            await self.desk.import_schedule(
                clinic, ParsedSchedule(appointments=changed, rows=len(changed)), fmt="hl7",
                dry_run=False, now=now)
        return f"kiosk check of {len(changed)} appointment(s) updated"


def _ack_code(answer: bytes) -> str:
    marker = answer.find(b"\rMSA|")
    return answer[marker + 5:marker + 7].decode("ascii", "replace") if marker >= 0 else "??"
