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
  gets the same ACK again and changes nothing (kept in Redis, ``store.py``), when it is
  the same message (``message_digest``: ``MSH-7`` aside); on a different message it is
  ``AE`` at ``MSH-10`` and changes nothing.
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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from services.checkin.domain import (
    ID_PATTERN,
    Appointment,
    kiosk_days,
    known_visit_type,
    normalize_initials,
    visit_types_named,
)
from services.checkin.ehr import EhrCommands, Finish
from services.checkin.feeds import Feed, Feeds
from services.checkin.hl7.messages import (
    APPLICATION_INTERNAL_ERROR,
    DATA_TYPE_ERROR,
    DUPLICATE_KEY_IDENTIFIER,
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
    read_parsed,
)
from services.checkin.hl7.mllp import Frame
from services.checkin.store import IdentityMatches, VisitClaim
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
# a message's own time (MSH-7, EVN-2) may be this far ahead of our clock (the EHR's clock
# runs a little fast), and no older than this (a year: a resend from a backlog is fine)
CLOCK_SKEW = timedelta(minutes=5)
OLDEST_MESSAGE = timedelta(days=366)
# messages applied at once (the others wait for a place): each holds one Redis connection
# at a time, and the service's pool (100) also serves its HTTP routes and its consumer
APPLYING_AT_ONCE = 32
KNOWN_TYPES = {f"{c}^{t}" for c, ts in (("SIU", ("S12", "S13", "S14", "S15", "S17", "S26")),
                                        ("ADT", ("A04", "A11", "A08", "A03"))) for t in ts}


@dataclass(frozen=True, slots=True)
class Applying:
    """One message being applied: its key (``feed:ack``), what stores its ACK with its
    change, and what was read with its ACK in one round trip (``CheckinStore.feed_state``):
    its appointment's hold with its state, its EHR visit's claim, the kiosk's index for
    its patient."""

    message_key: str
    finish: Finish
    held: tuple[int, Appointment | None] | None = None
    visit_claim: VisitClaim | None = None
    identity_matches: IdentityMatches | None = None


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
        self._applying = asyncio.Semaphore(APPLYING_AT_ONCE)
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
                parsed, header = parse_message(received.payload)
                check_header(header)
                ack, repeated = await self._once(header, parsed,
                                                 message_digest(received.payload))
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

    async def _once(self, header: Header, parsed: Any,
                    digest: bytes) -> tuple[Ack | bytes, bool]:
        """Apply a message once per control id: a repeat gets the ACK it got then. A
        transient AR is not kept (the resent message is tried again). Messages about one
        subject (an appointment, an EHR visit, a patient) are applied one at a time, in
        the order of their own times; others go on side by side."""
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
            async with lock, self._applying:
                return await self._once_locked(feed, header, parsed, message_key, digest)
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._messages[message_key]

    async def _once_locked(self, feed: Feed, header: Header, parsed: Any,
                           message_key: str, digest: bytes) -> tuple[Ack | bytes, bool]:
        clinic = feed.clinic_id
        try:
            message = read_parsed(parsed, header)
            subject, at = self._subject(feed, message)
        except Problem as problem:
            # unreadable content: answered AE (or AR) as it is, kept like any other answer
            stored = await self.store.feed_ack(message_key)
            if stored is not None:
                return replayed(stored, digest), True
            if problem.retry or problem.ack == "AR":
                raise
            answer = self._ack(Ack(problem.ack, problem), header)
            await self.store.feed_done(message_key, kept(answer, digest), clinic, None)
            return answer, False
        # what a booking holds and an arrival claims is asked for in the same round trip,
        # with what applying them reads first (the kiosk's index for the patient): round
        # trips are the largest share of the feed's CPU (docs/performance.md, EHR feed).
        # The display names a booking brings are not read ahead: they are compared with
        # the stored ones in the transaction that stores them (two messages naming one
        # provider at once: the one applied last decides the name stored and published)
        hold = (message.appointment_id, message_key) if isinstance(message, ScheduleMessage) \
            and message.action != "no_show" and feed.takes_schedule_from("hl7") else None
        arriving = isinstance(message, RegistrationMessage) and message.action == "arrive"
        claim = (subject.removeprefix("visit:"), self.ehr.pending_mark(message_key),
                 self.ehr.attempt_ids(message_key)[0]) if arriving else None
        kiosk_check = self._identity(feed, message.patient) \
            if arriving and message.patient is not None else None
        identity = (kiosk_days(self.clock.now(), self.desk.zone(clinic)), kiosk_check) \
            if kiosk_check is not None else None
        async with self.ehr.subject_lock(clinic, subject):
            state = await self.store.feed_state(message_key, clinic, subject, hold=hold,
                                                claim_visit=claim, identity=identity)
            seen = state.seen
            # a mark ahead of the clock (stored before times were checked) orders nothing
            stale = seen is not None and at < seen <= self.clock.now() + CLOCK_SKEW
            if state.ack is not None or stale:  # nothing to apply: give back what was taken
                if hold is not None and state.held == 1:
                    await self.store.release_hold(clinic, hold[0])
                if claim is not None and state.visit_claim is not None \
                        and state.visit_claim.holder is None:
                    await self.store.forget_feed_visit(clinic, claim[0])
            if state.ack is not None:
                return replayed(state.ack, digest), True
            finished: list[bytes] = []

            def finish(text: str, pipe: Any) -> None:
                """The ACK and order mark, stored with the change itself."""
                answer = self._ack(Ack("AA", text=text), header)
                self.store.queue_feed_done(pipe, message_key, kept(answer, digest), clinic,
                                           (subject, at))
                finished.append(answer)

            applied = False
            if stale:
                what = "appointment" if isinstance(message, ScheduleMessage) else "visit"
                ack = Ack("AA", text=f"superseded by a later message for this {what}; "
                                     "nothing changed")
            else:
                try:
                    text = await self._apply(feed, message, Applying(
                        message_key, finish, (state.held, state.stored)
                        if state.held is not None else None, state.visit_claim,
                        state.identity_matches))
                    if finished:
                        return finished[0], False
                    ack = Ack("AA", text=text)
                    applied = True
                except Problem as problem:
                    if problem.retry or problem.ack == "AR":
                        raise
                    ack = Ack(problem.ack, problem)
            answer = self._ack(ack, header)
            await self.store.feed_done(message_key, kept(answer, digest), clinic,
                                       (subject, at) if applied else None)
            return answer, False

    def _subject(self, feed: Feed, message: FeedMessage) -> tuple[str, datetime]:
        """What a message is about (its order is kept per subject), and its own time:
        refused (AE, the field named) more than ``CLOCK_SKEW`` ahead of our clock or
        older than ``OLDEST_MESSAGE``; one a little ahead counts as now, so no message
        can mark its subject with a time still to come and make every real update
        after it look older ("superseded")."""
        now = self.clock.now()
        self._plausible(feed, message.header.sent_at, now, "MSH", 7)
        if isinstance(message, RegistrationMessage) and message.at is not None \
                and message.at != message.header.sent_at:
            self._plausible(feed, message.at, now, "EVN", 2)
        at = min(self._at(feed, message.at, now), now)
        if isinstance(message, ScheduleMessage):
            return f"appt:{message.appointment_id}", at
        if message.action == "update_patient":
            assert message.patient is not None
            ref = self.desk.import_keys(feed.clinic_id).pseudonymize(message.patient.mrn)
            return f"patient:{ref}", at
        return f"visit:{self._ehr_visit(feed, message)}", at

    def _ehr_visit(self, feed: Feed, message: RegistrationMessage) -> str:
        return self.ehr.ehr_visit(
            feed.clinic_id, message.visit_number or f"msg|{message.header.control_id}")

    # ------------------------------------------------------------------ apply

    async def _apply(self, feed: Feed, message: FeedMessage, applying: Applying) -> str:
        now = self.clock.now()
        try:
            if isinstance(message, ScheduleMessage):
                return await self._schedule(feed, message, now, applying)
            return await self._registration(feed, message, now, applying)
        except Unavailable as refused:
            raise Problem("AR", APPLICATION_INTERNAL_ERROR, f"{refused.detail}: nothing was "
                          "changed; send the message again", "MSH", retry=True) from None
        except Refusal as refused:
            if refused.code == "import_running":
                raise Problem("AR", "206", f"{refused.detail}: send the message again",
                              "MSH", retry=True) from None
            raise Problem("AE", APPLICATION_INTERNAL_ERROR, refused.detail, "MSH") from None

    def _plausible(self, feed: Feed, at: datetime | None, now: datetime, segment: str,
                   field_no: int) -> None:
        if at is None:
            return
        instant = self._at(feed, at, now)
        if instant > now + CLOCK_SKEW:
            raise Problem("AE", DATA_TYPE_ERROR, f"{segment}-{field_no} "
                          f"({at:%Y-%m-%d %H:%M:%S}) is in the future (more than "
                          f"{CLOCK_SKEW.seconds // 60} minutes ahead of this clock)",
                          segment, field_no)
        if instant < now - OLDEST_MESSAGE:
            raise Problem("AE", DATA_TYPE_ERROR, f"{segment}-{field_no} "
                          f"({at:%Y-%m-%d %H:%M:%S}) is implausibly old (more than "
                          f"{OLDEST_MESSAGE.days} days ago)", segment, field_no)

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

    async def _schedule(self, feed: Feed, message: ScheduleMessage, now: datetime,
                        applying: Applying) -> str:
        if not feed.takes_schedule_from("hl7"):
            raise Problem("AR", TABLE_VALUE_NOT_FOUND, f"clinic {feed.clinic_id!r} takes its "
                          f"schedule from {feed.source_of_truth}, not from this HL7 feed",
                          "MSH", 4)
        if message.action == "no_show":
            return await self._no_show(feed.clinic_id, message, now)
        return await self._book(feed, message, now, applying)

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

    async def _book(self, feed: Feed, message: ScheduleMessage, now: datetime,
                    applying: Applying) -> str:
        providers: dict[str, str] = {}
        rooms: dict[str, str] = {}
        if message.provider is not None and message.provider.name:
            providers[feed.provider(message.provider.ehr_id)] = message.provider.name[:80]
        if message.room is not None and message.room.name:
            room = feed.room(message.room.ehr_id)
            if ID_PATTERN.match(room):
                rooms[room] = message.room.name[:80]

        def build(stored: Appointment | None) -> Appointment | None:
            return self._appointment(feed, message, stored)

        async def check(appointment: Appointment) -> None:
            """A date implausibly far from today (SCH-11), a provider the clinic's
            directory does not list (AIP-3): AE naming it."""
            try:
                await self.desk.check_booking(feed.clinic_id, appointment.scheduled_at,
                                              appointment.provider_id, now=now,
                                              also_known=feed.providers.values())
            except NotFound as refused:
                raise Problem("AE", UNKNOWN_KEY_IDENTIFIER, refused.detail, "AIP", 3,
                              1) from None
            except Refusal as refused:
                raise Problem("AE", DATA_TYPE_ERROR, refused.detail, "SCH", 11, 4) from None

        return await self.ehr.book(feed.clinic_id, message.appointment_id, build, now=now,
                                   holder=applying.message_key, providers=providers,
                                   rooms=rooms, held=applying.held, finish=applying.finish,
                                   check=check)

    def _appointment(self, feed: Feed, message: ScheduleMessage,
                     stored: Appointment | None) -> Appointment | None:
        """The appointment as the message has it (what it leaves out, as stored); None
        for a cancel of an appointment never seen that says too little to record."""
        cancelled = message.action == "cancel"
        if cancelled and stored is None:
            # a cancel of an appointment never booked here changes nothing: the EHR hears
            # so (AE), and nothing is recorded or published
            raise Problem("AE", UNKNOWN_KEY_IDENTIFIER, f"appointment "
                          f"{message.appointment_id!r} is not on clinic {feed.clinic_id!r}'s "
                          "schedule: nothing to cancel", "SCH", 2, 1)
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
            table = self._visit_type_table(feed)
            visit_type = known_visit_type(message.visit_type_code, table)
            if visit_type is None:
                raise Problem("AE", TABLE_VALUE_NOT_FOUND, f"SCH-7 "
                              f"{message.visit_type_code[:40]!r} is not one of this "
                              f"clinic's visit types: {visit_types_named(table)} (or a "
                              "code mapped to one)", "SCH", 7, 1)
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
                            now: datetime, applying: Applying) -> str:
        clinic = feed.clinic_id
        patient_ref = identity = None
        if message.patient is not None:
            patient_ref = self.desk.import_keys(clinic).pseudonymize(message.patient.mrn)
            identity = self._identity(feed, message.patient)
        ehr_visit = self._ehr_visit(feed, message)
        try:
            if message.action == "arrive":
                provider = feed.provider(message.attending.ehr_id) if message.attending \
                    else None
                _visit, text = await self.ehr.arrive(clinic, ehr_visit, patient_ref, now=now,
                                                     provider_id=provider,
                                                     urgent=message.urgent, identity=identity,
                                                     finish=applying.finish,
                                                     attempt=applying.message_key,
                                                     claim=applying.visit_claim,
                                                     matches=applying.identity_matches)
            elif message.action == "update_patient":
                assert patient_ref is not None
                if identity is None:
                    text = "no birth date and name to update"
                else:
                    text = await self.ehr.update_identity(clinic, patient_ref, identity,
                                                          now=now,
                                                          holder=applying.message_key)
            else:
                number = message.visit_number
                text = await self.ehr.end(clinic, ehr_visit, "entered_in_error"
                                          if message.action == "cancel_arrival" else "ended",
                                          now=now, name=f"visit {number!r} (PV1-19)"
                                          if number else "the message's visit")
        except NotFound as refused:
            raise Problem("AE", UNKNOWN_KEY_IDENTIFIER, refused.detail, "PV1", 19,
                          1) from None
        except Unavailable as refused:
            if refused.code == "in_progress":
                raise Problem("AR", "206", f"{refused.detail}", "PV1", 19, 1,
                              retry=True) from None
            raise
        except Conflict as refused:
            if refused.code == "import_running":
                raise
            raise Problem("AE", APPLICATION_INTERNAL_ERROR, refused.detail, "PV1", 19,
                          1) from None
        return text


DIGEST_MARK = b"digest:"


def message_digest(payload: bytes) -> bytes:
    """What makes two messages under one control id "the same message": a digest of its
    segments with ``MSH-7`` left out (an interface engine may restamp the time of a
    resend) and line endings, trailing blanks and empty lines ignored."""
    segments = [s.rstrip() for s in payload.replace(b"\r\n", b"\r")
                .replace(b"\n", b"\r").split(b"\r") if s.strip()]
    if segments and segments[0].startswith(b"MSH") and len(segments[0]) > 3:
        fields = segments[0].split(segments[0][3:4])
        if len(fields) > 6:
            fields[6] = b""
        segments[0] = segments[0][3:4].join(fields)
    return hashlib.sha256(b"\r".join(segments)).hexdigest()[:32].encode()


def kept(answer: bytes, digest: bytes) -> bytes:
    """An ACK as stored: with the digest of the message it answered."""
    return DIGEST_MARK + digest + b"|" + answer


def replayed(stored: bytes, digest: bytes) -> bytes:
    """The ACK stored for a control id, given back to a resend of the same message; the
    same control id on a different message is refused (AE, ``MSH-10``), changing
    nothing. An ACK stored without a digest (before digests were kept) is given back."""
    if not stored.startswith(DIGEST_MARK):
        return stored
    first, _, answer = stored[len(DIGEST_MARK):].partition(b"|")
    if first != digest:
        raise Problem("AE", DUPLICATE_KEY_IDENTIFIER, "control id already used for a "
                      "different message: MSH-10 must be unique per message (a resend "
                      "must be the same message)", "MSH", 10)
    return answer


def _ack_code(answer: bytes) -> str:
    marker = answer.find(b"\rMSA|")
    return answer[marker + 5:marker + 7].decode("ascii", "replace") if marker >= 0 else "??"
