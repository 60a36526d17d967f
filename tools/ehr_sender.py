"""A simulated EHR's interface engine: SIU bookings and ADT registrations as an EHR's
scheduling and registration systems write them (HL7 v2.5.1, segments as in the
standard's chapter 10 and 3 examples), sent over MLLP to check-in's listener, one
message at a time per connection, each waiting for its ACK.

``siu`` and ``adt`` build messages; ``MllpConnection`` is one engine connection.
Times in messages are the clinic's local clock without an offset, as EHRs write them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from aiokafka import AIOKafkaProducer

from shared import events as ev
from shared.clinics import ClinicDirectory
from shared.logging import get_logger
from tools.live_demo import (
    DEMO_CLINICS,
    DemoClinic,
    DemoEvent,
    clinics_setting,
    demo_day,
    played,
)
from tools.simulate import VISIT_MINUTES

log = get_logger("clinicflow.ehr_sender")


def _utcnow() -> datetime:
    return datetime.now(UTC)

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"
SENDING_APPLICATION = "EHRSIM"


def hl7_time(at: datetime, zone: ZoneInfo) -> str:
    """An HL7 DTM as an EHR writes it: the clinic's local time, no offset."""
    return at.astimezone(zone).strftime("%Y%m%d%H%M%S")


@dataclass(frozen=True, slots=True)
class Patient:
    """Who the EHR knows (made up: the simulator's people, never real ones)."""

    mrn: str
    family: str
    given: str
    born: date

    @property
    def pid(self) -> str:
        return (f"PID|1||{self.mrn}^^^EHRSIM^MR||{self.family}^{self.given}||"
                f"{self.born:%Y%m%d}|U")


@dataclass(frozen=True, slots=True)
class Booking:
    """One appointment as the EHR's scheduling system holds it."""

    appointment_id: str
    patient: Patient
    provider: str  # the EHR's provider id (AIP-3.1)
    provider_name: tuple[str, str]  # family, given
    visit_type: str  # an appointment reason code (SCH-7.1, HL7 table 0276 or the clinic's)
    start: datetime  # aware
    minutes: int


def msh(kind: str, structure: str, *, facility: str, sent_at: datetime, zone: ZoneInfo,
        control: str | None = None) -> str:
    return (f"MSH|^~\\&|{SENDING_APPLICATION}|{facility}|CLINICFLOW|CHECKIN|"
            f"{hl7_time(sent_at, zone)}||{kind}^{structure}|"
            f"{control or uuid.uuid4().hex[:20]}|P|2.5.1")


def siu(trigger: str, booking: Booking, *, facility: str, zone: ZoneInfo,
        sent_at: datetime, control: str | None = None, status: str = "Booked") -> bytes:
    """``SIU^<trigger>`` (S12 new, S14 modified, S15 cancelled, S26 no-show) of
    ``booking``: SCH, PID, RGS, AIS, AIP."""
    begin = hl7_time(booking.start, zone)
    end = hl7_time(booking.start + timedelta(minutes=booking.minutes), zone)
    family, given = booking.provider_name
    provider = f"{booking.provider}^{family}^{given}^^^DR"
    segments = [
        msh(f"SIU^{trigger}", "SIU_S12", facility=facility, sent_at=sent_at, zone=zone,
            control=control),
        f"SCH|{booking.appointment_id}-P|{booking.appointment_id}|||||{booking.visit_type}|"
        f"NORMAL|{booking.minutes}|m|^^{booking.minutes}^{begin}^{end}|||||||||||||||"
        f"{status}",
        booking.patient.pid,
        f"PV1|1|O|||||{provider}",
        "RGS|1|A",
        f"AIS|1|A|{booking.visit_type}|{begin}|||{booking.minutes}|m",
        f"AIP|1|A|{provider}|D^Doctor||{begin}|||{booking.minutes}|m^Minutes||{status}",
    ]
    return "\r".join(segments).encode() + CR


def adt(trigger: str, patient: Patient, *, facility: str, zone: ZoneInfo,
        sent_at: datetime, visit_number: str, attending: str = "",
        urgent: bool = False, control: str | None = None) -> bytes:
    """``ADT^<trigger>`` (A04 registered, A11 cancelled, A03 ended) of one visit: EVN,
    PID, PV1 (PV1-19 the EHR's visit number)."""
    structure = {"A11": "ADT_A09", "A03": "ADT_A03"}.get(trigger, "ADT_A01")
    recorded = hl7_time(sent_at, zone)
    segments = [
        msh(f"ADT^{trigger}", structure, facility=facility, sent_at=sent_at, zone=zone,
            control=control),
        f"EVN|{trigger}|{recorded}",
        patient.pid,
        f"PV1|1|O||{'E' if urgent else 'R'}|||{attending}{'|' * 12}{visit_number}",
    ]
    return "\r".join(segments).encode() + CR


def ack_code(ack: bytes) -> str:
    """``MSA-1`` of an ACK (``??`` when there is none)."""
    at = ack.find(b"\rMSA|")
    return ack[at + 5:at + 7].decode("ascii", "replace") if at >= 0 else "??"


def ack_text(ack: bytes) -> str:
    """``MSA-3`` of an ACK: what check-in did, in words."""
    at = ack.find(b"\rMSA|")
    if at < 0:
        return ""
    fields = ack[at + 1:].split(CR, 1)[0].decode(errors="replace").split("|")
    return fields[3] if len(fields) > 3 else ""


class MllpConnection:
    """One MLLP connection as an interface engine holds it: send a message, wait for its
    ACK (original mode: one at a time)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, host: str, port: int) -> MllpConnection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, message: bytes, timeout: float = 30.0) -> bytes:
        """The ACK's bytes (without the envelope)."""
        self.writer.write(VT + message + FS + CR)
        await self.writer.drain()
        data = await asyncio.wait_for(self.reader.readuntil(FS + CR), timeout)
        return data[data.find(VT) + 1:-2]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


# ------------------------------------------------------------------ make up's EHR sender

EHR_CLINIC = "north"  # the demo clinic whose EHR feeds check-in over MLLP
EHR_FACILITY = "NORTHSIDE"  # its EHR's sending facility (MSH-4)
DEFAULT_HL7_PORT = 2575  # the port IANA gives HL7 over MLLP
FAMILIES = ("RIVERA", "NGUYEN", "OKONKWO", "SCHMIDT", "TANAKA", "HASSAN", "MURPHY", "SILVA",
            "KOWALSKA", "BERGSTROM", "MENSAH", "DUBOIS")
GIVEN = ("ALEX", "SAM", "JORDAN", "TAYLOR", "RILEY", "CASEY", "MORGAN", "JAMIE", "AVERY",
         "QUINN", "ROBIN", "DREW")


def ehr_provider(provider_id: str) -> str:
    """The EHR's id of a demo provider (``p2`` -> ``1002``): what AIP-3 carries."""
    return f"{1000 + int(provider_id.lstrip('p'))}" if provider_id.lstrip("p").isdigit() \
        else provider_id


def feed_setting(clinic: DemoClinic) -> str:
    """``CLINICFLOW_CHECKIN_FEEDS`` for the demo: the EHR clinic's facility, its schedule
    from HL7, and the EHR's provider ids mapped to the clinic's."""
    providers = {ehr_provider(f"p{n}"): f"p{n}" for n in range(1, len(clinic.providers) + 1)}
    return json.dumps({EHR_FACILITY: {"clinic": clinic.clinic_id, "source_of_truth": "hl7",
                                      "providers": providers}})


def made_up_patient(visit_id: str) -> Patient:
    """A made-up patient for a simulated visit (the same one every run)."""
    n = int(hashlib.sha256(visit_id.encode()).hexdigest()[:12], 16)
    return Patient(f"MRN{n % 10_000_000:07d}", FAMILIES[n % len(FAMILIES)],
                   GIVEN[(n // 7) % len(GIVEN)], date(1940 + n % 65, 1 + n % 12, 1 + n % 28))


@dataclass(frozen=True, slots=True)
class EhrDay:
    """The EHR clinic's day as the sender plays it: what was past at the start (published
    straight onto the floor, as the other demo clinics' days are), the bookings the EHR
    sends at once (every scheduled patient still to come), and the rest in time order
    (their arrivals become ADT^A04, everything else a request to a service as it
    happens: ``SimulatedFloor.act``)."""

    past: list[DemoEvent]
    bookings: dict[str, Booking]  # by the simulated visit that keeps the appointment
    future: list[DemoEvent]


def ehr_day(clinic: DemoClinic, directory: ClinicDirectory, *, started: datetime,
            speed: float = 1.0, day: date | None = None) -> EhrDay:
    """Plan the EHR clinic's day (pure: ``started`` is now; ``day``: that date's whole
    day, ``tools.live_demo.demo_day``)."""
    events = [played(e, started, speed)
              for e in demo_day((clinic,), directory, now=started, day=day)]
    past = [e for e in events if e.at <= started]
    future = events[len(past):]
    names = dict(zip((f"p{n}" for n in range(1, len(clinic.providers) + 1)),
                     clinic.providers, strict=True))
    bookings: dict[str, Booking] = {}
    for event in future:
        arrival = event.payload
        if not isinstance(arrival, ev.PatientArrived) or arrival.scheduled_at is None \
                or arrival.provider_id is None:
            continue  # walk-ins come in at the desk, not from the EHR's schedule
        family = names.get(arrival.provider_id, arrival.provider_id).split()[-1].upper()
        bookings[arrival.visit_id] = Booking(
            demo_appointment_id(clinic.clinic_id, arrival.visit_id),
            made_up_patient(arrival.visit_id),
            ehr_provider(arrival.provider_id), (family, ""), arrival.visit_type,
            arrival.scheduled_at, VISIT_MINUTES.get(arrival.visit_type, 20))
    return EhrDay(past, bookings, future)


def demo_appointment_id(clinic_id: str, visit_id: str) -> str:
    """The appointment id of a simulated visit's booking: the visit id, which already
    names its clinic (``north-v043``; before: ``north-north-v043``)."""
    return visit_id if visit_id.startswith(f"{clinic_id}-") else f"{clinic_id}-{visit_id}"


def with_visits(payload: ev.Payload, visits: dict[str, str]) -> ev.Payload:
    """A simulated fact naming check-in's visit where the EHR registered the patient
    (``visits``: simulated visit -> check-in's)."""
    visit = getattr(payload, "visit_id", None)
    if visit is None or visit not in visits:
        return payload
    return payload.model_copy(update={"visit_id": visits[visit]})


class EhrSender:
    """The EHR clinic's interface engine: one MLLP connection, each message resent until
    it is answered (AR or no answer: again, a second later), as engines do."""

    def __init__(self, host: str, port: int, *, zone: ZoneInfo, stop: asyncio.Event,
                 tries: int = 10) -> None:
        self.host, self.port, self.zone, self.stop, self.tries = host, port, zone, stop, tries
        self._connection: MllpConnection | None = None

    async def send(self, message: bytes) -> bytes | None:
        """The message's ACK once it is AA or AE (None: never answered so)."""
        for _ in range(self.tries):
            try:
                if self._connection is None:
                    self._connection = await MllpConnection.connect(self.host, self.port)
                ack = await self._connection.send(message, timeout=15)
                if ack_code(ack) in ("AA", "AE"):
                    return ack
                log.warning("ehr sender: message refused for now", text=ack_text(ack)[:80])
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                await self.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 1.0)
            if self.stop.is_set():
                return None
        return None

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None


async def _checked_in_visit(client: httpx.AsyncClient, clinic_id: str,
                            appointment_id: str) -> str | None:
    """Check-in's visit of an appointment the EHR registered (the front desk's schedule)."""
    answer = await client.get(f"/clinics/{clinic_id}/schedule",
                              headers={"Authorization": "Bearer dev-front-desk"})
    if answer.status_code != 200:
        return None
    for row in answer.json()["appointments"]:
        if row["appointment_id"] == appointment_id:
            return row.get("visit_id")
    return None


DEV_TOKENS = {"checkin": "dev-front-desk", "flow": "dev-nurse", "billing": "dev-billing",
              "notifications": "dev-front-desk"}
# of ten patients checked in, how many give the desk a contact (the first of them also
# wait elsewhere: "come back now" notices): channel log, the notifier's messages to its log
CONTACTS_IN_TEN, WAIT_ANYWHERE_IN_TEN = 6, 2
# of ten patients checked out owing something, how many pay it at the desk there and then
# (card, cash or check, by the visit); the others leave an open balance
PAY_AT_CHECKOUT_IN_TEN = 8
REFUSED = (404, 409)  # a human got there first, or the floor changed: the step is skipped
STEP_TRIES = 3  # a refusal may be the service not having read the last step yet


@dataclass(frozen=True, slots=True)
class Doors:
    """The services' HTTP bases the simulated staff act through, as people do (``None``:
    that service is not running; its steps go onto the floor topic as before)."""

    checkin: str | None = None
    flow: str | None = None
    billing: str | None = None
    notifications: str | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """One scripted floor fact as the request a member of staff would make."""

    service: str  # checkin, flow, billing or notifications
    path: str
    body: dict[str, object]
    walk_in: str | None = None  # the simulated visit a walk-in's arrival starts
    method: str = "POST"


def staff_step(clinic_id: str, payload: ev.Payload) -> Step | None:
    """The request that makes ``payload`` happen (its visit already check-in's), or None
    when no door does it. A walk-in's ticket comes from check-in's counter."""
    c = f"/clinics/{clinic_id}"
    match payload:
        case ev.PatientArrived():
            return Step("checkin", f"{c}/arrivals", {
                "visit_type": payload.visit_type, "provider_id": payload.provider_id,
                "priority": payload.priority}, walk_in=payload.visit_id)
        case ev.RoomReady():
            return Step("flow", f"{c}/rooms/{payload.room_id}/ready", {})
        case ev.RoomOutOfService():
            return Step("flow", f"{c}/rooms/{payload.room_id}/out-of-service",
                        {"reason": payload.reason[:200]})
        case ev.PatientRoomed():
            return Step("flow", f"{c}/visits/{payload.visit_id}/room",
                        {"room_id": payload.room_id})
        case ev.ProviderIn():
            return Step("flow", f"{c}/visits/{payload.visit_id}/provider-in",
                        {"provider_id": payload.provider_id})
        case ev.DelayAnnounced():
            return Step("flow", f"{c}/delays", {"provider_id": payload.provider_id,
                                                "minutes": payload.minutes,
                                                "reason": payload.reason[:200]})
        case ev.DelayCleared():
            return Step("flow", f"{c}/delays", {"provider_id": payload.provider_id,
                                                "minutes": 0})
        case ev.PatientCheckedOut():
            return Step("billing", f"{c}/visits/{payload.visit_id}/checkout",
                        {"cpt_codes": list(payload.cpt_codes)})
        case ev.ArrivalCancelled():
            return Step("checkin", f"{c}/visits/{payload.visit_id}/cancel",
                        {"reason": payload.reason})
    return None


class SimulatedFloor:
    """The floor side of a clinic played through check-in (its EHR, its desk): the day's
    past onto the floor topic at once, then each scripted step as staff would do it,
    through the services' HTTP doors (``doors``; ``act``), each naming check-in's visit
    where the patient was checked in through check-in (``visits``: simulated visit ->
    check-in's), and the day's clock. A step a service refuses (404/409: a person got
    there first, or the floor changed) is skipped and counted (``skipped``), never forced
    onto the floor topic, and so are the later steps of a visit that never started.
    ``rate``: how many seconds of ``clock`` pass in a wall second (a warped clock's speed;
    1 for the wall clock), so that each step waits for its time on that clock."""

    def __init__(self, bootstrap: str, floor_topic: str, *, stop: asyncio.Event,
                 clock: Callable[[], datetime], doors: Doors | None = None,
                 client: httpx.AsyncClient | None = None, retry_after: float = 0.5,
                 rate: float = 1.0) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                         enable_idempotence=True, linger_ms=5)
        self.floor_topic, self.stop, self.clock, self.rate = floor_topic, stop, clock, rate
        self.visits: dict[str, str] = {}
        self.doors = doors or Doors()
        self.client = client
        self.retry_after = retry_after
        self.skipped = 0
        self.dropped: set[str] = set()  # simulated visits whose arrival was refused
        # requests made beside the day's steps (contacts, payments), awaited by ``close``
        self._beside: set[asyncio.Task[httpx.Response | None]] = set()

    def checked_in(self, clinic_id: str, simulated: str, visit: str) -> None:
        """Check-in's ``visit`` of the simulated one; and, for the patients who give one
        (``CONTACTS_IN_TEN``, chosen by the visit), the contact the desk enters as they
        check in, through notifications' door: channel log, so that the notifier's delay
        warnings, "come back now" notices and feedback requests go to its log."""
        self.visits[simulated] = visit
        base = self._base("notifications")
        share = int(hashlib.sha256(simulated.encode()).hexdigest()[:8], 16) % 10
        if base is None or share >= CONTACTS_IN_TEN:
            return
        step = Step("notifications", f"/clinics/{clinic_id}/visits/{visit}/contact",
                    {"channel": "log", "consent": True,
                     "wait_anywhere": share < WAIT_ANYWHERE_IN_TEN}, method="PUT")
        # beside the day's steps: the notifier may read the arrival a moment later (a
        # 404 is tried again), and the next step need not wait for it
        self._aside(base, step)

    def checked_out(self, clinic_id: str, visit: str, account: dict[str, Any]) -> None:
        """Billing's ``account`` of a visit just checked out: most patients who owe
        something (``PAY_AT_CHECKOUT_IN_TEN``, chosen by the visit) pay it all at the desk,
        by card (an authorization reference, never a card number), cash or check, so that
        receipts, the drawer's totals and the day's reconciliation have payments to show."""
        base = self._base("billing")
        owed = account.get("balance_cents") or 0
        share = int(hashlib.sha256(visit.encode()).hexdigest()[:8], 16)
        if base is None or owed <= 0 or share % 10 >= PAY_AT_CHECKOUT_IN_TEN:
            return
        method = ("card", "cash", "check")[share % 3]
        reference = {"card": f"AUTH-{share % 1_000_000:06d}",
                     "check": f"CHK-{share % 10_000:04d}"}.get(method)
        self._aside(base, Step("billing", f"/clinics/{clinic_id}/visits/{visit}/payments",
                               {"method": method, "amount_cents": owed,
                                "reference": reference}))

    def _aside(self, base: str, step: Step) -> None:
        task = asyncio.create_task(self._request(base, step))
        self._beside.add(task)
        task.add_done_callback(self._beside.discard)

    def _base(self, service: str) -> str | None:
        base: str | None = getattr(self.doors, service)
        return base

    async def act(self, event: DemoEvent) -> bool:
        """Do one scripted step as staff would (through its service's door; a fact no
        running service takes is published as before). False: skipped."""
        visit = getattr(event.payload, "visit_id", None)
        if visit is not None and visit in self.dropped:
            self.skipped += 1
            return False
        step = staff_step(event.clinic_id, with_visits(event.payload, self.visits))
        base = None if step is None else self._base(step.service)
        if step is None or base is None:
            await self.publish(event)
            return True
        answer = await self._request(base, step)
        if answer is not None and answer.is_success:
            if step.walk_in is not None:
                self.checked_in(event.clinic_id, step.walk_in, answer.json()["visit_id"])
            elif isinstance(event.payload, ev.PatientCheckedOut):
                visit = self.visits.get(event.payload.visit_id, event.payload.visit_id)
                self.checked_out(event.clinic_id, visit, answer.json().get("account") or {})
            return True
        self.skipped += 1
        if step.walk_in is not None:
            self.dropped.add(step.walk_in)
        status = None if answer is None else answer.status_code
        detail = "" if answer is None else answer.text[:160]
        say = log.info if status in REFUSED else log.warning
        say("demo step skipped", clinic=event.clinic_id, step=step.path, status=status,
            detail=detail)
        return False

    async def _request(self, base: str, step: Step) -> httpx.Response | None:
        """The step's answer (the same Idempotency-Key on every try: never done twice);
        tried again a moment later when refused or unanswered (the service may not have
        read the step before yet), None when never answered."""
        headers = {"Authorization": f"Bearer {DEV_TOKENS[step.service]}",
                   "Idempotency-Key": uuid.uuid4().hex}
        body = {k: v for k, v in step.body.items() if v is not None}
        answer: httpx.Response | None = None
        for attempt in range(STEP_TRIES):
            if attempt:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), self.retry_after * attempt)
                if self.stop.is_set():
                    break
            try:
                if self.client is None:
                    self.client = httpx.AsyncClient(timeout=10)
                answer = await self.client.request(step.method, base + step.path, json=body,
                                                   headers=headers)
            except httpx.HTTPError:
                answer = None
                continue
            if answer.is_success or answer.status_code not in (*REFUSED, 503):
                break
        return answer

    async def close(self) -> None:
        # the contacts and payments in flight first (each stops retrying once the day is
        # stopped)
        await asyncio.gather(*self._beside, return_exceptions=True)
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    async def publish(self, event: DemoEvent, occurred: datetime | None = None) -> None:
        """One fact, at its own time (``occurred``; default: now, or its time if sooner)."""
        payload = with_visits(event.payload, self.visits)
        envelope = ev.make_event(payload, clinic_id=event.clinic_id, source="simulator",
                                 occurred_at=occurred or min(event.at, self.clock()),
                                 correlation_id=getattr(payload, "visit_id", None))
        await self.producer.send(self.floor_topic, ev.encode(envelope),
                                 key=event.clinic_id.encode())

    async def publish_past(self, events: list[DemoEvent]) -> int:
        """What is already past, at once with its own times; how many facts."""
        for event in events:
            await self.publish(event, event.at)
        await self.producer.flush()
        return len(events)

    async def coming(self, events: list[DemoEvent]) -> AsyncIterator[DemoEvent]:
        """Each event at its time, until the day is stopped."""
        for event in events:
            wait = (event.at - self.clock()).total_seconds() / self.rate
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), timeout=wait)
            if self.stop.is_set():
                return
            yield event


async def play_ehr_clinic(bootstrap: str, floor_topic: str, *, hl7: tuple[str, int],
                          checkin_url: str, clinic: DemoClinic, directory: ClinicDirectory,
                          speed: float = 1.0, stop: asyncio.Event | None = None,
                          clock: Callable[[], datetime] = _utcnow,
                          on_caught_up: Callable[[int], None] | None = None,
                          flow_url: str | None = None, billing_url: str | None = None,
                          notifications_url: str | None = None,
                          day: date | None = None, rate: float = 1.0) -> int:
    """Play the EHR clinic's day (``ehr_day``): the past straight onto the floor, then
    the EHR's bookings over MLLP, then each arrival of a booked patient as ADT^A04 when it
    happens; every other step as staff do it (``SimulatedFloor.act``: walk-ins at the
    desk, rooming, provider in, delays through flow, checkout through billing), naming
    check-in's visit. A patient the listener never takes comes in at the desk as a
    walk-in. Returns how many facts, messages and steps went out."""
    stop = stop or asyncio.Event()
    started = clock()
    zone = directory.zone(clinic.clinic_id)
    plan = ehr_day(clinic, directory, started=started, speed=speed, day=day)
    floor = SimulatedFloor(bootstrap, floor_topic, stop=stop, clock=clock, rate=rate,
                           doors=Doors(checkin_url, flow_url, billing_url, notifications_url))
    sender = EhrSender(*hl7, zone=zone, stop=stop)
    sent = 0
    await floor.producer.start()
    try:
        async with httpx.AsyncClient(base_url=checkin_url, timeout=10) as client:
            sent = await floor.publish_past(plan.past)
            for visit, booking in list(plan.bookings.items()):
                ack = await sender.send(siu("S12", booking, facility=EHR_FACILITY, zone=zone,
                                            sent_at=started))
                if ack is None or ack_code(ack) != "AA":
                    del plan.bookings[visit]  # not on check-in's schedule: simulated as is
                sent += 1
            if on_caught_up is not None:
                on_caught_up(sent)
            async for event in floor.coming(plan.future):
                arrival = event.payload
                booked = plan.bookings.get(arrival.visit_id) \
                    if isinstance(arrival, ev.PatientArrived) else None
                if isinstance(arrival, ev.PatientArrived) and booked is not None:
                    ack = await sender.send(adt(
                        "A04", booked.patient, facility=EHR_FACILITY, zone=zone,
                        sent_at=min(event.at, clock()), visit_number=f"V{arrival.visit_id}",
                        attending=booked.provider, urgent=arrival.priority == "urgent"))
                    checked_in = await _checked_in_visit(client, clinic.clinic_id,
                                                         booked.appointment_id) \
                        if ack is not None and ack_code(ack) == "AA" else None
                    if checked_in is not None:
                        floor.checked_in(clinic.clinic_id, arrival.visit_id, checked_in)
                        sent += 1
                        continue
                sent += await floor.act(event)
            await floor.producer.flush()
    finally:
        await sender.close()
        await floor.close()
        await floor.producer.stop()
    log.info("ehr clinic's day stopped" if stop.is_set() else "ehr clinic's day played",
             clinic=clinic.clinic_id, sent=sent,
             through_hl7=len(floor.visits), skipped=floor.skipped)
    return sent


async def play_with_ehr(bootstrap: str, floor_topic: str, *, hl7: tuple[str, int],
                        checkin_url: str, speed: float = 1.0,
                        stop: asyncio.Event | None = None,
                        directory: ClinicDirectory | None = None,
                        on_caught_up: Callable[[int], None] | None = None,
                        flow_url: str | None = None, billing_url: str | None = None,
                        notifications_url: str | None = None,
                        clock: Callable[[], datetime] = _utcnow, day: date | None = None,
                        rate: float = 1.0) -> int:
    """``make up``'s demo: the EHR clinic's (``EHR_CLINIC``) day through its EHR sender,
    every other demo clinic's through its front desk (``tools.desk_sender``: its
    schedule imported into check-in, so its kiosk has codes from the start, and its
    booked patients checked in at the desk). ``clinicflow up --day``: ``day`` (that
    date's whole day) played on ``clock``, a warped clock ``rate`` times the wall's."""
    from tools.desk_sender import play_desk_clinic

    stop = stop or asyncio.Event()
    directory = directory or ClinicDirectory.parse(clinics_setting())
    ehr_clinic = next(c for c in DEMO_CLINICS if c.clinic_id == EHR_CLINIC)
    caught_up: list[int] = []

    def one_caught_up(count: int) -> None:
        caught_up.append(count)
        if len(caught_up) == len(DEMO_CLINICS) and on_caught_up is not None:
            on_caught_up(sum(caught_up))

    counts = await asyncio.gather(
        *(play_desk_clinic(bootstrap, floor_topic, checkin_url=checkin_url, clinic=clinic,
                           directory=directory, speed=speed, stop=stop,
                           on_caught_up=one_caught_up, flow_url=flow_url,
                           billing_url=billing_url, notifications_url=notifications_url,
                           clock=clock, day=day, rate=rate)
          for clinic in DEMO_CLINICS if clinic is not ehr_clinic),
        play_ehr_clinic(bootstrap, floor_topic, hl7=hl7, checkin_url=checkin_url,
                        clinic=ehr_clinic, directory=directory, speed=speed, stop=stop,
                        on_caught_up=one_caught_up, flow_url=flow_url,
                        billing_url=billing_url, notifications_url=notifications_url,
                        clock=clock, day=day, rate=rate))
    return sum(counts)
