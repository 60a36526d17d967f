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
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from services.checkin.domain import (
    ID_PATTERN,
    Appointment,
    map_visit_type,
    normalize_initials,
)
from services.checkin.ehr import EhrCommands
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

    def __init__(self, ehr: EhrCommands, feeds: Feeds, clock: Clock, *,
                 max_bytes: int) -> None:
        self.ehr = ehr
        self.desk = ehr.desk
        self.store = ehr.store
        self.feeds = feeds
        self.clock = clock
        self.max_bytes = max_bytes
        self._messages: dict[str, tuple[asyncio.Lock, list[int]]] = {}
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

    # --------------------------------------------------------------- schedule

    async def _schedule(self, feed: Feed, message: ScheduleMessage, now: datetime) -> str:
        clinic = feed.clinic_id
        if not feed.takes_schedule_from("hl7"):
            raise Problem("AR", TABLE_VALUE_NOT_FOUND, f"clinic {clinic!r} takes its schedule "
                          f"from {feed.source_of_truth}, not from this HL7 feed", "MSH", 4)
        at = self._at(feed, message.at, now)
        subject = f"appt:{message.appointment_id}"
        async with self.ehr.schedule_lock(clinic):
            if await self.ehr.superseded(clinic, subject, at):
                return "superseded by a later message for this appointment; nothing changed"
            if message.action == "no_show":
                text = await self._no_show(clinic, message, now)
            else:
                text = await self._book(feed, message, now)
            await self.ehr.applied(clinic, subject, at)
        return text

    async def _no_show(self, clinic: str, message: ScheduleMessage, now: datetime) -> str:
        try:
            return await self.ehr.no_show(clinic, message.appointment_id, now=now)
        except NotFound:
            raise Problem("AE", UNKNOWN_KEY_IDENTIFIER, f"appointment "
                          f"{message.appointment_id!r} is not on the clinic's schedule",
                          "SCH", 2, 1) from None
        except Conflict as refused:
            raise Problem("AE", APPLICATION_INTERNAL_ERROR, refused.detail, "SCH", 2,
                          1) from None

    async def _book(self, feed: Feed, message: ScheduleMessage, now: datetime) -> str:
        clinic = feed.clinic_id
        stored = (await self.store.appointments(clinic, [message.appointment_id])).get(
            message.appointment_id)
        appointment = self._appointment(feed, message, stored)
        if appointment is None:
            return "appointment not known here: nothing to cancel"
        providers: dict[str, str] = {}
        rooms: dict[str, str] = {}
        if message.provider is not None and message.provider.name:
            providers[appointment.provider_id] = message.provider.name[:80]
        if message.room is not None and message.room.name:
            room = feed.room(message.room.ehr_id)
            if ID_PATTERN.match(room):
                rooms[room] = message.room.name[:80]
        return await self.ehr.book(clinic, appointment, now=now, providers=providers,
                                   rooms=rooms)

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

    async def _registration(self, feed: Feed, message: RegistrationMessage,
                            now: datetime) -> str:
        clinic = feed.clinic_id
        at = self._at(feed, message.at, now)
        patient_ref = None
        if message.patient is not None:
            patient_ref = self.desk.import_keys(clinic).pseudonymize(message.patient.mrn)
        ehr_visit = self.ehr.ehr_visit(
            clinic, message.visit_number or f"msg|{message.header.control_id}")
        subject = f"patient:{patient_ref}" if message.action == "update_patient" \
            else f"visit:{ehr_visit}"
        if await self.ehr.superseded(clinic, subject, at):
            return "superseded by a later message for this visit; nothing changed"
        try:
            if message.action == "arrive":
                provider = feed.provider(message.attending.ehr_id) if message.attending \
                    else None
                _visit, text = await self.ehr.arrive(clinic, ehr_visit, patient_ref, now=now,
                                                     provider_id=provider,
                                                     urgent=message.urgent)
            elif message.action == "update_patient":
                assert message.patient is not None and patient_ref is not None
                identity = self._identity(feed, message.patient)
                if identity is None:
                    text = "no birth date and name to update"
                else:
                    async with self.ehr.schedule_lock(clinic):
                        text = await self.ehr.update_identity(clinic, patient_ref, identity,
                                                              now=now)
            else:
                text = await self.ehr.end(clinic, ehr_visit, "entered_in_error"
                                          if message.action == "cancel_arrival" else "ended",
                                          now=now)
        except Unavailable as refused:
            if refused.code == "in_progress":
                raise Problem("AR", "206", f"{refused.detail}", "PV1", 19, 1,
                              retry=True) from None
            raise
        except Conflict as refused:
            raise Problem("AE", APPLICATION_INTERNAL_ERROR, refused.detail, "PV1", 19,
                          1) from None
        await self.ehr.applied(clinic, subject, at)
        return text


def _ack_code(answer: bytes) -> str:
    marker = answer.find(b"\rMSA|")
    return answer[marker + 5:marker + 7].decode("ascii", "replace") if marker >= 0 else "??"
